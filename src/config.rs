//! The configuration: a TOML file whose keys are all optional, overridden by
//! `SLUICE_<SECTION>_<KEY>` environment variables, checked into one [`Config`].
//!
//! Precedence, lowest first: built-in defaults, the file, `SLUICE_BIND`,
//! `SLUICE_SERVER_*` and the other section variables, then the command line
//! (`--bind`), which `main` applies last.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::webhooks::settings::Settings;
pub use crate::webhooks::settings::WebhooksConfig;

/// A configuration that cannot be used, with a message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named on the command line could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file, as given, so the operator sees which one.
        path: String,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// A key is unknown, malformed or out of range; the message names it.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the listener and its limits.
    pub server: ServerConfig,
    /// `[runs]`: retention and cancellation of runs.
    pub runs: RunsConfig,
    /// `[auth]`: who may call the API.
    pub auth: AuthConfig,
    /// `[agents.NAME]`: the agents served besides the built-in `sim` and `push`.
    pub agents: BTreeMap<String, AgentConfig>,
    /// `[hub]`: in-process run logs, or Redis shared by several nodes.
    pub hub: HubConfig,
    /// `[webhooks]`: where and how run webhooks are sent.
    pub webhooks: WebhooksConfig,
}

/// `[server]`: the listener and the limits on what it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on; a non-loopback one needs API keys or `--allow-anonymous`.
    pub bind: String,
    /// Seconds without an event after which a `: keep-alive` comment is sent,
    /// so proxies and load balancers do not close a quiet stream.
    pub keep_alive_secs: u64,
    /// How long SIGINT/SIGTERM waits for streams to finish before it tells
    /// the rest to reconnect and exits.
    pub shutdown_grace_secs: u64,
    /// Open SSE responses beyond which new ones get `503` with `Retry-After`.
    pub max_streams: usize,
    /// Runs going at once beyond which starting another gets `503`.
    pub max_running: usize,
    /// Request bodies larger than this get `413`.
    pub max_body_bytes: usize,
    /// Origins allowed to call the API from a page of theirs (CORS, with
    /// credentials); empty: none, the default.
    pub cors_origins: Vec<String>,
    /// A client must send its request head within this long, or the
    /// connection is closed (slow-header attacks).
    pub header_read_timeout_secs: u64,
    /// The largest request head (request line and headers) read; beyond:
    /// 431. URLs longer than `max_url_bytes` get 414.
    pub max_header_bytes: usize,
    /// URLs longer than this get `414 uri_too_long`.
    pub max_url_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".to_owned(),
            keep_alive_secs: 15,
            shutdown_grace_secs: 10,
            max_streams: 100_000,
            max_running: 10_000,
            max_body_bytes: 1_048_576,
            cors_origins: Vec::new(),
            header_read_timeout_secs: 10,
            max_header_bytes: 256 * 1024,
            max_url_bytes: 60 * 1024,
        }
    }
}

/// `[runs]`: how long runs are kept and when an abandoned one is cancelled.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunsConfig {
    /// How long a finished run's events stay readable (resume, replay, snapshot).
    pub retention_secs: u64,
    /// When all retained runs exceed this, the runs that finished first are evicted.
    pub retention_bytes: u64,
    /// How long a one-shot run (or one created with `cancel_on_disconnect`) may
    /// go without a viewer before it is cancelled.
    pub disconnect_grace_secs: u64,
    /// Prompts larger than this get `413`.
    pub max_prompt_bytes: usize,
    /// A run still going after this long ends with `error` `run_timeout`; 0: no limit.
    pub max_run_secs: u64,
}

impl Default for RunsConfig {
    fn default() -> Self {
        Self {
            retention_secs: 300,
            retention_bytes: 256 * 1024 * 1024,
            disconnect_grace_secs: 15,
            max_prompt_bytes: 32 * 1024,
            max_run_secs: 3600,
        }
    }
}

/// `[auth]`: API keys and per-key limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Runs a key may start per minute, in bursts up to this many (`429` beyond); 0: no limit.
    pub runs_per_minute: u64,
    /// Runs of one key going at once beyond which it gets `429`; 0: no limit.
    pub max_running_per_key: u64,
    /// `[[auth.keys]]`: with any key configured, every `/api/` route needs credentials.
    pub keys: Vec<KeyConfig>,
    /// Signs session cookies and access tokens; drawn at random at startup
    /// when unset. Set the same one on every node that shares a hub.
    pub token_secret: Option<String>,
    /// How long a dashboard session cookie lasts.
    pub session_ttl_secs: u64,
    /// How long an access token lasts unless asked for less.
    pub token_ttl_secs: u64,
    /// Keys from `SLUICE_API_KEYS` (comma-separated), kept apart from the file's.
    #[serde(skip)]
    pub env_keys: Option<String>,
}

impl AuthConfig {
    /// Whether any key is configured, in the file or the environment.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
            || self
                .env_keys
                .as_deref()
                .is_some_and(|k| k.split(',').any(|k| !k.trim().is_empty()))
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            runs_per_minute: 0,
            max_running_per_key: 0,
            keys: Vec::new(),
            token_secret: None,
            session_ttl_secs: 12 * 3600,
            token_ttl_secs: 300,
            env_keys: None,
        }
    }
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// Owns the runs started with this key and identifies it in tokens; unique, required.
    pub name: String,
    /// The secret itself; give this or `key_sha256`, not both.
    pub key: Option<String>,
    /// The secret's SHA-256 in hex, so the file need not hold the secret.
    pub key_sha256: Option<String>,
}

/// One `[agents.NAME]` table: its kind and the kind's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentConfig {
    /// The kind as written; [`AgentConfig::kind`] reads it.
    pub kind: String,
    /// The kind's own settings, checked by the kind.
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// The agent kinds: the one list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    /// The built-in simulator.
    Sim,
    /// An OpenAI-compatible upstream.
    OpenAi,
    /// A local program.
    Command,
    /// An endpoint of the user's application.
    Http,
    /// A worker that publishes the events.
    Push,
}

impl AgentKind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [AgentKind; 5] = [
        AgentKind::Sim,
        AgentKind::OpenAi,
        AgentKind::Command,
        AgentKind::Http,
        AgentKind::Push,
    ];

    /// The kind as a config names it.
    pub fn name(self) -> &'static str {
        match self {
            AgentKind::Sim => "sim",
            AgentKind::OpenAi => "openai",
            AgentKind::Command => "command",
            AgentKind::Http => "http",
            AgentKind::Push => "push",
        }
    }
}

impl AgentConfig {
    /// The kind of agent `name`, or why it names none.
    pub fn kind(&self, name: &str) -> Result<AgentKind, ConfigError> {
        AgentKind::ALL
            .into_iter()
            .find(|kind| kind.name() == self.kind)
            .ok_or_else(|| {
                let known: Vec<&str> = AgentKind::ALL.iter().map(|k| k.name()).collect();
                ConfigError::Invalid(format!(
                    "agents.{name}: unknown kind `{}` (expected one of {})",
                    self.kind,
                    known.join(", ")
                ))
            })
    }
}

/// `[hub]`: where run logs live.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// `memory` (one process) or `redis` (several nodes sharing runs).
    pub backend: Backend,
    /// The Redis URL, used when `backend` is `redis`.
    pub url: String,
    /// How long after a node stops renewing its lease its runs end with `node_lost`.
    pub lease_secs: u64,
}

/// `hub.backend`: where runs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process only (the default).
    #[default]
    Memory,
    /// Shared by every node through the Redis at `hub.url`.
    Redis,
}

impl Backend {
    /// The backend an operator names, `memory` or `redis`.
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        match name {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            _ => Err(ConfigError::Invalid(format!(
                "hub.backend `{name}` is unknown (expected memory or redis)"
            ))),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            url: "redis://127.0.0.1:6379".to_owned(),
            lease_secs: 10,
        }
    }
}

/// Sections whose keys `SLUICE_<SECTION>_<KEY>` may set.
const ENV_SECTIONS: &[&str] = &["server", "runs", "auth", "hub", "webhooks"];
/// Keys whose values stay strings even when they look like numbers.
const STRING_KEYS: &[&str] = &["bind", "backend", "url", "token_secret", "secret"];
/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: &[&str] = &["allowed_urls", "retry_secs", "cors_origins"];

impl Config {
    /// Read `path` (if any), apply the `SLUICE_*` variables of `env`, check.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml(&text, env)
    }

    /// Parse TOML text, apply the `SLUICE_*` variables of `env`, check.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        apply_env(&mut table, env.iter().cloned())?;
        check_backend(&table)?;
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.auth.env_keys = env
            .iter()
            .find(|(k, _)| k == "SLUICE_API_KEYS")
            .map(|(_, v)| v.clone());
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        self.bind_addr()?;
        if self.server.keep_alive_secs == 0 {
            return invalid("server.keep_alive_secs must be at least 1".into());
        }
        if self.server.max_streams == 0 || self.server.max_running == 0 {
            return invalid("server.max_streams and server.max_running must be at least 1".into());
        }
        if self.server.header_read_timeout_secs == 0 {
            return invalid("server.header_read_timeout_secs must be at least 1".into());
        }
        if self.server.max_header_bytes < 8192 || self.server.max_url_bytes == 0 {
            return invalid(
                "server.max_header_bytes must be at least 8192 and max_url_bytes at least 1".into(),
            );
        }
        if self.server.max_body_bytes == 0 {
            return invalid("server.max_body_bytes must be at least 1".into());
        }
        for origin in &self.server.cors_origins {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.trim_end_matches('/').contains(['?', '#', ' '])
                && origin.matches('/').count() == 2;
            if !ok {
                return invalid(format!(
                    "server.cors_origins: `{origin}` is not an origin such as https://app.example.com"
                ));
            }
        }
        for (name, agent) in &self.agents {
            agent.kind(name)?;
        }
        if self.hub.lease_secs == 0 {
            return invalid("hub.lease_secs must be at least 1".into());
        }
        Settings::from_config(&self.webhooks).map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// `server.bind` as an address.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "server.bind `{}` is not an address such as 127.0.0.1:8080",
                self.server.bind
            ))
        })
    }

    /// `server.keep_alive_secs`, as the SSE keep-alive interval.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.server.keep_alive_secs)
    }

    /// `server.shutdown_grace_secs`, as the wait for streams at shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }
}

impl RunsConfig {
    /// `retention_secs`, as how long a finished run is kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    /// `disconnect_grace_secs`, as how long a run may go unwatched.
    pub fn disconnect_grace(&self) -> Duration {
        Duration::from_secs(self.disconnect_grace_secs)
    }

    /// The longest a run may go on, if limited.
    pub fn max_run(&self) -> Option<Duration> {
        (self.max_run_secs > 0).then(|| Duration::from_secs(self.max_run_secs))
    }
}

/// Refuses an unknown `hub.backend` with its own message: through serde it
/// would come wrapped in serde's wording and toml's key path.
fn check_backend(table: &toml::Table) -> Result<(), ConfigError> {
    let backend = table
        .get("hub")
        .and_then(|hub| hub.get("backend"))
        .and_then(toml::Value::as_str);
    match backend {
        Some(name) => Backend::parse(name).map(drop),
        None => Ok(()),
    }
}

/// Writes `SLUICE_BIND` and `SLUICE_<SECTION>_<KEY>` into the parsed file.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String, String)> = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("SLUICE_") else {
            continue;
        };
        if rest == "API_KEYS" {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        if rest == "bind" {
            // Ranks below the section variable SLUICE_SERVER_BIND: sorted first.
            overrides.insert(0, ("server".into(), "bind".into(), value));
            continue;
        }
        if let Some((section, key)) = ENV_SECTIONS.iter().find_map(|section| {
            rest.strip_prefix(section)
                .and_then(|r| r.strip_prefix('_'))
                .map(|key| (*section, key))
        }) {
            overrides.push((section.into(), key.into(), value));
        }
    }
    for (section, key, value) in overrides {
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError::Invalid(format!("`{section}` must be a table")));
        };
        section_table.insert(key.clone(), env_value(&key, value));
    }
    Ok(())
}

fn env_value(key: &str, value: String) -> toml::Value {
    if LIST_KEYS.contains(&key) {
        let items = value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| env_value("", item.to_owned()))
            .collect();
        return toml::Value::Array(items);
    }
    if STRING_KEYS.contains(&key) {
        return toml::Value::String(value);
    }
    if let Ok(n) = value.trim().parse::<i64>() {
        return toml::Value::Integer(n);
    }
    match value.trim() {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_without_file() {
        let config = Config::from_toml("", env(&[])).ok();
        let config = config.unwrap_or_default();
        assert_eq!(config.server.bind, "127.0.0.1:8080");
        assert_eq!(config.server.keep_alive_secs, 15);
        assert_eq!(config.runs.retention_secs, 300);
        assert_eq!(config.runs.disconnect_grace_secs, 15);
    }

    #[test]
    fn env_overrides_file_and_section_bind_beats_sluice_bind() {
        let file =
            "[server]\nbind = \"127.0.0.1:1\"\nkeep_alive_secs = 3\n[runs]\nretention_secs = 9\n";
        let config = Config::from_toml(file, env(&[("SLUICE_BIND", "127.0.0.1:2")]));
        assert_eq!(
            config.map(|c| c.server.bind).ok().as_deref(),
            Some("127.0.0.1:2")
        );
        let config = Config::from_toml(
            file,
            env(&[
                ("SLUICE_SERVER_BIND", "127.0.0.1:3"),
                ("SLUICE_BIND", "127.0.0.1:2"),
                ("SLUICE_RUNS_RETENTION_SECS", "7"),
                ("UNRELATED", "x"),
            ]),
        )
        .ok();
        assert_eq!(
            config.as_ref().map(|c| c.server.bind.as_str()),
            Some("127.0.0.1:3")
        );
        assert_eq!(config.as_ref().map(|c| c.runs.retention_secs), Some(7));
        assert_eq!(config.as_ref().map(|c| c.server.keep_alive_secs), Some(3));
    }

    #[test]
    fn mistakes_are_reported() {
        let cases = [
            "[server]\nbind = \"nowhere\"",
            "[server]\nkeep_alive_secs = 0",
            "[server]\nno_such_key = 1",
            "[runs]\nretention_secs = \"soon\"",
            "[agents.x]\nkind = \"telepathy\"",
            "[hub]\nbackend = \"carrier-pigeon\"",
            "[server]\ncors_origins = [\"*\"]",
            "[server]\ncors_origins = [\"https://app.example.com/path\"]",
            "not toml at all ===",
        ];
        for text in cases {
            assert!(Config::from_toml(text, env(&[])).is_err(), "{text}");
        }
        let bad_env = Config::from_toml("", env(&[("SLUICE_RUNS_RETENTION_SECS", "soon")]));
        assert!(bad_env.is_err());
    }

    #[test]
    fn the_hub_backend_is_named_in_the_file_or_the_environment() {
        let backend = |text: &str, pairs: &[(&str, &str)]| {
            Config::from_toml(text, env(pairs)).map(|c| c.hub.backend)
        };
        assert!(matches!(backend("", &[]), Ok(Backend::Memory)));
        assert!(matches!(
            backend("[hub]\nbackend = \"redis\"", &[]),
            Ok(Backend::Redis)
        ));
        assert!(matches!(
            backend("", &[("SLUICE_HUB_BACKEND", "redis")]),
            Ok(Backend::Redis)
        ));
        let unknown = backend("", &[("SLUICE_HUB_BACKEND", "etcd")]).map_err(|e| e.to_string());
        assert_eq!(
            unknown.err().as_deref(),
            Some("invalid config: hub.backend `etcd` is unknown (expected memory or redis)")
        );
    }

    #[test]
    fn sluice_api_keys_count_as_keys() {
        let config = Config::from_toml("", env(&[("SLUICE_API_KEYS", "k1, k2")])).ok();
        assert_eq!(
            config.as_ref().and_then(|c| c.auth.env_keys.as_deref()),
            Some("k1, k2")
        );
        assert!(config.is_some_and(|c| c.auth.has_keys()));
        let none = Config::from_toml("", env(&[("SLUICE_API_KEYS", " , ")])).ok();
        assert!(none.is_some_and(|c| !c.auth.has_keys()));
    }

    proptest::proptest! {
        /// Any file text and any SLUICE_* value is either a config or an error, never a panic.
        #[test]
        fn any_config_text_is_accepted_or_reported(text in "(\\[[a-z.]{0,12}\\]\n)?([a-z_]{0,16} = [^\n]{0,24}\n){0,4}", value in ".{0,40}") {
            let _ = Config::from_toml(&text, env(&[("SLUICE_SERVER_KEEP_ALIVE_SECS", value.as_str())]));
            let _ = Config::from_toml(&text, env(&[("SLUICE_RUNS_RETENTION_SECS", value.as_str())]));
        }
    }

    #[test]
    fn webhooks_are_off_without_a_secret_and_checked_with_one() {
        let off = Config::from_toml("", env(&[])).unwrap();
        assert!(Settings::from_config(&off.webhooks).unwrap().is_none());
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let on = Config::from_toml(
            "",
            env(&[
                ("SLUICE_WEBHOOKS_SECRET", secret),
                (
                    "SLUICE_WEBHOOKS_ALLOWED_URLS",
                    "https://a.example/hooks/, http://127.0.0.1:9/x",
                ),
                ("SLUICE_WEBHOOKS_RETRY_SECS", "1,2,3"),
            ]),
        )
        .unwrap();
        assert_eq!(on.webhooks.allowed_urls.len(), 2);
        assert_eq!(on.webhooks.retry_secs, vec![1, 2, 3]);
        let settings = Settings::from_config(&on.webhooks).unwrap().unwrap();
        assert!(settings.allowed.check("https://a.example/hooks/1").is_ok());
        for bad in [
            format!("[webhooks]\nsecret = \"{secret}\""),
            "[webhooks]\nsecret = \"whsec_short\"\nallowed_urls = [\"https://a/\"]".to_owned(),
            format!("[webhooks]\nsecret = \"{secret}\"\nallowed_urls = [\"a.example\"]"),
            format!("[webhooks]\nsecret = \"{secret}\"\nallowed_urls = [\"https://a/\"]\ntimeout_secs = 0"),
        ] {
            assert!(Config::from_toml(&bad, env(&[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn sim_agent_section_is_accepted() {
        assert!(Config::from_toml("[agents.sim]\nkind = \"sim\"\n", env(&[])).is_ok());
    }
}
