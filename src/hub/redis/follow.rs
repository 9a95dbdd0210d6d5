//! Redis to a mirror: a run another node drives, loaded from its stream
//! and followed.

use std::sync::{Arc, Weak};

use super::conn::{bounded, Backoff};
use super::keys::{events_key, StreamEntries};
use super::stored::Stored;
use super::stream::entries_of;
use super::{Inner, BATCH};
use crate::hub::node::{Node, Run};
use crate::hub::record::Entry;
use crate::hub::{HubError, RunId, Seq};

/// How long one `XREAD BLOCK` waits before it looks again.
const BLOCK_MS: u64 = 5_000;

impl Inner {
    /// Every entry Redis retains of run `id`, with its seq.
    pub(super) async fn retained_entries(&self, id: &RunId) -> Result<Vec<(Seq, Entry)>, HubError> {
        let mut conn = self.conn.clone();
        let entries: StreamEntries = bounded(
            redis::cmd("XRANGE")
                .arg(events_key(id))
                .arg("-")
                .arg("+")
                .query_async(&mut conn),
        )
        .await?;
        Ok(entries_of(entries))
    }

    /// A local copy of a run another node drives: its retained frames now,
    /// then a follower for the rest.
    pub(super) async fn mirror(self: &Arc<Self>, stored: Stored) -> Result<Arc<Run>, HubError> {
        let id = stored.meta.id.clone();
        let entries = self.retained_entries(&id).await?;
        if entries.first().is_some_and(|(seq, _)| *seq != 1) {
            // The stream was trimmed: its start is no longer retained.
            return Err(HubError::Gone);
        }
        let last = entries.last().map_or(0, |(seq, _)| *seq);
        let entries: Vec<Entry> = entries.into_iter().map(|(_, entry)| entry).collect();
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

/// Feeds a mirror from its run's stream, after event `last`, until the
/// terminal event, on a connection of its own.
pub(super) async fn follow(inner: Weak<Inner>, local: Node, run: Arc<Run>, mut last: Seq) {
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
                    for (seq, entry) in entries_of(entries) {
                        if seq != last + 1 {
                            continue;
                        }
                        last = seq;
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
