//! Cancels through pub/sub: a `DELETE` on any node reaches the node that
//! drives the run.

use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;

use super::conn::{bounded, Backoff};
use super::keys::{run_key, CANCEL_CHANNEL};
use super::Inner;
use crate::hub::{HubError, RunId, RunStatus};

impl Inner {
    /// Asks whichever node drives run `id` to cancel it; waits (briefly)
    /// for the owner to log the terminal event.
    pub(super) async fn ask_to_cancel(&self, id: &RunId) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        bounded(conn.publish::<_, _, ()>(CANCEL_CHANNEL, id.as_str())).await?;
        let deadline = tokio::time::Instant::now() + crate::hub::node::CANCEL_WAIT;
        while tokio::time::Instant::now() < deadline {
            let status: Option<String> = bounded(conn.hget(run_key(id), "status")).await?;
            if status.as_deref() != Some(RunStatus::Running.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Cancels runs of this node that a `DELETE` on any node asked to cancel.
pub(super) async fn listen_for_cancels(inner: Weak<Inner>) {
    let mut backoff = Backoff::new();
    loop {
        let Some(client) = inner.upgrade().map(|hub| hub.client.clone()) else {
            return;
        };
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::debug!("cannot listen for cancels yet: {e}");
                backoff.wait().await;
                continue;
            }
        };
        if pubsub.subscribe(CANCEL_CHANNEL).await.is_err() {
            backoff.wait().await;
            continue;
        }
        backoff.reset();
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Some(hub) = inner.upgrade() else {
                return;
            };
            let Some(id) = message
                .get_payload::<String>()
                .ok()
                .and_then(|p| RunId::parse(&p))
            else {
                continue;
            };
            if let Some(run) = hub.local.driven(&id) {
                tokio::spawn(async move { run.cancel().await });
            }
        }
    }
}
