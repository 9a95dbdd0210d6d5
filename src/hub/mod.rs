//! Runs, their event logs, fan-out and retention.
//!
//! The [`Hub`] is what the HTTP layer talks to: start a run from an agent's
//! event stream, subscribe to a run from a cursor, take snapshots, list and
//! cancel. It is a cheap handle around a [`HubBackend`], which
//! [`Hub::connect`] picks from the config, so `http/` names no backend.
//!
//! Both backends are thin around one per-node engine (`node`: the
//! registry, retention, gone ids, each run's driver, the idle check and
//! the subscribers). The in-memory backend ([`memory::MemoryHub`]) is that
//! engine alone; the shared one (`redis`) replicates the runs its node
//! drives to Redis and mirrors the others' into the engine, and asks Redis
//! whether a run is watched on another node (the engine's `Presence`).
//!
//! Every backend records events the same way, through [`record::Recorder`]:
//! each agent event becomes its SSE frame once, and that frame is what is
//! stored and sent to every subscriber.

pub(crate) mod changes;
mod frames;
pub mod log;
pub mod memory;
mod node;
pub mod record;
pub(crate) mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::Serialize;
use serde_json::Value;

use crate::agent::AgentStream;
use crate::config::{Backend, Config, RunsConfig};
use crate::metrics::Metrics;
use crate::wire::{Format, RunHead};

/// A run event's 1-based sequence number: the n-th event has `seq = n`.
pub type Seq = u64;

/// A run's id: 128 random bits as 32 lowercase hex digits. URL-safe, never
/// containing `:`, so `{run_id}:{seq}` splits unambiguously.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(Arc<str>);

impl RunId {
    /// A fresh, unguessable id from the operating system's random source.
    pub fn generate() -> Result<Self, HubError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| HubError::Unavailable(format!("no randomness for a run id: {e}")))?;
        let mut hex = String::with_capacity(32);
        for byte in bytes {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        Ok(Self(hex.into()))
    }

    /// An id given by a client: 1 to 64 characters of `A-Z a-z 0-9 _ -`.
    /// Anything else cannot name a run.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self(text.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({})", self.0)
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Events may still come.
    Running,
    /// The agent finished the run.
    Done,
    /// The run ended with an `error` event.
    Error,
    /// A client cancelled the run.
    Cancelled,
}

impl RunStatus {
    /// The status as the API, the metrics and Redis write it: `running`,
    /// `done`, `error`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status [`RunStatus::as_str`] wrote; anything else is `Running`,
    /// as a run whose hash holds no end yet is.
    pub fn parse(name: &str) -> Self {
        match name {
            "done" => Self::Done,
            "error" => Self::Error,
            "cancelled" => Self::Cancelled,
            _ => Self::Running,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run is, fixed when it starts.
#[derive(Debug, Clone)]
pub struct RunMeta {
    /// The run's id.
    pub id: RunId,
    /// The name of the agent that produces its events.
    pub agent: String,
    /// The agent's model, or its name when it has none: what `format=openai`
    /// chunks name as their `model`.
    pub model: String,
    /// What the run was asked.
    pub prompt: String,
    /// When it started.
    pub created_at: SystemTime,
    /// The AI SDK chat the run answers (`POST /api/chat`), if any: the
    /// chat's latest run is found by it.
    pub chat: Option<String>,
    /// Cancel the run once it has had no subscriber for the disconnect grace
    /// (the one-shot route, or `"cancel_on_disconnect": true`).
    pub cancel_on_disconnect: bool,
    /// The name of the key that started the run; `None` when auth is off.
    /// Only callers with the same key see the run.
    pub owner: Option<String>,
}

#[cfg(test)]
impl RunMeta {
    /// A `sim` run named `id`, made at the epoch: what unit tests need.
    pub(crate) fn for_test(id: &str) -> Self {
        Self {
            id: RunId::parse(id).unwrap(),
            agent: "sim".into(),
            model: "sim".into(),
            prompt: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            chat: None,
            cancel_on_disconnect: false,
            owner: None,
        }
    }
}

impl RunMeta {
    /// What a wire format needs to know of the run.
    pub fn head(&self) -> RunHead {
        RunHead {
            run_id: self.id.to_string(),
            model: self.model.clone(),
            created: self
                .created_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// A run as `GET /api/runs/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSnapshot {
    /// The run's id.
    pub id: RunId,
    /// The name of its agent.
    pub agent: String,
    /// What it was asked.
    pub prompt: String,
    /// Where it is in its life.
    pub status: RunStatus,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When it ended (RFC 3339), once it has.
    pub finished_at: Option<String>,
    /// How many events the run has logged so far.
    pub events: u64,
    /// All token text so far; left out of listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The usage its terminal event reported, once it has ended.
    pub usage: Option<Value>,
}

impl Serialize for RunId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// What a subscriber writes at once: one or more whole SSE frames,
/// everything that was ready when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The frames, concatenated.
    pub bytes: Bytes,
    /// How many events `bytes` holds.
    pub events: u64,
    /// Events that were ready beyond the first when it was read: how far
    /// behind the subscriber was (0 when it keeps up).
    pub lag: u64,
}

/// Whose runs a request may see: the caller's key name (`None` when auth is
/// off). A run is visible when its owner equals the viewer.
pub type Viewer = Option<String>;

/// A subscriber's chunks, ending after the terminal event.
pub type Subscription = BoxStream<'static, Chunk>;

/// The answer to a subscription request.
pub enum Resume {
    /// Events follow (retained first, then live).
    Events(Subscription),
    /// The run has finished and nothing follows the cursor: `204`.
    Finished,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The run was running and is now cancelled.
    Now,
    /// The run had already finished with this status.
    AlreadyFinished(RunStatus),
}

/// Why the hub could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    /// No such run, or another owner's.
    #[error("unknown run")]
    NotFound,
    /// The run existed but has been evicted.
    #[error("the run's events are no longer retained")]
    Gone,
    /// A resume cursor past the run's last event.
    #[error("event {after} is beyond the run's last event ({last})")]
    BeyondEnd {
        /// The cursor asked for.
        after: Seq,
        /// The run's last event.
        last: Seq,
    },
    /// The shared hub cannot be reached (a `503`).
    #[error("hub unavailable: {0}")]
    Unavailable(String),
    /// Events were published to a run that is not a push run.
    #[error("the run is not a push run: its agent produces its events")]
    NotPush,
    /// A publish's `Sluice-Offset` is beyond what the run holds.
    #[error("Sluice-Offset {given} is beyond the run's offset {offset}: publish from {offset}")]
    OffsetMismatch {
        /// The offset the producer sent.
        given: Seq,
        /// The events the run holds.
        offset: Seq,
    },
    /// A publish to a run that has ended.
    #[error("the run has ended ({status:?}); nothing more can be published to it")]
    Finished {
        /// How the run ended.
        status: RunStatus,
        /// The events published to it.
        offset: Seq,
    },
}

/// What a publish to a push run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Published {
    /// Events appended by this publish.
    pub appended: u64,
    /// Events published to the run so far.
    pub offset: u64,
    /// The run's status after it.
    pub status: RunStatus,
}

/// A place where runs live. Methods are called once per request, never per
/// event: the per-event path stays inside the backend.
pub trait HubBackend: Send + Sync + 'static {
    /// Log the run's `run` event and drive `events` to the end in the background.
    fn start(&self, meta: RunMeta, events: AgentStream) -> BoxFuture<'_, Result<(), HubError>>;
    /// The run's events after `after` (0: from the first), then live ones,
    /// in `format`. Runs of another owner than `viewer` are `NotFound`, as
    /// for every method.
    fn subscribe(
        &self,
        id: RunId,
        after: Seq,
        format: Format,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Resume, HubError>>;
    /// The run as it is now, with its text.
    fn snapshot(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<RunSnapshot, HubError>>;
    /// Up to `limit` of the viewer's runs, newest first, without text.
    fn list(
        &self,
        limit: usize,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Vec<RunSnapshot>, HubError>>;
    /// Cancel a running run; waits briefly until its terminal event is logged.
    fn cancel(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<Cancelled, HubError>>;
    /// Starts a push run (SPEC 12): it has no agent of its own; its events
    /// come from [`HubBackend::publish`], and after `idle_timeout` without
    /// one it ends with `error producer_timeout`.
    fn start_push(
        &self,
        meta: RunMeta,
        idle_timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<(), HubError>>;
    /// Appends published events to push run `id`, exactly once: with
    /// `given` (how many events the producer had published before these),
    /// events the run holds already are skipped and a gap is refused.
    /// Answers once the events are logged.
    fn publish(
        &self,
        id: RunId,
        viewer: Viewer,
        given: Option<Seq>,
        events: Vec<crate::agent::AgentEvent>,
    ) -> BoxFuture<'_, Result<Published, HubError>>;
    /// Resolves with run `id`'s status once it has ended.
    fn ended(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<RunStatus, HubError>>;
    /// The latest run of the viewer's AI SDK chat `chat`, while it is retained.
    fn chat_run(
        &self,
        chat: String,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Option<RunId>, HubError>>;
    /// Runs of this node that are still running.
    fn running(&self) -> usize;
    /// Runs of `owner` that are still running.
    fn running_for(&self, owner: &Viewer) -> usize;
    /// The node stops: runs it cannot finish end (a shared hub writes
    /// `error node_lost` for them, so other nodes' subscribers see an end).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The handle the HTTP layer holds: cheap to clone, shared by all requests.
#[derive(Clone)]
pub struct Hub {
    backend: Arc<dyn HubBackend>,
}

impl Hub {
    /// A hub around any backend.
    pub fn new(backend: impl HubBackend) -> Self {
        Self {
            backend: Arc::new(backend),
        }
    }

    /// The in-memory hub for `config`'s runs. Needs a tokio runtime.
    pub fn in_memory(config: &RunsConfig, metrics: Arc<Metrics>) -> Self {
        Self::new(memory::MemoryHub::new(config, metrics))
    }

    /// The hub `config.hub.backend` names: in memory, or shared through
    /// the Redis at `config.hub.url`, which must answer now.
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Self, HubError> {
        Ok(match config.hub.backend {
            Backend::Memory => Self::in_memory(&config.runs, metrics),
            Backend::Redis => Self::new(redis::RedisHub::connect(config, metrics).await?),
        })
    }

    /// Starts a run driven by `events` (see [`HubBackend::start`]).
    pub async fn start(&self, meta: RunMeta, events: AgentStream) -> Result<(), HubError> {
        self.backend.start(meta, events).await
    }

    /// A run's events after `after` (see [`HubBackend::subscribe`]).
    pub async fn subscribe(
        &self,
        id: RunId,
        after: Seq,
        format: Format,
        viewer: Viewer,
    ) -> Result<Resume, HubError> {
        self.backend.subscribe(id, after, format, viewer).await
    }

    /// Starts a push run (see [`HubBackend::start_push`]).
    pub async fn start_push(
        &self,
        meta: RunMeta,
        idle_timeout: std::time::Duration,
    ) -> Result<(), HubError> {
        self.backend.start_push(meta, idle_timeout).await
    }

    /// Appends published events to a push run (see [`HubBackend::publish`]).
    pub async fn publish(
        &self,
        id: RunId,
        viewer: Viewer,
        given: Option<Seq>,
        events: Vec<crate::agent::AgentEvent>,
    ) -> Result<Published, HubError> {
        self.backend.publish(id, viewer, given, events).await
    }

    /// Resolves with a run's status once it has ended.
    pub async fn ended(&self, id: RunId, viewer: Viewer) -> Result<RunStatus, HubError> {
        self.backend.ended(id, viewer).await
    }

    /// The latest run of the viewer's AI SDK chat `chat`, while retained.
    pub async fn chat_run(&self, chat: String, viewer: Viewer) -> Result<Option<RunId>, HubError> {
        self.backend.chat_run(chat, viewer).await
    }

    /// A run as it is now, with its text.
    pub async fn snapshot(&self, id: RunId, viewer: Viewer) -> Result<RunSnapshot, HubError> {
        self.backend.snapshot(id, viewer).await
    }

    /// Up to `limit` of the viewer's runs, newest first, without text.
    pub async fn list(&self, limit: usize, viewer: Viewer) -> Result<Vec<RunSnapshot>, HubError> {
        self.backend.list(limit, viewer).await
    }

    /// Cancels a running run.
    pub async fn cancel(&self, id: RunId, viewer: Viewer) -> Result<Cancelled, HubError> {
        self.backend.cancel(id, viewer).await
    }

    /// Runs of this node that are still running.
    pub fn running(&self) -> usize {
        self.backend.running()
    }

    /// Runs of `owner` on this node that are still running.
    pub fn running_for(&self, owner: &Viewer) -> usize {
        self.backend.running_for(owner)
    }

    /// Ends what this node cannot finish, before it stops.
    pub async fn shutdown(&self) {
        self.backend.shutdown().await;
    }
}

/// RFC 3339 with milliseconds, UTC: how every timestamp is shown.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_url_safe_unique_and_parse_back() {
        let a = RunId::generate().ok();
        let b = RunId::generate().ok();
        assert!(a.is_some() && a != b);
        let a = a.unwrap_or_else(|| RunId("x".into()));
        assert_eq!(a.as_str().len(), 32);
        assert!(!a.as_str().contains(':'));
        assert_eq!(RunId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn client_ids_are_checked() {
        for bad in ["", "a:b", "a b", "a/b", "ä", &"a".repeat(65)] {
            assert_eq!(RunId::parse(bad), None, "{bad:?}");
        }
    }
}
