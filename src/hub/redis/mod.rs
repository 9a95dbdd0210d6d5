//! The shared hub: Redis Streams, so that several nodes serve the same runs.
//!
//! A run executes on the node that started it, in that node's
//! [`MemoryHub`]: its local subscribers read the local log as usual. A
//! replicator task per run appends the run's frames, as encoded once, to
//! the run's Redis stream (`XADD` with explicit ids `{seq}-0`, pipelined,
//! whatever is ready at once), and its metadata to a hash. A node asked for
//! a run it does not drive loads the retained frames into a local mirror
//! and follows the stream with `XREAD BLOCK` on a connection of its own
//! (a blocking read on the shared connection would stall every other
//! command); its subscribers then read the mirror like any local run.
//!
//! Keys (all under `sluice:`): `run:{id}` (hash), `run:{id}:ev` (stream),
//! `run:{id}:watch` (hash: subscribers per node), `run:{id}:reaped` (the
//! node that ended a lost run), `runs` (sorted set by
//! creation time), `running` (set), `node:{node}` (the node's lease),
//! `gone:{id}` (an evicted run's owner, for `410`),
//! `chat:{owner length}:{owner}:{chat id}` (an AI SDK chat's latest run),
//! and the pub/sub channel `cancel`.

mod push;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio_util::task::TaskTracker;

use super::node::{Node, Presence, Run};
use super::record::{Entry, Recorder, RunEnd, NODE_LOST, NODE_LOST_MESSAGE};
use super::{
    rfc3339, Cancelled, HubBackend, HubError, Published, Resume, RunId, RunMeta, RunSnapshot,
    RunStatus, Seq, Viewer,
};
use crate::agent::AgentStream;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::wire::sse;
use crate::wire::Format;

/// A run's stream keeps at most about this many events (`MAXLEN ~`).
const MAX_EVENTS: usize = 1_000_000;
/// Frames sent in one pipeline at most.
const BATCH: usize = 1_000;
/// How long one `XREAD BLOCK` waits before it looks again.
const BLOCK_MS: u64 = 5_000;
/// The longest wait between attempts while Redis is unreachable.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a request waits for Redis before answering 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `DELETE` of a run on another node waits for its terminal event.
const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// How long an evicted run's id answers `410` rather than `404`.
const GONE_SECS: u64 = 24 * 60 * 60;
const CANCEL_CHANNEL: &str = "sluice:cancel";
const RUNS: &str = "sluice:runs";
const RUNNING: &str = "sluice:running";

/// Waits between attempts while Redis is unreachable: from 100 ms,
/// doubling up to [`BACKOFF_MAX`]; from the start again once one works.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new() -> Self {
        Self(Self::FIRST)
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }
}

pub(crate) fn run_key(id: &RunId) -> String {
    format!("sluice:run:{id}")
}

fn events_key(id: &RunId) -> String {
    format!("sluice:run:{id}:ev")
}

fn watch_key(id: &RunId) -> String {
    format!("sluice:run:{id}:watch")
}

fn gone_key(id: &RunId) -> String {
    format!("sluice:gone:{id}")
}

/// Claimed by the node that ends a lost run, so that only one does.
fn reaped_key(id: &RunId) -> String {
    format!("sluice:run:{id}:reaped")
}

/// The owner's length first, so that no owner and chat id pair can be
/// read as another.
fn chat_key(owner: &Viewer, chat: &str) -> String {
    let owner = owner_field(owner);
    format!("sluice:chat:{}:{owner}:{chat}", owner.len())
}

fn node_key(node: &str) -> String {
    format!("sluice:node:{node}")
}

/// How an owner is stored: empty when auth is off, `k:{name}` otherwise.
pub(crate) fn owner_field(owner: &Viewer) -> String {
    owner
        .as_ref()
        .map_or_else(String::new, |name| format!("k:{name}"))
}

fn unavailable(e: impl std::fmt::Display) -> HubError {
    HubError::Unavailable(format!("the shared hub (Redis) is unreachable: {e}"))
}

/// A client of the Redis at `url` and a managed connection to it, which
/// reconnects quickly after an outage and never waits forever on a
/// connection that died without saying so. The hub and the webhook store
/// each open one.
pub(crate) async fn open(url: &str) -> Result<(redis::Client, ConnectionManager), HubError> {
    let client = redis::Client::open(url).map_err(unavailable)?;
    let manager = redis::aio::ConnectionManagerConfig::new()
        .set_factor(100)
        .set_exponent_base(2)
        .set_max_delay(1_000)
        .set_number_of_retries(3)
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(REQUEST_TIMEOUT);
    let conn = bounded(ConnectionManager::new_with_config(client.clone(), manager)).await?;
    Ok((client, conn))
}

/// Runs `command` against Redis, or fails with `Unavailable` in bounded time.
pub(crate) async fn bounded<T>(
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, HubError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable("no answer in time")),
    }
}

/// A frame from Redis as a log entry: its token text, and how the run
/// ended if it is the terminal event.
fn entry_of(frame: Bytes) -> Entry {
    let (name, data) = sse::parts(&frame);
    let data: Value = data
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let end = |status, usage| {
        Some(RunEnd {
            status,
            usage,
            ttft: None,
            duration: Duration::ZERO,
        })
    };
    let (token, end) = match name {
        Some("token") => (data["text"].as_str().map(str::to_owned), None),
        Some("done") => {
            let status = if data["finish_reason"] == "cancelled" {
                RunStatus::Cancelled
            } else {
                RunStatus::Done
            };
            (None, end(status, data["usage"].clone()))
        }
        Some("error") => (None, end(RunStatus::Error, json!({}))),
        _ => (None, None),
    };
    Entry { frame, token, end }
}

/// `{seq}-0` back to `seq`.
fn seq_of(entry_id: &str) -> Seq {
    entry_id
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

type StreamEntries = Vec<(String, Vec<Vec<u8>>)>;

/// The frames of stream entries (`f` fields), with their seqs.
fn frames_of(entries: StreamEntries) -> Vec<(Seq, Bytes)> {
    entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if name == b"f" {
                    return Some((seq_of(&id), Bytes::from(value)));
                }
            }
            None
        })
        .collect()
}

/// Subscribers that other nodes count in Redis, for the disconnect grace.
struct Watchers {
    conn: ConnectionManager,
    /// This node's name: its own count is not "elsewhere".
    node: String,
}

impl Presence for Watchers {
    /// Whether subscribers on other, live nodes watch run `id`. On Redis
    /// trouble the answer is yes: a run is not cancelled for an outage.
    fn watched_elsewhere(&self, id: RunId) -> BoxFuture<'_, bool> {
        async move {
            let mut conn = self.conn.clone();
            let Ok(counts) = bounded(conn.hgetall::<_, HashMap<String, i64>>(watch_key(&id))).await
            else {
                return true;
            };
            for (node, count) in counts {
                if node == self.node || count <= 0 {
                    continue;
                }
                match bounded(conn.exists::<_, bool>(node_key(&node))).await {
                    Ok(false) => {}
                    Ok(true) | Err(_) => return true,
                }
            }
            false
        }
        .boxed()
    }
}

/// The [`HubBackend`] shared by several nodes through Redis.
#[derive(Clone)]
pub struct RedisHub {
    inner: Arc<Inner>,
}

struct Inner {
    /// The runs of this node: driven here, or mirrored from others.
    local: Node,
    client: redis::Client,
    conn: ConnectionManager,
    /// The node's writer: the writes of every run, batched (see [`write`]).
    writer: tokio::sync::mpsc::UnboundedSender<Write>,
    /// This process's random name, under which it holds its lease.
    node: String,
    lease: Duration,
    retention: Duration,
    /// How long a run's id stays in the `runs` index: its retention after a
    /// run as long as `max_run_secs` allows (a day when unlimited).
    index_for: Duration,
    /// Replicators and followers, so shutdown can wait for the last frames.
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    /// `runs.disconnect_grace_secs`, which push runs made with
    /// `cancel_on_disconnect` are held to by every node's idle watch.
    disconnect_grace: Duration,
    /// `runs.max_run_secs`, which push runs (driven by no node) are held to
    /// by every node's idle watch.
    max_run: Option<Duration>,
}

impl RedisHub {
    /// Connects to `config.hub.url` and starts this node's lease, its
    /// cancel listener and its watch for runs of dead nodes.
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Self, HubError> {
        let (client, conn) = open(&config.hub.url).await?;
        let node = RunId::generate()?.to_string();
        let lease = Duration::from_secs(config.hub.lease_secs.max(1));
        let presence = Watchers {
            conn: conn.clone(),
            node: node.clone(),
        };
        let local = Node::new(&config.runs, metrics.clone(), Arc::new(presence));
        let (writer, writes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write(conn.clone(), writes));
        let inner = Arc::new(Inner {
            local,
            client,
            conn,
            writer,
            node,
            lease,
            retention: config.runs.retention(),
            index_for: config.runs.retention()
                + config
                    .runs
                    .max_run()
                    .unwrap_or(Duration::from_secs(GONE_SECS)),
            tasks: TaskTracker::new(),
            metrics,
            disconnect_grace: config.runs.disconnect_grace(),
            max_run: config.runs.max_run(),
        });
        inner.renew_lease().await?;
        tokio::spawn(keep_lease(Arc::downgrade(&inner)));
        tokio::spawn(listen_for_cancels(Arc::downgrade(&inner)));
        tokio::spawn(reap_lost_runs(Arc::downgrade(&inner)));
        tokio::spawn(push::watch_idle_push_runs(Arc::downgrade(&inner)));
        tracing::info!(node = %inner.node, url = %config.hub.url, "shared hub: Redis");
        Ok(Self { inner })
    }
}

impl Inner {
    async fn renew_lease(&self) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let millis = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        bounded(conn.pset_ex::<_, _, ()>(node_key(&self.node), 1, millis)).await
    }

    /// The run's metadata from Redis, if `viewer` may see it.
    async fn load_meta(&self, id: &RunId, viewer: &Viewer) -> Result<Stored, HubError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = bounded(conn.hgetall(run_key(id))).await?;
        if fields.is_empty() {
            let gone: Option<String> = bounded(conn.get(gone_key(id))).await?;
            return Err(match gone {
                Some(owner) if owner == owner_field(viewer) => HubError::Gone,
                _ => HubError::NotFound,
            });
        }
        let stored = Stored::from_fields(id, fields);
        if stored.owner != owner_field(viewer) {
            return Err(HubError::NotFound);
        }
        Ok(stored)
    }

    /// Subscribers of mirrored runs on this node, as other nodes see them.
    async fn count_watcher(&self, id: &RunId, by: i64) {
        let mut conn = self.conn.clone();
        let key = watch_key(id);
        let secs = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        let _ = bounded(
            redis::pipe()
                .hincr(&key, &self.node, by)
                .ignore()
                .expire(&key, secs.max(60))
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await;
    }

    /// Every frame Redis retains of run `id`, with its seq.
    async fn retained_frames(&self, id: &RunId) -> Result<Vec<(Seq, Bytes)>, HubError> {
        let mut conn = self.conn.clone();
        let entries: StreamEntries = bounded(
            redis::cmd("XRANGE")
                .arg(events_key(id))
                .arg("-")
                .arg("+")
                .query_async(&mut conn),
        )
        .await?;
        Ok(frames_of(entries))
    }

    /// The commands that record a run's end: its status, when, its usage;
    /// out of `running`; expiry after the retention; its id remembered as
    /// gone for a day after that. The owner and any node reaping a lost
    /// run write the same.
    fn end_commands(
        &self,
        id: &RunId,
        status: RunStatus,
        finished: SystemTime,
        usage: String,
        owner: String,
    ) -> Vec<redis::Cmd> {
        let secs = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        vec![
            redis::Cmd::hset_multiple(
                run_key(id),
                &[
                    ("status", status.as_str().to_owned()),
                    ("finished", rfc3339(finished)),
                    ("usage", usage),
                ],
            ),
            redis::Cmd::srem(RUNNING, id.as_str()),
            redis::Cmd::expire(run_key(id), secs),
            redis::Cmd::expire(events_key(id), secs),
            redis::Cmd::set_ex(gone_key(id), owner, self.retention.as_secs() + GONE_SECS),
        ]
    }

    /// A local copy of a run another node drives: its retained frames now,
    /// then a follower for the rest.
    async fn mirror(self: &Arc<Self>, stored: Stored) -> Result<Arc<Run>, HubError> {
        let id = stored.meta.id.clone();
        let frames = self.retained_frames(&id).await?;
        if frames.first().is_some_and(|(seq, _)| *seq != 1) {
            // The stream was trimmed: its start is no longer retained.
            return Err(HubError::Gone);
        }
        let last = frames.last().map_or(0, |(seq, _)| *seq);
        let entries: Vec<Entry> = frames.into_iter().map(|(_, f)| entry_of(f)).collect();
        let ended = entries.last().is_some_and(|e| e.end.is_some());
        let (run, created) = self.local.mirror(stored.meta, entries);
        if created && !ended {
            self.tasks.spawn(follow(
                Arc::downgrade(self),
                self.local.clone(),
                run.clone(),
                last,
            ));
        }
        Ok(run)
    }
}

/// Commands of one run for the node's writer, and where to say how it went.
struct Write {
    commands: Vec<redis::Cmd>,
    done: tokio::sync::oneshot::Sender<Result<(), HubError>>,
}

impl Inner {
    /// Sends `commands` with the node's next batch; waits until Redis has
    /// answered, within the request timeout.
    async fn submit(&self, commands: Vec<redis::Cmd>) -> Result<(), HubError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send(Write { commands, done })
            .map_err(|_| unavailable("the node's writer has stopped"))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable("the node's writer has stopped")),
            Err(_) => Err(unavailable("no answer in time")),
        }
    }
}

/// The node's writer: whatever runs have submitted while the previous batch
/// was on its way goes to Redis as one pipeline, one round trip for many
/// runs' events. Each submitter then hears whether the batch went through;
/// on an error it looks at what Redis has and tries again.
async fn write(
    mut conn: ConnectionManager,
    mut writes: tokio::sync::mpsc::UnboundedReceiver<Write>,
) {
    const MAX_BATCH: usize = 4_096;
    while let Some(first) = writes.recv().await {
        let mut batch = vec![first];
        let mut commands = batch[0].commands.len();
        while commands < MAX_BATCH {
            match writes.try_recv() {
                Ok(write) => {
                    commands += write.commands.len();
                    batch.push(write);
                }
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        let mut waiting = Vec::with_capacity(batch.len());
        for write in batch {
            for command in write.commands {
                pipe.add_command(command).ignore();
            }
            waiting.push(write.done);
        }
        let result = bounded(pipe.query_async::<()>(&mut conn)).await;
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}

/// A run as Redis holds it.
struct Stored {
    meta: RunMeta,
    owner: String,
    status: RunStatus,
    finished: Option<String>,
    usage: Option<Value>,
    /// A push run's producer state; `None` for runs a node drives.
    producer: Option<push::Producer>,
}

impl Stored {
    fn from_fields(id: &RunId, mut fields: HashMap<String, String>) -> Self {
        let producer = push::Producer::from_fields(&mut fields);
        let mut take = |name: &str| fields.remove(name).unwrap_or_default();
        let owner = take("owner");
        let created_ms: u64 = take("created_ms").parse().unwrap_or(0);
        let finished = Some(take("finished")).filter(|f| !f.is_empty());
        let usage = serde_json::from_str(&take("usage")).ok();
        Self {
            meta: RunMeta {
                id: id.clone(),
                agent: take("agent"),
                model: take("model"),
                prompt: take("prompt"),
                created_at: UNIX_EPOCH + Duration::from_millis(created_ms),
                chat: Some(take("chat")).filter(|chat| !chat.is_empty()),
                cancel_on_disconnect: take("cod") == "1",
                owner: owner.strip_prefix("k:").map(str::to_owned),
            },
            owner,
            status: RunStatus::parse(&take("status")),
            finished,
            usage,
            producer,
        }
    }

    fn snapshot(self, events: u64, text: Option<String>) -> RunSnapshot {
        RunSnapshot {
            id: self.meta.id,
            agent: self.meta.agent,
            prompt: self.meta.prompt,
            status: self.status,
            created_at: rfc3339(self.meta.created_at),
            finished_at: self.finished,
            events,
            text,
            usage: self.usage,
        }
    }
}

/// Appends a run's frames to its Redis stream as they are logged here, and
/// its end to its hash. On Redis trouble it waits and resumes from what
/// Redis last acknowledged; the frames stay in the local log meanwhile.
async fn replicate(inner: Arc<Inner>, run: Arc<Run>) {
    let id = run.meta().id.clone();
    let (run_key, events_key) = (run_key(&id), events_key(&id));
    let mut changed = run.log().watch();
    let mut conn = inner.conn.clone();
    let mut cursor = 0usize;
    let mut backoff = Backoff::new();
    loop {
        let (frames, last) = run.log().frames(cursor, BATCH);
        if frames.is_empty() {
            changed.changed().await;
            continue;
        }
        let mut commands: Vec<redis::Cmd> = frames
            .iter()
            .enumerate()
            .map(|(i, frame)| {
                let mut xadd = redis::cmd("XADD");
                xadd.arg(&events_key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(MAX_EVENTS)
                    .arg(format!("{}-0", cursor + i + 1))
                    .arg("f")
                    .arg(frame.as_ref());
                xadd
            })
            .collect();
        if last {
            let summary = run.log().summary(false);
            commands.extend(inner.end_commands(
                &id,
                summary.status,
                summary.finished_at.unwrap_or_else(SystemTime::now),
                summary.usage.map(|u| u.to_string()).unwrap_or_default(),
                owner_field(&run.meta().owner),
            ));
        }
        match inner.submit(commands).await {
            Ok(()) => {
                cursor += frames.len();
                backoff.reset();
                if last {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(run_id = %id, "cannot write to Redis, retrying: {e}");
                backoff.wait().await;
                // Some of the batch may have landed: go on from what Redis has.
                if let Ok(seq) = last_seq(&mut conn, &events_key).await {
                    cursor = usize::try_from(seq).unwrap_or(cursor);
                }
                // Another node ended the run (its lease looked lost): this
                // node's copy ends the same way, and writes no more.
                let status: redis::RedisResult<Option<String>> =
                    conn.hget(&run_key, "status").await;
                if let Ok(Some(status)) = status {
                    if status != RunStatus::Running.as_str() {
                        tracing::warn!(run_id = %id, "another node ended this run: stopping it here");
                        run.lose();
                        return;
                    }
                }
            }
        }
    }
}

/// The seq of the newest entry of a stream (0 when it has none).
async fn last_seq(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<Seq> {
    let newest: StreamEntries = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(newest.first().map_or(0, |(id, _)| seq_of(id)))
}

/// Feeds a mirror from its run's stream, after event `last`, until the
/// terminal event, on a connection of its own.
async fn follow(inner: std::sync::Weak<Inner>, local: Node, run: Arc<Run>, mut last: Seq) {
    let id = run.meta().id.clone();
    let key = events_key(&id);
    let mut backoff = Backoff::new();
    let mut conn = None;
    loop {
        let Some(hub) = inner.upgrade() else {
            return;
        };
        if conn.is_none() {
            match hub.client.get_multiplexed_async_connection().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(run_id = %id, "cannot follow the run yet: {e}");
                    drop(hub);
                    backoff.wait().await;
                    continue;
                }
            }
        }
        drop(hub);
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let read: redis::RedisResult<Option<Vec<(String, StreamEntries)>>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&key)
            .arg(format!("{last}-0"))
            .query_async(c)
            .await;
        match read {
            Ok(streams) => {
                backoff.reset();
                for (_, entries) in streams.unwrap_or_default() {
                    for (seq, frame) in frames_of(entries) {
                        if seq != last + 1 {
                            continue;
                        }
                        last = seq;
                        let entry = entry_of(frame);
                        let end = entry.end.is_some();
                        local.feed(&run, entry);
                        if end {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(run_id = %id, "following the run: {e}");
                conn = None;
                backoff.wait().await;
            }
        }
    }
}

async fn keep_lease(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(hub) = inner.upgrade() else {
            return;
        };
        let every = hub.lease / 3;
        if let Err(e) = hub.renew_lease().await {
            tracing::warn!("cannot renew this node's lease: {e}");
        }
        drop(hub);
        tokio::time::sleep(every).await;
    }
}

/// Cancels runs of this node that a `DELETE` on any node asked to cancel.
async fn listen_for_cancels(inner: std::sync::Weak<Inner>) {
    let mut backoff = Backoff::new();
    loop {
        let Some(client) = inner.upgrade().map(|hub| hub.client.clone()) else {
            return;
        };
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::debug!("cannot listen for cancels yet: {e}");
                backoff.wait().await;
                continue;
            }
        };
        if pubsub.subscribe(CANCEL_CHANNEL).await.is_err() {
            backoff.wait().await;
            continue;
        }
        backoff.reset();
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Some(hub) = inner.upgrade() else {
                return;
            };
            let Some(id) = message
                .get_payload::<String>()
                .ok()
                .and_then(|p| RunId::parse(&p))
            else {
                continue;
            };
            if let Some(run) = hub.local.driven(&id) {
                tokio::spawn(async move { run.cancel().await });
            }
        }
    }
}

/// Ends with `error node_lost` the runs whose node's lease has expired:
/// every node looks, the first to claim a run writes its end. A node whose
/// lease is missing gets one more lease period, as this node sees it,
/// before its runs are ended: after a Redis outage, every lease is missing
/// until its owner renews it.
async fn reap_lost_runs(inner: std::sync::Weak<Inner>) {
    let mut missing: HashMap<String, std::time::Instant> = HashMap::new();
    loop {
        let Some(hub) = inner.upgrade() else {
            return;
        };
        let every = (hub.lease / 2).max(Duration::from_millis(500));
        if let Err(e) = hub.reap_once(&mut missing).await {
            tracing::debug!("looking for runs of lost nodes: {e}");
        }
        drop(hub);
        tokio::time::sleep(every).await;
    }
}

impl Inner {
    async fn reap_once(
        &self,
        missing: &mut HashMap<String, std::time::Instant>,
    ) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let running: Vec<String> = bounded(conn.smembers(RUNNING)).await?;
        let now = std::time::Instant::now();
        let mut still_missing = HashMap::new();
        for id in running.iter().filter_map(|id| RunId::parse(id)) {
            let node: Option<String> = bounded(conn.hget(run_key(&id), "node")).await?;
            let Some(node) = node else {
                let _: () = bounded(conn.srem(RUNNING, id.as_str())).await?;
                continue;
            };
            if node == self.node || bounded(conn.exists::<_, bool>(node_key(&node))).await? {
                continue;
            }
            let since = *missing.get(&node).unwrap_or(&now);
            still_missing.insert(node.clone(), since);
            if now.duration_since(since) < self.lease {
                continue;
            }
            let claim: Option<String> = bounded(
                redis::cmd("SET")
                    .arg(reaped_key(&id))
                    .arg(&self.node)
                    .arg("NX")
                    .arg("EX")
                    .arg(60)
                    .query_async(&mut conn),
            )
            .await?;
            if claim.is_none() {
                continue;
            }
            let events_key = events_key(&id);
            let seq = bounded(last_seq(&mut conn, &events_key)).await? + 1;
            let frame = sse::encode(
                id.as_str(),
                seq,
                "error",
                &json!({"code": NODE_LOST, "message": NODE_LOST_MESSAGE}),
            );
            let owner: Option<String> = bounded(conn.hget(run_key(&id), "owner")).await?;
            tracing::warn!(run_id = %id, node = %node, "the run's node is gone: ending it with node_lost");
            let mut pipe = redis::pipe();
            pipe.cmd("XADD")
                .arg(&events_key)
                .arg(format!("{seq}-0"))
                .arg("f")
                .arg(frame.as_ref())
                .ignore();
            for command in self.end_commands(
                &id,
                RunStatus::Error,
                SystemTime::now(),
                "{}".to_owned(),
                owner.unwrap_or_default(),
            ) {
                pipe.add_command(command).ignore();
            }
            bounded(pipe.query_async::<()>(&mut conn)).await?;
        }
        *missing = still_missing;
        Ok(())
    }
}

impl Inner {
    /// The commands that make a run known to every node before its first
    /// event: its hash, the index, the running set, its chat.
    /// A push run (`push`: its idle timeout) belongs to no node: it goes
    /// to the `pushing` set instead of `running`, with its producer state.
    fn start_commands(&self, meta: &RunMeta, push: Option<Duration>) -> Vec<redis::Cmd> {
        let created_ms = meta
            .created_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let id = meta.id.clone();
        let mut commands = Vec::new();
        if let Some(chat) = &meta.chat {
            commands.push(redis::Cmd::set_ex(
                chat_key(&meta.owner, chat),
                id.as_str(),
                self.index_for.as_secs(),
            ));
        }
        let node = if push.is_some() {
            String::new()
        } else {
            self.node.clone()
        };
        let mut fields = vec![
            ("agent", meta.agent.clone()),
            ("model", meta.model.clone()),
            ("chat", meta.chat.clone().unwrap_or_default()),
            ("prompt", meta.prompt.clone()),
            ("owner", owner_field(&meta.owner)),
            ("created_ms", created_ms.to_string()),
            ("node", node),
            (
                "cod",
                if meta.cancel_on_disconnect { "1" } else { "0" }.into(),
            ),
            ("status", RunStatus::Running.as_str().to_owned()),
        ];
        fields.extend(push.map(push::Producer::start_fields).unwrap_or_default());
        // Known to every node before its first event, or not started:
        // with Redis down, new runs are refused.
        commands.extend([
            redis::Cmd::hset_multiple(run_key(&id), &fields),
            redis::Cmd::zadd(RUNS, id.as_str(), created_ms as f64),
            // Ids whose runs have long expired leave the index.
            redis::Cmd::zrembyscore(
                RUNS,
                "-inf",
                created_ms.saturating_sub(self.index_for.as_millis()) as f64,
            ),
            redis::Cmd::sadd(
                if push.is_some() {
                    push::PUSHING
                } else {
                    RUNNING
                },
                id.as_str(),
            ),
        ]);
        commands
    }

    /// Registers the run in Redis, starts it here, and replicates its
    /// log. With Redis down, new runs are refused.
    async fn start_run(
        self: &Arc<Self>,
        meta: RunMeta,
        events: AgentStream,
    ) -> Result<(), HubError> {
        self.submit(self.start_commands(&meta, None)).await?;
        let run = self.local.start(meta, events, None);
        self.tasks.spawn(replicate(self.clone(), run));
        Ok(())
    }

    /// Run `id` as `viewer` may see it: this node's copy, or a new mirror
    /// of what Redis holds.
    async fn run(self: &Arc<Self>, id: &RunId, viewer: &Viewer) -> Result<Arc<Run>, HubError> {
        match self.local.local(id) {
            Some(run) => owned(run, viewer),
            None => {
                let stored = self.load_meta(id, viewer).await?;
                self.mirror(stored).await
            }
        }
    }
}

impl HubBackend for RedisHub {
    fn start(&self, meta: RunMeta, events: AgentStream) -> BoxFuture<'_, Result<(), HubError>> {
        self.inner.start_run(meta, events).boxed()
    }

    fn start_push(
        &self,
        meta: RunMeta,
        idle_timeout: Duration,
    ) -> BoxFuture<'_, Result<(), HubError>> {
        async move {
            let inner = &self.inner;
            let (_, first) = Recorder::start(&meta);
            let mut commands = inner.start_commands(&meta, Some(idle_timeout));
            let mut xadd = redis::cmd("XADD");
            xadd.arg(events_key(&meta.id))
                .arg("1-0")
                .arg("f")
                .arg(first.frame.as_ref());
            commands.push(xadd);
            inner.submit(commands).await
        }
        .boxed()
    }

    fn publish(
        &self,
        id: RunId,
        viewer: Viewer,
        given: Option<Seq>,
        events: Vec<crate::agent::AgentEvent>,
    ) -> BoxFuture<'_, Result<Published, HubError>> {
        async move { self.inner.publish_push(&id, &viewer, given, events).await }.boxed()
    }

    fn ended(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<RunStatus, HubError>> {
        async move {
            let run = self.inner.run(&id, &viewer).await?;
            Ok(run.ended().await)
        }
        .boxed()
    }

    fn subscribe(
        &self,
        id: RunId,
        after: Seq,
        format: Format,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Resume, HubError>> {
        async move {
            let inner = &self.inner;
            let run = inner.run(&id, &viewer).await?;
            let resume = inner.local.subscribe(run.clone(), after, format)?;
            let Resume::Events(events) = resume else {
                return Ok(resume);
            };
            if !run.is_mirror() || run.log().status() != RunStatus::Running {
                return Ok(Resume::Events(events));
            }
            // Count this subscriber where the run's owner can see it.
            inner.count_watcher(&id, 1).await;
            let guard = WatchGuard {
                inner: inner.clone(),
                id,
            };
            Ok(Resume::Events(
                events
                    .map(move |chunk| {
                        let _ = &guard;
                        chunk
                    })
                    .boxed(),
            ))
        }
        .boxed()
    }

    fn chat_run(
        &self,
        chat: String,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Option<RunId>, HubError>> {
        async move {
            let mut conn = self.inner.conn.clone();
            let run: Option<String> = bounded(conn.get(chat_key(&viewer, &chat))).await?;
            Ok(run.as_deref().and_then(RunId::parse))
        }
        .boxed()
    }

    fn snapshot(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<RunSnapshot, HubError>> {
        async move {
            let inner = &self.inner;
            // A mirror's own end time is when it learnt of the end: the
            // owner's record is the one to show.
            if let Some(run) = inner.local.driven(&id) {
                return owned(run, &viewer).map(|run| run.snapshot(true));
            }
            let stored = inner.load_meta(&id, &viewer).await?;
            let frames = inner.retained_frames(&id).await?;
            let events = frames.last().map_or(0, |(seq, _)| *seq);
            let text: String = frames
                .into_iter()
                .filter_map(|(_, frame)| entry_of(frame).token)
                .collect();
            Ok(stored.snapshot(events, Some(text)))
        }
        .boxed()
    }

    fn list(
        &self,
        limit: usize,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Vec<RunSnapshot>, HubError>> {
        async move {
            let inner = &self.inner;
            let mut conn = inner.conn.clone();
            let owner = owner_field(&viewer);
            let mut runs = Vec::new();
            let mut start = 0isize;
            let page = isize::try_from(limit.max(1) * 2).unwrap_or(1000);
            while runs.len() < limit {
                let ids: Vec<String> =
                    bounded(conn.zrevrange(RUNS, start, start + page - 1)).await?;
                if ids.is_empty() {
                    break;
                }
                start += page;
                let ids: Vec<RunId> = ids.iter().filter_map(|id| RunId::parse(id)).collect();
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.hgetall(run_key(id)).cmd("XLEN").arg(events_key(id));
                }
                let answers: Vec<(HashMap<String, String>, u64)> =
                    bounded(pipe.query_async(&mut conn)).await?;
                for (id, (fields, events)) in ids.iter().zip(answers) {
                    if fields.is_empty() {
                        continue;
                    }
                    let stored = Stored::from_fields(id, fields);
                    if stored.owner == owner && runs.len() < limit {
                        runs.push(stored.snapshot(events, None));
                    }
                }
            }
            Ok(runs)
        }
        .boxed()
    }

    fn cancel(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<Cancelled, HubError>> {
        async move {
            let inner = &self.inner;
            if let Some(run) = inner.local.driven(&id) {
                return Ok(owned(run, &viewer)?.cancel().await);
            }
            let stored = inner.load_meta(&id, &viewer).await?;
            if stored.status != RunStatus::Running {
                return Ok(Cancelled::AlreadyFinished(stored.status));
            }
            // A push run has no driver to tell: this node ends it.
            if stored.producer.is_some() {
                return Ok(match inner.end_push(&stored, Recorder::cancelled).await? {
                    RunStatus::Cancelled => Cancelled::Now,
                    other => Cancelled::AlreadyFinished(other),
                });
            }
            let mut conn = inner.conn.clone();
            bounded(conn.publish::<_, _, ()>(CANCEL_CHANNEL, id.as_str())).await?;
            // Wait (briefly) for the owner to log the terminal event.
            let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
            while tokio::time::Instant::now() < deadline {
                let status: Option<String> = bounded(conn.hget(run_key(&id), "status")).await?;
                if status.as_deref() != Some(RunStatus::Running.as_str()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Cancelled::Now)
        }
        .boxed()
    }

    fn running(&self) -> usize {
        self.inner.local.running()
    }

    fn running_for(&self, owner: &Viewer) -> usize {
        self.inner.local.running_for(owner)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            let inner = &self.inner;
            let lost = inner.local.lose_running();
            if lost > 0 {
                tracing::warn!(
                    runs = lost,
                    "ending this node's unfinished runs with node_lost"
                );
            }
            inner.tasks.close();
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, inner.tasks.wait()).await;
            let mut conn = inner.conn.clone();
            let _ = bounded(conn.del::<_, ()>(node_key(&inner.node))).await;
        }
        .boxed()
    }
}

/// `run` if `viewer` may see it; another owner's run is unknown.
fn owned(run: Arc<Run>, viewer: &Viewer) -> Result<Arc<Run>, HubError> {
    if run.meta().owner == *viewer {
        Ok(run)
    } else {
        Err(HubError::NotFound)
    }
}

/// Uncounts a subscriber of a mirrored run when its stream is dropped.
struct WatchGuard {
    inner: Arc<Inner>,
    id: RunId,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let inner = self.inner.clone();
        let id = self.id.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { inner.count_watcher(&id, -1).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_the_entries_they_were() {
        let id = RunId::parse("r1").unwrap_or_else(|| unreachable!());
        let token = entry_of(sse::encode(
            id.as_str(),
            2,
            "token",
            &json!({"text": " a\nb"}),
        ));
        assert_eq!(token.token.as_deref(), Some(" a\nb"));
        assert!(token.end.is_none());
        let done = entry_of(sse::encode(
            id.as_str(),
            3,
            "done",
            &json!({"finish_reason": "cancelled", "usage": {"output_tokens": 1}}),
        ));
        let end = done.end.unwrap_or_else(|| unreachable!());
        assert_eq!(end.status, RunStatus::Cancelled);
        assert_eq!(end.usage["output_tokens"], 1);
        let lost = entry_of(sse::encode(
            id.as_str(),
            4,
            "error",
            &json!({"code": NODE_LOST}),
        ));
        assert_eq!(lost.end.map(|e| e.status), Some(RunStatus::Error));
        assert_eq!(seq_of("17-0"), 17);
    }

    #[test]
    fn owners_are_stored_so_that_no_key_name_looks_like_no_auth() {
        assert_eq!(owner_field(&None), "");
        assert_eq!(owner_field(&Some(String::new())), "k:");
        assert_eq!(owner_field(&Some("ci".into())), "k:ci");
    }
}
