//! The SSE routes: the one-shot `GET /api/agent/stream` and
//! `GET /api/runs/{id}/events`, with resume by `Last-Event-ID`, in any wire
//! format (`format=sluice|openai|ai-sdk`); and the SSE response every route
//! that streams a run answers with.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::check_scope;
use super::error::ApiError;
use super::query::{self, resume_point, Query, RunIdPath};
use super::start::{start_run, StartRun};
use super::AppState;
use crate::agent::Params;
use crate::auth::Caller;
use crate::hub::{Chunk, Resume, RunId, Seq, Subscription};
use crate::metrics::Metrics;
use crate::wire::{ai_sdk, sse, Format};

/// What a client is told to wait before reconnecting when shutdown ends its stream.
const SHUTDOWN_RETRY_MS: u64 = 1000;
/// `Retry-After` when `max_streams` is reached.
const FULL_RETRY_AFTER_SECS: u64 = 5;

/// `GET /api/agent/stream?prompt=&agent=&…params`: start a run and stream it,
/// or, given a `Last-Event-ID`, resume the run it names without starting one.
pub async fn one_shot(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = Query::parse(query.as_deref())?;
    // Checked by the auth middleware already.
    query.take("access_token");
    let format = query::format(&mut query)?;
    let resume = resume_point(&headers, query.take("last_event_id"))?;
    check_scope(&caller, resume.as_ref().map(|(id, _)| id))?;
    // Taken before anything starts: a refused stream must not start a run.
    let slot = state.streams.try_open()?;
    if let Some((run_id, seq)) = resume {
        return stream_run(&state, &caller, slot, run_id, seq, format).await;
    }
    let agent = query.take("agent").unwrap_or_else(|| "sim".to_owned());
    let prompt = query.take("prompt").unwrap_or_default();
    let params: Params = query
        .into_rest()
        .map(|(key, value)| (key, serde_json::Value::String(value)))
        .collect();
    let run_id = start_run(
        &state,
        StartRun {
            agent,
            prompt: Some(prompt),
            messages: Vec::new(),
            params,
            cancel_on_disconnect: true,
            owner: caller.key.clone(),
            request: None,
            chat: None,
            push: false,
            webhook: None,
        },
    )
    .await?;
    stream_run(&state, &caller, slot, run_id, 0, format).await
}

/// `GET /api/runs/{id}/events`: a run's events from the first, or after
/// `Last-Event-ID`; any number of subscribers.
pub async fn run_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RunIdPath(id): RunIdPath,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    check_scope(&caller, Some(&id))?;
    let mut query = Query::parse(query.as_deref())?;
    query.take("access_token");
    let format = query::format(&mut query)?;
    let after = match resume_point(&headers, query.take("last_event_id"))? {
        Some((resume_id, _)) if resume_id != id => {
            return Err(ApiError::InvalidParam(format!(
                "last_event_id names run {resume_id}, not {id}"
            )))
        }
        Some((_, seq)) => seq,
        None => 0,
    };
    if let Some(key) = query.first_key() {
        return Err(ApiError::InvalidParam(format!(
            "unknown query parameter `{key}` (this route takes last_event_id and format)"
        )));
    }
    let slot = state.streams.try_open()?;
    stream_run(&state, &caller, slot, id, after, format).await
}

/// Run `run_id`'s events after `after` in `format` as an SSE response;
/// `204` when the run has finished and nothing follows.
pub async fn stream_run(
    state: &AppState,
    caller: &Caller,
    slot: StreamSlot,
    run_id: RunId,
    after: Seq,
    format: Format,
) -> Result<Response, ApiError> {
    tracing::Span::current().record("run_id", run_id.as_str());
    let resume = state
        .hub
        .subscribe(run_id.clone(), after, format, caller.key.clone())
        .await?;
    if after > 0 {
        state.metrics.resumed();
    }
    match resume {
        Resume::Finished => Ok(StatusCode::NO_CONTENT.into_response()),
        Resume::Events(subscription) => {
            let body = sse_body(
                subscription,
                slot,
                format,
                state.config.keep_alive(),
                state.streams_end.clone(),
                state.metrics.clone(),
            );
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            if let Ok(value) = HeaderValue::from_str(run_id.as_str()) {
                headers.insert("x-run-id", value);
            }
            if format == Format::AiSdk {
                let (name, value) = ai_sdk::HEADER;
                headers.insert(name, HeaderValue::from_static(value));
            }
            Ok(response)
        }
    }
}

enum Step {
    Chunk(Chunk),
    KeepAlive,
    Shutdown,
    End,
}

/// The response body: the subscription's chunks as they come, a keep-alive
/// comment after `keep_alive` without one, and on shutdown a `retry:` field
/// and the end, so the client reconnects. One timer per stream, re-armed
/// only when it fires rather than on every event.
fn sse_body(
    mut subscription: Subscription,
    slot: StreamSlot,
    format: Format,
    keep_alive: Duration,
    streams_end: CancellationToken,
    metrics: Arc<Metrics>,
) -> Body {
    let stream = async_stream::stream! {
        let _slot = slot;
        // A child token: polling it locks only this stream's node, not the
        // one shared by every stream.
        let ended = streams_end.child_token().cancelled_owned();
        tokio::pin!(ended);
        let mut last_write = Instant::now();
        let timer = tokio::time::sleep_until(last_write + keep_alive);
        tokio::pin!(timer);
        loop {
            let step = tokio::select! {
                biased;
                () = &mut ended => Step::Shutdown,
                chunk = subscription.next() => chunk.map_or(Step::End, Step::Chunk),
                () = &mut timer => {
                    let due = last_write + keep_alive;
                    if Instant::now() >= due {
                        timer.as_mut().reset(Instant::now() + keep_alive);
                        Step::KeepAlive
                    } else {
                        timer.as_mut().reset(due);
                        continue;
                    }
                }
            };
            match step {
                Step::Chunk(chunk) => {
                    last_write = Instant::now();
                    metrics.sent(chunk.events, chunk.bytes.len() as u64, chunk.lag);
                    yield Ok::<Bytes, Infallible>(chunk.bytes);
                }
                Step::KeepAlive => {
                    last_write = Instant::now();
                    yield Ok(Bytes::from_static(format.keep_alive()));
                }
                Step::Shutdown => {
                    // The OpenAI SDKs would read a lone `retry:` as an
                    // empty event and fail on it; their streams just end.
                    if format != Format::OpenAi {
                        yield Ok(sse::retry_frame(SHUTDOWN_RETRY_MS));
                    }
                    break;
                }
                Step::End => break,
            }
        }
    };
    Body::from_stream(stream)
}

/// Counts open SSE responses against `max_streams`.
#[derive(Debug)]
pub struct StreamSlots {
    open: AtomicUsize,
    max: usize,
}

impl StreamSlots {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Open SSE responses now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a slot, or answers `503` when all `max_streams` are taken.
    pub fn try_open(self: &Arc<Self>) -> Result<StreamSlot, ApiError> {
        let previous = self.open.fetch_add(1, Ordering::Relaxed);
        // Created before the check so that a refusal gives the slot back too.
        let slot = StreamSlot(self.clone());
        if previous >= self.max {
            return Err(ApiError::Unavailable {
                code: "too_many_streams",
                message: format!("the gateway is at its limit of {} open streams", self.max),
                retry_after_secs: FULL_RETRY_AFTER_SECS,
            });
        }
        Ok(slot)
    }
}

/// One open SSE response; frees its slot when dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<StreamSlots>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
