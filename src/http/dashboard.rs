//! The dashboard's static files: `web/` embedded at compile time, so an
//! installed binary serves them, or read from `--web-dir` on every request
//! during development. Only the files listed here are served, so no request
//! path can reach anything else on disk.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Name, content type and embedded bytes of every dashboard file.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/api.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/chart.js"),
    ),
    (
        "run-output.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/run-output.js"),
    ),
    (
        "run-view.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/run-view.js"),
    ),
    (
        "runs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/runs.js"),
    ),
    (
        "sign-in.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/sign-in.js"),
    ),
    (
        "streams.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/streams.js"),
    ),
    (
        "tabs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/tabs.js"),
    ),
    (
        "webhooks.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/webhooks.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../web/favicon.svg"),
    ),
];

/// The page may load scripts, styles, images and data from its own origin
/// only, and no other site may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Where the dashboard's files come from.
#[derive(Debug, Clone, Default)]
pub enum WebAssets {
    /// The copies built into the binary.
    #[default]
    Embedded,
    /// A directory read on every request (`serve --web-dir DIR`).
    Dir(PathBuf),
}

impl WebAssets {
    async fn load(&self, name: &str) -> Result<Option<(&'static str, Vec<u8>)>, ApiError> {
        let Some((_, content_type, embedded)) = FILES.iter().find(|(n, _, _)| *n == name) else {
            return Ok(None);
        };
        let bytes = match self {
            Self::Embedded => embedded.to_vec(),
            Self::Dir(dir) => match tokio::fs::read(dir.join(name)).await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(ApiError::Internal(format!(
                        "cannot read {}: {e}",
                        dir.join(name).display()
                    )))
                }
            },
        };
        Ok(Some((content_type, bytes)))
    }
}

/// `GET /`: the dashboard page.
pub async fn index(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve_file(&state, "index.html").await
}

/// `GET /{file}`: one of the dashboard's files.
pub async fn file(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    serve_file(&state, &name).await
}

async fn serve_file(state: &AppState, name: &str) -> Result<Response, ApiError> {
    let Some((content_type, bytes)) = state.web.load(name).await? else {
        return Err(ApiError::RouteNotFound(format!("GET /{name}")));
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files, and a new binary must never be paired with a cached old page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Ok(response)
}
