//! Redis to a mirror: a run another node drives, loaded from its stream
//! and followed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::conn::{bounded, Backoff};
use super::keys::{events_key, seq_of, StreamEntries};
use super::stored::Stored;
use super::{Inner, BATCH};
use crate::hub::node::{Node, Run};
use crate::hub::record::{Entry, RunEnd};
use crate::hub::{HubError, RunId, RunStatus, Seq};
use crate::wire::sse;

/// How long one `XREAD BLOCK` waits before it looks again.
const BLOCK_MS: u64 = 5_000;

/// A frame from Redis as a log entry: its token text, and how the run
/// ended if it is the terminal event.
pub(super) fn entry_of(frame: Bytes) -> Entry {
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

/// The frames of stream entries (`f` fields), with their seqs.
pub(super) fn frames_of(entries: StreamEntries) -> Vec<(Seq, Bytes)> {
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

impl Inner {
    /// Every frame Redis retains of run `id`, with its seq.
    pub(super) async fn retained_frames(&self, id: &RunId) -> Result<Vec<(Seq, Bytes)>, HubError> {
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

    /// A local copy of a run another node drives: its retained frames now,
    /// then a follower for the rest.
    pub(super) async fn mirror(self: &Arc<Self>, stored: Stored) -> Result<Arc<Run>, HubError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::record::NODE_LOST;

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
    }
}
