//! The HTTP API: router, shared state and the serve loop.

pub mod auth;
pub mod chat;
pub mod dashboard;
pub mod error;
pub mod limits;
pub mod openai;
pub mod publish;
pub mod query;
pub mod runs;
pub mod start;
pub mod stream;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::agent::Agents;
use crate::auth::Auth;
use crate::config::{Backend, Config, ConfigError};
use crate::hub::Hub;
use crate::metrics::{self, Metrics};
use crate::webhooks::Webhooks;
use dashboard::WebAssets;
use error::{ApiError, Rejected};
use stream::StreamSlots;

/// How long before the end of the shutdown grace the remaining streams are
/// told to reconnect, leaving time for their connections to close.
const RECONNECT_MARGIN: Duration = Duration::from_secs(1);

/// What every handler shares: one `Arc`, so that the clones that every
/// middleware and extractor make cost one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Gateway>);

impl std::ops::Deref for AppState {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.0
    }
}

/// The gateway's parts, behind [`AppState`].
#[derive(Clone)]
pub struct Gateway {
    /// The runs and their event logs; `main` keeps a clone to shut it down after serving.
    pub hub: Hub,
    /// The agents runs may name, built once from the config.
    pub agents: Arc<Agents>,
    /// The checked configuration, read by handlers for their limits.
    pub config: Arc<Config>,
    /// `server.max_streams`: the open SSE responses, counted.
    pub streams: Arc<StreamSlots>,
    /// Fired near the end of the shutdown grace: every open stream then sends
    /// `retry:` and ends, so that its client reconnects elsewhere or later.
    pub streams_end: CancellationToken,
    /// Where the dashboard's files come from.
    pub web: Arc<WebAssets>,
    /// What `/metrics` reports; handlers, the hub and webhooks all count into it.
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
    /// Run webhooks (SPEC 13); off without `webhooks.secret`.
    pub webhooks: Webhooks,
}

impl AppState {
    /// The state for `config` with the in-memory hub. Needs a tokio runtime.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let metrics = Metrics::new()
            .map_err(|e| ConfigError::Invalid(format!("cannot set up the metrics: {e}")))?;
        let hub = Hub::in_memory(&config.runs, metrics.clone());
        let webhooks = Webhooks::in_memory(&config, hub.clone(), metrics.clone())?;
        Self::with_hub(config, hub, metrics, webhooks)
    }

    /// The state for `config` with the hub it names: in memory, or shared
    /// through Redis (which must answer now).
    pub async fn connect(config: Config) -> Result<Self, ConfigError> {
        if config.hub.backend == Backend::Memory {
            return Self::new(config);
        }
        let metrics = Metrics::new()
            .map_err(|e| ConfigError::Invalid(format!("cannot set up the metrics: {e}")))?;
        let hub = Hub::connect(&config, metrics.clone())
            .await
            .map_err(|e| ConfigError::Invalid(format!("hub.url `{}`: {e}", config.hub.url)))?;
        let webhooks = Webhooks::in_redis(&config, hub.clone(), metrics.clone()).await?;
        Self::with_hub(config, hub, metrics, webhooks)
    }

    /// Serve the dashboard from `web` instead of the embedded copies.
    pub fn with_web(mut self, web: WebAssets) -> Self {
        Arc::make_mut(&mut self.0).web = Arc::new(web);
        self
    }

    /// The state for `config` with any hub and the webhooks that go with it.
    fn with_hub(
        config: Config,
        hub: Hub,
        metrics: Arc<Metrics>,
        webhooks: Webhooks,
    ) -> Result<Self, ConfigError> {
        let agents = Agents::from_config(&config.agents)?;
        let auth = Auth::from_config(&config.auth, config.auth.env_keys.as_deref())?;
        let run_rate = Arc::new(limits::RunRate::new(config.auth.runs_per_minute));
        Ok(Self(Arc::new(Gateway {
            webhooks,
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
        })))
    }
}

/// How many connections may wait to be accepted; the kernel caps it at
/// `net.core.somaxconn`. Tokio's default of 1,024 drops SYNs when a
/// thousand clients reconnect at once, and each dropped one waits a second
/// to retry.
const LISTEN_BACKLOG: u32 = 8192;

/// A listener on `addr` with a backlog sized for reconnect storms.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// All routes of the API.
///
/// It stays one function over 60 lines on purpose: it is the route table,
/// and SPEC's routes are easiest to check against it read top to bottom.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.server.max_body_bytes;
    // Every /api/ route needs credentials when keys are configured; the
    // route layer runs after routing, so it knows which route it guards.
    let api = Router::new()
        .route("/api/agent/stream", get(stream::one_shot))
        .route("/api/runs", get(runs::list).post(runs::create))
        .route("/api/runs/{id}", get(runs::snapshot).delete(runs::cancel))
        .route(
            "/api/runs/{id}/events",
            get(stream::run_events).post(publish::publish),
        )
        .route("/api/agents", get(runs::agents))
        .route("/api/chat", post(chat::send))
        .route(
            "/api/chat/{chat_id}/stream",
            get(chat::resume).delete(chat::stop),
        )
        .route(
            "/api/session",
            post(auth::create_session).delete(auth::delete_session),
        )
        .route("/api/tokens", post(auth::create_token))
        .route("/api/webhooks/deliveries", get(webhooks::list))
        .route("/api/webhooks/deliveries/{id}/retry", post(webhooks::retry))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    // The OpenAI SDKs' door: the same auth, errors in OpenAI's shape.
    let v1 = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(openai::error_shape));
    Router::new()
        .merge(api)
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard::index))
        .route("/{file}", get(dashboard::file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), limit_url))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_rejections,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::Internal(
                "a handler panicked".into(),
            ))
        }))
        .layer(middleware::from_fn(trace_request))
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

/// Runs each request's handler in a `debug` span (method, path, run id) and
/// logs server errors at `error`, the other responses at `debug`. At the
/// default level the span is never built: a stream's setup pays for no log
/// formatting beyond its run's one `run started` line. Only the handler runs
/// in the span, not the response body, so a stream's frames are written
/// without entering it.
async fn trace_request(request: Request, next: Next) -> Response {
    let span = request_span(&request);
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if response.status().is_server_error() {
            let path = uri.path();
            tracing::error!(%method, path, status, latency_ms, "response");
        } else {
            tracing::debug!(status, latency_ms, "response");
        }
    });
    response
}

/// One span per request: method and path (never the query, which may carry
/// a token), and the run id once the handler knows it.
fn request_span(request: &Request) -> tracing::Span {
    tracing::debug_span!(
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

/// `414` for a URL longer than `server.max_url_bytes`, before any routing.
async fn limit_url(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let max = state.config.server.max_url_bytes;
    let uri = request.uri();
    let len = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if len > max {
        return ApiError::UriTooLong(format!("the URL is {len} bytes; the limit is {max}"))
            .into_response();
    }
    next.run(request).await
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
    serve_with_tls(listener, state, None, shutdown).await
}

/// hyper's connection builders, one per way of picking the protocol.
#[derive(Clone)]
struct Protocols {
    /// HTTP/1.1 only: TLS connections that chose it by ALPN. Knowing the
    /// protocol up front skips the first read that sniffs for HTTP/2,
    /// whose few bytes would make hyper grow each connection's 8 KiB read
    /// buffer to 16 KiB.
    http1: Builder<TokioExecutor>,
    /// HTTP/2 only: TLS connections that chose it by ALPN.
    http2: Builder<TokioExecutor>,
    /// Either, by sniffing: TLS clients that sent no ALPN.
    auto: Builder<TokioExecutor>,
    /// Plain connections: hyper's own HTTP/1 server, whose connection
    /// future has no room for an HTTP/2 state it will never use, which
    /// keeps each open stream's task smaller.
    plain: hyper::server::conn::http1::Builder,
}

impl Protocols {
    fn new(header_timeout: Duration, max_head: usize) -> Self {
        let mut auto = Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(max_head);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
        let mut plain = hyper::server::conn::http1::Builder::new();
        plain
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(max_head);
        Self {
            plain,
            http1: auto.clone().http1_only(),
            http2: auto.clone().http2_only(),
            auto,
        }
    }

    fn by_alpn(&self, alpn: Option<&[u8]>) -> &Builder<TokioExecutor> {
        match alpn {
            Some(b"h2") => &self.http2,
            Some(_) => &self.http1,
            None => &self.auto,
        }
    }
}

/// A connection's end, when it ended with an error (a client that went
/// away, a malformed request): worth a line only at `debug`.
fn log_end<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

/// [`serve`], over TLS when `tls` is given (HTTP/2 or HTTP/1.1 by ALPN).
///
/// Each connection gets hyper's auto (HTTP/1 and HTTP/2) server with a
/// header-read timeout and a bounded request head, and is watched so that
/// shutdown can drain it.
pub async fn serve_with_tls(
    listener: TcpListener,
    mut state: AppState,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    Arc::make_mut(&mut state.0).tls = tls.is_some();
    let grace = state.config.shutdown_grace();
    let header_timeout = Duration::from_secs(state.config.server.header_read_timeout_secs);
    let max_head = state.config.server.max_header_bytes;
    let streams_end = state.streams_end.clone();
    let draining = state.draining.clone();
    let app = router(state);

    let protocols = Protocols::new(header_timeout, max_head);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            tcp = accept(&listener) => tcp,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        // Plain and TLS connections get tasks of their own, so that a plain
        // one does not carry the room a TLS session needs.
        match &tls {
            None => {
                let conn = protocols.plain.serve_connection(TokioIo::new(tcp), service);
                tokio::spawn(async move { log_end(watcher.watch(conn).await) });
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(header_timeout, acceptor.accept(tcp));
                let protocols = protocols.clone();
                tokio::spawn(async move {
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                    let builder = protocols.by_alpn(stream.get_ref().1.alpn_protocol());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    log_end(watcher.watch(conn).await);
                });
            }
        }
    }
    drop(listener);
    draining.cancel();
    drain(graceful, grace, streams_end).await;
    Ok(())
}

/// The next connection, with Nagle off.
async fn accept(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                return tcp;
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Lets open connections finish within `grace`: streams are asked to
/// reconnect (elsewhere) shortly before its end.
async fn drain(graceful: GracefulShutdown, grace: Duration, streams_end: CancellationToken) {
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: letting open streams finish"
    );
    let closed = graceful.shutdown();
    tokio::pin!(closed);
    let reconnect_at = grace.saturating_sub(RECONNECT_MARGIN.min(grace / 2));
    if tokio::time::timeout(reconnect_at, &mut closed)
        .await
        .is_ok()
    {
        return;
    }
    tracing::info!("telling the remaining streams to reconnect");
    streams_end.cancel();
    if tokio::time::timeout(grace.saturating_sub(reconnect_at), &mut closed)
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the end of the grace; exiting anyway");
    }
}
