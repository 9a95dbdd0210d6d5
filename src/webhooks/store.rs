//! Where deliveries are kept: what a delivery is, the schedule that moves
//! it on after each attempt, the [`Store`] every backend offers, and the
//! in-process one. The Redis one is in `redis.rs`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Serialize;

use crate::hub::{RunId, Viewer};

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Attempts are still to come.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// The receiver answered 410, or the last attempt failed.
    Failed,
}

impl Status {
    /// The status as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// The status named `text`, as the API and Redis write it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One delivery as `GET /api/webhooks/deliveries` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The `webhook-id` of every attempt.
    pub id: String,
    /// The run whose end this delivery reports.
    pub run_id: String,
    /// The receiver, as the run's `webhook_url` gave it.
    pub url: String,
    /// Whether attempts are still to come, and how it ended.
    pub status: Status,
    /// Attempts made so far.
    pub attempts: u32,
    /// The HTTP status of the last answer, if one came.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<String>,
    /// When the delivery was recorded, as the run ended (RFC 3339).
    pub created_at: String,
}

/// A delivery to make: the run has ended and this is what to send.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The `webhook-id` every attempt sends, so receivers can drop duplicates.
    pub id: String,
    /// The run that ended; a run gets one delivery at most.
    pub run_id: RunId,
    /// The key that started the run: only it lists and retries the delivery.
    pub owner: Viewer,
    /// The receiver.
    pub url: String,
    /// The JSON sent, the same on every attempt (the signature covers it).
    pub body: Bytes,
    /// When it is recorded: its `created_at`, and when it is first due.
    pub now_ms: u64,
}

/// A delivery this node holds for one attempt, until it reports.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery, to report on.
    pub id: String,
    /// Where to POST.
    pub url: String,
    /// What to POST, signed at each attempt.
    pub body: Bytes,
    /// Attempts in the current round of the schedule (a manual retry
    /// starts a new round).
    pub tries: u32,
    /// Attempts so far, all rounds.
    pub attempts: u32,
    /// Proves the claim is still this node's when it reports.
    pub token: String,
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered {
        /// The receiver's status, shown as `last_status`.
        status: u16,
    },
    /// Another answer, or none: retried unless `stop` (a 410) or the
    /// schedule is over.
    Failed {
        /// The receiver's status, if it answered at all.
        status: Option<u16>,
        /// What went wrong, shown as `last_error`.
        error: String,
        /// The receiver asked for no more attempts (410).
        stop: bool,
    },
}

/// What a report changes the delivery to: the new status and, while
/// pending, the wait before the next attempt (counted by the store's
/// clock: Redis's own for the shared store, so nodes' clocks never matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// The delivery's status after the attempt.
    pub status: Status,
    /// While pending, how long until the next attempt is due.
    pub wait_ms: Option<u64>,
}

/// Where a delivery goes after an attempt: `retry_secs[tries]` is the wait
/// before the next attempt; there is none after the last wait.
pub fn next_after(claimed: &Claimed, outcome: &Outcome, retry_secs: &[u64]) -> Next {
    let end = |status| Next {
        status,
        wait_ms: None,
    };
    match outcome {
        Outcome::Delivered { .. } => end(Status::Delivered),
        Outcome::Failed { stop: true, .. } => end(Status::Failed),
        Outcome::Failed { .. } => match retry_secs.get(claimed.tries as usize) {
            Some(wait) => Next {
                status: Status::Pending,
                wait_ms: Some(wait.saturating_mul(1000)),
            },
            None => end(Status::Failed),
        },
    }
}

/// Why a manual retry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryRefused {
    /// No such delivery for this key.
    NotFound,
    /// Only a failed delivery is sent again; this one is not.
    NotFailed(Status),
}

/// A trouble with the store itself (Redis unreachable).
#[derive(Debug, Clone, thiserror::Error)]
#[error("webhook deliveries unavailable: {0}")]
pub struct StoreError(pub String);

impl From<crate::hub::HubError> for StoreError {
    fn from(e: crate::hub::HubError) -> Self {
        Self(e.to_string())
    }
}

/// A run with a webhook whose end the store is waiting for (the shared
/// store keeps these, so that a run whose node died still gets its webhook).
#[derive(Debug, Clone)]
pub struct Expected {
    /// The run to watch for its end.
    pub run_id: RunId,
    /// The key that started it, who will own the delivery.
    pub owner: Viewer,
    /// The run's `webhook_url`.
    pub url: String,
}

/// Where deliveries live. Each method is one step of a delivery's life;
/// the shared store makes each step atomic across nodes.
pub trait Store: Send + Sync + 'static {
    /// Remembers that run `expected` will need a delivery when it ends.
    fn expect(&self, expected: Expected, now_ms: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Runs expected for a while whose deliveries have not been made: their
    /// ends may have been missed (the shared store's, after a node died).
    fn overdue(&self, now_ms: u64) -> BoxFuture<'_, Result<Vec<Expected>, StoreError>>;
    /// Stops expecting `run` (it ended without a delivery being possible).
    fn forget(&self, run: RunId) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Records a pending delivery, due now; only the first one per run:
    /// `false` when the run has one already.
    fn enqueue(&self, new: NewDelivery) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Takes up to `max` due deliveries for one attempt each, holding each
    /// for `hold_ms` (after which another node may take it).
    fn claim(
        &self,
        now_ms: u64,
        max: usize,
        hold_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>>;
    /// Records an attempt; ignored when the claim is no longer held.
    fn report(
        &self,
        claimed: Claimed,
        outcome: Outcome,
        next: Next,
        keep_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Up to `limit` of `owner`'s deliveries, newest first, of `status` if given.
    fn list(
        &self,
        owner: Viewer,
        status: Option<Status>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, StoreError>>;
    /// Makes a failed delivery pending again, due now, with a new round of
    /// the schedule; it is listed as the newest.
    fn retry(
        &self,
        owner: Viewer,
        id: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Result<Delivery, RetryRefused>, StoreError>>;
    /// When the earliest pending delivery is due, if the store knows
    /// (the shared one is polled instead).
    fn next_due(&self) -> Option<u64>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A time in ms since the epoch as the API shows times.
pub fn rfc3339_ms(ms: u64) -> String {
    crate::hub::rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Finished deliveries one key keeps at most in memory, however young.
const MAX_PER_OWNER: usize = 10_000;

/// The in-process store: deliveries live as long as the process.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    deliveries: HashMap<String, Record>,
    /// Pending deliveries by due time.
    due: BTreeSet<(u64, String)>,
    /// Each owner's deliveries, oldest first.
    by_owner: HashMap<Viewer, VecDeque<String>>,
    /// Runs that have a delivery, by run id.
    runs: HashMap<String, String>,
    next_claim: u64,
}

struct Record {
    delivery: Delivery,
    owner: Viewer,
    body: Bytes,
    tries: u32,
    due_ms: Option<u64>,
    finished_ms: Option<u64>,
    claim: Option<String>,
}

impl MemoryStore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn set_due(&mut self, id: &str, due_ms: Option<u64>) {
        let Some(record) = self.deliveries.get_mut(id) else {
            return;
        };
        if let Some(old) = record.due_ms.take() {
            self.due.remove(&(old, id.to_owned()));
        }
        if let Some(due) = due_ms {
            self.due.insert((due, id.to_owned()));
        }
        record.due_ms = due_ms;
    }

    /// Drops `owner`'s oldest deliveries while they are finished and past
    /// `keep_ms`, or beyond the per-owner bound. A pending one stops the
    /// sweep: it waits for the next.
    fn prune(&mut self, owner: &Viewer, now_ms: u64, keep_ms: u64) {
        let Some(ids) = self.by_owner.get_mut(owner) else {
            return;
        };
        while let Some(id) = ids.front() {
            let finished = self.deliveries.get(id).map(|record| record.finished_ms);
            let drop = match finished {
                None => true,
                Some(None) => false,
                Some(Some(at)) => ids.len() > MAX_PER_OWNER || now_ms.saturating_sub(at) > keep_ms,
            };
            if !drop {
                break;
            }
            if let Some(record) = ids.pop_front().and_then(|id| self.deliveries.remove(&id)) {
                self.runs.remove(&record.delivery.run_id);
            }
        }
    }
}

impl Store for MemoryStore {
    fn expect(&self, _: Expected, _: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn overdue(&self, _: u64) -> BoxFuture<'_, Result<Vec<Expected>, StoreError>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn forget(&self, _: RunId) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn enqueue(&self, new: NewDelivery) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut state = self.state();
        let created = if state.runs.contains_key(new.run_id.as_str()) {
            false
        } else {
            state.runs.insert(new.run_id.to_string(), new.id.clone());
            state
                .by_owner
                .entry(new.owner.clone())
                .or_default()
                .push_back(new.id.clone());
            state.deliveries.insert(
                new.id.clone(),
                Record {
                    delivery: Delivery {
                        id: new.id.clone(),
                        run_id: new.run_id.to_string(),
                        url: new.url,
                        status: Status::Pending,
                        attempts: 0,
                        last_status: None,
                        last_error: None,
                        next_attempt_at: Some(rfc3339_ms(new.now_ms)),
                        created_at: rfc3339_ms(new.now_ms),
                    },
                    owner: new.owner,
                    body: new.body,
                    tries: 0,
                    due_ms: None,
                    finished_ms: None,
                    claim: None,
                },
            );
            state.set_due(&new.id, Some(new.now_ms));
            true
        };
        async move { Ok(created) }.boxed()
    }

    fn claim(
        &self,
        now_ms: u64,
        max: usize,
        hold_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        let mut state = self.state();
        let due: Vec<String> = state
            .due
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            state.next_claim += 1;
            let token = state.next_claim.to_string();
            state.set_due(&id, Some(now_ms.saturating_add(hold_ms)));
            if let Some(record) = state.deliveries.get_mut(&id) {
                record.claim = Some(token.clone());
                claimed.push(Claimed {
                    id,
                    url: record.delivery.url.clone(),
                    body: record.body.clone(),
                    tries: record.tries,
                    attempts: record.delivery.attempts,
                    token,
                });
            }
        }
        async move { Ok(claimed) }.boxed()
    }

    fn report(
        &self,
        claimed: Claimed,
        outcome: Outcome,
        next: Next,
        keep_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = self.state();
        let now = now_ms();
        let due_ms = next.wait_ms.map(|wait| now.saturating_add(wait));
        let owner = match state.deliveries.get_mut(&claimed.id) {
            Some(record) if record.claim.as_deref() == Some(claimed.token.as_str()) => {
                record.claim = None;
                record.tries = claimed.tries + 1;
                let delivery = &mut record.delivery;
                delivery.attempts = claimed.attempts + 1;
                delivery.status = next.status;
                delivery.next_attempt_at = due_ms.map(rfc3339_ms);
                match &outcome {
                    Outcome::Delivered { status } => {
                        delivery.last_status = Some(*status);
                        delivery.last_error = None;
                    }
                    Outcome::Failed { status, error, .. } => {
                        delivery.last_status = *status;
                        delivery.last_error = Some(error.clone());
                    }
                }
                if next.status != Status::Pending {
                    record.finished_ms = Some(now);
                }
                if next.status == Status::Delivered {
                    // Only a failed delivery is ever sent again.
                    record.body = Bytes::new();
                }
                Some(record.owner.clone())
            }
            _ => None,
        };
        if let Some(owner) = owner {
            state.set_due(&claimed.id, due_ms);
            state.prune(&owner, now, keep_ms);
        }
        async { Ok(()) }.boxed()
    }

    fn list(
        &self,
        owner: Viewer,
        status: Option<Status>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, StoreError>> {
        let state = self.state();
        let listed: Vec<Delivery> = state
            .by_owner
            .get(&owner)
            .into_iter()
            .flat_map(|ids| ids.iter().rev())
            .filter_map(|id| state.deliveries.get(id))
            .map(|record| &record.delivery)
            .filter(|delivery| status.is_none_or(|status| delivery.status == status))
            .take(limit)
            .cloned()
            .collect();
        async move { Ok(listed) }.boxed()
    }

    fn retry(
        &self,
        owner: Viewer,
        id: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Result<Delivery, RetryRefused>, StoreError>> {
        let mut state = self.state();
        let answer = match state.deliveries.get_mut(&id) {
            Some(record) if record.owner == owner => {
                if record.delivery.status == Status::Failed {
                    record.tries = 0;
                    record.finished_ms = None;
                    record.delivery.status = Status::Pending;
                    record.delivery.next_attempt_at = Some(rfc3339_ms(now_ms));
                    let delivery = record.delivery.clone();
                    let owner = record.owner.clone();
                    state.set_due(&id, Some(now_ms));
                    // Listed as new, as the shared store does.
                    if let Some(ids) = state.by_owner.get_mut(&owner) {
                        ids.retain(|other| *other != id);
                        ids.push_back(id.clone());
                    }
                    Ok(delivery)
                } else {
                    Err(RetryRefused::NotFailed(record.delivery.status))
                }
            }
            _ => Err(RetryRefused::NotFound),
        };
        async move { Ok(answer) }.boxed()
    }

    fn next_due(&self) -> Option<u64> {
        self.state().due.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(run: &str, owner: Option<&str>, now_ms: u64) -> NewDelivery {
        NewDelivery {
            id: format!("msg_{run}"),
            run_id: RunId::parse(run).unwrap(),
            owner: owner.map(str::to_owned),
            url: "http://127.0.0.1:9/hooks/".into(),
            body: Bytes::from_static(b"{}"),
            now_ms,
        }
    }

    fn failed(stop: bool) -> Outcome {
        Outcome::Failed {
            status: Some(500),
            error: "the receiver answered 500".into(),
            stop,
        }
    }

    #[test]
    fn the_schedule_waits_retry_secs_between_attempts_then_fails() {
        let mut claimed = Claimed {
            id: "msg_a".into(),
            url: String::new(),
            body: Bytes::new(),
            tries: 0,
            attempts: 0,
            token: String::new(),
        };
        let waits = [5, 30];
        let next = next_after(&claimed, &failed(false), &waits);
        assert_eq!((next.status, next.wait_ms), (Status::Pending, Some(5_000)));
        claimed.tries = 1;
        let next = next_after(&claimed, &failed(false), &waits);
        assert_eq!(next.wait_ms, Some(30_000));
        claimed.tries = 2;
        assert_eq!(
            next_after(&claimed, &failed(false), &waits).status,
            Status::Failed
        );
        claimed.tries = 0;
        assert_eq!(
            next_after(&claimed, &failed(true), &waits).status,
            Status::Failed
        );
        let delivered = Outcome::Delivered { status: 204 };
        assert_eq!(
            next_after(&claimed, &delivered, &waits).status,
            Status::Delivered
        );
    }

    const GONE: Next = Next {
        status: Status::Failed,
        wait_ms: None,
    };

    /// A store with two due deliveries of two owners, both claimed: the
    /// store, the first claim, its owner and the other owner.
    async fn two_claimed() -> (MemoryStore, Claimed, &'static str, &'static str) {
        let store = MemoryStore::default();
        assert!(store.enqueue(new("r1", Some("a"), 100)).await.unwrap());
        assert!(
            !store.enqueue(new("r1", Some("a"), 100)).await.unwrap(),
            "one per run"
        );
        assert!(store.enqueue(new("r2", Some("b"), 200)).await.unwrap());
        assert!(
            store.claim(50, 10, 1_000).await.unwrap().is_empty(),
            "not due yet"
        );
        let claimed = store.claim(300, 10, 1_000).await.unwrap();
        assert_eq!(claimed.len(), 2);
        let first = claimed[0].clone();
        let (owner, other) = if first.id == "msg_r1" {
            ("a", "b")
        } else {
            ("b", "a")
        };
        (store, first, owner, other)
    }

    #[tokio::test]
    async fn the_memory_store_holds_claims() {
        let (store, first, owner, _) = two_claimed().await;
        assert!(
            store.claim(300, 10, 1_000).await.unwrap().is_empty(),
            "held"
        );
        assert_eq!(store.next_due(), Some(1_300));
        let stale = Claimed {
            token: "stale".into(),
            ..first.clone()
        };
        store
            .report(stale, failed(true), GONE, u64::MAX)
            .await
            .unwrap();
        let listed = store.list(Some(owner.into()), None, 10).await.unwrap();
        assert_eq!(
            listed[0].status,
            Status::Pending,
            "a stale claim reports nothing"
        );
    }

    #[tokio::test]
    async fn the_memory_store_scopes_deliveries_by_owner() {
        let (store, first, owner, other) = two_claimed().await;
        store
            .report(first.clone(), failed(true), GONE, u64::MAX)
            .await
            .unwrap();
        let listed = store
            .list(Some(owner.into()), Some(Status::Failed), 10)
            .await
            .unwrap();
        assert_eq!((listed.len(), listed[0].attempts), (1, 1));
        assert!(store
            .list(Some(other.into()), Some(Status::Failed), 10)
            .await
            .unwrap()
            .is_empty());
        let retry = |key: &str| store.retry(Some(key.into()), first.id.clone(), 400);
        assert_eq!(
            retry(other).await.unwrap().err(),
            Some(RetryRefused::NotFound)
        );
        let again = retry(owner).await.unwrap().unwrap();
        assert_eq!(again.status, Status::Pending);
        assert_eq!(
            retry(owner).await.unwrap().err(),
            Some(RetryRefused::NotFailed(Status::Pending))
        );
        let retaken = store.claim(400, 10, 1_000).await.unwrap();
        assert_eq!(
            (retaken.len(), retaken[0].tries, retaken[0].attempts),
            (1, 0, 1)
        );
    }
}
