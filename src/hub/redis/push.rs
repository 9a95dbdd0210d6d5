//! Push runs on the shared hub (SPEC 12): no node drives them, so that a
//! run outlives the node that created it and a publish may reach any node.
//!
//! The run's producer state lives in its hash (`published`, `tokens`,
//! `first_ms`, `last_ms`, `idle_ms`). A publish reads it, records the new
//! events into frames with the seqs that follow, and appends them with one
//! Lua script that checks `published` has not moved since: the check and
//! the append are one step in Redis, so two nodes publishing at once can
//! never interleave or duplicate (the one that lost reads again and
//! retries, and its `Sluice-Offset` then skips what the other appended).
//! Every node reads the run as a mirror, like a run another node drives.
//!
//! Ends that no producer writes (a `DELETE`, the idle timeout,
//! `max_run_secs`) go through the same script, from whichever node sees
//! them first; every node watches the `pushing` set for idle runs.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;

use super::conn::bounded;
use super::keys::PUSHING;
use super::keys::{events_key, gone_key, run_key, watch_key, GONE_SECS, MAX_EVENTS};
use super::stored::{now_ms, Producer, Stored};
use super::stream::add_script_args;
use super::Inner;
use crate::agent::push::timed_out;
use crate::agent::AgentEvent;
use crate::hub::record::{Entry, Recorder};
use crate::hub::{HubError, Published, RunId, RunStatus, Seq, Viewer};

/// How often a node looks for idle push runs.
const IDLE_EVERY: Duration = Duration::from_millis(500);
/// How many times a publish reads again after another node's append.
const ATTEMPTS: usize = 100;

/// Appends frames if `published` is still what the caller read.
///
/// KEYS: the run's hash and stream. ARGV: the `published` read, the new
/// `published`, `tokens`, `first_ms`, `last_ms`, the end's status,
/// `finished` and `usage` (empty unless the frames end the run), the
/// first frame's seq, the stream's bound (`MAXLEN ~`, as for every run),
/// the retention and the gone id's lifetime in seconds, the owner, the run
/// id, then four for each entry: its frame, kind, token text and usage
/// (the stream's fields, see `super::stream`). KEYS also has the gone id's key and the `pushing`
/// set. An end expires the run with it, in the same step, so that no
/// failure after it can leave a finished run's keys forever.
const APPEND: &str = r"
local status = redis.call('HGET', KEYS[1], 'status')
local published = redis.call('HGET', KEYS[1], 'published') or '0'
if status ~= 'running' then return {'finished', status or '', published} end
if published ~= ARGV[1] then return {'moved', published} end
local seq = tonumber(ARGV[9])
for i = 15, #ARGV, 4 do
  local xadd = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], seq .. '-0', 'f', ARGV[i], 'k', ARGV[i + 1]}
  if ARGV[i + 1] == 'token' then
    table.insert(xadd, 't')
    table.insert(xadd, ARGV[i + 2])
  end
  if ARGV[i + 3] ~= '' then
    table.insert(xadd, 'u')
    table.insert(xadd, ARGV[i + 3])
  end
  redis.call(unpack(xadd))
  seq = seq + 1
end
redis.call('HSET', KEYS[1], 'published', ARGV[2], 'tokens', ARGV[3], 'first_ms', ARGV[4], 'last_ms', ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[6], 'finished', ARGV[7], 'usage', ARGV[8])
  redis.call('EXPIRE', KEYS[1], ARGV[11])
  redis.call('EXPIRE', KEYS[2], ARGV[11])
  redis.call('SET', KEYS[3], ARGV[13], 'EX', ARGV[12])
  redis.call('SREM', KEYS[4], ARGV[14])
end
return {'ok', ARGV[2]}
";

/// What the append script did.
enum Appended {
    Ok,
    /// Another publish appended first: read again.
    Moved,
    Finished {
        status: RunStatus,
        offset: Seq,
    },
}

impl Inner {
    /// Publishes `events` to push run `id` (see [`crate::hub::HubBackend::publish`]).
    pub(super) async fn publish_push(
        &self,
        id: &RunId,
        viewer: &Viewer,
        given: Option<Seq>,
        events: Vec<AgentEvent>,
    ) -> Result<Published, HubError> {
        for _ in 0..ATTEMPTS {
            let (stored, producer) = self.load_push(id, viewer).await?;
            let offset = producer.published;
            if stored.status != RunStatus::Running {
                return Err(HubError::Finished {
                    status: stored.status,
                    offset,
                });
            }
            let skip = match given {
                Some(given) if given > offset => {
                    return Err(HubError::OffsetMismatch { given, offset })
                }
                Some(given) => usize::try_from(offset - given).unwrap_or(usize::MAX),
                None => 0,
            };
            let mut recorder = producer.recorder(&stored.meta);
            let mut entries = Vec::new();
            for event in events.iter().skip(skip) {
                let entry = recorder.record(event.clone());
                let end = entry.end.is_some();
                entries.push(entry);
                if end {
                    break;
                }
            }
            if entries.is_empty() {
                return Ok(Published {
                    appended: 0,
                    offset,
                    status: RunStatus::Running,
                });
            }
            match self.append(&stored, &producer, &recorder, &entries).await? {
                Appended::Ok => {
                    let status = self.finish(&stored, &entries);
                    return Ok(Published {
                        appended: entries.len() as u64,
                        offset: offset + entries.len() as u64,
                        status,
                    });
                }
                Appended::Moved => continue,
                Appended::Finished { status, offset } => {
                    return Err(HubError::Finished { status, offset })
                }
            }
        }
        Err(HubError::Unavailable(
            "other publishes to this run kept appending first; try again".into(),
        ))
    }

    /// Ends push run `stored` with the entry `end` makes, unless it has
    /// ended already; the status it has then.
    pub(super) async fn end_push(
        &self,
        stored: &Stored,
        end: impl Fn(&mut Recorder) -> Entry,
    ) -> Result<RunStatus, HubError> {
        for _ in 0..ATTEMPTS {
            let (stored, producer) = self.load_push(&stored.meta.id, &stored.meta.owner).await?;
            if stored.status != RunStatus::Running {
                return Ok(stored.status);
            }
            let mut recorder = producer.recorder(&stored.meta);
            let entries = vec![end(&mut recorder)];
            match self.append(&stored, &producer, &recorder, &entries).await? {
                Appended::Ok => return Ok(self.finish(&stored, &entries)),
                Appended::Moved => continue,
                Appended::Finished { status, .. } => return Ok(status),
            }
        }
        Err(HubError::Unavailable(
            "the run kept changing; try again".into(),
        ))
    }

    /// The run and its producer state; `NotPush` for any other run.
    async fn load_push(&self, id: &RunId, viewer: &Viewer) -> Result<(Stored, Producer), HubError> {
        let stored = self.load_meta(id, viewer).await?;
        let producer = stored.producer.ok_or(HubError::NotPush)?;
        Ok((stored, producer))
    }

    /// Runs the append script for `entries`, recorded after `producer`.
    async fn append(
        &self,
        stored: &Stored,
        producer: &Producer,
        recorder: &Recorder,
        entries: &[Entry],
    ) -> Result<Appended, HubError> {
        let id = &stored.meta.id;
        let end = entries.last().and_then(|e| e.end.as_ref());
        let mut script = redis::cmd("EVAL");
        script
            .arg(APPEND)
            .arg(4)
            .arg(run_key(id))
            .arg(events_key(id))
            .arg(gone_key(id))
            .arg(PUSHING)
            .arg(producer.published)
            .arg(producer.published + entries.len() as u64)
            .arg(recorder.tokens())
            .arg(
                recorder
                    .first_token()
                    .map_or_else(String::new, |t| t.as_millis().to_string()),
            )
            .arg(now_ms())
            .arg(end.map_or("", |e| e.status.as_str()))
            .arg(end.map_or_else(String::new, |_| crate::hub::rfc3339(SystemTime::now())))
            .arg(end.map_or_else(String::new, |e| e.usage.to_string()))
            .arg(producer.published + 2)
            .arg(MAX_EVENTS)
            .arg(self.retention.as_secs().max(1))
            .arg(self.retention.as_secs() + GONE_SECS)
            .arg(&stored.owner)
            .arg(id.as_str());
        for entry in entries {
            add_script_args(&mut script, entry);
        }
        let mut conn = self.conn.clone();
        let answer: Vec<String> = bounded(script.query_async(&mut conn)).await?;
        Ok(match answer.first().map(String::as_str) {
            Some("ok") => Appended::Ok,
            Some("moved") => Appended::Moved,
            _ => {
                let status = answer.get(1).map_or("", String::as_str);
                if status.is_empty() {
                    return Err(HubError::NotFound);
                }
                Appended::Finished {
                    status: RunStatus::parse(status),
                    offset: answer.get(2).and_then(|o| o.parse().ok()).unwrap_or(0),
                }
            }
        })
    }

    /// After an append: when it ended the run (the script has expired it
    /// already), the metrics. The run's status.
    fn finish(&self, stored: &Stored, entries: &[Entry]) -> RunStatus {
        let Some(end) = entries.last().and_then(|e| e.end.clone()) else {
            return RunStatus::Running;
        };
        self.metrics.run_finished(
            &stored.meta.agent,
            end.status.as_str(),
            end.ttft,
            end.duration,
        );
        end.status
    }

    /// Ends push runs whose producer has been idle for their timeout, that
    /// reached `max_run_secs`, or that were made with `cancel_on_disconnect`
    /// and have had no subscriber on any node for the disconnect grace
    /// (`unwatched`: since when this node has seen each so). Any node may;
    /// the append script makes sure one does.
    async fn end_idle_push_runs(
        &self,
        unwatched: &mut HashMap<RunId, std::time::Instant>,
    ) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = bounded(conn.smembers(PUSHING)).await?;
        let now = now_ms();
        for id in ids.iter().filter_map(|id| RunId::parse(id)) {
            let fields: HashMap<String, String> = bounded(conn.hgetall(run_key(&id))).await?;
            if fields.is_empty() {
                let _: () = bounded(conn.srem(PUSHING, id.as_str())).await?;
                continue;
            }
            let stored = Stored::from_fields(&id, fields);
            let Some(producer) = stored.producer else {
                continue;
            };
            if stored.status != RunStatus::Running {
                let _: () = bounded(conn.srem(PUSHING, id.as_str())).await?;
                continue;
            }
            let created = stored
                .meta
                .created_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let idle = Duration::from_millis(producer.idle_ms);
            // One run's trouble must not keep the others from their end.
            let ended =
                if stored.meta.cancel_on_disconnect && self.unwatched_for(&id, unwatched).await? {
                    Some(self.end_push(&stored, Recorder::cancelled).await)
                } else if now.saturating_sub(producer.last_ms) >= producer.idle_ms {
                    let end = self.end_push(&stored, |recorder| recorder.record(timed_out(idle)));
                    Some(end.await)
                } else if let Some(limit) = self
                    .max_run
                    .filter(|limit| now.saturating_sub(created) >= limit.as_millis() as u64)
                {
                    Some(
                        self.end_push(&stored, |recorder| recorder.timed_out(limit))
                            .await,
                    )
                } else {
                    None
                };
            if let Some(Err(e)) = ended {
                tracing::warn!(run_id = %id, error = %e, "could not end an idle push run");
            }
        }
        unwatched.retain(|id, _| ids.iter().any(|i| i == id.as_str()));
        Ok(())
    }

    /// Whether run `id` has had no subscriber on any node for the
    /// disconnect grace (and at least a second, for its first to come).
    async fn unwatched_for(
        &self,
        id: &RunId,
        unwatched: &mut HashMap<RunId, std::time::Instant>,
    ) -> Result<bool, HubError> {
        let mut conn = self.conn.clone();
        let counts: HashMap<String, i64> = bounded(conn.hgetall(watch_key(id))).await?;
        if counts.values().sum::<i64>() > 0 {
            unwatched.remove(id);
            return Ok(false);
        }
        let since = *unwatched
            .entry(id.clone())
            .or_insert_with(std::time::Instant::now);
        Ok(since.elapsed() >= self.disconnect_grace.max(Duration::from_secs(1)))
    }
}

/// Every node's watch for idle push runs, until the hub is dropped.
pub(super) async fn watch_idle_push_runs(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(IDLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unwatched = HashMap::new();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.end_idle_push_runs(&mut unwatched).await {
            tracing::debug!(error = %e, "could not look for idle push runs");
        }
    }
}
