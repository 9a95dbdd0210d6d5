//! Owner to Redis: a run driven here, appended to its stream as it is
//! logged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc::UnboundedReceiver;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::conn::Backoff;
use super::keys::{events_key, owner_field, run_key, seq_of, StreamEntries};
use super::stream::xadd;
use super::{Inner, BATCH};
use crate::hub::node::Run;
use crate::hub::record::Entry;
use crate::hub::{RunStatus, Seq};

/// Appends a run's entries to its Redis stream as they are logged here,
/// and its end to its hash. On Redis trouble it waits and resumes from what
/// Redis last acknowledged; the entries wait in its backlog meanwhile.
pub(super) async fn replicate(inner: Arc<Inner>, run: Arc<Run>, logged: UnboundedReceiver<Entry>) {
    let id = run.meta().id.clone();
    let mut backlog = Backlog::new(logged);
    let mut cursor = 0usize;
    let mut backoff = Backoff::new();
    loop {
        if !backlog.ready_from(&run, cursor, BATCH).await {
            // Every entry is in Redis, the end among them, but a failed
            // batch may have landed its entries and not the run's end: the
            // end again (the same values), or the run would look running.
            if run.log().status() != RunStatus::Running {
                let end = commands(&inner, &run, std::iter::empty(), cursor, true);
                if let Err(e) = inner.submit(end).await {
                    tracing::warn!(run_id = %id, "cannot record the run's end in Redis: {e}");
                }
            }
            return;
        }
        let batch = backlog.entries.len().min(BATCH);
        let last = backlog
            .entries
            .get(batch - 1)
            .is_some_and(|e| e.end.is_some());
        let entries = backlog.entries.iter().take(batch);
        let commands = commands(&inner, &run, entries, cursor, last);
        match inner.submit(commands).await {
            Ok(()) => {
                cursor += batch;
                backoff.reset();
                if last {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(run_id = %id, "cannot write to Redis, retrying: {e}");
                backoff.wait().await;
                if !recover(&inner, &run, &mut cursor).await {
                    return;
                }
            }
        }
    }
}

/// The commands that append `entries` after event `cursor`, and with the
/// `last` of them, the run's end.
fn commands<'a>(
    inner: &Inner,
    run: &Run,
    entries: impl Iterator<Item = &'a Entry>,
    cursor: usize,
    last: bool,
) -> Vec<redis::Cmd> {
    let id = &run.meta().id;
    let events_key = events_key(id);
    let mut commands: Vec<redis::Cmd> = entries
        .enumerate()
        .map(|(i, entry)| xadd(&events_key, (cursor + i + 1) as Seq, entry))
        .collect();
    if last {
        let summary = run.log().summary(false);
        commands.extend(inner.end_commands(
            id,
            summary.status,
            summary.finished_at.unwrap_or_else(SystemTime::now),
            summary.usage.map(|u| u.to_string()).unwrap_or_default(),
            owner_field(&run.meta().owner),
        ));
    }
    commands
}

/// After a failed write: moves `cursor` to what Redis has (some of the
/// batch may have landed); `false` when another node has ended the run
/// (its lease looked lost), which then ends the same way here and writes
/// no more.
async fn recover(inner: &Inner, run: &Run, cursor: &mut usize) -> bool {
    let id = &run.meta().id;
    let mut conn = inner.conn.clone();
    if let Ok(seq) = last_seq(&mut conn, &events_key(id)).await {
        *cursor = usize::try_from(seq).unwrap_or(*cursor);
    }
    let status: redis::RedisResult<Option<String>> = conn.hget(run_key(id), "status").await;
    if let Ok(Some(status)) = status {
        if status != RunStatus::Running.as_str() {
            tracing::warn!(run_id = %id, "another node ended this run: stopping it here");
            run.lose();
            return false;
        }
    }
    true
}

/// At most this many entries wait in a backlog; past it, while Redis is
/// away, the driver's copies are dropped and the entries are read back from
/// the log's frames when their turn comes: a long outage must not hold
/// every event twice.
const MAX_BACKLOG: usize = 10_000;

/// The entries logged here that Redis may not hold yet, in log order, as
/// the driver copied them (with their kind and token text, which the log
/// keeps no record of per event).
struct Backlog {
    logged: UnboundedReceiver<Entry>,
    entries: VecDeque<Entry>,
    /// The log index of `entries[0]` (of the next entry when empty).
    first: usize,
    /// How many entries the driver has handed over: the log index of the
    /// next one.
    received: usize,
    /// How many entries may wait here at most ([`MAX_BACKLOG`]).
    room: usize,
}

impl Backlog {
    fn new(logged: UnboundedReceiver<Entry>) -> Self {
        Self {
            logged,
            entries: VecDeque::new(),
            first: 0,
            received: 0,
            room: MAX_BACKLOG,
        }
    }

    /// Lines the backlog up with log index `cursor` (what Redis holds)
    /// and takes in what is ready, up to `max`, waiting for one entry at
    /// least; `false` once the driver has gone with nothing left to send.
    async fn ready_from(&mut self, run: &Run, cursor: usize, max: usize) -> bool {
        if cursor < self.first {
            // Redis lost entries it had acknowledged: only the log has
            // them still, as frames, read back as a follower would.
            let frames = run.log().frames(cursor, self.first - cursor);
            for frame in frames.into_iter().rev() {
                self.entries.push_front(Entry::parse(frame));
                self.first -= 1;
            }
        }
        let acknowledged = cursor.saturating_sub(self.first).min(self.entries.len());
        self.entries.drain(..acknowledged);
        self.first += acknowledged;
        if self.entries.is_empty() {
            // Another node may have written past what this one sent.
            self.first = self.first.max(cursor);
        }
        loop {
            while self.entries.len() < max {
                match self.logged.try_recv() {
                    Ok(entry) => self.receive(entry),
                    Err(_) => break,
                }
            }
            // Entries dropped while the backlog was full.
            let next = self.first + self.entries.len();
            if self.entries.len() < max && next < self.received {
                let count = (max - self.entries.len()).min(self.received - next);
                let frames = run.log().frames(next, count);
                self.entries.extend(frames.into_iter().map(Entry::parse));
            }
            if !self.entries.is_empty() {
                return true;
            }
            match self.logged.recv().await {
                Some(entry) => self.receive(entry),
                None => return false,
            }
        }
    }

    /// Keeps the driver's next entry if it is the one the backlog lacks
    /// and there is room; otherwise Redis holds it already, or the log
    /// will give it back when its turn comes.
    fn receive(&mut self, entry: Entry) {
        let index = self.received;
        self.received += 1;
        if index == self.first + self.entries.len() && self.entries.len() < self.room {
            self.entries.push_back(entry);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentEvent;
    use crate::config::RunsConfig;
    use crate::hub::node::{Alone, Node};
    use crate::hub::record::Recorder;
    use crate::hub::RunMeta;
    use crate::metrics::Metrics;
    use bytes::Bytes;

    /// A run's first event and five tokens, logged by a node: the entries
    /// as the driver would hand them over, and the run.
    fn six_entries_logged(id: &str) -> (Vec<Entry>, Arc<Run>) {
        let meta = RunMeta::for_test(id);
        let (mut recorder, first) = Recorder::start(&meta);
        let mut entries = vec![first];
        for n in 0..5 {
            entries.push(recorder.record(AgentEvent::Token(format!(" {n}"))));
        }
        let node = Node::new(
            &RunsConfig::default(),
            Metrics::new().unwrap(),
            Arc::new(Alone),
        );
        let (run, _) = node.mirror(meta, entries.clone());
        (entries, run)
    }

    fn frames(backlog: &Backlog) -> Vec<Bytes> {
        backlog.entries.iter().map(|e| e.frame.clone()).collect()
    }

    /// The backlog follows the cursor wherever Redis puts it: past what it
    /// acknowledged, back before it (from the log), ahead of what was sent.
    #[tokio::test]
    async fn the_backlog_lines_up_with_what_redis_holds() {
        let (entries, run) = six_entries_logged("r1");
        let (copies, logged) = tokio::sync::mpsc::unbounded_channel();
        let mut backlog = Backlog::new(logged);
        let frame = |i: usize| entries[i].frame.clone();
        for entry in &entries[..3] {
            copies.send(entry.clone()).unwrap();
        }
        assert!(backlog.ready_from(&run, 0, 10).await);
        assert_eq!(frames(&backlog), [frame(0), frame(1), frame(2)]);
        assert!(backlog.ready_from(&run, 2, 10).await);
        assert_eq!((backlog.first, frames(&backlog)), (2, vec![frame(2)]));
        assert!(backlog.ready_from(&run, 1, 10).await, "Redis lost event 2");
        assert_eq!(
            (backlog.first, frames(&backlog)),
            (1, vec![frame(1), frame(2)])
        );
        assert_eq!(backlog.entries[0].token, entries[1].token);
        for entry in &entries[3..] {
            copies.send(entry.clone()).unwrap();
        }
        assert!(
            backlog.ready_from(&run, 5, 10).await,
            "another node wrote 4 and 5"
        );
        assert_eq!((backlog.first, frames(&backlog)), (5, vec![frame(5)]));
        drop(copies);
        assert!(!backlog.ready_from(&run, 6, 10).await);
    }

    /// Past its room, a backlog drops the driver's copies and reads the
    /// entries back from the log: the same entries, in order.
    #[tokio::test]
    async fn a_full_backlog_reads_the_rest_back_from_the_log() {
        let (entries, run) = six_entries_logged("r2");
        let (copies, logged) = tokio::sync::mpsc::unbounded_channel();
        let mut backlog = Backlog::new(logged);
        backlog.room = 2;
        for entry in &entries {
            copies.send(entry.clone()).unwrap();
        }
        assert!(backlog.ready_from(&run, 0, 10).await);
        let want: Vec<Bytes> = entries.iter().map(|e| e.frame.clone()).collect();
        assert_eq!(frames(&backlog), want);
        let tokens: Vec<_> = backlog.entries.iter().map(|e| e.token.clone()).collect();
        let sent: Vec<_> = entries.iter().map(|e| e.token.clone()).collect();
        assert_eq!(tokens, sent, "read back with their token text");
        assert!(backlog.ready_from(&run, 4, 3).await);
        assert_eq!(frames(&backlog), want[4..].to_vec());
    }
}
