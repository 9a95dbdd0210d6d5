//! Leases and reaping: each node holds a lease while it lives; the runs of
//! a node whose lease is gone are ended with `error node_lost` by another;
//! and a run's subscribers on every node are counted, so that the
//! disconnect grace asks all of them ([`Presence`]).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::conn::bounded;
use super::keys::{events_key, node_key, reaped_key, run_key, watch_key, RUNNING};
use super::replicate::last_seq;
use super::stream::xadd;
use super::Inner;
use crate::hub::node::Presence;
use crate::hub::record::Entry;
use crate::hub::{HubError, RunId, RunStatus, Subscription};

/// Subscribers that other nodes count in Redis, for the disconnect grace.
pub(super) struct Watchers {
    pub(super) conn: ConnectionManager,
    /// This node's name: its own count is not "elsewhere".
    pub(super) node: String,
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

impl Inner {
    pub(super) async fn renew_lease(&self) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let millis = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        bounded(conn.pset_ex::<_, _, ()>(node_key(&self.node), 1, millis)).await
    }
}

pub(super) async fn keep_lease(inner: Weak<Inner>) {
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

/// Ends with `error node_lost` the runs whose node's lease has expired:
/// every node looks, the first to claim a run writes its end. A node whose
/// lease is missing gets one more lease period, as this node sees it,
/// before its runs are ended: after a Redis outage, every lease is missing
/// until its owner renews it.
pub(super) async fn reap_lost_runs(inner: Weak<Inner>) {
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
            let lost = Entry::node_lost(&id, seq);
            let owner: Option<String> = bounded(conn.hget(run_key(&id), "owner")).await?;
            tracing::warn!(run_id = %id, node = %node, "the run's node is gone: ending it with node_lost");
            let mut pipe = redis::pipe();
            pipe.add_command(xadd(&events_key, seq, &lost)).ignore();
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

    /// `events` of mirrored run `id`, its subscriber counted where the
    /// run's owner can see it for as long as the stream lives.
    pub(super) async fn counted(self: &Arc<Self>, id: RunId, events: Subscription) -> Subscription {
        self.count_watcher(&id, 1).await;
        let guard = WatchGuard {
            inner: self.clone(),
            id,
        };
        events
            .map(move |chunk| {
                let _ = &guard;
                chunk
            })
            .boxed()
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
