//! The shared hub: Redis Streams, so that several nodes serve the same runs.
//!
//! A run executes on the node that started it, in that node's
//! [`Node`]: its local subscribers read the local log as usual. A
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
//!
//! One file per job: [`keys`], [`conn`] (opening and bounding calls),
//! [`writer`] (the node's batched writes), [`stored`] (a run's hash),
//! [`replicate`] (owner to Redis), [`follow`] (Redis to a mirror),
//! [`lease`] (leases, subscriber counts, the reaper), [`cancel`]
//! (pub/sub) and [`push`] (push runs, which no node drives).

mod cancel;
mod conn;
mod follow;
mod keys;
mod lease;
mod push;
mod replicate;
mod stored;
mod stream;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio_util::task::TaskTracker;

use super::node::{Node, Run};
use super::record::Recorder;
use super::{
    Cancelled, HubBackend, HubError, Published, Resume, RunId, RunMeta, RunSnapshot, RunStatus,
    Seq, Viewer,
};
use crate::agent::AgentStream;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::wire::Format;
use conn::REQUEST_TIMEOUT;
pub(crate) use conn::{bounded, open};
use keys::{chat_key, events_key, node_key, GONE_SECS, RUNS};
pub(crate) use keys::{owner_field, owner_of, run_key};
use stored::Stored;
use writer::Write;

/// Frames sent in one pipeline, or read in one `XREAD`, at most.
const BATCH: usize = 1_000;

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
    /// The node's writer: the writes of every run, batched (see [`writer::write`]).
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
        let presence = lease::Watchers {
            conn: conn.clone(),
            node: node.clone(),
        };
        let local = Node::new(&config.runs, metrics.clone(), Arc::new(presence));
        let (writer, writes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(writer::write(conn.clone(), writes));
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
        tokio::spawn(lease::keep_lease(Arc::downgrade(&inner)));
        tokio::spawn(cancel::listen_for_cancels(Arc::downgrade(&inner)));
        tokio::spawn(lease::reap_lost_runs(Arc::downgrade(&inner)));
        tokio::spawn(push::watch_idle_push_runs(Arc::downgrade(&inner)));
        tracing::info!(node = %inner.node, url = %config.hub.url, "shared hub: Redis");
        Ok(Self { inner })
    }
}

impl Inner {
    /// Registers the run in Redis, starts it here, and replicates its
    /// log. With Redis down, new runs are refused.
    async fn start_run(
        self: &Arc<Self>,
        meta: RunMeta,
        events: AgentStream,
    ) -> Result<(), HubError> {
        self.submit(self.start_commands(&meta, None)).await?;
        let (copies, logged) = tokio::sync::mpsc::unbounded_channel();
        let run = self.local.start(meta, events, None, Some(copies));
        self.tasks
            .spawn(replicate::replicate(self.clone(), run, logged));
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
            commands.push(stream::xadd(&events_key(&meta.id), 1, &first));
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
            Ok(Resume::Events(inner.counted(id, events).await))
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
            let entries = inner.retained_entries(&id).await?;
            let events = entries.last().map_or(0, |(seq, _)| *seq);
            let text: String = entries
                .into_iter()
                .filter_map(|(_, entry)| entry.token)
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
            inner.ask_to_cancel(&id).await?;
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
