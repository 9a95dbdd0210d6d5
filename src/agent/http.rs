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

use std::collections::BTreeMap;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::upstream::{self, error, excerpt, Deadlines, Timeouts};
use super::utf8::Utf8Chunks;
use super::{lines, openai, Agent, AgentEvent, AgentStream, ParamError, ParamSpec, RunInput};
use crate::config::ConfigError;
use crate::webhooks::signing::SigningSecret;

/// What Sluice accepts back, in the order it prefers.
const ACCEPTED: &str = "text/event-stream, application/x-ndjson, text/plain";
/// The longest `ndjson` line read; a longer one ends the run.
const MAX_LINE: usize = 1024 * 1024;

/// How the answer is read (SPEC 10's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
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
pub enum BodyKind {
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
        let invalid = |msg: String| super::invalid(name, msg);
        let s: Settings = super::settings(name, settings)?;
        let url = reqwest::Url::parse(&s.url)
            .map_err(|e| invalid(format!("url `{}` is not a URL: {e}", s.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(format!(
                "url `{}` must be an http:// or https:// URL",
                s.url
            )));
        }
        let secret = match &s.signing_secret_env {
            None => None,
            Some(var) => {
                let text = std::env::var(var).map_err(|_| {
                    invalid(format!(
                        "signing_secret_env: the environment variable {var} is not set"
                    ))
                })?;
                Some(
                    SigningSecret::parse(&text)
                        .map_err(|e| invalid(format!("signing_secret_env: {var}: {e}")))?,
                )
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
                let body = match (&input.request, self.body) {
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
                .into_bytes();
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
                (self.client.get(url), Vec::new())
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
    fn kind(&self) -> &'static str {
        "http"
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
        let format = match format {
            Format::Auto => detect(response.headers()),
            chosen => chosen,
        };
        let body = response.bytes_stream();
        let events: futures::stream::BoxStream<'static, AgentEvent> = match format {
            Format::Ndjson => ndjson(body, deadlines).boxed(),
            Format::Text | Format::Auto => text(body, deadlines).boxed(),
            Format::Openai => openai::relay(body.eventsource(), deadlines).boxed(),
            Format::AiSdk => ai_sdk(body, deadlines).boxed(),
            Format::Sse => sse(body, deadlines, true).boxed(),
        };
        for await event in events {
            yield event;
        }
    }
}

/// The format of an answer from its headers; `text/event-stream` without
/// the AI SDK's header is told apart by its first event ([`sse`]).
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

/// A broken body: a reset, a chunked body cut short.
fn broken(e: impl std::fmt::Display) -> AgentEvent {
    error(
        "upstream_truncated",
        format!("the connection to the application broke: {e}"),
    )
}

fn done_stop() -> AgentEvent {
    AgentEvent::Done {
        finish_reason: "stop".into(),
        usage: Map::new(),
    }
}

fn is_terminal(event: &AgentEvent) -> bool {
    matches!(event, AgentEvent::Done { .. } | AgentEvent::Error { .. })
}

/// `text`: every chunk is token text, never splitting a character.
fn text<S>(body: S, deadlines: Deadlines) -> impl Stream<Item = AgentEvent> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send,
{
    async_stream::stream! {
        futures::pin_mut!(body);
        let mut chunks = Utf8Chunks::default();
        let mut produced = false;
        loop {
            match deadlines.next(&mut body, produced).await {
                Err(end) => {
                    yield end;
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    yield broken(e);
                    return;
                }
                Ok(Some(Ok(bytes))) => {
                    if let Some(text) = chunks.push(&bytes) {
                        produced = true;
                        yield AgentEvent::Token(text);
                    }
                }
            }
        }
        if let Some(text) = chunks.finish() {
            yield AgentEvent::Token(text);
        }
        yield done_stop();
    }
}

/// `ndjson`: each line one event, exactly as a `command` agent's jsonl.
fn ndjson<S>(body: S, deadlines: Deadlines) -> impl Stream<Item = AgentEvent> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send,
{
    async_stream::stream! {
        futures::pin_mut!(body);
        let mut pending: Vec<u8> = Vec::new();
        let mut produced = false;
        loop {
            let bytes = match deadlines.next(&mut body, produced).await {
                Err(end) => {
                    yield end;
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    yield broken(e);
                    return;
                }
                Ok(Some(Ok(bytes))) => bytes,
            };
            pending.extend_from_slice(&bytes);
            while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=at).collect();
                let Some(event) = ndjson_line(&line) else { continue };
                produced = true;
                let terminal = is_terminal(&event);
                yield event;
                if terminal {
                    return;
                }
            }
            if pending.len() > MAX_LINE {
                yield error("upstream_bad_chunk", format!("the application sent a line longer than {MAX_LINE} bytes"));
                return;
            }
        }
        if let Some(event) = ndjson_line(&pending) {
            let terminal = is_terminal(&event);
            yield event;
            if terminal {
                return;
            }
        }
        yield done_stop();
    }
}

/// One ndjson line's event; None for a blank line.
fn ndjson_line(line: &[u8]) -> Option<AgentEvent> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    Some(lines::parse(line, "upstream_error").unwrap_or_else(|m| error("upstream_bad_chunk", m)))
}

/// `text/event-stream`: the first event tells an OpenAI stream (a
/// `chat.completion.chunk`) from any other SSE when `detect_openai` is set.
fn sse<S>(
    body: S,
    deadlines: Deadlines,
    detect_openai: bool,
) -> impl Stream<Item = AgentEvent> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
{
    async_stream::stream! {
        let mut events = body.eventsource().boxed();
        let first = match deadlines.next(&mut events, false).await {
            Err(end) => {
                yield end;
                return;
            }
            Ok(first) => first,
        };
        let is_openai = detect_openai && matches!(&first, Some(Ok(event))
            if serde_json::from_str::<Value>(&event.data).ok()
                .is_some_and(|v| v.get("object").and_then(Value::as_str) == Some("chat.completion.chunk")));
        let events = futures::stream::iter(first).chain(events);
        if is_openai {
            for await event in openai::relay(events, deadlines) {
                yield event;
            }
            return;
        }
        futures::pin_mut!(events);
        let mut produced = false;
        loop {
            match deadlines.next(&mut events, produced).await {
                Err(end) => {
                    yield end;
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    yield broken(e);
                    return;
                }
                Ok(Some(Ok(event))) => {
                    let Some(event) = sse_event(&event.event, &event.data) else { continue };
                    produced = true;
                    let terminal = is_terminal(&event);
                    yield event;
                    if terminal {
                        return;
                    }
                }
            }
        }
        yield done_stop();
    }
}

/// One SSE event as a run event (SPEC 10, `sse`); None for an empty one.
fn sse_event(name: &str, data: &str) -> Option<AgentEvent> {
    if data.is_empty() {
        return None;
    }
    let json: Option<Value> = serde_json::from_str(data).ok();
    if !name.is_empty() && name != "message" {
        let Some(Value::Object(mut fields)) = json else {
            return Some(AgentEvent::Other {
                name: name.to_owned(),
                data: json.unwrap_or_else(|| Value::String(data.to_owned())),
            });
        };
        // The same fields as an event line, with the SSE name as its event.
        fields.insert("event".into(), Value::String(name.to_owned()));
        let line = Value::Object(fields).to_string();
        return Some(
            lines::parse(&line, "upstream_error")
                .unwrap_or_else(|m| error("upstream_bad_chunk", m)),
        );
    }
    let text = match &json {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Object(fields)) => ["text", "delta", "content"]
            .iter()
            .find_map(|key| fields.get(*key).and_then(Value::as_str))
            .map(str::to_owned),
        _ => None,
    };
    Some(match text {
        Some(text) => AgentEvent::Token(text),
        None => AgentEvent::Other {
            name: "message".into(),
            data: json.unwrap_or_else(|| Value::String(data.to_owned())),
        },
    })
}

/// The AI SDK's UI message stream (v1): typed JSON chunks, `[DONE]` last.
fn ai_sdk<S>(body: S, deadlines: Deadlines) -> impl Stream<Item = AgentEvent> + Send
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send,
{
    async_stream::stream! {
        let events = body.eventsource();
        futures::pin_mut!(events);
        let mut produced = false;
        loop {
            match deadlines.next(&mut events, produced).await {
                Err(end) => {
                    yield end;
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    yield broken(e);
                    return;
                }
                Ok(Some(Ok(event))) => {
                    let data = event.data.trim();
                    if data.is_empty() || data == "[DONE]" {
                        continue;
                    }
                    let chunk: Value = match serde_json::from_str(data) {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            yield error("upstream_bad_chunk", format!("the application sent a chunk that is not JSON ({e}): {}", excerpt(data)));
                            return;
                        }
                    };
                    let Some(event) = ui_chunk(&chunk) else { continue };
                    produced = true;
                    let terminal = is_terminal(&event);
                    yield event;
                    if terminal {
                        return;
                    }
                }
            }
        }
        yield error("upstream_truncated", "the application's UI message stream ended without a finish chunk");
    }
}

/// One UI message stream chunk as a run event (SPEC 10, `ai-sdk`); None for
/// the chunk types that carry nothing for a run (start, text-start, …).
fn ui_chunk(chunk: &Value) -> Option<AgentEvent> {
    let kind = chunk.get("type").and_then(Value::as_str)?;
    let text = |key: &str| chunk.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(match kind {
        "text-delta" => AgentEvent::Token(text("delta")?),
        "reasoning-delta" => AgentEvent::Other {
            name: "reasoning".into(),
            data: json!({"text": text("delta")?}),
        },
        "tool-input-available" => {
            let input = chunk.get("input").cloned().unwrap_or(Value::Null);
            AgentEvent::Other {
                name: "tool_call".into(),
                data: json!({
                    "id": text("toolCallId").unwrap_or_default(),
                    "type": "function",
                    "function": {"name": text("toolName").unwrap_or_default(), "arguments": input.to_string()},
                }),
            }
        }
        "tool-output-available" => AgentEvent::Other {
            name: "tool_result".into(),
            data: json!({
                "id": text("toolCallId").unwrap_or_default(),
                "content": chunk.get("output").cloned().unwrap_or(Value::Null),
            }),
        },
        "finish" => AgentEvent::Done {
            finish_reason: text("finishReason").unwrap_or_else(|| "stop".into()),
            usage: Map::new(),
        },
        "error" => error(
            "upstream_error",
            text("errorText").unwrap_or_else(|| "the application reported an error".into()),
        ),
        "abort" => AgentEvent::Done {
            finish_reason: "cancelled".into(),
            usage: Map::new(),
        },
        data if data.starts_with("data-") => AgentEvent::Other {
            name: data.to_owned(),
            data: chunk.get("data").cloned().unwrap_or(Value::Null),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Message, Params, Role};

    fn token(text: &str) -> Option<AgentEvent> {
        Some(AgentEvent::Token(text.into()))
    }

    #[test]
    fn sse_events_map_as_the_table_says() {
        // The seed's route: unnamed data, a JSON object with text.
        assert_eq!(sse_event("message", r#"{"text":"hi"}"#), token("hi"));
        assert_eq!(sse_event("message", r#"{"delta":"a"}"#), token("a"));
        assert_eq!(sse_event("message", r#"{"content":"b"}"#), token("b"));
        assert_eq!(sse_event("message", r#""plain""#), token("plain"));
        assert_eq!(
            sse_event("message", r#"{"progress":3}"#),
            Some(AgentEvent::Other {
                name: "message".into(),
                data: json!({"progress": 3})
            })
        );
        assert_eq!(
            sse_event("message", "not json"),
            Some(AgentEvent::Other {
                name: "message".into(),
                data: json!("not json")
            })
        );
        assert_eq!(sse_event("token", r#"{"text":"t"}"#), token("t"));
        assert_eq!(
            sse_event("done", r#"{"finish_reason":"length"}"#),
            Some(AgentEvent::Done {
                finish_reason: "length".into(),
                usage: Map::new()
            })
        );
        assert_eq!(
            sse_event("error", r#"{"code":"quota","message":"m"}"#),
            Some(AgentEvent::Error {
                code: "quota".into(),
                message: "m".into()
            })
        );
        assert_eq!(
            sse_event("tool_call", r#"{"id":"c"}"#),
            Some(AgentEvent::Other {
                name: "tool_call".into(),
                data: json!({"id": "c"})
            })
        );
        assert_eq!(sse_event("message", ""), None);
    }

    #[test]
    fn ui_message_chunks_map_as_the_table_says() {
        assert_eq!(
            ui_chunk(&json!({"type": "text-delta", "id": "1", "delta": "Hi"})),
            token("Hi")
        );
        assert_eq!(ui_chunk(&json!({"type": "start"})), None);
        assert_eq!(ui_chunk(&json!({"type": "text-start", "id": "1"})), None);
        assert_eq!(
            ui_chunk(
                &json!({"type": "tool-input-available", "toolCallId": "c1", "toolName": "clock", "input": {"tz": "UTC"}})
            ),
            Some(AgentEvent::Other {
                name: "tool_call".into(),
                data: json!({"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{\"tz\":\"UTC\"}"}})
            })
        );
        assert_eq!(
            ui_chunk(&json!({"type": "finish"})),
            Some(AgentEvent::Done {
                finish_reason: "stop".into(),
                usage: Map::new()
            })
        );
        assert_eq!(
            ui_chunk(&json!({"type": "abort"})),
            Some(AgentEvent::Done {
                finish_reason: "cancelled".into(),
                usage: Map::new()
            })
        );
        assert_eq!(
            ui_chunk(&json!({"type": "error", "errorText": "boom"})),
            Some(error("upstream_error", "boom"))
        );
        assert_eq!(
            ui_chunk(&json!({"type": "data-weather", "data": {"t": 20}})),
            Some(AgentEvent::Other {
                name: "data-weather".into(),
                data: json!({"t": 20})
            })
        );
    }

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
