//! One run on this node: driven here, or mirrored from a shared hub. Its
//! driver, and the idle check of runs that end when their clients leave.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{Copies, Presence, Shared};
use crate::agent::push::{Inbox, Refused};
use crate::agent::{AgentEvent, AgentStream};
use crate::hub::log::RunLog;
use crate::hub::record::{Entry, Recorder};
use crate::hub::{rfc3339, Cancelled, HubError, Published, RunMeta, RunSnapshot, RunStatus, Seq};

/// The least time a run with `cancel_on_disconnect` waits for its first
/// subscriber, even with a disconnect grace of 0: the one-shot route
/// subscribes right after starting the run, possibly on another thread.
pub(crate) const FIRST_SUBSCRIBER_WAIT: Duration = Duration::from_secs(1);
/// A run's deadline when `runs.max_run_secs` sets none.
const NO_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// How long `DELETE` waits for the cancelled run's terminal event, here
/// or on another node.
pub(crate) const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// One run on this node: driven here, or a mirror of a run another node
/// drives.
pub(crate) struct Run {
    meta: RunMeta,
    /// Its place in the start order, for listing newest first.
    pub(super) ordinal: u64,
    log: RunLog,
    cancel: CancellationToken,
    pub(super) subscribers: AtomicUsize,
    /// Moves on every subscribe and unsubscribe, so a disconnect-grace check
    /// scheduled earlier can tell that someone came and went since.
    pub(super) epoch: AtomicU64,
    /// A cancel with this set ends the run with `error node_lost`: the node
    /// is stopping and cannot finish it.
    lost: AtomicBool,
    /// A copy of a run that another node drives (no driver here).
    mirror: bool,
    /// Asked before a run nobody watches here is cancelled.
    presence: Arc<dyn Presence>,
    /// A push run's producer side: where published events go.
    inbox: Option<Inbox>,
}

impl Run {
    pub(super) fn new(
        meta: RunMeta,
        ordinal: u64,
        mirror: bool,
        presence: Arc<dyn Presence>,
        inbox: Option<Inbox>,
    ) -> Self {
        Self {
            meta,
            ordinal,
            log: RunLog::new(),
            cancel: CancellationToken::new(),
            subscribers: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            mirror,
            presence,
            inbox,
        }
    }

    /// What the run is.
    pub(crate) fn meta(&self) -> &RunMeta {
        &self.meta
    }

    /// Its events so far.
    pub(crate) fn log(&self) -> &RunLog {
        &self.log
    }

    /// Whether another node drives this run.
    pub(crate) fn is_mirror(&self) -> bool {
        self.mirror
    }

    /// Ends this run with `error node_lost`: its node cannot finish it.
    /// A mirror has no driver here to end.
    pub(crate) fn lose(&self) {
        if !self.mirror {
            self.lost.store(true, Ordering::SeqCst);
            self.cancel.cancel();
        }
    }

    /// The run as it is now, with its text or without.
    pub(crate) fn snapshot(&self, with_text: bool) -> RunSnapshot {
        let summary = self.log.summary(with_text);
        RunSnapshot {
            id: self.meta.id.clone(),
            agent: self.meta.agent.clone(),
            prompt: self.meta.prompt.clone(),
            status: summary.status,
            created_at: rfc3339(self.meta.created_at),
            finished_at: summary.finished_at.map(rfc3339),
            events: summary.events,
            text: summary.text,
            usage: summary.usage,
        }
    }

    /// Resolves with the run's status once it has ended.
    pub(crate) async fn ended(&self) -> RunStatus {
        self.log.wait_end().await
    }

    /// Cancels the run if it is running; waits briefly for its terminal
    /// event.
    pub(crate) async fn cancel(&self) -> Cancelled {
        let status = self.log.status();
        if status != RunStatus::Running {
            return Cancelled::AlreadyFinished(status);
        }
        let mut changed = self.log.watch();
        self.cancel.cancel();
        let finished = async {
            while self.log.status() == RunStatus::Running {
                changed.changed().await;
            }
        };
        // The driver reacts to the cancel at its next poll; should the
        // agent block that poll, the answer still comes in bounded time.
        let _ = tokio::time::timeout(CANCEL_WAIT, finished).await;
        match self.log.status() {
            RunStatus::Running | RunStatus::Cancelled => Cancelled::Now,
            other => Cancelled::AlreadyFinished(other),
        }
    }

    /// Hands published events to the run's driver (see
    /// [`crate::hub::HubBackend::publish`]); answers once they are logged.
    pub(crate) async fn publish(
        &self,
        given: Option<Seq>,
        events: Vec<AgentEvent>,
    ) -> Result<Published, HubError> {
        let Some(inbox) = &self.inbox else {
            return Err(HubError::NotPush);
        };
        // Watched before publishing, so the append cannot be missed.
        let mut changed = self.log.watch();
        let accepted = inbox.publish(given, events);
        // Answer once the driver has logged what was accepted (or the
        // run has ended), so that a reader asked next sees it.
        loop {
            let (len, ended) = self.log.position();
            let settled = match accepted {
                Ok(accepted) => ended || len > accepted.offset as usize,
                // Its status is the one the driver is about to log.
                Err(Refused::Ended { .. }) => ended,
                Err(Refused::OffsetMismatch { .. }) => true,
            };
            if settled {
                break;
            }
            changed.changed().await;
        }
        match accepted {
            Ok(accepted) => {
                let (len, ended) = self.log.position();
                if ended && len as u64 <= accepted.offset {
                    // A cancel or a timeout ended the run before the
                    // driver logged all of these: they are not in it.
                    // The end is not the producer's (its own would come
                    // after them), so the run holds all but two entries
                    // as published events: not `run`, not that end.
                    let logged = (len as u64).saturating_sub(2);
                    inbox.settle(logged);
                    return Err(HubError::Finished {
                        status: self.log.status(),
                        offset: logged,
                    });
                }
                Ok(Published {
                    appended: accepted.appended,
                    offset: accepted.offset,
                    status: self.log.status(),
                })
            }
            Err(Refused::OffsetMismatch { given, offset }) => {
                Err(HubError::OffsetMismatch { given, offset })
            }
            Err(Refused::Ended { offset }) => Err(HubError::Finished {
                status: self.log.status(),
                offset,
            }),
        }
    }
}

/// Drives one run's agent stream into its log until a terminal event or a
/// cancel. Dropping the stream on the way out stops the agent's work.
pub(super) async fn drive(
    shared: Arc<Shared>,
    run: Arc<Run>,
    mut events: AgentStream,
    mut recorder: Recorder,
    copies: Option<Copies>,
) {
    let cancelled = run.cancel.clone().cancelled_owned();
    tokio::pin!(cancelled);
    // One timer for the whole run; a far deadline stands for "no limit".
    let limit = shared.max_run.unwrap_or(NO_LIMIT);
    let started = tokio::time::Instant::now();
    // A run that ends when its clients leave first checks, with the same
    // timer, that a client came at all; later leaves are the subscribers'
    // own to report.
    let mut awaiting_first = run.meta.cancel_on_disconnect;
    let first_check = match awaiting_first {
        true => first_subscriber_wait(shared.disconnect_grace).min(limit),
        false => limit,
    };
    let deadline = tokio::time::sleep_until(started + first_check);
    tokio::pin!(deadline);
    loop {
        let entry = tokio::select! {
            biased;
            () = &mut cancelled => if run.lost.load(Ordering::SeqCst) {
                recorder.node_lost()
            } else {
                recorder.cancelled()
            },
            () = &mut deadline => {
                if !awaiting_first {
                    recorder.timed_out(limit)
                } else {
                    awaiting_first = false;
                    deadline.as_mut().reset(started + limit);
                    check_first_subscriber(&run, shared.disconnect_grace).await;
                    continue;
                }
            }
            // A panicking agent ends its run with an error event instead of
            // leaving it running forever with its subscribers waiting.
            event = AssertUnwindSafe(events.next()).catch_unwind() => match event {
                Ok(Some(event)) => recorder.record(event),
                Ok(None) => recorder.ended_early(),
                Err(_) => recorder.panicked(),
            },
        };
        if log_entry(&shared, &run, entry, copies.as_ref()) {
            break;
        }
        // An agent whose stream is always ready (sim at interval 0) would
        // otherwise keep this worker thread from every other task.
        tokio::task::coop::consume_budget().await;
    }
    drop(events);
    tracing::debug!(run_id = %run.meta.id, status = ?run.log.status(), events = recorder.seq(), "run finished");
    shared.finished(&run);
}

/// How long a run that ends when its clients leave waits for its first.
fn first_subscriber_wait(grace: Duration) -> Duration {
    grace.max(FIRST_SUBSCRIBER_WAIT)
}

/// Logs a driven run's entry, hands `copies` its copy, counts its bytes
/// and, for the terminal one, the run's metrics; whether it was that.
pub(super) fn log_entry(shared: &Shared, run: &Run, entry: Entry, copies: Option<&Copies>) -> bool {
    let end = entry.end.clone();
    let copy = copies.map(|_| entry.clone());
    let size = run.log.append(entry);
    if let (Some(copies), Some(copy)) = (copies, copy) {
        // Sent once logged, so that the copy's reader finds the end in the
        // log when the copy is the terminal entry.
        let _ = copies.send(copy);
    }
    shared
        .retained_bytes
        .fetch_add(size as u64, Ordering::Relaxed);
    let Some(end) = end else {
        return false;
    };
    shared
        .metrics
        .run_finished(&run.meta.agent, end.status.as_str(), end.ttft, end.duration);
    true
}

/// The first-subscriber wait of a run that ends when its clients leave is
/// over: with nobody come, here or (asked) elsewhere, it is cancelled.
async fn check_first_subscriber(run: &Arc<Run>, grace: Duration) {
    if run.epoch.load(Ordering::SeqCst) != 0 {
        return;
    }
    if watched_elsewhere(run).await {
        schedule_idle_check(run.clone(), grace);
    } else {
        tracing::info!(run_id = %run.meta.id, "no subscriber came: cancelling");
        run.cancel.cancel();
    }
}

/// Whether subscribers on other nodes watch `run`.
async fn watched_elsewhere(run: &Run) -> bool {
    run.presence.watched_elsewhere(run.meta.id.clone()).await
}

/// Cancels `run` if it still has no subscriber after the disconnect grace
/// and nobody subscribed or left in the meantime.
pub(super) fn schedule_idle_check(run: Arc<Run>, grace: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let epoch = run.epoch.load(Ordering::SeqCst);
    runtime.spawn(async move {
        tokio::time::sleep(grace).await;
        if run.subscribers.load(Ordering::SeqCst) == 0
            && run.epoch.load(Ordering::SeqCst) == epoch
            && run.log.status() == RunStatus::Running
        {
            if watched_elsewhere(&run).await {
                // Its client reconnected to another node: look again later.
                schedule_idle_check(run, grace);
            } else {
                tracing::info!(run_id = %run.meta.id, "no subscriber for the disconnect grace: cancelling");
                run.cancel.cancel();
            }
        }
    });
}
