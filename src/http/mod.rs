//! The HTTP API: router, shared state and the serve loop.

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod limits;
pub mod runs;
pub mod stream;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::agent::Agents;
use crate::auth::Auth;
use crate::config::{Config, ConfigError};
use crate::hub::memory::MemoryHub;
use crate::hub::Hub;
use crate::metrics::{self, Metrics};
use dashboard::WebAssets;
use error::{ApiError, Rejected};
use stream::StreamSlots;

/// How long before the end of the shutdown grace the remaining streams are
/// told to reconnect, leaving time for their connections to close.
const RECONNECT_MARGIN: Duration = Duration::from_secs(1);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub agents: Arc<Agents>,
    pub config: Arc<Config>,
    pub streams: Arc<StreamSlots>,
    /// Fired near the end of the shutdown grace: every open stream then sends
    /// `retry:` and ends, so that its client reconnects elsewhere or later.
    pub streams_end: CancellationToken,
    /// Where the dashboard's files come from.
    pub web: Arc<WebAssets>,
    pub metrics: Arc<Metrics>,
    /// Fired when shutdown begins: `/readyz` then answers 503, so load
    /// balancers stop sending new clients while open streams drain.
    pub draining: CancellationToken,
    /// Keys and the signer of sessions and tokens.
    pub auth: Arc<Auth>,
    /// Whether clients reach this server over TLS (cookies get `Secure`).
    pub tls: bool,
    /// `auth.runs_per_minute`, per key.
    pub run_rate: Arc<limits::RunRate>,
}

impl AppState {
    /// The state for `config` with the in-memory hub. Needs a tokio runtime.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let metrics = Metrics::new()
            .map_err(|e| ConfigError::Invalid(format!("cannot set up the metrics: {e}")))?;
        let hub = Hub::new(MemoryHub::new(&config.runs, metrics.clone()));
        Self::with_hub(config, hub, metrics)
    }

    /// Serve the dashboard from `web` instead of the embedded copies.
    pub fn with_web(mut self, web: WebAssets) -> Self {
        self.web = Arc::new(web);
        self
    }

    /// The state for `config` with any hub.
    pub fn with_hub(config: Config, hub: Hub, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let agents = Agents::from_config(&config.agents)?;
        let auth = Auth::from_config(&config.auth, config.auth.env_keys.as_deref())?;
        let run_rate = Arc::new(limits::RunRate::new(config.auth.runs_per_minute));
        Ok(Self {
            hub,
            agents: Arc::new(agents),
            streams: StreamSlots::new(config.server.max_streams),
            config: Arc::new(config),
            streams_end: CancellationToken::new(),
            web: Arc::new(WebAssets::Embedded),
            metrics,
            draining: CancellationToken::new(),
            auth: Arc::new(auth),
            tls: false,
            run_rate,
        })
    }
}

/// All routes of the API.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.server.max_body_bytes;
    // Every /api/ route needs credentials when keys are configured; the
    // route layer runs after routing, so it knows which route it guards.
    let api = Router::new()
        .route("/api/agent/stream", get(stream::one_shot))
        .route("/api/runs", get(runs::list).post(runs::create))
        .route("/api/runs/{id}", get(runs::snapshot).delete(runs::cancel))
        .route("/api/runs/{id}/events", get(stream::run_events))
        .route("/api/agents", get(runs::agents))
        .route(
            "/api/session",
            post(auth::create_session).delete(auth::delete_session),
        )
        .route("/api/tokens", post(auth::create_token))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard::index))
        .route("/{file}", get(dashboard::file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_rejections,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::Internal(
                "a handler panicked".into(),
            ))
        }))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(cors(&state.config.server.cors_origins))
        .with_state(state)
}

/// CORS for the configured origins only (none by default), with credentials,
/// the headers a client sends (keys, `Last-Event-ID`) and those it reads.
fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if origins.is_empty() {
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("x-run-id"),
        ])
        .max_age(Duration::from_secs(600))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// One span per request: method and path (never the query, which may carry
/// a token), and the run id once the handler knows it.
fn request_span(request: &Request) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        run_id = tracing::field::Empty,
    )
}

/// `GET /readyz`: 200 while this node takes new clients, 503 once it drains.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.is_cancelled() {
        let body = json!({"status": "draining"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(json!({"status": "ready"})).into_response()
    }
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .metrics
        .render(state.streams.open(), state.hub.running());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// Counts refused requests by the reason their error leaves on the response.
async fn count_rejections(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(Rejected(reason)) = response.extensions().get::<Rejected>() {
        state.metrics.rejected(reason);
    }
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound(format!("{method} {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Serves `state` on `listener` until `shutdown` completes, then drains:
/// no new connections; open streams get until the end of the configured
/// grace to finish, and those still open a moment before it are told to
/// reconnect (`retry:`) and ended. Returns within the grace.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.config.shutdown_grace();
    let streams_end = state.streams_end.clone();
    let draining = state.draining.clone();
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining.cancel();
            let _ = signalled.send(());
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        _ = on_signal => {}
    }
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: letting open streams finish"
    );
    let reconnect_at = grace.saturating_sub(RECONNECT_MARGIN.min(grace / 2));
    if let Ok(result) = tokio::time::timeout(reconnect_at, &mut server).await {
        return result;
    }
    tracing::info!("telling the remaining streams to reconnect");
    streams_end.cancel();
    match tokio::time::timeout(grace.saturating_sub(reconnect_at), &mut server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("connections still open at the end of the grace; exiting anyway");
            Ok(())
        }
    }
}
