//! The OpenAI-compatible front door (SPEC 11.2): `POST /v1/chat/completions`
//! and `GET /v1/models`, so that the official OpenAI SDKs, pointed at
//! `{sluice}/v1`, start and read Sluice runs. Every call is a run: listed,
//! shareable, cancellable, and a streaming one resumable at
//! `GET /api/runs/{id}/events?format=openai`.

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::auth::check_scope;
use super::error::ApiError;
use super::start::{start_run, StartRun};
use super::stream::stream_run;
use super::AppState;
use crate::agent::{Message, Params, Role};
use crate::auth::Caller;
use crate::config::AgentKind;
use crate::hub::{Resume, RunId, RunSnapshot};
use crate::wire::{openai, sse, Event, Format};

/// Error bodies larger than this are passed through untouched.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `GET /v1/models`: every agent that a completion can use, as a model
/// (push agents' runs are published to, not asked).
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .agents
        .iter()
        .filter(|(_, agent)| agent.push_idle_timeout().is_none())
        .map(|(name, _)| json!({"id": name, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `POST /v1/chat/completions`: `model` names the agent. `stream: true`
/// answers the run in `format=openai` (a one-shot run: the disconnect grace
/// applies); otherwise the answer is one `chat.completion` at the run's end.
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_scope(&caller, None)?;
    let body = body.map_err(|e| ApiError::body(&e, state.config.server.max_body_bytes))?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(format!("the body is not JSON: {e}")))?;
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return Err(ApiError::InvalidJson(
            "the body needs `model`: the name of a Sluice agent".into(),
        ));
    };
    let Some(agent) = state.agents.get(model) else {
        return Err(ApiError::ModelNotFound(format!(
            "the model `{model}` does not exist (available: {})",
            state.agents.names().join(", ")
        )));
    };
    let messages = messages(&request)?;
    let accepted: Vec<&str> = agent.params().iter().map(|p| p.name.as_ref()).collect();
    let params = params(&request, &accepted, agent.kind() == AgentKind::Sim);
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(ApiError::InvalidJson("`stream` must be a boolean".into())),
    };
    let slot = if stream {
        Some(state.streams.try_open()?)
    } else {
        None
    };
    let run_id = start_run(
        &state,
        StartRun {
            agent: model.to_owned(),
            prompt: None,
            messages,
            params,
            cancel_on_disconnect: true,
            owner: caller.key.clone(),
            request: Some(request),
            chat: None,
            push: false,
            webhook: None,
        },
    )
    .await?;
    match slot {
        Some(slot) => stream_run(&state, &caller, slot, run_id, 0, Format::OpenAi).await,
        None => completion(&state, &caller, run_id).await,
    }
}

/// Waits for the run's end and answers it as one `chat.completion`, or its
/// error as `502`. The wait is a subscription, so a client that hangs up
/// leaves the run to the disconnect grace like any one-shot run.
async fn completion(
    state: &AppState,
    caller: &Caller,
    run_id: RunId,
) -> Result<Response, ApiError> {
    let resume = state
        .hub
        .subscribe(run_id.clone(), 0, Format::Sluice, caller.key.clone())
        .await?;
    let mut answer = Answer::default();
    if let Resume::Events(mut chunks) = resume {
        while let Some(chunk) = chunks.next().await {
            for frame in sse::frames(&chunk.bytes) {
                answer.add(Event::from_frame(0, frame));
            }
        }
    }
    let snapshot = state
        .hub
        .snapshot(run_id.clone(), caller.key.clone())
        .await?;
    let mut response = match answer.error {
        Some((code, message)) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": {"message": message, "type": "sluice_error", "param": null, "code": code}})),
        )
            .into_response(),
        None => Json(chat_completion(state, &run_id, &snapshot, answer)).into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(run_id.as_str()) {
        response.headers_mut().insert("x-run-id", value);
    }
    Ok(response)
}

/// The `chat.completion` object of a run that ended well.
fn chat_completion(
    state: &AppState,
    run_id: &RunId,
    snapshot: &RunSnapshot,
    answer: Answer,
) -> Value {
    let created = humantime::parse_rfc3339(&snapshot.created_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let model = state
        .agents
        .get(&snapshot.agent)
        .and_then(|agent| agent.model().map(str::to_owned))
        .unwrap_or_else(|| snapshot.agent.clone());
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert("content".into(), Value::String(answer.text));
    if !answer.reasoning.is_empty() {
        message.insert("reasoning_content".into(), Value::String(answer.reasoning));
    }
    if !answer.tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(answer.tool_calls));
    }
    json!({
        "id": openai::completion_id(run_id.as_str()),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": answer.finish_reason.unwrap_or_else(|| "stop".into()),
        }],
        "usage": openai::usage(snapshot.usage.as_ref()),
    })
}

/// A run's events folded into one assistant message.
#[derive(Default)]
struct Answer {
    text: String,
    reasoning: String,
    tool_calls: Vec<Value>,
    finish_reason: Option<String>,
    /// The code and message of an `error` end.
    error: Option<(String, String)>,
}

impl Answer {
    fn add(&mut self, event: Event<'_>) {
        let data = || serde_json::from_str::<Value>(event.data).unwrap_or_default();
        let text = |data: &Value, key: &str| {
            data.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match event.name {
            "token" => self.text.push_str(&text(&data(), "text")),
            "reasoning" => self.reasoning.push_str(&text(&data(), "text")),
            "tool_call" => {
                let call = openai::tool_call(self.tool_calls.len() as u64, &data());
                self.tool_calls.push(call);
            }
            "done" => self.finish_reason = Some(text(&data(), "finish_reason")),
            "error" => {
                let data = data();
                self.error = Some((text(&data, "code"), text(&data, "message")));
            }
            _ => {}
        }
    }
}

/// The request's messages as a conversation. A string content, or an array
/// of parts whose text parts are joined; `developer` is a system message;
/// `tool` and `function` messages are left out (an `http` agent with
/// `body = "request"` gets them in the request as it came).
fn messages(request: &Value) -> Result<Vec<Message>, ApiError> {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::InvalidJson(
            "the body needs `messages`, an array of chat messages".into(),
        ));
    };
    let mut conversation = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("tool" | "function") => continue,
            other => {
                return Err(ApiError::InvalidJson(format!(
                    "messages[{index}] has role {}; use system, developer, user, assistant or tool",
                    other.map_or_else(|| "none".to_owned(), |r| format!("`{r}`"))
                )))
            }
        };
        let content = match message.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect(),
            Some(_) => {
                return Err(ApiError::InvalidJson(format!(
                    "messages[{index}].content must be a string or an array of parts"
                )))
            }
        };
        conversation.push(Message { role, content });
    }
    Ok(conversation)
}

/// The request fields the agent takes as parameters. For the `sim`,
/// `max_tokens` (or `max_completion_tokens`) is its `tokens`.
fn params(request: &Value, accepted: &[&str], sim: bool) -> Params {
    let mut params = Params::new();
    let Some(fields) = request.as_object() else {
        return params;
    };
    for (key, value) in fields {
        if accepted.contains(&key.as_str()) && !value.is_null() {
            params.insert(key.clone(), value.clone());
        }
    }
    if sim && !params.contains_key("tokens") {
        let max = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|key| fields.get(*key).filter(|v| !v.is_null()));
        if let Some(max) = max {
            params.insert("tokens".into(), max.clone());
        }
    }
    params
}

/// Gives every error answer of the `/v1` routes OpenAI's shape,
/// `{"error": {"message", "type", "param", "code"}}`, whichever layer
/// answered (auth, limits or the handler), so the SDKs raise the right
/// exception with Sluice's message.
pub async fn error_shape(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return (parts.status, "error").into_response();
    };
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(error) = value.get_mut("error").and_then(Value::as_object_mut) {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        error.entry("type").or_insert_with(|| kind.into());
        error.entry("param").or_insert(Value::Null);
    }
    let body = serde_json::to_vec(&value).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_messages_become_the_conversation() {
        let request = json!({"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "tool_call_id": "t", "content": "42"},
        ]});
        let conversation = messages(&request).unwrap_or_default();
        assert_eq!(conversation.len(), 3);
        assert_eq!(conversation[0].role, Role::System);
        assert_eq!(conversation[1].content, "Hi there");
        assert_eq!(conversation[2].content, "");
        assert!(messages(&json!({"messages": [{"role": "robot", "content": "x"}]})).is_err());
        assert!(messages(&json!({"messages": [{"role": "user", "content": 5}]})).is_err());
        assert!(messages(&json!({})).is_err());
    }

    #[test]
    fn only_fields_the_agent_accepts_become_parameters() {
        let request = json!({"model": "sim", "max_tokens": 5, "seed": 7, "temperature": 0.2, "n": 1, "interval_ms": 0});
        let sim = params(
            &request,
            &["tokens", "interval_ms", "seed", "fail_after"],
            true,
        );
        assert_eq!(
            Value::Object(sim),
            json!({"seed": 7, "interval_ms": 0, "tokens": 5})
        );
        let upstream = params(&request, &["temperature", "max_tokens"], false);
        assert_eq!(
            Value::Object(upstream),
            json!({"max_tokens": 5, "temperature": 0.2})
        );
    }
}
