//! A run's hash: what makes a run known to every node, what records its
//! end, and reading it back.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde_json::Value;

use super::conn::bounded;
use super::keys::{
    chat_key, events_key, gone_key, owner_field, owner_of, run_key, GONE_SECS, PUSHING, RUNNING,
    RUNS,
};
use super::Inner;
use crate::hub::record::Recorder;
use crate::hub::{rfc3339, HubError, RunId, RunMeta, RunSnapshot, RunStatus, Seq, Viewer};

/// A run as Redis holds it.
pub(super) struct Stored {
    pub(super) meta: RunMeta,
    pub(super) owner: String,
    pub(super) status: RunStatus,
    pub(super) finished: Option<String>,
    pub(super) usage: Option<Value>,
    /// A push run's producer state; `None` for runs a node drives.
    pub(super) producer: Option<Producer>,
}

impl Stored {
    pub(super) fn from_fields(id: &RunId, mut fields: HashMap<String, String>) -> Self {
        let producer = Producer::from_fields(&mut fields);
        let mut take = |name: &str| fields.remove(name).unwrap_or_default();
        let owner = take("owner");
        let created_ms: u64 = take("created_ms").parse().unwrap_or(0);
        let finished = Some(take("finished")).filter(|f| !f.is_empty());
        let usage = serde_json::from_str(&take("usage")).ok();
        Self {
            meta: RunMeta {
                id: id.clone(),
                agent: take("agent"),
                model: take("model"),
                prompt: take("prompt"),
                created_at: UNIX_EPOCH + Duration::from_millis(created_ms),
                chat: Some(take("chat")).filter(|chat| !chat.is_empty()),
                cancel_on_disconnect: take("cod") == "1",
                owner: owner_of(&owner),
            },
            owner,
            status: RunStatus::parse(&take("status")),
            finished,
            usage,
            producer,
        }
    }

    pub(super) fn snapshot(self, events: u64, text: Option<String>) -> RunSnapshot {
        RunSnapshot {
            id: self.meta.id,
            agent: self.meta.agent,
            prompt: self.meta.prompt,
            status: self.status,
            created_at: rfc3339(self.meta.created_at),
            finished_at: self.finished,
            events,
            text,
            usage: self.usage,
        }
    }
}

impl Inner {
    /// The run's metadata from Redis, if `viewer` may see it.
    pub(super) async fn load_meta(&self, id: &RunId, viewer: &Viewer) -> Result<Stored, HubError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = bounded(conn.hgetall(run_key(id))).await?;
        if fields.is_empty() {
            let gone: Option<String> = bounded(conn.get(gone_key(id))).await?;
            return Err(match gone {
                Some(owner) if owner == owner_field(viewer) => HubError::Gone,
                _ => HubError::NotFound,
            });
        }
        let stored = Stored::from_fields(id, fields);
        if stored.owner != owner_field(viewer) {
            return Err(HubError::NotFound);
        }
        Ok(stored)
    }

    /// The commands that record a run's end: its status, when, its usage;
    /// out of `running`; expiry after the retention; its id remembered as
    /// gone for a day after that. The owner and any node reaping a lost
    /// run write the same.
    pub(super) fn end_commands(
        &self,
        id: &RunId,
        status: RunStatus,
        finished: SystemTime,
        usage: String,
        owner: String,
    ) -> Vec<redis::Cmd> {
        let secs = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        vec![
            redis::Cmd::hset_multiple(
                run_key(id),
                &[
                    ("status", status.as_str().to_owned()),
                    ("finished", rfc3339(finished)),
                    ("usage", usage),
                ],
            ),
            redis::Cmd::srem(RUNNING, id.as_str()),
            redis::Cmd::expire(run_key(id), secs),
            redis::Cmd::expire(events_key(id), secs),
            redis::Cmd::set_ex(gone_key(id), owner, self.retention.as_secs() + GONE_SECS),
        ]
    }

    /// The commands that make a run known to every node before its first
    /// event: its hash, the index, the running set, its chat.
    /// A push run (`push`: its idle timeout) belongs to no node: it goes
    /// to the `pushing` set instead of `running`, with its producer state.
    pub(super) fn start_commands(&self, meta: &RunMeta, push: Option<Duration>) -> Vec<redis::Cmd> {
        let created_ms = meta
            .created_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let id = meta.id.clone();
        let mut commands = Vec::new();
        if let Some(chat) = &meta.chat {
            commands.push(redis::Cmd::set_ex(
                chat_key(&meta.owner, chat),
                id.as_str(),
                self.index_for.as_secs(),
            ));
        }
        let node = if push.is_some() {
            String::new()
        } else {
            self.node.clone()
        };
        let mut fields = vec![
            ("agent", meta.agent.clone()),
            ("model", meta.model.clone()),
            ("chat", meta.chat.clone().unwrap_or_default()),
            ("prompt", meta.prompt.clone()),
            ("owner", owner_field(&meta.owner)),
            ("created_ms", created_ms.to_string()),
            ("node", node),
            (
                "cod",
                if meta.cancel_on_disconnect { "1" } else { "0" }.into(),
            ),
            ("status", RunStatus::Running.as_str().to_owned()),
        ];
        fields.extend(push.map(Producer::start_fields).unwrap_or_default());
        // Known to every node before its first event, or not started:
        // with Redis down, new runs are refused.
        commands.extend([
            redis::Cmd::hset_multiple(run_key(&id), &fields),
            redis::Cmd::zadd(RUNS, id.as_str(), created_ms as f64),
            // Ids whose runs have long expired leave the index.
            redis::Cmd::zrembyscore(
                RUNS,
                "-inf",
                created_ms.saturating_sub(self.index_for.as_millis()) as f64,
            ),
            redis::Cmd::sadd(if push.is_some() { PUSHING } else { RUNNING }, id.as_str()),
        ]);
        commands
    }
}

/// A push run's producer state, from its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Producer {
    /// Events published so far: the run's offset.
    pub published: Seq,
    /// Tokens among them.
    pub tokens: u64,
    /// When the first token was published.
    pub first_ms: Option<u64>,
    /// When the last publish was: what the idle watch measures from.
    pub last_ms: u64,
    /// How long the run may go without a publish.
    pub idle_ms: u64,
}

impl Producer {
    /// The producer state in a run's hash fields; `None` for a run that is
    /// not a push run.
    pub(super) fn from_fields(fields: &mut HashMap<String, String>) -> Option<Self> {
        let idle_ms = fields.remove("idle_ms")?.parse().ok()?;
        let mut number = |name: &str| fields.remove(name).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            published: number("published").unwrap_or(0),
            tokens: number("tokens").unwrap_or(0),
            first_ms: number("first_ms"),
            last_ms: number("last_ms").unwrap_or(0),
            idle_ms,
        })
    }

    /// The hash fields of a new push run.
    pub(super) fn start_fields(idle_timeout: Duration) -> Vec<(&'static str, String)> {
        vec![
            ("idle_ms", idle_timeout.as_millis().to_string()),
            ("published", "0".into()),
            ("tokens", "0".into()),
            ("last_ms", now_ms().to_string()),
        ]
    }

    /// A recorder that goes on after the events published so far.
    pub(super) fn recorder(&self, meta: &RunMeta) -> Recorder {
        Recorder::resume(
            meta,
            1 + self.published,
            self.tokens,
            self.first_ms.map(Duration::from_millis),
        )
    }
}

/// Now, in milliseconds since the epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
