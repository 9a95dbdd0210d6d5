//! Every error the API answers with: one enum, one JSON shape,
//! `{"error": {"code": "snake_case", "message": "human readable"}}`.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::agent::ParamError;
use crate::hub::HubError;

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query or body parameter that is unknown, unparsable or out of range.
    #[error("{0}")]
    InvalidParam(String),
    /// A run asked for an agent this server does not serve (`400`).
    #[error("{0}")]
    UnknownAgent(String),
    /// A request body that is not the JSON the route expects.
    #[error("{0}")]
    InvalidJson(String),
    /// A published line that is not an event (SPEC 12).
    #[error("{0}")]
    InvalidEvent(String),
    /// A body sent as a type the route cannot read (`415`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A body, prompt or line over its configured limit (`413`).
    #[error("{message}")]
    TooLarge {
        /// Which limit, such as `body_too_large`.
        code: &'static str,
        /// The limit, in words the client can act on.
        message: String,
    },
    /// A URL longer than `server.max_url_bytes` (`414`).
    #[error("{0}")]
    UriTooLong(String),
    /// Missing or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// No such run, or it belongs to another key (`404`, so as not to tell which).
    #[error("unknown run")]
    RunNotFound,
    /// A webhook delivery that does not exist or belongs to another key.
    #[error("unknown webhook delivery")]
    DeliveryNotFound,
    /// `/v1/chat/completions` named a model that is no agent.
    #[error("{0}")]
    ModelNotFound(String),
    /// A run evicted by retention: it existed, but its events are gone (`410`).
    #[error("the run's events are no longer retained")]
    RunGone,
    /// A path the API does not have (`404`), as JSON like every other error.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// A known path called with the wrong method (`405`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A per-key limit: `429` with `Retry-After`.
    #[error("{message}")]
    TooMany {
        /// Which limit, such as `rate_limited`.
        code: &'static str,
        /// The limit, in words the client can act on.
        message: String,
        /// When to try again: the `Retry-After` header.
        retry_after_secs: u64,
    },
    /// A capacity limit or an unavailable dependency: `503` with `Retry-After`.
    #[error("{message}")]
    Unavailable {
        /// Which limit or dependency, such as `hub_unavailable`.
        code: &'static str,
        /// What is missing, in words the client can act on.
        message: String,
        /// When to try again: the `Retry-After` header.
        retry_after_secs: u64,
    },
    /// The request conflicts with the run's state (`409`): `details` are
    /// added to the body, beside `error`, such as the run's `offset` or
    /// `status`.
    #[error("{message}")]
    Conflict {
        /// Which conflict, such as `offset_mismatch`.
        code: &'static str,
        /// The conflict, in words the client can act on.
        message: String,
        /// The run's state the client needs to recover, beside `error`.
        details: serde_json::Map<String, serde_json::Value>,
    },
    /// A bug or an environment failure; details are logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status the error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidParam(_)
            | Self::UnknownAgent(_)
            | Self::InvalidJson(_)
            | Self::InvalidEvent(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::RunNotFound
            | Self::DeliveryNotFound
            | Self::RouteNotFound(_)
            | Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::RunGone => StatusCode::GONE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `error.code` clients match on (the message may change).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidParam(_) => "invalid_param",
            Self::UnknownAgent(_) => "unknown_agent",
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidEvent(_) => "invalid_event",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::TooLarge { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unavailable { code, .. }
            | Self::TooMany { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::UriTooLong(_) => "uri_too_long",
            Self::DeliveryNotFound => "delivery_not_found",
            Self::RunNotFound => "run_not_found",
            Self::ModelNotFound(_) => "model_not_found",
            Self::RunGone => "run_evicted",
            Self::RouteNotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Internal(_) => "internal",
        }
    }
}

/// Left on the response of a request refused by a limit or by auth, so
/// that the metrics middleware counts it under its reason.
#[derive(Debug, Clone, Copy)]
pub struct Rejected(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let (Self::Conflict { details, .. }, Some(object)) = (&self, body.as_object_mut()) {
            for (key, value) in details {
                object.insert(key.clone(), value.clone());
            }
        }
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self.status().as_u16(), 401 | 403 | 413 | 414 | 429 | 503) {
            response.extensions_mut().insert(Rejected(self.code()));
        }
        if let Self::Unavailable {
            retry_after_secs, ..
        }
        | Self::TooMany {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl ApiError {
    /// A request body that could not be read: too large (`413`) or broken.
    pub fn body(rejection: &BytesRejection, max_body_bytes: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge {
                code: "body_too_large",
                message: format!("the request body is larger than {max_body_bytes} bytes"),
            }
        } else {
            Self::InvalidJson(format!("cannot read the request body: {rejection}"))
        }
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        Self::InvalidParam(e.to_string())
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::NotFound => Self::RunNotFound,
            HubError::Gone => Self::RunGone,
            HubError::BeyondEnd { .. } => Self::InvalidParam(format!("last_event_id: {e}")),
            HubError::Unavailable(message) => Self::Unavailable {
                code: "hub_unavailable",
                message,
                retry_after_secs: 5,
            },
            HubError::NotPush => Self::Conflict {
                code: "not_a_push_run",
                message: e.to_string(),
                details: serde_json::Map::new(),
            },
            HubError::OffsetMismatch { offset, .. } => Self::Conflict {
                code: "offset_mismatch",
                message: e.to_string(),
                details: [("offset".to_owned(), json!(offset))].into_iter().collect(),
            },
            HubError::Finished { status, offset } => Self::Conflict {
                code: "run_finished",
                message: format!(
                    "the run has ended ({}); nothing more can be published to it",
                    status.as_str()
                ),
                details: [
                    ("status".to_owned(), json!(status)),
                    ("offset".to_owned(), json!(offset)),
                ]
                .into_iter()
                .collect(),
            },
        }
    }
}
