//! The AI SDK chat transport (SPEC 11.3): `POST /api/chat`, and
//! `GET`/`DELETE /api/chat/{chat_id}/stream`, so that `useChat` with
//! `DefaultChatTransport` and `resume: true` works against Sluice with no
//! server code in the application.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::Value;

use super::auth::check_scope;
use super::error::ApiError;
use super::query::Query;
use super::start::{start_run, StartRun};
use super::stream::stream_run;
use super::AppState;
use crate::agent::{Message, Params, Role};
use crate::auth::Caller;
use crate::hub::{Cancelled, RunId, RunStatus};
use crate::wire::Format;

/// The longest chat id Sluice remembers.
const MAX_CHAT_ID: usize = 256;

/// `POST /api/chat?agent=NAME`: the transport's `{id, messages, …}` body
/// starts a one-shot run, answered in `format=ai-sdk`.
///
/// The agent is the query's `agent`, else the body's, else `sim`; other
/// query parameters and the body's `params` object are the run's
/// parameters. The whole body goes to the agent as `request`.
pub async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_scope(&caller, None)?;
    let body = body.map_err(|e| ApiError::body(&e, state.config.server.max_body_bytes))?;
    let mut query = Query::parse(query.as_deref())?;
    query.take("access_token");
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(format!("the body is not JSON: {e}")))?;
    let chat = chat_id(&request)?;
    let messages = ui_messages(&request)?;
    let agent = query
        .take("agent")
        .or_else(|| {
            request
                .get("agent")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "sim".to_owned());
    let mut params: Params = query
        .into_rest()
        .map(|(key, value)| (key, Value::String(value)))
        .collect();
    match request.get("params") {
        Some(Value::Object(extra)) => params.extend(extra.clone()),
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(ApiError::InvalidJson(
                "`params` must be an object of run parameters".into(),
            ))
        }
    }
    let slot = state.streams.try_open()?;
    let run_id = start_run(
        &state,
        StartRun {
            agent,
            prompt: None,
            messages,
            params,
            cancel_on_disconnect: true,
            owner: caller.key.clone(),
            request: Some(request),
            chat: Some(chat),
            push: false,
            webhook: None,
        },
    )
    .await?;
    stream_run(&state, &caller, slot, run_id, 0, Format::AiSdk).await
}

/// `GET /api/chat/{chat_id}/stream`: the chat's latest run from its first
/// event while it runs; `204` when it has finished or the chat is unknown.
/// The query (what the transport's `api` URL carried) is ignored.
pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(chat): Path<String>,
) -> Result<Response, ApiError> {
    let Some(run) = running_run(&state, &caller, chat).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let slot = state.streams.try_open()?;
    match stream_run(&state, &caller, slot, run, 0, Format::AiSdk).await {
        // Evicted since it was looked up: nothing to resume.
        Err(ApiError::RunNotFound | ApiError::RunGone) => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        answer => answer,
    }
}

/// `DELETE /api/chat/{chat_id}/stream`: the stop button. Cancels the chat's
/// running run (`202`); `204` when none is running.
pub async fn stop(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(chat): Path<String>,
) -> Result<Response, ApiError> {
    let Some(run) = running_run(&state, &caller, chat).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(match state.hub.cancel(run, caller.key.clone()).await {
        Ok(Cancelled::Now) => StatusCode::ACCEPTED.into_response(),
        Ok(Cancelled::AlreadyFinished(_)) | Err(crate::hub::HubError::NotFound) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    })
}

/// The caller's chat's latest run, if it is still running.
async fn running_run(
    state: &AppState,
    caller: &Caller,
    chat: String,
) -> Result<Option<RunId>, ApiError> {
    let Some(run) = state.hub.chat_run(chat, caller.key.clone()).await? else {
        return Ok(None);
    };
    check_scope(caller, Some(&run))?;
    match state.hub.snapshot(run.clone(), caller.key.clone()).await {
        Ok(snapshot) if snapshot.status == RunStatus::Running => Ok(Some(run)),
        Ok(_) => Ok(None),
        Err(crate::hub::HubError::NotFound | crate::hub::HubError::Gone) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The body's chat `id`: 1 to 256 bytes.
fn chat_id(request: &Value) -> Result<String, ApiError> {
    match request.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() && id.len() <= MAX_CHAT_ID => Ok(id.to_owned()),
        Some(_) => Err(ApiError::InvalidJson(format!(
            "the chat `id` must be 1 to {MAX_CHAT_ID} bytes"
        ))),
        None => Err(ApiError::InvalidJson(
            "the body needs the chat's `id` (a string), as DefaultChatTransport sends it".into(),
        )),
    }
}

/// The UI messages as a conversation: each message's text parts joined;
/// a message with no text part (only files or tool calls) is left out.
fn ui_messages(request: &Value) -> Result<Vec<Message>, ApiError> {
    let messages = match request.get("messages") {
        Some(Value::Array(messages)) => messages,
        _ => {
            return Err(ApiError::InvalidJson(
                "the body needs `messages`, an array of UI messages".into(),
            ))
        }
    };
    let mut conversation = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some("system") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(ApiError::InvalidJson(format!(
                    "message {index} has role {}; UI messages are system, user or assistant",
                    other.map_or_else(|| "none".to_owned(), |r| format!("`{r}`"))
                )))
            }
        };
        let texts: Vec<&str> = message
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect();
        if !texts.is_empty() {
            conversation.push(Message {
                role,
                content: texts.concat(),
            });
        }
    }
    Ok(conversation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ui_messages_become_the_conversation() {
        let body = json!({"id": "c", "messages": [
            {"id": "1", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
            {"id": "2", "role": "user", "parts": [{"type": "text", "text": "Hi "}, {"type": "file", "url": "x"}, {"type": "text", "text": "there"}]},
            {"id": "3", "role": "assistant", "parts": [{"type": "tool-f", "toolCallId": "t"}]},
        ]});
        let messages = ui_messages(&body).unwrap_or_default();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].role, Role::User);
        assert_eq!(messages[1].content, "Hi there");
        assert_eq!(chat_id(&body).ok().as_deref(), Some("c"));
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(ui_messages(&json!({"messages": [{"role": "tool", "parts": []}]})).is_err());
        assert!(ui_messages(&json!({"messages": "hi"})).is_err());
        assert!(chat_id(&json!({"id": ""})).is_err());
        assert!(chat_id(&json!({"id": "x".repeat(257)})).is_err());
        assert!(chat_id(&json!({})).is_err());
    }
}
