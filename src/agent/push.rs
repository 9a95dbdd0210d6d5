//! Push runs (SPEC 12): the application's own workers publish a run's
//! events with `POST /api/runs/{id}/events`, instead of Sluice calling an
//! agent.
//!
//! A push run is driven like any other: its event stream is fed by an
//! [`Inbox`], so the disconnect grace, `max_run_secs`, `DELETE` and the
//! metrics apply unchanged. The inbox is where exactly-once lives: it counts
//! the events published so far (the run's offset), and a publish that says
//! how many its producer had published before (`Sluice-Offset`) has the
//! events the run already holds skipped, and a gap refused, under one lock
//! with the send, so two publishes can never interleave.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Agent, AgentEvent, AgentStream, ParamError, ParamSpec, RunInput};
use crate::config::{AgentKind, ConfigError};

/// `idle_timeout_secs` when a push agent does not set it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A push agent: `push` (built in) or `[agents.NAME] kind = "push"`.
#[derive(Debug, Clone)]
pub struct Push {
    idle_timeout: Duration,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    idle_timeout_secs: Option<u64>,
}

impl Default for Push {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl Push {
    /// A push agent from its `[agents.NAME]` table.
    pub fn from_settings(name: &str, table: toml::Table) -> Result<Self, ConfigError> {
        let settings: Settings = super::settings(name, table)?;
        let secs = settings
            .idle_timeout_secs
            .unwrap_or(DEFAULT_IDLE_TIMEOUT.as_secs());
        if secs == 0 {
            return Err(super::invalid(name, "idle_timeout_secs must be at least 1"));
        }
        Ok(Self {
            idle_timeout: Duration::from_secs(secs),
        })
    }

    /// How long a run waits for its next event before it ends with
    /// `error producer_timeout`.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

impl Agent for Push {
    fn kind(&self) -> AgentKind {
        AgentKind::Push
    }

    fn params(&self) -> &[ParamSpec] {
        &[]
    }

    fn push_idle_timeout(&self) -> Option<Duration> {
        Some(self.idle_timeout)
    }

    /// Push runs are not started by a request that Sluice answers with the
    /// agent's output: only `POST /api/runs` creates them (through
    /// [`channel`]), and every other route refuses the agent.
    fn start(&self, _input: RunInput) -> Result<AgentStream, ParamError> {
        Err(ParamError::new(
            "agent",
            "a push agent's runs are created with POST /api/runs, and their events published to POST /api/runs/{id}/events",
        ))
    }
}

/// The producer side of a push run.
#[derive(Clone)]
pub struct Inbox(Arc<Mutex<InboxState>>);

struct InboxState {
    sender: mpsc::UnboundedSender<AgentEvent>,
    /// Events published so far: the run's offset.
    published: u64,
    /// A terminal event has been published.
    ended: bool,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Events appended by this publish (those the run held already are not).
    pub appended: u64,
    /// Events published to the run so far.
    pub offset: u64,
    /// Whether a terminal event was among them: the run has ended.
    pub ended: bool,
}

/// Why a publish appended nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The producer says it had published more than the run holds: events
    /// in between were lost, and appending would leave a gap.
    #[error("the producer's offset {given} is beyond the run's offset {offset}")]
    OffsetMismatch {
        /// The offset the producer sent (`Sluice-Offset`).
        given: u64,
        /// Events the run holds: where the producer should resume from.
        offset: u64,
    },
    /// The run has ended: its terminal event was published, or it was
    /// cancelled or timed out.
    #[error("the run has ended")]
    Ended {
        /// Events the run holds, reported to the producer with the refusal.
        offset: u64,
    },
}

/// An inbox and the event stream it feeds; the stream ends the run with
/// `error producer_timeout` after `idle_timeout` without an event.
pub fn channel(idle_timeout: Duration) -> (Inbox, AgentStream) {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let inbox = Inbox(Arc::new(Mutex::new(InboxState {
        sender,
        published: 0,
        ended: false,
    })));
    let events = async_stream::stream! {
        loop {
            match tokio::time::timeout(idle_timeout, receiver.recv()).await {
                Ok(Some(event)) => yield event,
                // The inbox went with its run: nothing more can come.
                Ok(None) => break,
                Err(_) => {
                    yield timed_out(idle_timeout);
                    break;
                }
            }
        }
    };
    (inbox, Box::pin(events))
}

/// The end of a push run whose producer published nothing for `idle_timeout`.
pub fn timed_out(idle_timeout: Duration) -> AgentEvent {
    AgentEvent::Error {
        code: "producer_timeout".into(),
        message: format!(
            "no event was published for {} s (idle_timeout_secs)",
            idle_timeout.as_secs()
        ),
    }
}

impl Inbox {
    /// Publishes `events`, of which the producer had published `given`
    /// before (`None`: append them all at the end). Events up to the run's
    /// offset are skipped; after a terminal event, the rest are dropped.
    pub fn publish(
        &self,
        given: Option<u64>,
        events: Vec<AgentEvent>,
    ) -> Result<Accepted, Refused> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let offset = state.published;
        if state.ended || state.sender.is_closed() {
            return Err(Refused::Ended { offset });
        }
        let skip = match given {
            Some(given) if given > offset => return Err(Refused::OffsetMismatch { given, offset }),
            Some(given) => usize::try_from(offset - given).unwrap_or(usize::MAX),
            None => 0,
        };
        let mut appended = 0;
        for event in events.into_iter().skip(skip) {
            let terminal = event.is_terminal();
            if state.sender.send(event).is_err() {
                break;
            }
            appended += 1;
            state.published += 1;
            if terminal {
                state.ended = true;
                break;
            }
        }
        Ok(Accepted {
            appended,
            offset: state.published,
            ended: state.ended,
        })
    }

    /// The run ended before the driver logged all that was accepted (a
    /// cancel won the race): the run holds `logged` published events, and
    /// nothing more can come.
    pub fn settle(&self, logged: u64) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.published = state.published.min(logged);
        state.ended = true;
    }

    /// Events published so far.
    pub fn offset(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .published
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use proptest::prelude::*;

    use super::*;

    fn token(n: u64) -> AgentEvent {
        AgentEvent::Token(format!("t{n}"))
    }

    proptest! {
        /// Whatever the batch splits, retries and replays, the run gets the
        /// producer's sequence, each event once, in order; a gap is refused
        /// and appends nothing.
        #[test]
        fn the_run_gets_the_producers_sequence_exactly_once(
            total in 1u64..60,
            steps in proptest::collection::vec((0u64..70, 1u64..12, any::<bool>()), 1..80),
        ) {
            let (inbox, events) = channel(Duration::from_secs(3600));
            let mut model = 0u64;
            for (start, len, gap) in steps {
                // A producer retrying from any earlier point, or skipping ahead.
                let start = if gap { model + 1 + start % 5 } else { start.min(model) };
                let end = (start + len).min(total);
                if start >= end { continue; }
                let batch: Vec<AgentEvent> = (start..end).map(token).collect();
                match inbox.publish(Some(start), batch) {
                    Ok(accepted) => {
                        prop_assert!(start <= model);
                        prop_assert_eq!(accepted.appended, end.saturating_sub(model));
                        model = model.max(end);
                        prop_assert_eq!(accepted.offset, model);
                    }
                    Err(Refused::OffsetMismatch { given, offset }) => {
                        prop_assert!(start > model);
                        prop_assert_eq!((given, offset), (start, model));
                    }
                    Err(other) => prop_assert!(false, "{other}"),
                }
            }
            drop(inbox);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build();
            let got: Vec<AgentEvent> = match runtime {
                Ok(runtime) => runtime.block_on(events.collect()),
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            let want: Vec<AgentEvent> = (0..model).map(token).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_terminal_event_ends_the_inbox() {
        let (inbox, _events) = channel(Duration::from_secs(3600));
        let done = AgentEvent::Done {
            finish_reason: "stop".into(),
            usage: serde_json::Map::new(),
        };
        let accepted = inbox.publish(None, vec![token(0), done, token(1)]);
        assert_eq!(
            accepted,
            Ok(Accepted {
                appended: 2,
                offset: 2,
                ended: true
            })
        );
        assert_eq!(
            inbox.publish(Some(2), vec![token(2)]),
            Err(Refused::Ended { offset: 2 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_producer_times_out() {
        let (inbox, mut events) = channel(Duration::from_secs(5));
        assert!(inbox.publish(None, vec![token(0)]).is_ok());
        assert_eq!(events.next().await, Some(token(0)));
        let timeout = events.next().await;
        assert!(
            matches!(&timeout, Some(AgentEvent::Error { code, .. }) if code == "producer_timeout"),
            "{timeout:?}"
        );
        assert_eq!(events.next().await, None);
    }
}
