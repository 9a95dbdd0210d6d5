//! Runs as resources: create, list, snapshot, cancel; and the agent list.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::query::{Query, RunIdPath};
use super::start::{start_run, StartRun};
use super::AppState;
use crate::agent::{Message, Params};
use crate::auth::{Caller, Scope};
use crate::hub::{Cancelled, RunId, RunSnapshot};

/// The body of `POST /api/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRun {
    #[serde(default = "default_agent")]
    agent: String,
    prompt: Option<String>,
    /// The conversation (SPEC 9); a bad role or a non-string content fails
    /// the whole body as `invalid_json`.
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    params: Params,
    #[serde(default)]
    cancel_on_disconnect: bool,
    /// Where to POST the signed `run.finished` webhook (SPEC 13).
    #[serde(default)]
    webhook_url: Option<String>,
}

fn default_agent() -> String {
    "sim".to_owned()
}

/// `POST /api/runs`: start a run that goes on without subscribers.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::body(&e, state.config.server.max_body_bytes))?;
    let request: CreateRun = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(format!("the body is not a valid run request: {e}")))?;
    let agent = request.agent.clone();
    let webhook = match &request.webhook_url {
        Some(url) => Some(
            state
                .webhooks
                .check(url)
                .map_err(|e| ApiError::InvalidParam(e.to_string()))?,
        ),
        None => None,
    };
    let id = start_run(
        &state,
        StartRun {
            agent: request.agent,
            prompt: request.prompt,
            messages: request.messages,
            params: request.params,
            cancel_on_disconnect: request.cancel_on_disconnect,
            owner: caller.key.clone(),
            request: None,
            chat: None,
            push: true,
            webhook,
        },
    )
    .await?;
    let location = format!("/api/runs/{id}");
    let body = created(&state, &caller, &agent, &id, &location);
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// The answer to a created run: its id, where to read its events and, for a
/// push run, where its worker publishes.
fn created(state: &AppState, caller: &Caller, agent: &str, id: &RunId, location: &str) -> Value {
    // With auth on, the URL works as it is in an EventSource: it carries a
    // token for this run only.
    let events_url = if state.auth.enabled() {
        let ttl = std::time::Duration::from_secs(state.config.auth.token_ttl_secs);
        let token = state.auth.token(caller, &Scope::Run(id.clone()), ttl);
        format!("{location}/events?access_token={token}")
    } else {
        format!("{location}/events")
    };
    let mut body = json!({
        "id": id,
        "status": "running",
        "events_url": events_url,
    });
    // A push run: where its worker publishes, with a token that may do
    // that and nothing else, for as long as the run may run.
    let push = state
        .agents
        .get(agent)
        .is_some_and(|agent| agent.push_idle_timeout().is_some());
    if push {
        let publish_url = if state.auth.enabled() {
            let ttl = state
                .config
                .runs
                .max_run()
                .unwrap_or(std::time::Duration::from_secs(7 * 24 * 3600));
            let token = state.auth.publish_token(caller, id, ttl);
            format!("{location}/events?access_token={token}")
        } else {
            format!("{location}/events")
        };
        body["publish_url"] = json!(publish_url);
    }
    body
}

/// `GET /api/runs?limit=`: newest first; `limit` is clamped to 1..=1000 and
/// anything unparsable means the default, 50.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let limit = Query::parse(query.as_deref())
        .ok()
        .and_then(|mut q| q.take("limit"))
        .and_then(|text| text.trim().parse::<i64>().ok())
        .map_or(50, |n| n.clamp(1, 1000));
    let runs = state.hub.list(limit as usize, caller.key).await?;
    Ok(Json(json!({ "runs": runs })))
}

/// `GET /api/runs/{id}`.
pub async fn snapshot(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RunIdPath(id): RunIdPath,
) -> Result<Json<RunSnapshot>, ApiError> {
    Ok(Json(state.hub.snapshot(id, caller.key).await?))
}

/// `DELETE /api/runs/{id}`: `202` when it cancelled the run, `200` when the
/// run had already finished; the body is the run's snapshot without text.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RunIdPath(id): RunIdPath,
) -> Result<Response, ApiError> {
    let outcome = state.hub.cancel(id.clone(), caller.key.clone()).await?;
    let status = match outcome {
        Cancelled::Now => StatusCode::ACCEPTED,
        Cancelled::AlreadyFinished(_) => StatusCode::OK,
    };
    let mut snapshot = state.hub.snapshot(id, caller.key).await?;
    snapshot.text = None;
    Ok((status, Json(snapshot)).into_response())
}

/// `GET /api/agents`.
pub async fn agents(State(state): State<AppState>) -> Json<Value> {
    let agents: Vec<Value> = state
        .agents
        .iter()
        .map(|(name, agent)| {
            let params: Map<String, Value> = agent
                .params()
                .iter()
                .map(|p| (p.name.to_string(), Value::from(p.description.as_ref())))
                .collect();
            json!({"name": name, "kind": agent.kind().name(), "model": agent.model(), "params": params})
        })
        .collect();
    Json(json!({ "agents": agents }))
}
