//! The sender: takes due deliveries from the store, at most
//! `max_concurrent` in flight, POSTs each one signed, and records how it
//! went. Nothing here runs on a run's path: a run only ever waits for the
//! store's record of its end.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::CONTENT_TYPE;
use tokio::sync::OwnedSemaphorePermit;

use super::store::{next_after, now_ms, Claimed, Outcome, Status};
use super::Inner;

/// How long a claim holds a delivery beyond the attempt's timeout, so no
/// other node takes it while this one may still be sending.
const HOLD_MARGIN: Duration = Duration::from_secs(5);
/// How often overdue expected runs are looked for (the shared store's
/// safety net for a node that died with runs it had started).
const OVERDUE_EVERY: Duration = Duration::from_secs(1);

/// Takes due deliveries and sends them until the webhooks are dropped.
pub(crate) async fn deliver_due(inner: Weak<Inner>) {
    let mut failing = false;
    loop {
        let Some(hooks) = inner.upgrade() else {
            return;
        };
        let wake = hooks.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let free = hooks.permits.available_permits();
        let mut full = false;
        if free > 0 {
            let hold = hooks.settings.timeout + HOLD_MARGIN;
            let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
            match hooks.store.claim(now_ms(), free, hold_ms).await {
                Ok(claimed) => {
                    failing = false;
                    full = claimed.len() == free;
                    for delivery in claimed {
                        let Ok(permit) = hooks.permits.clone().try_acquire_owned() else {
                            break;
                        };
                        tokio::spawn(attempt(hooks.clone(), delivery, permit));
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("cannot take due webhook deliveries: {e}");
                    }
                    failing = true;
                }
            }
        }
        if full {
            continue;
        }
        let wait = match hooks.store.next_due() {
            Some(due) => Duration::from_millis(due.saturating_sub(now_ms())).min(hooks.poll),
            None => hooks.poll,
        };
        // `hooks` lives through the wait and goes at the end of the turn:
        // once every other handle is gone, the next upgrade fails.
        tokio::select! {
            () = &mut wake => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Makes the deliveries of expected runs that have ended without one
/// (their node died before it could), until the webhooks are dropped.
pub(crate) async fn find_overdue(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(OVERDUE_EVERY).await;
        let Some(hooks) = inner.upgrade() else {
            return;
        };
        match hooks.store.overdue(now_ms()).await {
            Ok(runs) => {
                for expected in runs {
                    hooks.run_ended(expected).await;
                }
            }
            Err(e) => tracing::debug!("cannot look for overdue webhooks: {e}"),
        }
    }
}

/// One attempt: POST, judge the answer, record it, free the slot.
async fn attempt(hooks: Arc<Inner>, delivery: Claimed, permit: OwnedSemaphorePermit) {
    let outcome = post(&hooks, &delivery).await;
    let next = next_after(&delivery, &outcome, &hooks.settings.retry_secs);
    let label = match next.status {
        Status::Delivered => "delivered",
        Status::Pending => "retried",
        Status::Failed => "failed",
    };
    hooks.metrics.webhook(label);
    // Ids, statuses and errors only: never the body or the secret.
    match &outcome {
        Outcome::Delivered { status } => tracing::info!(
            delivery = %delivery.id, status, attempt = delivery.attempts + 1, "webhook delivered"
        ),
        Outcome::Failed { status, error, .. } => tracing::warn!(
            delivery = %delivery.id, status = ?status, attempt = delivery.attempts + 1,
            next = label, "webhook attempt failed: {error}"
        ),
    }
    let keep_ms = u64::try_from(hooks.settings.keep.as_millis()).unwrap_or(u64::MAX);
    let id = delivery.id.clone();
    if let Err(e) = hooks.store.report(delivery, outcome, next, keep_ms).await {
        // The claim's hold ends and the delivery is taken again: the
        // receiver may see this attempt twice, with the same webhook-id.
        tracing::warn!(delivery = %id, "cannot record a webhook attempt: {e}");
    }
    drop(permit);
    hooks.wake.notify_one();
}

/// Sends `delivery` once: 2xx delivers it; 410 stops it; anything else,
/// or no answer within the timeout, fails this attempt.
async fn post(hooks: &Inner, delivery: &Claimed) -> Outcome {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut request = hooks
        .client
        .post(&delivery.url)
        .timeout(hooks.settings.timeout)
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in hooks
        .settings
        .secret
        .headers(&delivery.id, timestamp, &delivery.body)
    {
        request = request.header(name, value);
    }
    match request.body(delivery.body.clone()).send().await {
        Ok(answer) if answer.status().is_success() => Outcome::Delivered {
            status: answer.status().as_u16(),
        },
        Ok(answer) => {
            let status = answer.status().as_u16();
            Outcome::Failed {
                status: Some(status),
                error: format!("the receiver answered {}", answer.status()),
                stop: status == 410,
            }
        }
        Err(e) => Outcome::Failed {
            status: None,
            error: if e.is_timeout() {
                format!("no answer within {} s", hooks.settings.timeout.as_secs())
            } else if e.is_connect() {
                "cannot connect to the receiver".to_owned()
            } else {
                format!("the request failed: {}", e.without_url())
            },
            stop: false,
        },
    }
}
