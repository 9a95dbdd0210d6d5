//! The runs of this node, whatever the backend: the registry, retention
//! and eviction, the ids of evicted runs, each run's driver and its
//! subscribers. The memory hub is this alone; the shared hub adds Redis
//! around it (replicating the runs driven here, mirroring the others).
//!
//! The registry (one std `Mutex` for the whole node) is touched when a run
//! starts, finishes, is looked up or evicted, never per event: events go
//! into the run's own [`RunLog`](crate::hub::log::RunLog). One background
//! task sweeps expired runs once a second; it holds only a `Weak` handle,
//! so it ends with the node.

mod gone;
mod run;
mod subscriber;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::record::{Entry, Recorder};
use super::{HubError, Resume, RunId, RunMeta, RunSnapshot, RunStatus, Seq, Viewer};
use crate::agent::push::Inbox;
use crate::agent::AgentStream;
use crate::config::RunsConfig;
use crate::metrics::Metrics;
use crate::wire::Format;
use gone::GoneIds;
pub(crate) use gone::GONE_FOR;
pub(crate) use run::Run;
pub(crate) use run::CANCEL_WAIT;
#[cfg(test)]
pub(crate) use run::FIRST_SUBSCRIBER_WAIT;

/// Where a run's driver sends a copy of each entry once it is logged.
pub(crate) type Copies = tokio::sync::mpsc::UnboundedSender<Entry>;

/// How often expired runs are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Whether a run is watched on another node: asked before a run that ends
/// when its clients leave is cancelled for having none here.
pub(crate) trait Presence: Send + Sync + 'static {
    /// Whether subscribers on other nodes watch run `id`.
    fn watched_elsewhere(&self, id: RunId) -> BoxFuture<'_, bool>;
}

/// A node with no others: nothing is watched elsewhere.
pub(crate) struct Alone;

impl Presence for Alone {
    fn watched_elsewhere(&self, _: RunId) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}

/// This node's runs; a cheap handle.
#[derive(Clone)]
pub(crate) struct Node {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Mutex<Registry>,
    retention: Duration,
    retention_bytes: u64,
    disconnect_grace: Duration,
    max_run: Option<Duration>,
    /// Bytes of all retained runs' frames, running ones included.
    retained_bytes: AtomicU64,
    running: AtomicUsize,
    metrics: Arc<Metrics>,
    presence: Arc<dyn Presence>,
}

#[derive(Default)]
struct Registry {
    runs: HashMap<RunId, Arc<Run>>,
    /// Runs by start order, for listing newest first.
    by_age: BTreeMap<u64, RunId>,
    next_ordinal: u64,
    /// Finished runs in the order they finished: the eviction order.
    finished: VecDeque<(Instant, RunId)>,
    /// Running runs per owner, for the per-key limit.
    running_by_owner: HashMap<Viewer, usize>,
    /// The latest run of each AI SDK chat, by owner and chat id.
    chats: HashMap<(Viewer, String), RunId>,
    gone: GoneIds,
}

impl Registry {
    fn insert(&mut self, run: Arc<Run>) {
        self.by_age.insert(run.ordinal, run.meta().id.clone());
        self.runs.insert(run.meta().id.clone(), run);
    }

    fn next_ordinal(&mut self) -> u64 {
        self.next_ordinal += 1;
        self.next_ordinal - 1
    }
}

impl Node {
    /// A node with `config`'s retention and disconnect grace, asking
    /// `presence` about other nodes. Must be called inside a tokio
    /// runtime: it starts the sweeper task.
    pub(crate) fn new(
        config: &RunsConfig,
        metrics: Arc<Metrics>,
        presence: Arc<dyn Presence>,
    ) -> Self {
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::default()),
            retention: config.retention(),
            retention_bytes: config.retention_bytes,
            disconnect_grace: config.disconnect_grace(),
            max_run: config.max_run(),
            retained_bytes: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            metrics,
            presence,
        });
        tokio::spawn(sweep_until_dropped(Arc::downgrade(&shared)));
        Self { shared }
    }

    /// Registers the run, logs its `run` event and drives `events` in the
    /// background; a push run also keeps its `inbox`. `copies`, if any,
    /// gets each entry once it is logged (a shared hub's replicator).
    pub(crate) fn start(
        &self,
        meta: RunMeta,
        events: AgentStream,
        inbox: Option<Inbox>,
        copies: Option<Copies>,
    ) -> Arc<Run> {
        let shared = self.shared.clone();
        let (recorder, first) = Recorder::start(&meta);
        let mut registry = shared.registry();
        let ordinal = registry.next_ordinal();
        let run = Arc::new(Run::new(
            meta,
            ordinal,
            false,
            shared.presence.clone(),
            inbox,
        ));
        run::log_entry(&shared, &run, first, copies.as_ref());
        registry.insert(run.clone());
        let meta = run.meta();
        if let Some(chat) = &meta.chat {
            registry
                .chats
                .insert((meta.owner.clone(), chat.clone()), meta.id.clone());
        }
        *registry
            .running_by_owner
            .entry(meta.owner.clone())
            .or_default() += 1;
        drop(registry);
        shared.running.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run::drive(shared, run.clone(), events, recorder, copies));
        run
    }

    /// Registers a copy of a run that another node drives, holding
    /// `entries` so far; whoever follows it [`Node::feed`]s it the rest.
    /// When another caller registered the run first, that copy is returned
    /// instead and `false` says so.
    pub(crate) fn mirror(&self, meta: RunMeta, entries: Vec<Entry>) -> (Arc<Run>, bool) {
        let mut registry = self.shared.registry();
        if let Some(run) = registry.runs.get(&meta.id) {
            return (run.clone(), false);
        }
        let ordinal = registry.next_ordinal();
        let run = Arc::new(Run::new(
            meta,
            ordinal,
            true,
            self.shared.presence.clone(),
            None,
        ));
        let ended = entries.last().is_some_and(|entry| entry.end.is_some());
        for entry in entries {
            run.log().append(entry);
        }
        registry.insert(run.clone());
        drop(registry);
        if ended {
            self.mirror_finished(&run);
        }
        (run, true)
    }

    /// Appends the next entry of mirror `run`; after its terminal one, the
    /// mirror is retained and evicted like any other run.
    pub(crate) fn feed(&self, run: &Run, entry: Entry) {
        let end = entry.end.is_some();
        run.log().append(entry);
        if end {
            self.mirror_finished(run);
        }
    }

    fn mirror_finished(&self, run: &Run) {
        self.shared
            .retained_bytes
            .fetch_add(run.log().bytes(), Ordering::Relaxed);
        let now = Instant::now();
        self.shared
            .registry()
            .finished
            .push_back((now, run.meta().id.clone()));
        self.shared.sweep(now);
    }

    /// The run `id` if `viewer` may see it; another owner's run is unknown.
    pub(crate) fn lookup(&self, id: &RunId, viewer: &Viewer) -> Result<Arc<Run>, HubError> {
        let registry = self.shared.registry();
        match registry.runs.get(id) {
            Some(run) if run.meta().owner == *viewer => Ok(run.clone()),
            Some(_) => Err(HubError::NotFound),
            None if registry.gone.contains(id, viewer) => Err(HubError::Gone),
            None => Err(HubError::NotFound),
        }
    }

    /// The run `id` if this node has it, driven here or mirrored.
    pub(crate) fn local(&self, id: &RunId) -> Option<Arc<Run>> {
        self.shared.registry().runs.get(id).cloned()
    }

    /// The run `id` if this node drives it.
    pub(crate) fn driven(&self, id: &RunId) -> Option<Arc<Run>> {
        self.local(id).filter(|run| !run.is_mirror())
    }

    /// `run`'s events after `after` (0: from the first), then live ones,
    /// in `format`.
    pub(crate) fn subscribe(
        &self,
        run: Arc<Run>,
        after: Seq,
        format: Format,
    ) -> Result<Resume, HubError> {
        subscriber::subscribe(run, after, format, self.shared.disconnect_grace)
    }

    /// Up to `limit` of the viewer's runs, newest first, without text.
    pub(crate) fn list(&self, limit: usize, viewer: &Viewer) -> Vec<RunSnapshot> {
        let runs: Vec<Arc<Run>> = {
            let registry = self.shared.registry();
            registry
                .by_age
                .values()
                .rev()
                .filter_map(|id| registry.runs.get(id))
                .filter(|run| run.meta().owner == *viewer)
                .take(limit)
                .cloned()
                .collect()
        };
        runs.iter().map(|run| run.snapshot(false)).collect()
    }

    /// The latest run of the viewer's AI SDK chat `chat`, while retained.
    pub(crate) fn chat_run(&self, chat: String, viewer: Viewer) -> Option<RunId> {
        self.shared.registry().chats.get(&(viewer, chat)).cloned()
    }

    /// Runs this node drives that are still running.
    pub(crate) fn running(&self) -> usize {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// Runs of `owner` this node drives that are still running.
    pub(crate) fn running_for(&self, owner: &Viewer) -> usize {
        self.shared
            .registry()
            .running_by_owner
            .get(owner)
            .copied()
            .unwrap_or(0)
    }

    /// Ends every run this node drives with `error node_lost`, for a node
    /// that stops before they finish; how many there were.
    pub(crate) fn lose_running(&self) -> usize {
        let runs: Vec<Arc<Run>> = self
            .shared
            .registry()
            .runs
            .values()
            .filter(|run| !run.is_mirror() && run.log().status() == RunStatus::Running)
            .cloned()
            .collect();
        for run in &runs {
            run.lose();
        }
        runs.len()
    }
}

async fn sweep_until_dropped(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.sweep(Instant::now());
    }
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Every registry mutation keeps it consistent at each step; a panic
        // elsewhere must not take the whole node down with it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Evicts finished runs past their retention, then the oldest finished
    /// runs while all retained runs exceed the byte budget.
    fn sweep(&self, now: Instant) {
        let mut registry = self.registry();
        while let Some((finished_at, _)) = registry.finished.front() {
            let over_time = now.duration_since(*finished_at) >= self.retention;
            let over_budget = self.retained_bytes.load(Ordering::Relaxed) > self.retention_bytes;
            if !over_time && !over_budget {
                break;
            }
            if let Some((_, id)) = registry.finished.pop_front() {
                self.evict(&mut registry, id, now);
            }
        }
        registry.gone.prune(now);
    }

    fn evict(&self, registry: &mut Registry, id: RunId, now: Instant) {
        if let Some(run) = registry.runs.remove(&id) {
            registry.by_age.remove(&run.ordinal);
            let meta = run.meta();
            if let Some(chat) = &meta.chat {
                let key = (meta.owner.clone(), chat.clone());
                if registry.chats.get(&key) == Some(&id) {
                    registry.chats.remove(&key);
                }
            }
            self.retained_bytes
                .fetch_sub(run.log().bytes(), Ordering::Relaxed);
            tracing::debug!(run_id = %id, "run evicted");
            registry.gone.insert(id, meta.owner.clone(), now);
        }
    }

    /// A run driven here has logged its terminal event.
    fn finished(&self, run: &Run) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut registry = self.registry();
            let owner = &run.meta().owner;
            registry.finished.push_back((now, run.meta().id.clone()));
            if let Some(count) = registry.running_by_owner.get_mut(owner) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    registry.running_by_owner.remove(owner);
                }
            }
        }
        self.sweep(now);
    }
}
