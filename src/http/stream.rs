//! The SSE routes: the one-shot `GET /api/agent/stream` and
//! `GET /api/runs/{id}/events`, with resume by `Last-Event-ID`.

use std::collections::HashSet;
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
use super::runs::{start_run, RunIdPath, StartRun};
use super::AppState;
use crate::agent::Params;
use crate::auth::Caller;
use crate::hub::{Chunk, Resume, RunId, Seq, Subscription};
use crate::metrics::Metrics;
use crate::sse;

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
    let resume = resume_point(&headers, query.take("last_event_id"))?;
    check_scope(&caller, resume.as_ref().map(|(id, _)| id))?;
    // Taken before anything starts: a refused stream must not start a run.
    let slot = state.streams.try_open()?;
    if let Some((run_id, seq)) = resume {
        return stream_run(&state, &caller, slot, run_id, seq).await;
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
        },
    )
    .await?;
    stream_run(&state, &caller, slot, run_id, 0).await
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
            "unknown query parameter `{key}` (this route takes last_event_id)"
        )));
    }
    let slot = state.streams.try_open()?;
    stream_run(&state, &caller, slot, id, after).await
}

/// The resume cursor: the `Last-Event-ID` header, else the `last_event_id`
/// query parameter; `{run_id}:{seq}`. An empty value means none.
fn resume_point(
    headers: &HeaderMap,
    from_query: Option<String>,
) -> Result<Option<(RunId, Seq)>, ApiError> {
    let value = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::InvalidParam("Last-Event-ID is not ASCII".into()))?
                .to_owned(),
        ),
        None => from_query,
    };
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    parse_event_id(value.trim()).map(Some).ok_or_else(|| {
        ApiError::InvalidParam(format!(
            "last_event_id `{}` is not of the form {{run_id}}:{{seq}}",
            value.chars().take(100).collect::<String>()
        ))
    })
}

/// Splits `{run_id}:{seq}`.
pub fn parse_event_id(text: &str) -> Option<(RunId, Seq)> {
    let (run, seq) = text.rsplit_once(':')?;
    let seq = if seq.bytes().all(|b| b.is_ascii_digit()) {
        seq.parse().ok()?
    } else {
        return None;
    };
    Some((RunId::parse(run)?, seq))
}

async fn stream_run(
    state: &AppState,
    caller: &Caller,
    slot: StreamSlot,
    run_id: RunId,
    after: Seq,
) -> Result<Response, ApiError> {
    tracing::Span::current().record("run_id", run_id.as_str());
    let resume = state
        .hub
        .subscribe(run_id.clone(), after, caller.key.clone())
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
                    yield Ok(Bytes::from_static(sse::KEEP_ALIVE));
                }
                Step::Shutdown => {
                    yield Ok(sse::retry_frame(SHUTDOWN_RETRY_MS));
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
    pub fn new(max: usize) -> Arc<Self> {
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

/// A query string as single-valued parameters, in order of appearance.
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `a=1&b=2`; a parameter given twice is an error, since which
    /// one was meant cannot be known.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut seen = HashSet::new();
        let mut pairs = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if key.is_empty() {
                continue;
            }
            if !seen.insert(key.clone()) {
                return Err(ApiError::InvalidParam(format!(
                    "parameter `{key}` is given more than once"
                )));
            }
            pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(Self(pairs))
    }

    /// Removes and returns `key`.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let index = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(index).1)
    }

    /// The parameters not taken, in order.
    pub fn into_rest(self) -> impl Iterator<Item = (String, String)> {
        self.0.into_iter()
    }

    /// The first parameter not taken, if any.
    pub fn first_key(&self) -> Option<&str> {
        self.0.first().map(|(k, _)| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Outside input never panics the parsers, and a well-formed id
        /// always comes back as it was.
        #[test]
        fn last_event_id_and_query_parsers_take_any_input(text in ".{0,200}", seq in proptest::prelude::any::<u64>()) {
            let _ = parse_event_id(&text);
            let _ = Query::parse(Some(&text));
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert("last-event-id", value);
            }
            let _ = resume_point(&headers, Some(text.clone()));
            let id = format!("run_{}", text.len());
            let parsed = parse_event_id(&format!("{id}:{seq}")).map(|(r, s)| (r.to_string(), s));
            proptest::prop_assert_eq!(parsed, Some((id, seq)));
        }
    }

    #[test]
    fn event_ids_parse_at_the_last_colon() {
        let parsed = parse_event_id("abc_1:42").map(|(id, seq)| (id.to_string(), seq));
        assert_eq!(parsed, Some(("abc_1".to_owned(), 42)));
        for bad in [
            "",
            "abc",
            ":1",
            "abc:",
            "abc:-1",
            "abc:+1",
            "abc:1x",
            "a b:1",
            "abc:99999999999999999999",
        ] {
            assert!(parse_event_id(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn header_wins_over_query_and_empty_means_none() {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static("h:3"));
        let got = resume_point(&headers, Some("q:5".into())).ok().flatten();
        assert_eq!(
            got.map(|(id, seq)| (id.to_string(), seq)),
            Some(("h".into(), 3))
        );
        let got = resume_point(&HeaderMap::new(), Some("q:5".into()))
            .ok()
            .flatten();
        assert_eq!(
            got.map(|(id, seq)| (id.to_string(), seq)),
            Some(("q".into(), 5))
        );
        assert!(matches!(
            resume_point(&HeaderMap::new(), Some(String::new())),
            Ok(None)
        ));
        assert!(resume_point(&HeaderMap::new(), Some("nonsense".into())).is_err());
    }

    #[test]
    fn duplicate_query_parameters_are_rejected() {
        assert!(Query::parse(Some("a=1&a=2")).is_err());
        let query = Query::parse(Some("prompt=hi%20there&tokens=3&seed=1"));
        let rest: Vec<(String, String)> =
            query.map(|q| q.into_rest().collect()).unwrap_or_default();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0], ("prompt".into(), "hi there".into()));
    }
}
