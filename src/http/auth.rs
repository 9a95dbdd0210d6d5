//! Who is calling: the middleware in front of every `/api/` route, and the
//! routes that trade a key for a session cookie or an access token.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::auth::{unix_now, AuthError, Caller, Scope, SESSION_COOKIE};
use crate::hub::{rfc3339, RunId};

/// The routes that accept `access_token` in the query: the SSE ones, for
/// `EventSource`, which cannot set headers.
const TOKEN_ROUTES: &[&str] = &[
    "/api/agent/stream",
    "/api/runs/{id}/events",
    "/api/chat",
    "/api/chat/{chat_id}/stream",
];
/// The longest access token anyone may ask for.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Resolves the caller of an `/api/` request, or answers `401`.
pub async fn authenticate(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let token_route = matched.is_some_and(|m| TOKEN_ROUTES.contains(&m.as_str()));
    match caller(
        &state,
        request.headers(),
        request.uri().query(),
        token_route,
    ) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => ApiError::Unauthorized(e.to_string()).into_response(),
    }
}

/// The first credential present decides: a key header, the session cookie,
/// then (on SSE routes) `access_token`.
fn caller(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    token_route: bool,
) -> Result<Caller, AuthError> {
    let auth = &state.auth;
    if !auth.enabled() {
        return Ok(Caller::anyone());
    }
    if let Some(key) = presented_key(headers) {
        return auth.check_key(key);
    }
    if let Some(session) = cookie(headers, SESSION_COOKIE) {
        return auth.check_session(session);
    }
    if token_route {
        let token = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned());
        if let Some(token) = token {
            return auth.check_token(&token);
        }
    }
    Err(AuthError::Missing)
}

/// `Authorization: Bearer <key>` or `X-API-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `POST /api/session`: trades the caller's key for an HttpOnly,
/// SameSite=Strict cookie that same-origin `EventSource` sends by itself.
pub async fn create_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let ttl = Duration::from_secs(state.config.auth.session_ttl_secs);
    let body = json!({
        "key": caller.key,
        "expires_at": rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(unix_now()) + ttl),
    });
    let mut response = Json(body).into_response();
    if state.auth.enabled() {
        let value = state.auth.session(&caller, ttl);
        let cookie = format!(
            "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            ttl.as_secs(),
            if state.tls { "; Secure" } else { "" }
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    response
}

/// `DELETE /api/session`: forgets the cookie.
pub async fn delete_session() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let expired = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// Limit the token to this run (one of the caller's).
    run_id: Option<String>,
    ttl_secs: Option<u64>,
}

/// `POST /api/tokens`: a short-lived access token for SSE routes, scoped to
/// one run or to all of the caller's runs.
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::InvalidJson(format!("the body is not a token request: {e}")))?
    };
    let default_ttl = state.config.auth.token_ttl_secs;
    let ttl = Duration::from_secs(request.ttl_secs.unwrap_or(default_ttl)).min(MAX_TOKEN_TTL);
    if ttl.is_zero() {
        return Err(ApiError::InvalidParam("ttl_secs must be at least 1".into()));
    }
    let scope = match &request.run_id {
        Some(id) => {
            let id = RunId::parse(id).ok_or(ApiError::RunNotFound)?;
            // Only for a run the caller may see.
            state.hub.snapshot(id.clone(), caller.key.clone()).await?;
            Scope::Run(id)
        }
        None => Scope::Key,
    };
    let token = state.auth.token(&caller, &scope, ttl);
    let body = json!({
        "token": token,
        "scope": match &scope { Scope::Key => "key", Scope::Run(_) => "run" },
        "run_id": request.run_id,
        "expires_at": rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(unix_now()) + ttl),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A token scoped to one run cannot reach another, nor start one.
pub fn check_scope(caller: &Caller, run: Option<&RunId>) -> Result<(), ApiError> {
    if caller.publish_only {
        return Err(ApiError::Unauthorized(
            "a publish token only publishes to its run (POST /api/runs/{id}/events)".into(),
        ));
    }
    match (&caller.only_run, run) {
        (None, _) => Ok(()),
        (Some(allowed), Some(run)) if allowed == run => Ok(()),
        (Some(allowed), _) => Err(ApiError::Unauthorized(format!(
            "the access token only grants run {allowed}"
        ))),
    }
}

/// Whether `caller` may publish to push run `run`: a key, a session, or
/// that run's publish token; an access token made for reading may not.
pub fn check_publish_scope(caller: &Caller, run: &RunId) -> Result<(), ApiError> {
    if !caller.via_token {
        return Ok(());
    }
    match &caller.only_run {
        Some(allowed) if caller.publish_only && allowed == run => Ok(()),
        Some(_) if caller.publish_only => Err(ApiError::Unauthorized(format!(
            "the publish token is for another run, not {run}"
        ))),
        _ => Err(ApiError::Unauthorized(
            "an access token is for reading: publish with the run's publish_url token or a key"
                .into(),
        )),
    }
}
