//! Signed requests to the user's own servers, in the Standard Webhooks
//! format (<https://www.standardwebhooks.com>): the `http` agent's calls,
//! and the run webhooks of SPEC 13, which this module sends.
//!
//! A run made with a `webhook_url` is expected ([`Webhooks::expect`])
//! before it starts. When it ends, its snapshot becomes a pending delivery
//! in the [`store`]; the [`send`] loop takes due deliveries, at most
//! `max_concurrent` at once, POSTs each signed, and records how it went,
//! which schedules the next attempt or ends the delivery. With the Redis
//! hub the deliveries live in Redis ([`redis`]), so that any node sends
//! them and a node's death loses none; in memory they live as long as the
//! process.

pub mod redis;
pub mod send;
pub mod settings;
pub mod signing;
pub mod store;
pub mod urls;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::config::{Config, ConfigError};
use crate::hub::{Hub, HubError, RunId, RunStatus, Viewer};
use crate::metrics::Metrics;
use settings::Settings;
use store::{Delivery, Expected, NewDelivery, RetryRefused, Status, Store, StoreError};

/// Why a `webhook_url` cannot be used: webhooks are off, or the URL is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UrlRefused {
    /// No `webhooks.secret` is set, so nothing could be signed or sent.
    #[error(
        "webhooks are off on this server (no webhooks.secret), so `webhook_url` cannot be used"
    )]
    Off,
    /// Webhooks are on, but this URL is not one they may go to.
    #[error(transparent)]
    Refused(#[from] urls::Refused),
}

/// The run webhooks of this node: cheap to clone; off when unconfigured.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

/// What the sender and the API share.
pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hub: Hub,
    pub(crate) client: reqwest::Client,
    pub(crate) metrics: Arc<Metrics>,
    /// Woken when a delivery becomes due here or an attempt ends.
    pub(crate) wake: Notify,
    /// Attempts in flight, at most `max_concurrent`.
    pub(crate) permits: Arc<Semaphore>,
    /// How often the store is polled when it cannot say when work is due.
    pub(crate) poll: Duration,
}

/// The checked `[webhooks]` of `config`; `None` when webhooks are off.
fn settings(config: &Config) -> Result<Option<Settings>, ConfigError> {
    Settings::from_config(&config.webhooks).map_err(ConfigError::Invalid)
}

impl Webhooks {
    /// Webhooks for the shared hub `hub`: deliveries live in the Redis of
    /// `hub.url`, where any node sends them. Off when no secret is set.
    pub async fn in_redis(
        config: &Config,
        hub: Hub,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let Some(settings) = settings(config)? else {
            return Ok(Self::default());
        };
        let store = redis::RedisStore::connect(&config.hub.url, settings.lifetime())
            .await
            .map_err(|e| ConfigError::Invalid(format!("webhooks: {e}")))?;
        Self::with_store(
            settings,
            Arc::new(store),
            hub,
            metrics,
            Duration::from_millis(250),
        )
    }

    /// Webhooks whose deliveries live in this process.
    pub fn in_memory(
        config: &Config,
        hub: Hub,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let Some(settings) = settings(config)? else {
            return Ok(Self::default());
        };
        let store = Arc::new(store::MemoryStore::default());
        Self::with_store(settings, store, hub, metrics, Duration::from_secs(1))
    }

    fn with_store(
        settings: Settings,
        store: Arc<dyn Store>,
        hub: Hub,
        metrics: Arc<Metrics>,
        poll: Duration,
    ) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            // A redirect could lead anywhere, past allowed_urls: it counts
            // as a failed attempt instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sluice-webhooks/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| {
                ConfigError::Invalid(format!("webhooks: cannot make an HTTP client: {e}"))
            })?;
        let inner = Arc::new(Inner {
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
            settings,
            store,
            hub,
            client,
            metrics,
            wake: Notify::new(),
            poll,
        });
        tokio::spawn(send::deliver_due(Arc::downgrade(&inner)));
        tokio::spawn(send::find_overdue(Arc::downgrade(&inner)));
        Ok(Self { inner: Some(inner) })
    }

    /// Whether webhooks are on.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// `text` as the URL a run's deliveries go to, if it may be used.
    pub fn check(&self, text: &str) -> Result<String, UrlRefused> {
        let inner = self.inner.as_ref().ok_or(UrlRefused::Off)?;
        Ok(inner.settings.allowed.check(text)?.to_string())
    }

    /// Remembers, before run `run` starts, that it needs a delivery to
    /// `url` when it ends: with the shared hub this survives the node.
    pub async fn expect(&self, run: &RunId, owner: &Viewer, url: &str) -> Result<(), StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let expected = Expected {
            run_id: run.clone(),
            owner: owner.clone(),
            url: url.to_owned(),
        };
        inner.store.expect(expected, store::now_ms()).await
    }

    /// Watches run `run`, started since [`Webhooks::expect`], and makes
    /// its delivery as soon as it ends.
    pub fn watch(&self, run: RunId, owner: Viewer, url: String) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        tokio::spawn(async move {
            let ended = inner.hub.ended(run.clone(), owner.clone()).await;
            if let Err(e) = ended {
                tracing::warn!(run_id = %run, "cannot wait for the run's end for its webhook: {e}");
                return;
            }
            let expected = Expected {
                run_id: run,
                owner,
                url,
            };
            inner.run_ended(expected).await;
        });
    }

    /// Up to `limit` of `owner`'s deliveries, newest first.
    pub async fn list(
        &self,
        owner: Viewer,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        match &self.inner {
            Some(inner) => inner.store.list(owner, status, limit).await,
            None => Ok(Vec::new()),
        }
    }

    /// Sends failed delivery `id` of `owner` again.
    pub async fn retry(
        &self,
        owner: Viewer,
        id: String,
    ) -> Result<Result<Delivery, RetryRefused>, StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(Err(RetryRefused::NotFound));
        };
        let answer = inner.store.retry(owner, id, store::now_ms()).await?;
        if answer.is_ok() {
            inner.wake.notify_one();
        }
        Ok(answer)
    }
}

impl Inner {
    /// Makes the delivery of an ended run: its snapshot, text included,
    /// as a `run.finished` body. Nothing when the run still runs; a run
    /// that no longer exists is forgotten.
    pub(crate) async fn run_ended(&self, expected: Expected) {
        let run = expected.run_id.clone();
        let snapshot = match self.hub.snapshot(run.clone(), expected.owner.clone()).await {
            Ok(snapshot) if snapshot.status == RunStatus::Running => return,
            Ok(snapshot) => snapshot,
            Err(HubError::NotFound | HubError::Gone) => {
                tracing::warn!(run_id = %run, "the run is gone before its webhook was made: no webhook");
                if let Err(e) = self.store.forget(run).await {
                    tracing::warn!("{e}");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(run_id = %run, "cannot read the run for its webhook, will look again: {e}");
                return;
            }
        };
        let now = store::now_ms();
        let body = json!({
            "type": "run.finished",
            "timestamp": store::rfc3339_ms(now),
            "data": snapshot,
        });
        let Ok(id) = RunId::generate() else {
            return;
        };
        let new = NewDelivery {
            id: format!("msg_{id}"),
            run_id: run.clone(),
            owner: expected.owner,
            url: expected.url,
            body: Bytes::from(body.to_string()),
            now_ms: now,
        };
        match self.store.enqueue(new).await {
            Ok(true) => {
                tracing::debug!(run_id = %run, "webhook delivery pending");
                self.wake.notify_one();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(run_id = %run, "cannot record the run's webhook, will look again: {e}")
            }
        }
    }
}
