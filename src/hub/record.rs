//! From agent events to logged frames: sequence numbers, timings, the
//! terminal event. Shared by every backend so runs read the same everywhere.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{rfc3339, RunId, RunMeta, RunStatus, Seq};
use crate::agent::AgentEvent;
use crate::wire::sse;

/// One event ready for a run's log.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The event's SSE frame, sent as is to every subscriber.
    pub frame: Bytes,
    /// The text of a `token` event, kept for snapshots.
    pub token: Option<String>,
    /// Set on the terminal event.
    pub end: Option<RunEnd>,
}

impl Entry {
    /// What the entry is, as a shared hub stores it beside the frame:
    /// `token`, `event` (any other that does not end the run), or the
    /// status the run ends with.
    pub(crate) fn kind(&self) -> &'static str {
        match (&self.end, &self.token) {
            (Some(end), _) => end.status.as_str(),
            (None, Some(_)) => "token",
            (None, None) => "event",
        }
    }

    /// The usage the entry's frame carries: a `done` event's, which an
    /// `error` event has none of.
    pub(crate) fn frame_usage(&self) -> Option<&Value> {
        self.end
            .as_ref()
            .filter(|end| end.status != RunStatus::Error)
            .map(|end| &end.usage)
    }

    /// The entry of a frame stored with its [`Entry::kind`], token text and
    /// [`Entry::frame_usage`]; `None` for a kind this version does not know.
    /// What another node logged reads the same as it did there, less the
    /// timings only the recording node knows.
    pub(crate) fn stored(
        frame: Bytes,
        kind: &str,
        token: Option<String>,
        usage: Option<&str>,
    ) -> Option<Self> {
        let end = |status| {
            let usage = match status {
                RunStatus::Error => json!({}),
                _ => usage
                    .and_then(|u| serde_json::from_str(u).ok())
                    .unwrap_or(Value::Null),
            };
            Some(mirrored_end(status, usage))
        };
        let (token, end) = match kind {
            "token" => (token, None),
            "event" => (None, None),
            "done" => (None, end(RunStatus::Done)),
            "cancelled" => (None, end(RunStatus::Cancelled)),
            "error" => (None, end(RunStatus::Error)),
            _ => return None,
        };
        Some(Self { frame, token, end })
    }

    /// The entry of a bare frame, read back out of its SSE text: for frames
    /// stored without their kind (by a node older than the kind fields).
    pub(crate) fn parse(frame: Bytes) -> Self {
        let (name, data) = sse::parts(&frame);
        let data: Value = data
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let (token, end) = match name {
            Some("token") => (data["text"].as_str().map(str::to_owned), None),
            Some("done") => {
                let status = if data["finish_reason"] == "cancelled" {
                    RunStatus::Cancelled
                } else {
                    RunStatus::Done
                };
                (None, Some(mirrored_end(status, data["usage"].clone())))
            }
            Some("error") => (None, Some(mirrored_end(RunStatus::Error, json!({})))),
            _ => (None, None),
        };
        Self { frame, token, end }
    }

    /// The terminal event of run `run_id` as event `seq`, for a node that
    /// ends the run of another, lost node (whose usage it cannot know).
    pub(crate) fn node_lost(run_id: &RunId, seq: Seq) -> Self {
        let frame = sse::encode(
            run_id.as_str(),
            seq,
            "error",
            &ErrorData {
                code: NODE_LOST,
                message: NODE_LOST_MESSAGE,
            },
        );
        Self {
            frame,
            token: None,
            end: Some(mirrored_end(RunStatus::Error, json!({}))),
        }
    }
}

/// The end of a run recorded elsewhere: without the timings.
fn mirrored_end(status: RunStatus, usage: Value) -> RunEnd {
    RunEnd {
        status,
        usage,
        ttft: None,
        duration: Duration::ZERO,
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    /// `done`, `error` or `cancelled`.
    pub status: RunStatus,
    /// What the terminal event reports of the run's usage.
    pub usage: Value,
    /// Time from the run's start to its first token, if one came.
    pub ttft: Option<Duration>,
    /// Time from the run's start to this end.
    pub duration: Duration,
}

/// Numbers a run's events and measures it.
#[derive(Debug)]
pub struct Recorder {
    run_id: RunId,
    seq: Seq,
    started: Instant,
    first_token: Option<Duration>,
    tokens: u64,
}

#[derive(Serialize)]
struct RunData<'a> {
    run_id: &'a str,
    agent: &'a str,
    created_at: &'a str,
}

#[derive(Serialize)]
struct TokenData<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct DoneData<'a> {
    finish_reason: &'a str,
    usage: &'a Map<String, Value>,
    ttft_ms: Option<f64>,
    duration_ms: f64,
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: &'a str,
    message: &'a str,
}

impl Recorder {
    /// A recorder for `meta`'s run and the run's first event (`run`, seq 1).
    pub fn start(meta: &RunMeta) -> (Self, Entry) {
        let mut recorder = Self {
            run_id: meta.id.clone(),
            seq: 0,
            started: Instant::now(),
            first_token: None,
            tokens: 0,
        };
        let created_at = rfc3339(meta.created_at);
        let frame = recorder.frame(
            "run",
            &RunData {
                run_id: meta.id.as_str(),
                agent: &meta.agent,
                created_at: &created_at,
            },
        );
        (recorder, plain(frame))
    }

    /// A recorder that goes on after `seq` events, `tokens` of them tokens,
    /// the first `first_token` after the run started: for a run that
    /// several processes record in turn (a push run on a shared hub).
    pub(crate) fn resume(
        meta: &RunMeta,
        seq: Seq,
        tokens: u64,
        first_token: Option<Duration>,
    ) -> Self {
        let age = std::time::SystemTime::now()
            .duration_since(meta.created_at)
            .unwrap_or_default();
        Self {
            run_id: meta.id.clone(),
            seq,
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            first_token,
            tokens,
        }
    }

    /// Token events recorded so far.
    pub(crate) fn tokens(&self) -> u64 {
        self.tokens
    }

    /// When the first token came, after the run's start.
    pub(crate) fn first_token(&self) -> Option<Duration> {
        self.first_token
    }

    /// The entry for one agent event.
    pub fn record(&mut self, event: AgentEvent) -> Entry {
        match event {
            AgentEvent::Token(text) => {
                if self.first_token.is_none() {
                    self.first_token = Some(self.started.elapsed());
                }
                self.tokens += 1;
                let frame = self.frame("token", &TokenData { text: &text });
                Entry {
                    frame,
                    token: Some(text),
                    end: None,
                }
            }
            AgentEvent::Other { name, data } => {
                let name = if sse::is_event_name(&name) && !RESERVED.contains(&name.as_str()) {
                    name
                } else {
                    "agent_event".to_owned()
                };
                plain(self.frame(&name, &data))
            }
            AgentEvent::Done {
                finish_reason,
                usage,
            } => self.done(&finish_reason, usage, RunStatus::Done),
            AgentEvent::Error { code, message } => self.error(&code, &message),
        }
    }

    /// The terminal event of a cancelled run.
    pub(crate) fn cancelled(&mut self) -> Entry {
        self.done("cancelled", Map::new(), RunStatus::Cancelled)
    }

    /// The terminal event of an agent stream that ended without one.
    pub(crate) fn ended_early(&mut self) -> Entry {
        self.error("agent_ended", "the agent stopped without finishing the run")
    }

    /// The terminal event of a run that reached `runs.max_run_secs`.
    pub(crate) fn timed_out(&mut self, limit: Duration) -> Entry {
        self.error(
            "run_timeout",
            &format!(
                "the run reached the gateway's limit of {} s",
                limit.as_secs()
            ),
        )
    }

    /// The terminal event of a run whose node stopped before it finished.
    pub(crate) fn node_lost(&mut self) -> Entry {
        self.error(NODE_LOST, NODE_LOST_MESSAGE)
    }

    /// The terminal event of an agent that panicked.
    pub(crate) fn panicked(&mut self) -> Entry {
        self.error("agent_panicked", "the agent failed unexpectedly")
    }

    /// Events recorded so far.
    pub(crate) fn seq(&self) -> Seq {
        self.seq
    }

    fn done(
        &mut self,
        finish_reason: &str,
        mut usage: Map<String, Value>,
        status: RunStatus,
    ) -> Entry {
        if !usage.contains_key("output_tokens") {
            usage.insert("output_tokens".to_owned(), Value::from(self.tokens));
        }
        let frame = self.frame(
            "done",
            &DoneData {
                finish_reason,
                usage: &usage,
                ttft_ms: self.first_token.map(millis),
                duration_ms: millis(self.started.elapsed()),
            },
        );
        Entry {
            frame,
            token: None,
            end: Some(RunEnd {
                status,
                usage: Value::Object(usage),
                ttft: self.first_token,
                duration: self.started.elapsed(),
            }),
        }
    }

    fn error(&mut self, code: &str, message: &str) -> Entry {
        let frame = self.frame("error", &ErrorData { code, message });
        let mut usage = Map::new();
        usage.insert("output_tokens".to_owned(), Value::from(self.tokens));
        Entry {
            frame,
            token: None,
            end: Some(RunEnd {
                status: RunStatus::Error,
                usage: Value::Object(usage),
                ttft: self.first_token,
                duration: self.started.elapsed(),
            }),
        }
    }

    fn frame<T: Serialize + ?Sized>(&mut self, event: &str, data: &T) -> Bytes {
        self.seq += 1;
        sse::encode(self.run_id.as_str(), self.seq, event, data)
    }
}

/// The `error` code of a run whose node stopped or died before it finished.
pub(crate) const NODE_LOST: &str = "node_lost";
/// The `error` message that goes with [`NODE_LOST`].
pub(crate) const NODE_LOST_MESSAGE: &str = "the node running this run stopped before it finished";

/// Event names only Sluice itself may emit.
const RESERVED: &[&str] = &["run", "token", "done", "error"];

fn plain(frame: Bytes) -> Entry {
    Entry {
        frame,
        token: None,
        end: None,
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RunMeta {
        RunMeta::for_test("r1")
    }

    fn text(entry: &Entry) -> String {
        String::from_utf8_lossy(&entry.frame).into_owned()
    }

    #[test]
    fn numbers_events_from_one_and_ends_with_done() {
        let (mut rec, first) = Recorder::start(&meta());
        assert_eq!(
            text(&first),
            "id: r1:1\nevent: run\ndata: {\"run_id\":\"r1\",\"agent\":\"sim\",\"created_at\":\"1970-01-01T00:00:00.000Z\"}\n\n"
        );
        let tok = rec.record(AgentEvent::Token(" hi".into()));
        assert!(text(&tok).starts_with("id: r1:2\nevent: token\ndata: {\"text\":\" hi\"}"));
        assert_eq!(tok.token.as_deref(), Some(" hi"));
        let done = rec.record(AgentEvent::Done {
            finish_reason: "stop".into(),
            usage: Map::new(),
        });
        let t = text(&done);
        assert!(t.starts_with("id: r1:3\nevent: done\ndata: {\"finish_reason\":\"stop\",\"usage\":{\"output_tokens\":1},\"ttft_ms\":"), "{t}");
        assert_eq!(done.end.map(|e| e.status), Some(RunStatus::Done));
    }

    /// A frame read back, from its stored fields or (stored by an older
    /// node) from its text, is the entry it was, less the timings.
    #[test]
    fn entries_read_back_as_they_were_recorded() {
        let (mut rec, first) = Recorder::start(&meta());
        let token = rec.record(AgentEvent::Token(" a\nb".into()));
        let done = rec.cancelled();
        let lost = Entry::node_lost(&meta().id, 4);
        for entry in [first, token, done, lost] {
            let usage = entry.frame_usage().map(Value::to_string);
            let kind = entry.kind();
            let stored = Entry::stored(
                entry.frame.clone(),
                kind,
                entry.token.clone(),
                usage.as_deref(),
            );
            let parsed = Entry::parse(entry.frame.clone());
            for back in [stored.unwrap_or_else(|| parsed.clone()), parsed] {
                assert_eq!(back.frame, entry.frame, "{kind}");
                assert_eq!(back.token, entry.token, "{kind}");
                assert_eq!(
                    back.end.as_ref().map(|e| e.status),
                    entry.end.as_ref().map(|e| e.status)
                );
                assert_eq!(back.frame_usage(), entry.frame_usage(), "{kind}");
            }
        }
        assert!(Entry::stored(Bytes::new(), "later", None, None).is_none());
    }

    #[test]
    fn node_lost_is_an_error_frame_with_its_code() {
        let lost = Entry::node_lost(&meta().id, 7);
        assert_eq!(
            text(&lost),
            "id: r1:7\nevent: error\ndata: {\"code\":\"node_lost\",\"message\":\"the node running this run stopped before it finished\"}\n\n"
        );
    }

    #[test]
    fn cancel_without_tokens_has_null_ttft() {
        let (mut rec, _) = Recorder::start(&meta());
        let t = text(&rec.cancelled());
        assert!(t.contains("\"finish_reason\":\"cancelled\""), "{t}");
        assert!(t.contains("\"ttft_ms\":null"), "{t}");
    }

    #[test]
    fn agent_event_names_cannot_break_the_frame_or_fake_a_terminal() {
        let (mut rec, _) = Recorder::start(&meta());
        for name in ["bad\nname", "done", "error"] {
            let entry = rec.record(AgentEvent::Other {
                name: name.into(),
                data: Value::Null,
            });
            assert!(text(&entry).contains("\nevent: agent_event\n"), "{name:?}");
            assert!(entry.end.is_none());
        }
        let ok = rec.record(AgentEvent::Other {
            name: "tool_call".into(),
            data: serde_json::json!({"name": "f"}),
        });
        assert!(text(&ok).contains("\nevent: tool_call\ndata: {\"name\":\"f\"}\n\n"));
    }
}
