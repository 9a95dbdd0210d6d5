//! The in-process hub: runs live in this process's memory.
//!
//! The registry (one std `Mutex` for the whole hub) is touched when a run
//! starts, finishes, is looked up or evicted, never per event: events go
//! into the run's own [`RunLog`]. One background task sweeps expired runs
//! once a second; it holds only a `Weak` handle, so it ends with the hub.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::log::{Read, RunLog};
use super::record::{Entry, Recorder};
use super::{
    rfc3339, Cancelled, Chunk, HubBackend, HubError, Published, Resume, RunId, RunMeta,
    RunSnapshot, RunStatus, Seq, Viewer,
};
use crate::agent::push::{self, Inbox, Refused};
use crate::agent::{AgentEvent, AgentStream};
use crate::config::RunsConfig;
use crate::metrics::Metrics;
use crate::wire::Format;

/// How long an evicted run's id is remembered, to answer `410` rather than `404`.
const GONE_FOR: Duration = Duration::from_secs(24 * 60 * 60);
/// How many evicted ids are remembered at most (about 100 bytes each).
const GONE_MAX: usize = 100_000;
/// How often expired runs are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The least time a run with `cancel_on_disconnect` waits for its first
/// subscriber, even with a disconnect grace of 0: the one-shot route
/// subscribes right after starting the run, possibly on another thread.
const FIRST_SUBSCRIBER_WAIT: Duration = Duration::from_secs(1);
/// How long `DELETE` waits for the cancelled run's terminal event.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// The in-memory [`HubBackend`].
#[derive(Clone)]
pub struct MemoryHub {
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
    elsewhere: Option<Elsewhere>,
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

/// Asks whether a run has subscribers on other nodes (a shared hub's
/// answer to the disconnect grace); the memory hub alone has none.
pub type Elsewhere = Arc<dyn Fn(RunId) -> BoxFuture<'static, bool> + Send + Sync>;

/// One run in this process: driven here, or mirrored from a shared hub.
pub struct Run {
    meta: RunMeta,
    ordinal: u64,
    log: RunLog,
    cancel: CancellationToken,
    subscribers: AtomicUsize,
    /// Moves on every subscribe and unsubscribe, so a disconnect-grace check
    /// scheduled earlier can tell that someone came and went since.
    epoch: AtomicU64,
    /// A cancel with this set ends the run with `error node_lost`: the node
    /// is stopping and cannot finish it.
    lost: AtomicBool,
    /// A copy of a run that another node drives (no driver here).
    mirror: bool,
    elsewhere: Option<Elsewhere>,
    /// A push run's producer side: where published events go.
    inbox: Option<Inbox>,
}

impl Run {
    fn new(meta: RunMeta, ordinal: u64, mirror: bool, elsewhere: Option<Elsewhere>) -> Self {
        Self {
            inbox: None,
            meta,
            ordinal,
            log: RunLog::new(),
            cancel: CancellationToken::new(),
            subscribers: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            mirror,
            elsewhere,
        }
    }

    /// Ends this run with `error node_lost`: its node cannot finish it.
    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    pub fn meta(&self) -> &RunMeta {
        &self.meta
    }

    pub fn log(&self) -> &RunLog {
        &self.log
    }

    /// Whether another node drives this run.
    pub fn is_mirror(&self) -> bool {
        self.mirror
    }

    /// Subscribers on this node now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::SeqCst)
    }
}

/// Ids of evicted runs, oldest first, bounded in count and age.
#[derive(Default)]
struct GoneIds {
    /// When each id was evicted, and its owner (another key must get 404).
    since: HashMap<RunId, (Instant, Viewer)>,
    order: VecDeque<(Instant, RunId)>,
}

impl GoneIds {
    fn insert(&mut self, id: RunId, owner: Viewer, now: Instant) {
        if self.order.len() >= GONE_MAX {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.since.remove(&oldest);
            }
        }
        self.since.insert(id.clone(), (now, owner));
        self.order.push_back((now, id));
    }

    fn contains(&self, id: &RunId, viewer: &Viewer) -> bool {
        self.since.get(id).is_some_and(|(_, owner)| owner == viewer)
    }

    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < GONE_FOR {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.since.remove(&id);
            }
        }
    }
}

impl MemoryHub {
    /// A hub with `config`'s retention and disconnect grace. Must be called
    /// inside a tokio runtime: it starts the sweeper task.
    pub fn new(config: &RunsConfig, metrics: Arc<Metrics>) -> Self {
        Self::with_elsewhere(config, metrics, None)
    }

    /// A hub whose disconnect grace also asks `elsewhere` before cancelling.
    pub fn with_elsewhere(
        config: &RunsConfig,
        metrics: Arc<Metrics>,
        elsewhere: Option<Elsewhere>,
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
            elsewhere,
        });
        tokio::spawn(sweep_until_dropped(Arc::downgrade(&shared)));
        Self { shared }
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
        // elsewhere must not take the whole hub down with it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run `id` if `viewer` may see it; another owner's run is unknown.
    fn lookup(&self, id: &RunId, viewer: &Viewer) -> Result<Arc<Run>, HubError> {
        let registry = self.registry();
        match registry.runs.get(id) {
            Some(run) if run.meta.owner == *viewer => Ok(run.clone()),
            Some(_) => Err(HubError::NotFound),
            None if registry.gone.contains(id, viewer) => Err(HubError::Gone),
            None => Err(HubError::NotFound),
        }
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
            if let Some(chat) = &run.meta.chat {
                let key = (run.meta.owner.clone(), chat.clone());
                if registry.chats.get(&key) == Some(&id) {
                    registry.chats.remove(&key);
                }
            }
            self.retained_bytes
                .fetch_sub(run.log.bytes(), Ordering::Relaxed);
            tracing::debug!(run_id = %id, "run evicted");
            registry.gone.insert(id, run.meta.owner.clone(), now);
        }
    }

    fn finished(&self, run: &Run) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut registry = self.registry();
            registry.finished.push_back((now, run.meta.id.clone()));
            if let Some(count) = registry.running_by_owner.get_mut(&run.meta.owner) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    registry.running_by_owner.remove(&run.meta.owner);
                }
            }
        }
        self.sweep(now);
    }

    fn snapshot(run: &Run, with_text: bool) -> RunSnapshot {
        let summary = run.log.summary(with_text);
        RunSnapshot {
            id: run.meta.id.clone(),
            agent: run.meta.agent.clone(),
            prompt: run.meta.prompt.clone(),
            status: summary.status,
            created_at: rfc3339(run.meta.created_at),
            finished_at: summary.finished_at.map(rfc3339),
            events: summary.events,
            text: summary.text,
            usage: summary.usage,
        }
    }
}

/// Drives one run's agent stream into its log until a terminal event or a
/// cancel. Dropping the stream on the way out stops the agent's work.
async fn drive(
    shared: Arc<Shared>,
    run: Arc<Run>,
    mut events: AgentStream,
    mut recorder: Recorder,
) {
    let cancelled = run.cancel.clone().cancelled_owned();
    tokio::pin!(cancelled);
    // One timer for the whole run; a far deadline stands for "no limit".
    let limit = shared
        .max_run
        .unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600));
    let started = tokio::time::Instant::now();
    // A run that ends when its clients leave first checks, with the same
    // timer, that a client came at all; later leaves are the subscribers'
    // own to report.
    let mut awaiting_first = run.meta.cancel_on_disconnect;
    let first_check = if awaiting_first {
        shared
            .disconnect_grace
            .max(FIRST_SUBSCRIBER_WAIT)
            .min(limit)
    } else {
        limit
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
                    if run.epoch.load(Ordering::SeqCst) == 0 {
                        if watched_elsewhere(&run).await {
                            schedule_idle_check(run.clone(), shared.disconnect_grace);
                        } else {
                            tracing::info!(run_id = %run.meta.id, "no subscriber came: cancelling");
                            run.cancel.cancel();
                        }
                    }
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
        let end = entry.end.clone();
        let size = run.log.append(entry);
        shared
            .retained_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
        if let Some(end) = end {
            shared
                .metrics
                .run_finished(&run.meta.agent, end.status, end.ttft, end.duration);
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

/// Whether subscribers on other nodes watch `run`.
async fn watched_elsewhere(run: &Run) -> bool {
    match &run.elsewhere {
        Some(elsewhere) => elsewhere(run.meta.id.clone()).await,
        None => false,
    }
}

/// Cancels `run` if it still has no subscriber after the disconnect grace
/// and nobody subscribed or left in the meantime.
fn schedule_idle_check(run: Arc<Run>, grace: Duration) {
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

/// One subscriber's cursor into a run's log.
struct Subscriber {
    run: Arc<Run>,
    grace: Duration,
    cursor: usize,
    format: Format,
    changed: super::changes::Changes,
}

impl Subscriber {
    async fn next_chunk(&mut self) -> Option<Chunk> {
        loop {
            let read = match self.format {
                Format::Sluice => self.run.log.read(self.cursor),
                format => self.run.log.read_as(self.cursor, format, &self.run.meta),
            };
            match read {
                // Events the format has nothing for: on to the next.
                Read::Chunk { bytes, events, .. } if bytes.is_empty() => {
                    self.cursor += events;
                    continue;
                }
                Read::Chunk {
                    bytes,
                    events,
                    ready,
                } => {
                    self.cursor += events;
                    return Some(Chunk {
                        bytes,
                        events: events as u64,
                        lag: ready.saturating_sub(1) as u64,
                    });
                }
                Read::Ended => return None,
                Read::Pending => {}
            }
            self.changed.changed().await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let left = self.run.subscribers.fetch_sub(1, Ordering::SeqCst) - 1;
        self.run.epoch.fetch_add(1, Ordering::SeqCst);
        if left == 0
            && !self.run.mirror
            && self.run.meta.cancel_on_disconnect
            && self.run.log.status() == RunStatus::Running
        {
            schedule_idle_check(self.run.clone(), self.grace);
        }
    }
}

impl MemoryHub {
    /// Registers the run, logs its `run` event and drives `events` in the
    /// background; a push run also keeps its `inbox`.
    fn start_with(&self, meta: RunMeta, events: AgentStream, inbox: Option<Inbox>) {
        let shared = self.shared.clone();
        let (recorder, first) = Recorder::start(&meta);
        let mut registry = shared.registry();
        let ordinal = registry.next_ordinal;
        registry.next_ordinal += 1;
        let mut run = Run::new(meta, ordinal, false, shared.elsewhere.clone());
        run.inbox = inbox;
        let run = Arc::new(run);
        let size = run.log.append(first);
        registry.runs.insert(run.meta.id.clone(), run.clone());
        registry.by_age.insert(ordinal, run.meta.id.clone());
        if let Some(chat) = &run.meta.chat {
            registry
                .chats
                .insert((run.meta.owner.clone(), chat.clone()), run.meta.id.clone());
        }
        *registry
            .running_by_owner
            .entry(run.meta.owner.clone())
            .or_default() += 1;
        drop(registry);
        shared
            .retained_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
        shared.running.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(drive(shared, run, events, recorder));
    }

    fn subscribe_now(
        &self,
        id: &RunId,
        after: Seq,
        format: Format,
        viewer: &Viewer,
    ) -> Result<Resume, HubError> {
        let run = self.shared.lookup(id, viewer)?;
        // Watch before reading the position, so an append in between still
        // wakes this subscriber.
        let changed = run.log.watch();
        let (len, ended) = run.log.position();
        let len = len as Seq;
        if ended && after >= len {
            return Ok(Resume::Finished);
        }
        if after > len {
            return Err(HubError::BeyondEnd { after, last: len });
        }
        run.subscribers.fetch_add(1, Ordering::SeqCst);
        run.epoch.fetch_add(1, Ordering::SeqCst);
        let subscriber = Subscriber {
            run,
            grace: self.shared.disconnect_grace,
            cursor: after as usize,
            format,
            changed,
        };
        let stream = futures::stream::unfold(subscriber, |mut sub| async move {
            let chunk = sub.next_chunk().await?;
            Some((chunk, sub))
        });
        Ok(Resume::Events(stream.boxed()))
    }
}

/// What a shared hub needs of the local one.
impl MemoryHub {
    /// The run `id` if this process has it, driven here or mirrored.
    pub fn local(&self, id: &RunId) -> Option<Arc<Run>> {
        self.shared.registry().runs.get(id).cloned()
    }

    /// Registers a copy of a run that another node drives; whoever mirrors
    /// it appends its events to [`Run::log`] and calls
    /// [`MemoryHub::mirror_finished`] after the terminal one.
    ///
    /// The mirror starts with `entries`; when another caller registered the
    /// run first, that mirror is returned instead and `false` says so.
    pub fn insert_mirror(&self, meta: RunMeta, entries: Vec<Entry>) -> (Arc<Run>, bool) {
        let mut registry = self.shared.registry();
        if let Some(run) = registry.runs.get(&meta.id) {
            return (run.clone(), false);
        }
        let ordinal = registry.next_ordinal;
        registry.next_ordinal += 1;
        let run = Arc::new(Run::new(meta, ordinal, true, None));
        for entry in entries {
            run.log.append(entry);
        }
        registry.runs.insert(run.meta.id.clone(), run.clone());
        registry.by_age.insert(ordinal, run.meta.id.clone());
        (run, true)
    }

    /// A mirrored run has logged its terminal event: it is now retained
    /// and evicted like any other.
    pub fn mirror_finished(&self, run: &Run) {
        self.shared
            .retained_bytes
            .fetch_add(run.log.bytes(), Ordering::Relaxed);
        let now = Instant::now();
        self.shared
            .registry()
            .finished
            .push_back((now, run.meta.id.clone()));
        self.shared.sweep(now);
    }

    /// Forgets a mirror that could not be filled.
    pub fn drop_mirror(&self, id: &RunId) {
        let mut registry = self.shared.registry();
        if registry.runs.get(id).is_some_and(|run| run.mirror) {
            if let Some(run) = registry.runs.remove(id) {
                registry.by_age.remove(&run.ordinal);
            }
        }
    }

    /// Ends one run this process drives with `error node_lost`.
    pub fn lose(&self, id: &RunId) {
        if let Some(run) = self.local(id).filter(|run| !run.mirror) {
            run.lose();
        }
    }

    /// Ends every run this process drives with `error node_lost`, for a
    /// node that stops before they finish; returns them.
    pub fn lose_running(&self) -> Vec<Arc<Run>> {
        let runs: Vec<Arc<Run>> = self
            .shared
            .registry()
            .runs
            .values()
            .filter(|run| !run.mirror && run.log.status() == RunStatus::Running)
            .cloned()
            .collect();
        for run in &runs {
            run.lose();
        }
        runs
    }
}

impl HubBackend for MemoryHub {
    fn start(&self, meta: RunMeta, events: AgentStream) -> BoxFuture<'_, Result<(), HubError>> {
        self.start_with(meta, events, None);
        futures::future::ready(Ok(())).boxed()
    }

    fn start_push(
        &self,
        meta: RunMeta,
        idle_timeout: Duration,
    ) -> BoxFuture<'_, Result<(), HubError>> {
        let (inbox, events) = push::channel(idle_timeout);
        self.start_with(meta, events, Some(inbox));
        futures::future::ready(Ok(())).boxed()
    }

    fn publish(
        &self,
        id: RunId,
        viewer: Viewer,
        given: Option<Seq>,
        events: Vec<AgentEvent>,
    ) -> BoxFuture<'_, Result<Published, HubError>> {
        let shared = self.shared.clone();
        async move {
            let run = shared.lookup(&id, &viewer)?;
            let Some(inbox) = &run.inbox else {
                return Err(HubError::NotPush);
            };
            // Watched before publishing, so the append cannot be missed.
            let mut changed = run.log.watch();
            let accepted = inbox.publish(given, events);
            // Answer once the driver has logged what was accepted (or the
            // run has ended), so that a reader asked next sees it.
            loop {
                let (len, ended) = run.log.position();
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
                    let (len, ended) = run.log.position();
                    if ended && len as u64 <= accepted.offset {
                        // A cancel or a timeout ended the run before the
                        // driver logged all of these: they are not in it.
                        // The end is not the producer's (its own would come
                        // after them), so the run holds all but two entries
                        // as published events: not `run`, not that end.
                        let logged = (len as u64).saturating_sub(2);
                        inbox.settle(logged);
                        return Err(HubError::Finished {
                            status: run.log.status(),
                            offset: logged,
                        });
                    }
                    Ok(Published {
                        appended: accepted.appended,
                        offset: accepted.offset,
                        status: run.log.status(),
                    })
                }
                Err(Refused::OffsetMismatch { given, offset }) => {
                    Err(HubError::OffsetMismatch { given, offset })
                }
                Err(Refused::Ended { offset }) => Err(HubError::Finished {
                    status: run.log.status(),
                    offset,
                }),
            }
        }
        .boxed()
    }

    fn ended(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<RunStatus, HubError>> {
        let shared = self.shared.clone();
        async move {
            let run = shared.lookup(&id, &viewer)?;
            Ok(run.log.wait_end().await)
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
        futures::future::ready(self.subscribe_now(&id, after, format, &viewer)).boxed()
    }

    fn chat_run(
        &self,
        chat: String,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Option<RunId>, HubError>> {
        let run = self.shared.registry().chats.get(&(viewer, chat)).cloned();
        futures::future::ready(Ok(run)).boxed()
    }

    fn snapshot(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<RunSnapshot, HubError>> {
        let result = self
            .shared
            .lookup(&id, &viewer)
            .map(|run| Shared::snapshot(&run, true));
        futures::future::ready(result).boxed()
    }

    fn list(
        &self,
        limit: usize,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Vec<RunSnapshot>, HubError>> {
        let runs: Vec<Arc<Run>> = {
            let registry = self.shared.registry();
            registry
                .by_age
                .values()
                .rev()
                .filter_map(|id| registry.runs.get(id))
                .filter(|run| run.meta.owner == viewer)
                .take(limit)
                .cloned()
                .collect()
        };
        let snapshots = runs
            .iter()
            .map(|run| Shared::snapshot(run, false))
            .collect();
        futures::future::ready(Ok(snapshots)).boxed()
    }

    fn cancel(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<Cancelled, HubError>> {
        let shared = self.shared.clone();
        async move {
            let run = shared.lookup(&id, &viewer)?;
            let status = run.log.status();
            if status != RunStatus::Running {
                return Ok(Cancelled::AlreadyFinished(status));
            }
            let mut changed = run.log.watch();
            run.cancel.cancel();
            let finished = async {
                while run.log.status() == RunStatus::Running {
                    changed.changed().await;
                }
            };
            // The driver reacts to the cancel at its next poll; should the
            // agent block that poll, the answer still comes in bounded time.
            let _ = tokio::time::timeout(CANCEL_WAIT, finished).await;
            Ok(match run.log.status() {
                RunStatus::Running | RunStatus::Cancelled => Cancelled::Now,
                other => Cancelled::AlreadyFinished(other),
            })
        }
        .boxed()
    }

    fn running(&self) -> usize {
        self.shared.running.load(Ordering::Relaxed)
    }

    fn running_for(&self, owner: &Viewer) -> usize {
        self.shared
            .registry()
            .running_by_owner
            .get(owner)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> RunId {
        RunId::parse(&format!("run{n}")).unwrap_or_else(|| unreachable!())
    }

    /// A one-shot run whose client never subscribes is cancelled once the
    /// first-subscriber wait is over; one whose client came runs on.
    // Paused time: the idle check and this test's wait advance together,
    // however loaded the machine is.
    #[tokio::test(start_paused = true)]
    async fn a_one_shot_run_nobody_subscribes_to_is_cancelled() {
        let hub = MemoryHub::new(
            &RunsConfig {
                disconnect_grace_secs: 0,
                ..RunsConfig::default()
            },
            Metrics::new().unwrap_or_else(|_| unreachable!()),
        );
        let forever = || {
            futures::stream::iter([crate::agent::AgentEvent::Token("a".into())])
                .chain(futures::stream::pending())
                .boxed()
        };
        let mut subscriptions = Vec::new();
        for n in [1, 2] {
            let meta = RunMeta {
                id: id(n),
                agent: "sim".into(),
                model: "sim".into(),
                prompt: String::new(),
                created_at: std::time::SystemTime::now(),
                chat: None,
                cancel_on_disconnect: true,
                owner: None,
            };
            assert!(hub.start(meta, forever()).await.is_ok());
        }
        if let Ok(Resume::Events(subscription)) =
            hub.subscribe(id(2), 0, Format::Sluice, None).await
        {
            subscriptions.push(subscription);
        }
        assert_eq!(subscriptions.len(), 1);
        tokio::time::sleep(FIRST_SUBSCRIBER_WAIT + Duration::from_millis(300)).await;
        let status = |n| {
            let hub = hub.clone();
            async move { hub.snapshot(id(n), None).await.map(|s| s.status).ok() }
        };
        assert_eq!(status(1).await, Some(RunStatus::Cancelled));
        assert_eq!(status(2).await, Some(RunStatus::Running));
        assert_eq!(hub.running(), 1);
    }

    #[tokio::test]
    async fn a_panicking_agent_ends_its_run_with_an_error_event() {
        let hub = MemoryHub::new(
            &RunsConfig::default(),
            Metrics::new().unwrap_or_else(|_| unreachable!()),
        );
        let meta = RunMeta {
            id: id(1),
            agent: "broken".into(),
            model: "broken".into(),
            prompt: String::new(),
            created_at: std::time::SystemTime::now(),
            chat: None,
            cancel_on_disconnect: false,
            owner: None,
        };
        let events = futures::stream::iter([crate::agent::AgentEvent::Token("a".into())])
            .chain(futures::stream::poll_fn(
                |_| -> std::task::Poll<Option<_>> { panic!("agent bug") },
            ))
            .boxed();
        assert!(hub.start(meta, events).await.is_ok());
        let Ok(Resume::Events(subscription)) = hub.subscribe(id(1), 0, Format::Sluice, None).await
        else {
            panic!("no subscription");
        };
        let chunks: Vec<Chunk> =
            tokio::time::timeout(Duration::from_secs(5), subscription.collect())
                .await
                .unwrap_or_default();
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.bytes.to_vec()).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.contains("event: token"), "{text}");
        assert!(
            text.ends_with(
                "\"code\":\"agent_panicked\",\"message\":\"the agent failed unexpectedly\"}\n\n"
            ),
            "{text}"
        );
        assert_eq!(hub.running(), 0);
    }

    #[test]
    fn evicted_ids_are_remembered_for_a_day_within_a_bounded_count() {
        let mut gone = GoneIds::default();
        let start = Instant::now();
        for n in 0..GONE_MAX + 10 {
            gone.insert(id(n), None, start);
        }
        assert_eq!(gone.since.len(), GONE_MAX);
        assert!(!gone.contains(&id(0), &None), "the oldest ids make room");
        assert!(gone.contains(&id(GONE_MAX + 9), &None));
        assert!(
            !gone.contains(&id(GONE_MAX + 9), &Some("other".into())),
            "only for its owner"
        );
        gone.prune(start + GONE_FOR - Duration::from_secs(1));
        assert!(gone.contains(&id(GONE_MAX + 9), &None));
        gone.prune(start + GONE_FOR);
        assert!(gone.since.is_empty() && gone.order.is_empty());
    }
}
