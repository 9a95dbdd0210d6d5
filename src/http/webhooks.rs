//! The key's webhook deliveries (SPEC 13): listed, and a failed one sent again.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::auth::check_scope;
use super::error::ApiError;
use super::query::Query;
use super::AppState;
use crate::auth::Caller;
use crate::webhooks::store::{RetryRefused, Status, StoreError};

fn unavailable(e: StoreError) -> ApiError {
    ApiError::Unavailable {
        code: "hub_unavailable",
        message: e.to_string(),
        retry_after_secs: 5,
    }
}

/// `GET /api/webhooks/deliveries?status=pending|delivered|failed&limit=`:
/// the key's deliveries, newest first; `limit` as for runs (default 50,
/// clamped to 1..=1000).
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    check_scope(&caller, None)?;
    let mut query = Query::parse(query.as_deref())?;
    let status = match query.take("status").as_deref() {
        None | Some("") => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            ApiError::InvalidParam(format!(
                "`status` is `{text}`; expected pending, delivered or failed"
            ))
        })?),
    };
    let limit = query
        .take("limit")
        .and_then(|text| text.trim().parse::<i64>().ok())
        .map_or(50, |n| n.clamp(1, 1000));
    let deliveries = state
        .webhooks
        .list(caller.key, status, limit as usize)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({
        "enabled": state.webhooks.enabled(),
        "deliveries": deliveries,
    })))
}

/// `POST /api/webhooks/deliveries/{id}/retry`: a failed delivery is
/// pending again, due now, with the whole retry schedule ahead: `202`
/// with the delivery. Another key's or an unknown one: `404`; one that
/// has not failed: `409`.
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_scope(&caller, None)?;
    let answer = state
        .webhooks
        .retry(caller.key, id)
        .await
        .map_err(unavailable)?;
    match answer {
        Ok(delivery) => Ok((StatusCode::ACCEPTED, Json(json!(delivery))).into_response()),
        Err(RetryRefused::NotFound) => Err(ApiError::DeliveryNotFound),
        Err(RetryRefused::NotFailed(status)) => {
            let mut details = serde_json::Map::new();
            details.insert("status".into(), json!(status));
            Err(ApiError::Conflict {
                code: "delivery_not_failed",
                message: format!(
                    "the delivery is {}; only a failed delivery is sent again",
                    status.as_str()
                ),
                details,
            })
        }
    }
}
