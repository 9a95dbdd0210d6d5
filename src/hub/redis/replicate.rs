//! Owner to Redis: a run driven here, appended to its stream as it is
//! logged.

use std::sync::Arc;
use std::time::SystemTime;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::conn::Backoff;
use super::keys::{events_key, owner_field, run_key, seq_of, StreamEntries, MAX_EVENTS};
use super::{Inner, BATCH};
use crate::hub::node::Run;
use crate::hub::{RunStatus, Seq};

/// Appends a run's frames to its Redis stream as they are logged here, and
/// its end to its hash. On Redis trouble it waits and resumes from what
/// Redis last acknowledged; the frames stay in the local log meanwhile.
pub(super) async fn replicate(inner: Arc<Inner>, run: Arc<Run>) {
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
pub(super) async fn last_seq(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<Seq> {
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
