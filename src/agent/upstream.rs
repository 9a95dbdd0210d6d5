//! What every HTTP upstream shares (`openai` today, `http` next): the
//! client with its connect timeout, headers and key; the first-token, idle
//! and whole-run limits; and one mapping of every failure onto an `error`
//! event, so each way a request can go wrong reads the same whatever the
//! agent's kind.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use serde_json::Value;
use tokio::time::Instant;

use super::AgentEvent;
use crate::config::ConfigError;

/// At most this much of an upstream error body is read into the message.
const MAX_ERROR_BODY: usize = 8 * 1024;

/// The connection settings every HTTP agent kind has, as written in its
/// config table (seconds as numbers).
pub struct Connection<'a> {
    /// The agent's name, for error messages.
    pub agent: &'a str,
    /// Sent with every request (an organisation header, a gateway's key), marked sensitive.
    pub headers: &'a BTreeMap<String, String>,
    /// Name of the environment variable holding the key sent as a bearer token.
    pub api_key_env: Option<&'a str>,
    /// How long reaching the upstream may take, so a dead host fails fast.
    pub connect_timeout_secs: f64,
    /// How long the upstream may think before its first token (models can be slow to start).
    pub first_token_timeout_secs: f64,
    /// How long a started stream may go quiet before it counts as stalled.
    pub idle_timeout_secs: f64,
    /// The most one request may take in all, however steadily it streams.
    pub max_run_secs: f64,
}

impl Connection<'_> {
    /// The HTTP client (connect timeout, headers, key) and the limits on
    /// each request; every mistake is reported with the agent and the key.
    pub fn build(&self) -> Result<(reqwest::Client, Timeouts), ConfigError> {
        let invalid = |msg: String| super::invalid(self.agent, msg);
        let mut headers = HeaderMap::new();
        for (key, value) in self.headers {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| invalid(format!("headers: `{key}` is not a header name")))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("headers: the value of `{key}` is not valid")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(var) = self.api_key_env {
            let key = env_value(self.agent, "api_key_env", var)?;
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                    invalid(format!(
                        "api_key_env: {var} holds characters a header cannot carry"
                    ))
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let seconds = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(invalid(format!(
                    "{key} must be a positive number of seconds"
                )))
            }
        };
        let connect = seconds("connect_timeout_secs", self.connect_timeout_secs)?;
        let timeouts = Timeouts {
            first_token: seconds("first_token_timeout_secs", self.first_token_timeout_secs)?,
            idle: seconds("idle_timeout_secs", self.idle_timeout_secs)?,
            run: seconds("max_run_secs", self.max_run_secs)?,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .default_headers(headers)
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok((client, timeouts))
    }
}

/// The default `connect_timeout_secs`.
pub fn default_connect() -> f64 {
    10.0
}
/// The default `first_token_timeout_secs`.
pub fn default_first_token() -> f64 {
    120.0
}
/// The default `idle_timeout_secs`.
pub fn default_idle() -> f64 {
    60.0
}
/// The default `max_run_secs`.
pub fn default_run() -> f64 {
    1800.0
}

/// The limits on one upstream request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From sending the request to the first token.
    pub first_token: Duration,
    /// The longest quiet after the first token.
    pub idle: Duration,
    /// The whole request, however steadily it streams.
    pub run: Duration,
}

/// One request's deadlines, from the moment it is sent: the first token
/// within `first_token`, then nothing quiet for longer than `idle`, and all
/// within `run`.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    timeouts: Timeouts,
    first: Instant,
    run: Instant,
}

impl Deadlines {
    /// Starts the clock.
    pub fn start(timeouts: Timeouts) -> Self {
        let now = Instant::now();
        let run = now + timeouts.run;
        Self {
            timeouts,
            first: (now + timeouts.first_token).min(run),
            run,
        }
    }

    /// Sends the request: the response if it is a 2xx, else the event that
    /// ends the run (a timeout, `upstream_unreachable`, `upstream_http_<status>`
    /// with the body's own words).
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AgentEvent> {
        let response = match tokio::time::timeout_at(self.first, request.send()).await {
            Err(_) => return Err(self.timeout_error(true, self.first == self.run)),
            Ok(Err(e)) => return Err(request_error(&e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let message = error_body(response).await;
            return Err(AgentEvent::error(
                &format!("upstream_http_{}", status.as_u16()),
                message,
            ));
        }
        Ok(response)
    }

    /// The stream's next item within the deadline that applies: the first
    /// token's until `produced`, the idle one after; the run's always.
    pub async fn next<S: Stream + Unpin>(
        &self,
        stream: &mut S,
        produced: bool,
    ) -> Result<Option<S::Item>, AgentEvent> {
        let deadline = if produced {
            (Instant::now() + self.timeouts.idle).min(self.run)
        } else {
            self.first
        };
        tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| self.timeout_error(!produced, deadline == self.run))
    }

    /// Which limit a wait ran into.
    fn timeout_error(&self, first: bool, run_deadline_hit: bool) -> AgentEvent {
        let t = self.timeouts;
        if run_deadline_hit {
            AgentEvent::error(
                "upstream_run_timeout",
                format!("the upstream did not finish within {:?}", t.run),
            )
        } else if first {
            AgentEvent::error(
                "upstream_first_token_timeout",
                format!("the upstream sent no token within {:?}", t.first_token),
            )
        } else {
            AgentEvent::error(
                "upstream_idle_timeout",
                format!("the upstream sent nothing for {:?} mid-stream", t.idle),
            )
        }
    }
}

/// One format's reading of an upstream's body, item by item: the openai
/// kind's chunks, and each format of an `http` agent's answer.
pub trait Reader: Send {
    /// What the body is made of: bytes, or SSE events.
    type Item: Send;
    /// The events one item yields.
    fn read(&mut self, item: Self::Item) -> Vec<AgentEvent>;
    /// The events of a clean end of the body without a terminal event.
    fn finish(self) -> Vec<AgentEvent>;
}

/// Relays `items` through `reader`, the one loop every upstream body goes
/// through: within the deadlines (the idle one once an event came), a
/// broken body as `upstream_truncated`, and an end at the first terminal
/// event.
pub fn relay_body<S, E, R>(
    items: S,
    deadlines: Deadlines,
    mut reader: R,
) -> impl Stream<Item = AgentEvent> + Send
where
    S: Stream<Item = Result<R::Item, E>> + Send,
    E: std::fmt::Display + Send,
    R: Reader,
{
    async_stream::stream! {
        futures::pin_mut!(items);
        let mut produced = false;
        loop {
            let events = match deadlines.next(&mut items, produced).await {
                Err(end) => vec![end],
                Ok(None) => break,
                Ok(Some(Err(e))) => vec![AgentEvent::error(
                    "upstream_truncated",
                    format!("the upstream's stream broke: {e}"),
                )],
                Ok(Some(Ok(item))) => reader.read(item),
            };
            for event in events {
                produced = true;
                let terminal = event.is_terminal();
                yield event;
                if terminal {
                    return;
                }
            }
        }
        for event in reader.finish() {
            let terminal = event.is_terminal();
            yield event;
            if terminal {
                return;
            }
        }
    }
}

/// An http(s) URL from the config key `key` of agent `agent`.
pub fn parse_url(agent: &str, key: &str, text: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| super::invalid(agent, format!("{key} `{text}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(super::invalid(
            agent,
            format!("{key} `{text}` must be an http:// or https:// URL"),
        ));
    }
    Ok(url)
}

/// The value of the environment variable that config key `key` names.
pub fn env_value(agent: &str, key: &str, var: &str) -> Result<String, ConfigError> {
    std::env::var(var).map_err(|_| {
        super::invalid(
            agent,
            format!("{key}: the environment variable {var} is not set"),
        )
    })
}

fn request_error(e: &reqwest::Error) -> AgentEvent {
    if e.is_connect() && e.is_timeout() {
        AgentEvent::error(
            "upstream_connect_timeout",
            format!("connecting to the upstream timed out: {e}"),
        )
    } else if e.is_connect() {
        AgentEvent::error(
            "upstream_unreachable",
            format!("cannot connect to the upstream: {}", source_chain(e)),
        )
    } else if e.is_timeout() {
        AgentEvent::error(
            "upstream_first_token_timeout",
            format!("the upstream did not answer: {e}"),
        )
    } else {
        AgentEvent::error(
            "upstream_unreachable",
            format!("the request to the upstream failed: {}", source_chain(e)),
        )
    }
}

/// The error with its causes, which hold the useful part ("Connection refused").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The upstream's own words from an error response: `error.message` of a
/// JSON body, else the start of the body.
async fn error_body(response: reqwest::Response) -> String {
    let status = response.status();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let from_json = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| error_message(&v));
    match from_json {
        Some(message) => message,
        None if text.trim().is_empty() => format!("the upstream answered {status}"),
        None => excerpt(&text),
    }
}

/// `{"error": {"message": …}}`, `{"error": "…"}` or `{"message": …}`.
pub fn error_message(value: &Value) -> Option<String> {
    let error = value.get("error").unwrap_or(value);
    match error {
        Value::String(message) => Some(message.clone()),
        Value::Object(map) => map
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| Some(Value::Object(map.clone()).to_string())),
        _ => None,
    }
}

/// At most 500 characters of `text`, for a message.
pub fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(500) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
