//! Any endpoint of the user's own application as an agent (`kind = "http"`,
//! SPEC 10): a Next.js route handler, an AI SDK route, a FastAPI endpoint.
//!
//! Sluice calls it once per run (`POST` with the run as JSON, or `GET` with
//! it in the query string, signed when a secret is set) and relays what it
//! streams back, read in the format the config names or the response's
//! headers reveal. The request goes through the same client, limits and
//! error mapping as the `openai` kind ([`super::upstream`]); dropping the
//! run's stream drops the response, so the application sees its request
//! aborted.

mod answer;

use std::collections::BTreeMap;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{json, Value};

use super::upstream::{self, relay_body, Deadlines, Timeouts};
use super::{openai, Agent, AgentEvent, AgentStream, ParamError, ParamSpec, RunInput};
use crate::config::{AgentKind, ConfigError};
use crate::webhooks::signing::SigningSecret;
use answer::{Ndjson, Sse, Text, UiMessages};

/// What Sluice accepts back, in the order it prefers.
const ACCEPTED: &str = "text/event-stream, application/x-ndjson, text/plain";

/// How the answer is read (SPEC 10's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Format {
    /// Decided from the response's headers (and, for SSE, its first event).
    Auto,
    Ndjson,
    Sse,
    AiSdk,
    Openai,
    Text,
}

/// What a `POST` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BodyKind {
    /// `{"run_id", "prompt", "params", "messages", "request"}`.
    Sluice,
    /// The body of the `/api/chat` or `/v1/chat/completions` call that
    /// started the run, as it is; other runs send the Sluice object.
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum Method {
    Post,
    Get,
}

/// `[agents.NAME]` with `kind = "http"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default = "default_method")]
    method: Method,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    api_key_env: Option<String>,
    /// Name of the environment variable holding the `whsec_…` secret.
    signing_secret_env: Option<String>,
    #[serde(default = "default_format")]
    format: Format,
    #[serde(default = "default_body")]
    body: BodyKind,
    /// The parameters a run may pass, with what each is for.
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default = "upstream::default_connect")]
    connect_timeout_secs: f64,
    #[serde(default = "upstream::default_first_token")]
    first_token_timeout_secs: f64,
    #[serde(default = "upstream::default_idle")]
    idle_timeout_secs: f64,
    #[serde(default = "upstream::default_run")]
    max_run_secs: f64,
}

fn default_method() -> Method {
    Method::Post
}
fn default_format() -> Format {
    Format::Auto
}
fn default_body() -> BodyKind {
    BodyKind::Sluice
}

/// An endpoint of the user's application.
pub struct Http {
    url: reqwest::Url,
    method: Method,
    client: reqwest::Client,
    secret: Option<SigningSecret>,
    format: Format,
    body: BodyKind,
    params: Vec<ParamSpec>,
    timeouts: Timeouts,
}

impl Http {
    /// Builds the agent `name` from its config table; every mistake is
    /// reported with the agent's name and the key at fault.
    pub fn from_settings(name: &str, settings: toml::Table) -> Result<Self, ConfigError> {
        let s: Settings = super::settings(name, settings)?;
        let url = upstream::parse_url(name, "url", &s.url)?;
        let secret =
            match &s.signing_secret_env {
                None => None,
                Some(var) => {
                    let text = upstream::env_value(name, "signing_secret_env", var)?;
                    Some(SigningSecret::parse(&text).map_err(|e| {
                        super::invalid(name, format!("signing_secret_env: {var}: {e}"))
                    })?)
                }
            };
        let (client, timeouts) = upstream::Connection {
            agent: name,
            headers: &s.headers,
            api_key_env: s.api_key_env.as_deref(),
            connect_timeout_secs: s.connect_timeout_secs,
            first_token_timeout_secs: s.first_token_timeout_secs,
            idle_timeout_secs: s.idle_timeout_secs,
            max_run_secs: s.max_run_secs,
        }
        .build()?;
        let params = s
            .params
            .into_iter()
            .map(|(name, description)| ParamSpec {
                name: name.into(),
                description: description.into(),
            })
            .collect();
        Ok(Self {
            url,
            method: s.method,
            client,
            secret,
            format: s.format,
            body: s.body,
            params,
            timeouts,
        })
    }

    /// The request of one run: its body or query, and its headers.
    fn request(&self, input: &RunInput) -> reqwest::RequestBuilder {
        let (builder, body) = match self.method {
            Method::Post => {
                let body: Bytes = match (&input.request, self.body) {
                    (Some(request), BodyKind::Request) => request.to_string(),
                    _ => json!({
                        "run_id": input.run_id,
                        "prompt": input.prompt,
                        "params": input.params,
                        "messages": input.messages,
                        "request": input.request,
                    })
                    .to_string(),
                }
                .into();
                let builder = self
                    .client
                    .post(self.url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                (builder, body)
            }
            Method::Get => {
                let mut url = self.url.clone();
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("run_id", &input.run_id);
                    query.append_pair("prompt", &input.prompt);
                    for (name, value) in &input.params {
                        match value {
                            Value::String(text) => query.append_pair(name, text),
                            other => query.append_pair(name, &other.to_string()),
                        };
                    }
                }
                (self.client.get(url), Bytes::new())
            }
        };
        let mut builder = builder
            .header(ACCEPT, ACCEPTED)
            .header("x-run-id", &input.run_id);
        if let Some(secret) = &self.secret {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            for (name, value) in secret.headers(&input.run_id, now, &body) {
                builder = builder.header(name, value);
            }
        }
        builder
    }
}

impl Agent for Http {
    fn kind(&self) -> AgentKind {
        AgentKind::Http
    }

    fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    fn start(&self, input: RunInput) -> Result<AgentStream, ParamError> {
        super::reject_unknown(&input.params, &self.params)?;
        let request = self.request(&input);
        Ok(relay(request, self.format, self.timeouts).boxed())
    }
}

/// Sends the request and relays the answer in its format.
fn relay(
    request: reqwest::RequestBuilder,
    format: Format,
    timeouts: Timeouts,
) -> impl Stream<Item = AgentEvent> + Send {
    async_stream::stream! {
        let deadlines = Deadlines::start(timeouts);
        let response = match deadlines.send(request).await {
            Ok(response) => response,
            Err(end) => {
                yield end;
                return;
            }
        };
        let detect_openai = format == Format::Auto;
        let format = match format {
            Format::Auto => detect(response.headers()),
            chosen => chosen,
        };
        let body = response.bytes_stream();
        let events: futures::stream::BoxStream<'static, AgentEvent> = match format {
            Format::Ndjson => relay_body(body, deadlines, Ndjson::default()).boxed(),
            Format::Text | Format::Auto => relay_body(body, deadlines, Text::default()).boxed(),
            Format::Openai => openai::relay(body.eventsource(), deadlines).boxed(),
            Format::AiSdk => relay_body(body.eventsource(), deadlines, UiMessages).boxed(),
            Format::Sse if !detect_openai => relay_body(body.eventsource(), deadlines, Sse).boxed(),
            Format::Sse => {
                // Under `auto`, the first event tells an OpenAI stream from plain SSE.
                let mut events = body.eventsource().boxed();
                let first = match deadlines.next(&mut events, false).await {
                    Err(end) => {
                        yield end;
                        return;
                    }
                    Ok(first) => first,
                };
                let openai = matches!(&first, Some(Ok(event)) if answer::is_openai_chunk(event));
                let events = futures::stream::iter(first).chain(events);
                if openai {
                    openai::relay(events, deadlines).boxed()
                } else {
                    relay_body(events, deadlines, Sse).boxed()
                }
            }
        };
        for await event in events {
            yield event;
        }
    }
}

/// The format of an answer from its headers; `text/event-stream` without
/// the AI SDK's header is told apart by its first event (in [`relay`]).
fn detect(headers: &reqwest::header::HeaderMap) -> Format {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    match essence {
        "application/x-ndjson" | "application/jsonl" | "application/ndjson" => Format::Ndjson,
        "text/event-stream" => {
            let ui_stream = headers
                .get("x-vercel-ai-ui-message-stream")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() == "v1");
            if ui_stream {
                Format::AiSdk
            } else {
                Format::Sse
            }
        }
        _ => Format::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Message, Params, Role};

    fn agent(extra: &str) -> Http {
        let table: toml::Table = format!("url = \"http://127.0.0.1:9/agent\"\n{extra}")
            .parse()
            .unwrap_or_default();
        match Http::from_settings("app", table) {
            Ok(agent) => agent,
            Err(e) => panic!("valid settings: {e}"),
        }
    }

    fn body_of(agent: &Http, input: &RunInput) -> Value {
        let request = agent
            .request(input)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = request
            .body()
            .and_then(|b| b.as_bytes())
            .unwrap_or_default();
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    #[test]
    fn body_request_forwards_the_original_call_and_only_that() {
        let chat = json!({"id": "chat-1", "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}]});
        let mut input = RunInput {
            run_id: "r1".into(),
            prompt: "hi".into(),
            params: Params::new(),
            messages: vec![Message {
                role: Role::User,
                content: "hi".into(),
            }],
            request: Some(chat.clone()),
        };
        assert_eq!(body_of(&agent("body = \"request\""), &input), chat);
        let sluice_body = json!({"run_id": "r1", "prompt": "hi", "params": {}, "request": chat,
            "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(body_of(&agent(""), &input), sluice_body);
        input.request = None;
        let body = body_of(&agent("body = \"request\""), &input);
        assert_eq!(
            body["run_id"], "r1",
            "a run started elsewhere sends the Sluice object"
        );
        assert_eq!(body["request"], Value::Null);
    }

    #[test]
    fn formats_are_detected_from_the_headers() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = reqwest::header::HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, reqwest::header::HeaderValue::from_static(value));
            }
            map
        };
        assert_eq!(
            detect(&headers(&[("content-type", "application/x-ndjson")])),
            Format::Ndjson
        );
        assert_eq!(
            detect(&headers(&[(
                "content-type",
                "application/jsonl; charset=utf-8"
            )])),
            Format::Ndjson
        );
        assert_eq!(
            detect(&headers(&[
                ("content-type", "text/event-stream"),
                ("x-vercel-ai-ui-message-stream", "v1")
            ])),
            Format::AiSdk
        );
        assert_eq!(
            detect(&headers(&[(
                "content-type",
                "text/event-stream; charset=utf-8"
            )])),
            Format::Sse
        );
        assert_eq!(
            detect(&headers(&[("content-type", "text/plain")])),
            Format::Text
        );
        assert_eq!(detect(&headers(&[])), Format::Text);
    }
}
