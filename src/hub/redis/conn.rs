//! The connection to Redis: opening it, bounding every call in time, and
//! waiting between attempts while Redis is away.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::hub::HubError;

/// The longest wait between attempts while Redis is unreachable.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a request waits for Redis before answering 503.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits between attempts while Redis is unreachable: from 100 ms,
/// doubling up to [`BACKOFF_MAX`]; from the start again once one works.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) const FIRST: Duration = Duration::from_millis(100);

    pub(super) fn new() -> Self {
        Self(Self::FIRST)
    }

    pub(super) fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> HubError {
    HubError::Unavailable(format!("the shared hub (Redis) is unreachable: {e}"))
}

/// A client of the Redis at `url` and a managed connection to it, which
/// reconnects quickly after an outage and never waits forever on a
/// connection that died without saying so. The hub and the webhook store
/// each open one.
pub(crate) async fn open(url: &str) -> Result<(redis::Client, ConnectionManager), HubError> {
    let client = redis::Client::open(url).map_err(unavailable)?;
    let manager = redis::aio::ConnectionManagerConfig::new()
        .set_factor(100)
        .set_exponent_base(2)
        .set_max_delay(1_000)
        .set_number_of_retries(3)
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(REQUEST_TIMEOUT);
    let conn = bounded(ConnectionManager::new_with_config(client.clone(), manager)).await?;
    Ok((client, conn))
}

/// Runs `command` against Redis, or fails with `Unavailable` in bounded time.
pub(crate) async fn bounded<T>(
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, HubError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable("no answer in time")),
    }
}
