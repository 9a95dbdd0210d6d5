//! Any OpenAI-compatible `/chat/completions` upstream: vLLM, llama.cpp's
//! server, Ollama, LM Studio, OpenAI itself.
//!
//! The upstream's SSE is read with eventsource-stream and mapped onto run
//! events. Every way a stream can break ends the run with an `error` event
//! that says how, never with a clean `done`. Dropping the stream (a cancel,
//! or the one-shot disconnect grace) drops the HTTP response, which closes
//! the upstream connection: the upstream stops generating.

use std::collections::BTreeMap;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::upstream::{self, error_message, excerpt, relay_body, Deadlines, Reader, Timeouts};
use super::{
    Agent, AgentEvent, AgentStream, Message, ParamError, ParamSpec, Params, Role, RunInput,
};
use crate::config::{AgentKind, ConfigError};

/// Parameters a run may set when the config does not list its own.
const DEFAULT_ALLOWED: &[&str] = &["temperature", "top_p", "max_tokens", "stop", "seed"];

/// `[agents.NAME]` with `kind = "openai"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    base_url: String,
    model: String,
    /// Name of the environment variable holding the API key, if any.
    api_key_env: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    system_prompt: Option<String>,
    /// Sent with every request; a run may override the allowed ones.
    #[serde(default)]
    defaults: Map<String, Value>,
    /// Request fields a run may set (`temperature`, `max_tokens`, …).
    allow_params: Option<Vec<String>>,
    #[serde(default = "upstream::default_connect")]
    connect_timeout_secs: f64,
    #[serde(default = "upstream::default_first_token")]
    first_token_timeout_secs: f64,
    #[serde(default = "upstream::default_idle")]
    idle_timeout_secs: f64,
    #[serde(default = "upstream::default_run")]
    max_run_secs: f64,
}

/// An OpenAI-compatible upstream.
pub struct OpenAi {
    url: reqwest::Url,
    model: String,
    client: reqwest::Client,
    system_prompt: Option<String>,
    defaults: Map<String, Value>,
    params: Vec<ParamSpec>,
    timeouts: Timeouts,
}

impl OpenAi {
    /// Builds the agent `name` from its config table; every mistake is
    /// reported with the agent's name and the key at fault.
    pub fn from_settings(name: &str, settings: toml::Table) -> Result<Self, ConfigError> {
        let invalid = |msg: String| super::invalid(name, msg);
        let s: Settings = super::settings(name, settings)?;
        if s.model.trim().is_empty() {
            return Err(invalid("`model` is empty".into()));
        }
        let base = upstream::parse_url(name, "base_url", s.base_url.trim_end_matches('/'))?;
        let url = reqwest::Url::parse(&format!(
            "{}/chat/completions",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| invalid(format!("base_url `{}`: {e}", s.base_url)))?;

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
        let allowed: Vec<String> = s
            .allow_params
            .unwrap_or_else(|| DEFAULT_ALLOWED.iter().map(|p| (*p).to_owned()).collect());
        for reserved in ["model", "messages", "stream", "stream_options"] {
            if allowed.iter().any(|p| p == reserved) || s.defaults.contains_key(reserved) {
                return Err(invalid(format!(
                    "`{reserved}` is set by sluice and cannot be a parameter"
                )));
            }
        }
        let params = allowed
            .into_iter()
            .map(|name| {
                let description = match s.defaults.get(&name) {
                    Some(value) => format!("upstream `{name}` (default {value})"),
                    None => format!("upstream `{name}` (default: the upstream's)"),
                };
                ParamSpec {
                    name: name.into(),
                    description: description.into(),
                }
            })
            .collect();
        Ok(Self {
            url,
            model: s.model,
            client,
            system_prompt: s.system_prompt,
            defaults: s.defaults,
            params,
            timeouts,
        })
    }

    /// The conversation goes as it is, after the configured system prompt
    /// unless the conversation brings its own.
    fn body(&self, conversation: &[Message], params: &Params) -> Value {
        let mut messages = Vec::new();
        if let Some(system) = &self.system_prompt {
            if conversation.first().map(|m| m.role) != Some(Role::System) {
                messages.push(json!({"role": "system", "content": system}));
            }
        }
        messages.extend(conversation.iter().map(|m| json!(m)));
        let mut body = Map::new();
        body.insert("model".into(), Value::from(self.model.clone()));
        body.insert("messages".into(), Value::Array(messages));
        for (key, value) in self.defaults.iter().chain(params.iter()) {
            body.insert(key.clone(), value.clone());
        }
        body.insert("stream".into(), Value::Bool(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
        Value::Object(body)
    }
}

/// A query-string value as JSON: `0.7` is a number, `["a"]` an array, `abc` a string.
fn param_value(value: &Value) -> Value {
    match value {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| value.clone()),
        other => other.clone(),
    }
}

impl Agent for OpenAi {
    fn kind(&self) -> AgentKind {
        AgentKind::OpenAi
    }

    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }

    fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    fn start(&self, input: RunInput) -> Result<AgentStream, ParamError> {
        super::reject_unknown(&input.params, &self.params)?;
        let params: Params = input
            .params
            .iter()
            .map(|(k, v)| (k.clone(), param_value(v)))
            .collect();
        let request = self
            .client
            .post(self.url.clone())
            .json(&self.body(&input.messages, &params));
        Ok(stream(request, self.timeouts).boxed())
    }
}

fn stream(
    request: reqwest::RequestBuilder,
    t: Timeouts,
) -> impl futures::Stream<Item = AgentEvent> + Send {
    async_stream::stream! {
        let deadlines = Deadlines::start(t);
        match deadlines.send(request).await {
            Ok(response) => {
                let events = relay(response.bytes_stream().eventsource(), deadlines);
                futures::pin_mut!(events);
                while let Some(event) = events.next().await {
                    yield event;
                }
            }
            Err(end) => yield end,
        }
    }
}

/// Relays a `chat.completion.chunk` SSE stream as run events, ending with
/// exactly one terminal event: the `openai` kind's stream, and an `http`
/// agent's answer in the `openai` format.
pub(super) fn relay<S, E>(
    events: S,
    deadlines: Deadlines,
) -> impl futures::Stream<Item = AgentEvent> + Send
where
    S: futures::Stream<Item = Result<eventsource_stream::Event, E>> + Send,
    E: std::fmt::Display + Send,
{
    relay_body(events, deadlines, ChunkReader::default())
}

/// A tool call assembled from its deltas.
#[derive(Debug, Default, Clone)]
struct ToolCall {
    id: String,
    kind: String,
    name: String,
    arguments: String,
}

/// The state of one upstream stream: what has been seen, and the mapping
/// from chunks to events.
#[derive(Debug, Default)]
struct ChunkReader {
    content_chunks: u64,
    finish_reason: Option<String>,
    usage: Option<Map<String, Value>>,
    tool_calls: BTreeMap<u64, ToolCall>,
}

impl Reader for ChunkReader {
    type Item = eventsource_stream::Event;

    /// `[DONE]` ends the stream; any other event is one JSON chunk.
    fn read(&mut self, event: eventsource_stream::Event) -> Vec<AgentEvent> {
        if event.data.trim() == "[DONE]" {
            return vec![self.finish_at_eof()];
        }
        match serde_json::from_str::<Value>(&event.data) {
            Ok(chunk) => self.read_chunk(&chunk),
            Err(e) => vec![AgentEvent::error(
                "upstream_bad_chunk",
                format!(
                    "the upstream sent a chunk that is not JSON ({e}): {}",
                    excerpt(&event.data)
                ),
            )],
        }
    }

    fn finish(mut self) -> Vec<AgentEvent> {
        vec![self.finish_at_eof()]
    }
}

impl ChunkReader {
    /// The events one chunk yields.
    fn read_chunk(&mut self, chunk: &Value) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        if let Some(err) = chunk.get("error") {
            let message = error_message(chunk).unwrap_or_else(|| err.to_string());
            out.push(AgentEvent::error("upstream_error", message));
            return out;
        }
        if let Some(usage) = chunk.get("usage").and_then(Value::as_object) {
            self.usage = Some(usage.clone());
        }
        let choice = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first());
        let Some(choice) = choice else {
            return out;
        };
        let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
        for key in ["reasoning_content", "reasoning"] {
            if let Some(text) = delta
                .get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                out.push(AgentEvent::Other {
                    name: "reasoning".into(),
                    data: json!({"text": text}),
                });
                break;
            }
        }
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.content_chunks += 1;
            out.push(AgentEvent::Token(text.to_owned()));
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            self.add_tool_call_deltas(calls);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
            out.extend(self.take_tool_calls());
        }
        out
    }

    /// Tool calls come in pieces, by index: the id and name first, then
    /// the arguments a few characters at a time.
    fn add_tool_call_deltas(&mut self, calls: &[Value]) {
        for (position, call) in calls.iter().enumerate() {
            let index = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let entry = self.tool_calls.entry(index).or_default();
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                entry.id = id.to_owned();
            }
            if let Some(kind) = call.get("type").and_then(Value::as_str) {
                entry.kind = kind.to_owned();
            }
            if let Some(function) = call.get("function") {
                if let Some(name) = function.get("name").and_then(Value::as_str) {
                    entry.name.push_str(name);
                }
                if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                    entry.arguments.push_str(arguments);
                }
            }
        }
    }

    /// Assembled tool calls, each as one `tool_call` event.
    fn take_tool_calls(&mut self) -> Vec<AgentEvent> {
        std::mem::take(&mut self.tool_calls)
            .into_values()
            .map(|call| AgentEvent::Other {
                name: "tool_call".into(),
                data: json!({
                    "id": call.id,
                    "type": if call.kind.is_empty() { "function".to_owned() } else { call.kind },
                    "function": {"name": call.name, "arguments": call.arguments},
                }),
            })
            .collect()
    }

    /// The terminal event when the upstream's stream ends (`[DONE]` or EOF).
    fn finish_at_eof(&mut self) -> AgentEvent {
        let Some(finish_reason) = self.finish_reason.take() else {
            return AgentEvent::error(
                "upstream_truncated",
                "the upstream stream ended without a finish_reason or [DONE]",
            );
        };
        AgentEvent::Done {
            finish_reason,
            usage: self.usage_map(),
        }
    }

    /// `prompt_tokens` and `output_tokens` from the upstream's usage, or
    /// `output_tokens` counted by Sluice (one per content chunk) when the
    /// upstream sent none, marked `output_tokens_counted`.
    fn usage_map(&self) -> Map<String, Value> {
        let mut usage = Map::new();
        if let Some(upstream) = &self.usage {
            for (from, to) in [
                ("prompt_tokens", "prompt_tokens"),
                ("completion_tokens", "output_tokens"),
                ("total_tokens", "total_tokens"),
            ] {
                if let Some(value) = upstream.get(from) {
                    usage.insert(to.into(), value.clone());
                }
            }
        }
        // No usage from the upstream, or none for the output: count it.
        if !usage.contains_key("output_tokens") {
            usage.insert("output_tokens".into(), Value::from(self.content_chunks));
            usage.insert("output_tokens_counted".into(), Value::Bool(true));
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> toml::Table {
        text.parse().unwrap_or_default()
    }

    #[test]
    fn configuration_mistakes_name_the_agent_and_the_key() {
        let cases = [
            ("model = \"m\"", "base_url"),
            ("base_url = \"http://h/v1\"", "model"),
            ("base_url = \"not a url\"\nmodel = \"m\"", "base_url"),
            ("base_url = \"ftp://h/v1\"\nmodel = \"m\"", "base_url"),
            ("base_url = \"http://h/v1\"\nmodel = \"\"", "model"),
            ("base_url = \"http://h/v1\"\nmodel = \"m\"\napi_key_env = \"SLUICE_TEST_SURELY_UNSET\"", "SLUICE_TEST_SURELY_UNSET"),
            ("base_url = \"http://h/v1\"\nmodel = \"m\"\nidle_timeout_secs = 0", "idle_timeout_secs"),
            ("base_url = \"http://h/v1\"\nmodel = \"m\"\nallow_params = [\"stream\"]", "stream"),
            ("base_url = \"http://h/v1\"\nmodel = \"m\"\ncolour = 1", "colour"),
        ];
        for (text, needle) in cases {
            let err = OpenAi::from_settings("up", settings(text))
                .err()
                .map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(
                err.contains("agents.up") && err.contains(needle),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn request_body_merges_defaults_and_run_params_and_asks_for_usage() {
        let agent = OpenAi::from_settings(
            "up",
            settings("base_url = \"http://h/v1/\"\nmodel = \"m\"\nsystem_prompt = \"be brief\"\ndefaults = { temperature = 0.2, max_tokens = 64 }"),
        );
        let agent = agent.ok();
        let Some(agent) = agent else {
            panic!("valid settings")
        };
        assert_eq!(agent.url.as_str(), "http://h/v1/chat/completions");
        let mut params = Params::new();
        params.insert("temperature".into(), param_value(&Value::from("0.9")));
        let body = agent.body(&[user("hi")], &params);
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "temperature": 0.9,
                "max_tokens": 64,
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        let names: Vec<&str> = agent.params().iter().map(|p| p.name.as_ref()).collect();
        assert_eq!(names, DEFAULT_ALLOWED);

        // A conversation goes whole; its own system message replaces the
        // configured one.
        let said = |role, content: &str| Message {
            role,
            content: content.into(),
        };
        let body = agent.body(
            &[user("a"), said(Role::Assistant, "b"), user("c")],
            &Params::new(),
        );
        assert_eq!(
            body["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "a"},
                   {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])
        );
        let body = agent.body(&[said(Role::System, "be long"), user("a")], &Params::new());
        assert_eq!(
            body["messages"],
            json!([{"role": "system", "content": "be long"}, {"role": "user", "content": "a"}])
        );
    }

    fn user(content: &str) -> Message {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }

    #[test]
    fn chunks_map_to_tokens_reasoning_tool_calls_and_usage() {
        let mut reader = ChunkReader::default();
        let events: Vec<AgentEvent> = [
            json!({"choices": [{"delta": {"role": "assistant"}}]}),
            json!({"choices": [{"delta": {"reasoning_content": "think"}}]}),
            json!({"choices": [{"delta": {"content": "Hel"}}]}),
            json!({"choices": [{"delta": {"content": "lo"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "get_", "arguments": "{\"a\""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "time", "arguments": ":1}"}}]}}]}),
            json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": null, "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}),
        ]
        .iter()
        .flat_map(|chunk| reader.read_chunk(chunk))
        .collect();
        assert_eq!(
            events,
            vec![
                AgentEvent::Other {
                    name: "reasoning".into(),
                    data: json!({"text": "think"})
                },
                AgentEvent::Token("Hel".into()),
                AgentEvent::Token("lo".into()),
                AgentEvent::Other {
                    name: "tool_call".into(),
                    data: json!({"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{\"a\":1}"}}),
                },
            ]
        );
        let AgentEvent::Done {
            finish_reason,
            usage,
        } = reader.finish_at_eof()
        else {
            panic!("done expected")
        };
        assert_eq!(finish_reason, "tool_calls");
        assert_eq!(
            Value::Object(usage),
            json!({"prompt_tokens": 7, "output_tokens": 3, "total_tokens": 10})
        );
    }

    #[test]
    fn without_usage_output_tokens_are_counted_and_marked() {
        let mut reader = ChunkReader::default();
        reader.read_chunk(&json!({"choices": [{"delta": {"content": "a"}}]}));
        reader.read_chunk(
            &json!({"choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}]}),
        );
        let AgentEvent::Done { usage, .. } = reader.finish_at_eof() else {
            panic!("done expected")
        };
        assert_eq!(
            Value::Object(usage),
            json!({"output_tokens": 2, "output_tokens_counted": true})
        );
    }

    #[test]
    fn an_end_without_finish_reason_is_truncation_and_errors_are_errors() {
        let mut reader = ChunkReader::default();
        reader.read_chunk(&json!({"choices": [{"delta": {"content": "a"}}]}));
        assert!(
            matches!(reader.finish_at_eof(), AgentEvent::Error { code, .. } if code == "upstream_truncated")
        );
        let out =
            ChunkReader::default().read_chunk(&json!({"error": {"message": "model overloaded"}}));
        assert_eq!(
            out,
            vec![AgentEvent::error("upstream_error", "model overloaded")]
        );
    }
}
