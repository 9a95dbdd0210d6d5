//! Deliveries in Redis, for the shared hub: they survive a node's restart
//! or death, and any node sends them. Each step is one Lua script, so two
//! nodes never take the same attempt: a claim moves the delivery's due time
//! past the attempt's timeout and stamps it with a token, and only the
//! holder of that token may report.
//!
//! Keys (under `sluice:wh:`): `d:{id}` (hash: one delivery, its body
//! included), `due` (sorted set: pending deliveries by due time, ms),
//! `by:{owner}` (sorted set: an owner's deliveries by creation),
//! `run:{run id}` (the run's delivery id: one per run), `expect` (sorted
//! set: runs with a webhook whose end is awaited, by when to look next)
//! and `expect:{run id}` (hash: that run's url and owner).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::store::{
    rfc3339_ms, Claimed, Delivery, Expected, NewDelivery, Next, Outcome, RetryRefused, Status,
    Store, StoreError,
};
use crate::hub::redis::{bounded, owner_field, owner_of};
use crate::hub::{RunId, Viewer};

const DUE: &str = "sluice:wh:due";
const EXPECT: &str = "sluice:wh:expect";
/// How long after its run is expected an overdue check first looks, and
/// then how often it looks again while the run is running.
const LOOK_AGAIN_MS: u64 = 2_000;
/// Expected runs looked at per check at most.
const OVERDUE_BATCH: usize = 200;

fn delivery_key(id: &str) -> String {
    format!("sluice:wh:d:{id}")
}

fn owner_key(owner: &Viewer) -> String {
    format!("sluice:wh:by:{}", owner_field(owner))
}

fn run_key(run: &RunId) -> String {
    format!("sluice:wh:run:{run}")
}

fn expect_key(run: &RunId) -> String {
    format!("sluice:wh:expect:{run}")
}

/// Redis's own clock in ms, at the top of every script: the nodes'
/// clocks never decide when an attempt is due, so a node whose clock runs
/// ahead cannot take a delivery that another still holds.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Records a delivery unless its run has one: KEYS run, delivery, due, by
/// owner, expect, expect:{run}; ARGV id, run id, owner, url, body, how
/// long a delivery lives (s, then ms): older index entries go.
const ENQUEUE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[6]) == false then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[7]))
redis.call('HSET', KEYS[2], 'run_id', ARGV[2], 'owner', ARGV[3], 'url', ARGV[4],
  'body', ARGV[5], 'status', 'pending', 'attempts', 0, 'tries', 0,
  'created_ms', now, 'due_ms', now)
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('DEL', KEYS[6])
return 1
";

/// Takes due deliveries: KEYS due; ARGV max, hold (ms), token prefix,
/// delivery key prefix. Each taken one is due again when its hold ends,
/// so a node that dies mid-attempt leaves it to another.
const CLAIM: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. id
  if redis.call('HGET', key, 'status') == 'pending' then
    local token = ARGV[3] .. id
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    redis.call('HSET', key, 'claim', token)
    local f = redis.call('HMGET', key, 'url', 'body', 'tries', 'attempts')
    table.insert(out, {id, f[1], f[2], f[3], f[4], token})
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

/// Records an attempt if the claim is still held: KEYS delivery, due; ARGV
/// token, id, status, attempts, tries, last status, last error, wait (ms;
/// empty when finished), keep (s). A delivered one drops its body: only a
/// failed delivery is ever sent again.
const REPORT: &str = r"
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'claim')
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'attempts', ARGV[4], 'tries', ARGV[5],
  'last_status', ARGV[6], 'last_error', ARGV[7])
if ARGV[8] == '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[1], 'due_ms')
  if ARGV[3] == 'delivered' then redis.call('HDEL', KEYS[1], 'body') end
  redis.call('EXPIRE', KEYS[1], ARGV[9])
else
  local due = now + tonumber(ARGV[8])
  redis.call('HSET', KEYS[1], 'due_ms', due)
  redis.call('ZADD', KEYS[2], due, ARGV[2])
end
return 1
";

/// Makes a failed delivery of this owner pending again, due now, and
/// lists it as new: KEYS delivery, due, by owner; ARGV owner, id. Answers
/// the status it found ('' if none).
const RETRY: &str = r"
local f = redis.call('HMGET', KEYS[1], 'owner', 'status')
if f[1] ~= ARGV[1] or not f[2] then return '' end
if f[2] ~= 'failed' then return f[2] end
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'status', 'pending', 'tries', 0, 'due_ms', now)
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[2])
return 'failed'
";

/// The fields a listing shows (never the body).
const LISTED: [&str; 8] = [
    "run_id",
    "url",
    "status",
    "attempts",
    "last_status",
    "last_error",
    "due_ms",
    "created_ms",
];

/// Deliveries in Redis (see the module docs).
pub struct RedisStore {
    conn: ConnectionManager,
    /// This node's name, in claim tokens.
    node: String,
    /// How long a delivery may live: its whole schedule, then its keeping.
    lifetime: Duration,
}

/// An `EVAL` of `script` with `keys`; arguments follow.
/// (Every script starts with [`NOW`].)
fn eval(script: &str, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(format!("{NOW}{script}")).arg(keys.len());
    for key in keys {
        cmd.arg(*key);
    }
    cmd
}

impl RedisStore {
    /// Connects to `url` (the hub's Redis); a delivery lives at most
    /// `lifetime` (its schedule, then its keeping).
    pub async fn connect(url: &str, lifetime: Duration) -> Result<Self, StoreError> {
        let (_, conn) = crate::hub::redis::open(url).await?;
        let node = crate::hub::RunId::generate()
            .map_err(|e| StoreError(e.to_string()))?
            .to_string();
        Ok(Self {
            conn,
            node,
            lifetime,
        })
    }

    /// One delivery as listed, from its hash.
    fn delivery_of(id: &str, mut fields: HashMap<String, String>) -> Option<Delivery> {
        let mut take = |name: &str| fields.remove(name).unwrap_or_default();
        let status = Status::parse(&take("status"))?;
        let due_ms = take("due_ms").parse::<u64>().ok();
        Some(Delivery {
            id: id.to_owned(),
            run_id: take("run_id"),
            url: take("url"),
            status,
            attempts: take("attempts").parse().unwrap_or(0),
            last_status: take("last_status").parse().ok(),
            last_error: Some(take("last_error")).filter(|e| !e.is_empty()),
            next_attempt_at: due_ms.filter(|_| status == Status::Pending).map(rfc3339_ms),
            created_at: rfc3339_ms(take("created_ms").parse().unwrap_or(0)),
        })
    }

    async fn load(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = bounded(conn.hgetall(delivery_key(id))).await?;
        Ok(Self::delivery_of(id, fields))
    }
}

impl Store for RedisStore {
    fn expect(&self, expected: Expected, now_ms: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .hset_multiple(
                    expect_key(&expected.run_id),
                    &[
                        ("url", expected.url.as_str()),
                        ("owner", &owner_field(&expected.owner)),
                    ],
                )
                .ignore()
                .zadd(
                    EXPECT,
                    expected.run_id.as_str(),
                    now_ms.saturating_add(LOOK_AGAIN_MS),
                )
                .ignore();
            let mut conn = self.conn.clone();
            Ok(bounded(pipe.query_async::<()>(&mut conn)).await?)
        }
        .boxed()
    }

    fn overdue(&self, now_ms: u64) -> BoxFuture<'_, Result<Vec<Expected>, StoreError>> {
        async move {
            let mut conn = self.conn.clone();
            let runs: Vec<String> = bounded(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(EXPECT)
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(OVERDUE_BATCH)
                    .query_async(&mut conn),
            )
            .await?;
            let mut overdue = Vec::with_capacity(runs.len());
            for run in runs {
                let Some(run_id) = RunId::parse(&run) else {
                    let _: () = bounded(conn.zrem(EXPECT, &run)).await?;
                    continue;
                };
                // Looked at again later unless a delivery is made meanwhile.
                let _: () = bounded(conn.zadd(
                    EXPECT,
                    run_id.as_str(),
                    now_ms.saturating_add(LOOK_AGAIN_MS),
                ))
                .await?;
                // Only runs that have ended (or are gone) are overdue.
                let status: Option<String> =
                    bounded(conn.hget(crate::hub::redis::run_key(&run_id), "status")).await?;
                if status.as_deref() == Some(crate::hub::RunStatus::Running.as_str()) {
                    continue;
                }
                let mut fields: HashMap<String, String> =
                    bounded(conn.hgetall(expect_key(&run_id))).await?;
                let Some(url) = fields.remove("url") else {
                    let _: () = bounded(conn.zrem(EXPECT, run_id.as_str())).await?;
                    continue;
                };
                let owner = owner_of(&fields.remove("owner").unwrap_or_default());
                overdue.push(Expected { run_id, owner, url });
            }
            Ok(overdue)
        }
        .boxed()
    }

    fn forget(&self, run: RunId) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut pipe = redis::pipe();
            pipe.zrem(EXPECT, run.as_str())
                .ignore()
                .del(expect_key(&run))
                .ignore();
            let mut conn = self.conn.clone();
            Ok(bounded(pipe.query_async::<()>(&mut conn)).await?)
        }
        .boxed()
    }

    fn enqueue(&self, new: NewDelivery) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            let mut conn = self.conn.clone();
            let mut call = eval(
                ENQUEUE,
                &[
                    &run_key(&new.run_id),
                    &delivery_key(&new.id),
                    DUE,
                    &owner_key(&new.owner),
                    EXPECT,
                    &expect_key(&new.run_id),
                ],
            );
            call.arg(&new.id)
                .arg(new.run_id.as_str())
                .arg(owner_field(&new.owner))
                .arg(&new.url)
                .arg(new.body.as_ref())
                .arg(self.lifetime.as_secs().max(1))
                .arg(u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX));
            let created: i64 = bounded(call.query_async(&mut conn)).await?;
            Ok(created == 1)
        }
        .boxed()
    }

    fn claim(
        &self,
        // Redis's clock decides (see NOW).
        _now_ms: u64,
        max: usize,
        hold_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        async move {
            let mut conn = self.conn.clone();
            let stamp = crate::hub::RunId::generate().map_err(|e| StoreError(e.to_string()))?;
            let mut call = eval(CLAIM, &[DUE]);
            call.arg(max)
                .arg(hold_ms)
                .arg(format!("{}:{stamp}:", self.node))
                .arg("sluice:wh:d:");
            type Row = (String, String, Vec<u8>, Option<u32>, Option<u32>, String);
            let rows: Vec<Row> = bounded(call.query_async(&mut conn)).await?;
            Ok(rows
                .into_iter()
                .map(|(id, url, body, tries, attempts, token)| Claimed {
                    id,
                    url,
                    body: Bytes::from(body),
                    tries: tries.unwrap_or(0),
                    attempts: attempts.unwrap_or(0),
                    token,
                })
                .collect())
        }
        .boxed()
    }

    fn report(
        &self,
        claimed: Claimed,
        outcome: Outcome,
        next: Next,
        keep_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let (last_status, last_error) = match &outcome {
                Outcome::Delivered { status } => (Some(*status), String::new()),
                Outcome::Failed { status, error, .. } => (*status, error.clone()),
            };
            let mut conn = self.conn.clone();
            let mut call = eval(REPORT, &[&delivery_key(&claimed.id), DUE]);
            call.arg(&claimed.token)
                .arg(&claimed.id)
                .arg(next.status.as_str())
                .arg(claimed.attempts + 1)
                .arg(claimed.tries + 1)
                .arg(last_status.map_or_else(String::new, |s| s.to_string()))
                .arg(last_error)
                .arg(next.wait_ms.map_or_else(String::new, |w| w.to_string()))
                .arg((keep_ms / 1000).max(1));
            let _: i64 = bounded(call.query_async(&mut conn)).await?;
            Ok(())
        }
        .boxed()
    }

    fn list(
        &self,
        owner: Viewer,
        status: Option<Status>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, StoreError>> {
        /// Index entries read per page, and pages at most.
        const PAGE: isize = 200;
        const PAGES: isize = 50;
        async move {
            let mut conn = self.conn.clone();
            let key = owner_key(&owner);
            let mut listed = Vec::new();
            let mut expired = Vec::new();
            for page in 0..PAGES {
                let ids: Vec<String> =
                    bounded(conn.zrevrange(&key, page * PAGE, (page + 1) * PAGE - 1)).await?;
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("HMGET").arg(delivery_key(id)).arg(&LISTED[..]);
                }
                let all: Vec<Vec<Option<String>>> = bounded(pipe.query_async(&mut conn)).await?;
                for (id, values) in ids.iter().zip(all) {
                    let fields: HashMap<String, String> = LISTED
                        .iter()
                        .zip(values)
                        .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
                        .collect();
                    match Self::delivery_of(id, fields) {
                        Some(d) if status.is_none_or(|s| d.status == s) => listed.push(d),
                        Some(_) => {}
                        None => expired.push(id.clone()),
                    }
                    if listed.len() >= limit {
                        break;
                    }
                }
                if listed.len() >= limit || ids.len() < PAGE as usize {
                    break;
                }
            }
            // Removed once the pages are read, so no page shifts under them.
            if !expired.is_empty() {
                let _: () = bounded(conn.zrem(&key, expired)).await?;
            }
            Ok(listed)
        }
        .boxed()
    }

    fn retry(
        &self,
        owner: Viewer,
        id: String,
        // Redis's clock decides (see NOW).
        _now_ms: u64,
    ) -> BoxFuture<'_, Result<Result<Delivery, RetryRefused>, StoreError>> {
        async move {
            let mut conn = self.conn.clone();
            let mut call = eval(RETRY, &[&delivery_key(&id), DUE, &owner_key(&owner)]);
            call.arg(owner_field(&owner)).arg(&id);
            let found: String = bounded(call.query_async(&mut conn)).await?;
            match Status::parse(&found) {
                None => Ok(Err(RetryRefused::NotFound)),
                Some(Status::Failed) => Ok(self.load(&id).await?.ok_or(RetryRefused::NotFound)),
                Some(other) => Ok(Err(RetryRefused::NotFailed(other))),
            }
        }
        .boxed()
    }

    fn next_due(&self) -> Option<u64> {
        None
    }
}
