//! `[webhooks]` as written in the config, and as checked: the one place
//! for the run webhooks' settings. It depends on nothing else of Sluice
//! but the parsers of its values, so that the config can check it when it
//! loads.

use std::time::Duration;

use serde::Deserialize;

use super::signing::SigningSecret;
use super::urls::AllowedUrls;

/// `[webhooks]`: a signed `run.finished` POST when a run made with a
/// `webhook_url` ends (SPEC 13). Off until `secret` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The Standard Webhooks secret, `whsec_` and base64.
    pub secret: Option<String>,
    /// A run's `webhook_url` must lie under one of these (same scheme, host
    /// and port; path under the prefix's path).
    pub allowed_urls: Vec<String>,
    /// How long one attempt waits for an answer.
    pub timeout_secs: u64,
    /// The waits between attempts; after the last one the delivery fails.
    pub retry_secs: Vec<u64>,
    /// Attempts in flight at once on this node, at most.
    pub max_concurrent: usize,
    /// How long finished deliveries stay listed.
    pub keep_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            secret: None,
            allowed_urls: Vec::new(),
            timeout_secs: 10,
            retry_secs: vec![5, 30, 120, 600, 1800, 3600],
            max_concurrent: 64,
            keep_secs: 7 * 24 * 3600,
        }
    }
}

/// `[webhooks]`, checked: present only when a secret is set.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What signs every request.
    pub secret: SigningSecret,
    /// Where a run's `webhook_url` may point.
    pub allowed: AllowedUrls,
    /// How long one attempt waits for an answer.
    pub timeout: Duration,
    /// The waits between attempts.
    pub retry_secs: Vec<u64>,
    /// Attempts in flight at once on this node, at most.
    pub max_concurrent: usize,
    /// How long finished deliveries stay listed.
    pub keep: Duration,
}

impl Settings {
    /// The settings of `config`, `None` when webhooks are off (no secret).
    pub fn from_config(config: &WebhooksConfig) -> Result<Option<Self>, String> {
        let Some(secret) = config.secret.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let secret = SigningSecret::parse(secret).map_err(|e| format!("webhooks.secret: {e}"))?;
        if config.allowed_urls.is_empty() {
            return Err("webhooks.allowed_urls must list at least one URL prefix when webhooks.secret is set".into());
        }
        let allowed = AllowedUrls::parse(&config.allowed_urls)?;
        if config.timeout_secs == 0 || config.max_concurrent == 0 {
            return Err(
                "webhooks.timeout_secs and webhooks.max_concurrent must be at least 1".into(),
            );
        }
        // Bounds that keep every sum of them, and Redis's expiries, in range.
        const HOUR: u64 = 3600;
        const YEAR: u64 = 365 * 24 * HOUR;
        if config.timeout_secs > HOUR
            || config.keep_secs > YEAR
            || config.retry_secs.len() > 100
            || config.retry_secs.iter().any(|wait| *wait > 30 * 24 * HOUR)
        {
            return Err("webhooks: timeout_secs is at most 3600, keep_secs at most a year, retry_secs at most 100 waits of at most 30 days".into());
        }
        Ok(Some(Self {
            secret,
            allowed,
            timeout: Duration::from_secs(config.timeout_secs),
            retry_secs: config.retry_secs.clone(),
            max_concurrent: config.max_concurrent,
            keep: Duration::from_secs(config.keep_secs.max(1)),
        }))
    }

    /// The longest a delivery lives: every attempt and wait of its
    /// schedule, then its keeping.
    pub fn lifetime(&self) -> Duration {
        let waits: u64 = self.retry_secs.iter().sum();
        let attempts = self.retry_secs.len() as u32 + 1;
        Duration::from_secs(waits) + self.timeout * attempts + self.keep
    }
}
