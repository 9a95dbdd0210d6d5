//! `POST /api/runs/{id}/events`: a worker publishes a push run's events
//! (SPEC 12) as NDJSON, one event object per line in the `command` agent's
//! jsonl protocol (parsed by the same [`lines::parse`]).
//!
//! The body may be one batch or one long streamed request: each body chunk's
//! complete lines are published as they arrive, so a subscriber reads an
//! event before the body ends. `Sluice-Offset: K` (how many events the
//! producer had published before this body) makes a retry safe: the hub
//! skips what the run holds already and refuses a gap. While a body
//! streams, the run's end (a `DELETE`, the idle timeout) answers `409` at
//! once, so the worker learns to stop.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;

use super::auth::check_publish_scope;
use super::error::ApiError;
use super::query::RunIdPath;
use super::AppState;
use crate::agent::{lines, AgentEvent};
use crate::auth::Caller;
use crate::hub::{HubError, Published, RunId, RunStatus, Seq};

/// The longest line a publish may carry.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// The header that makes a publish exactly-once.
const OFFSET_HEADER: &str = "sluice-offset";

/// `POST /api/runs/{id}/events`.
pub async fn publish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RunIdPath(id): RunIdPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_publish_scope(&caller, &id)?;
    check_content_type(&headers)?;
    let given = offset(&headers)?;
    let mut publisher = Publisher {
        state: &state,
        id: id.clone(),
        viewer: caller.key.clone(),
        given,
        sent: 0,
        appended: 0,
        last: None,
    };
    publisher.consume(body).await?;
    if publisher.last.is_none() {
        publisher.send(Vec::new()).await?;
    }
    let published = publisher.last.unwrap_or(Published {
        appended: 0,
        offset: 0,
        status: RunStatus::Running,
    });
    Ok((
        StatusCode::OK,
        Json(Published {
            appended: publisher.appended,
            ..published
        }),
    )
        .into_response())
}

/// One request's publishes.
struct Publisher<'a> {
    state: &'a AppState,
    id: RunId,
    viewer: Option<String>,
    /// `Sluice-Offset`: events the producer had published before this body.
    given: Option<Seq>,
    /// Events of this body sent to the hub so far.
    sent: Seq,
    appended: u64,
    last: Option<Published>,
}

impl Publisher<'_> {
    /// Publishes the body's lines as they come, until it ends, a line is
    /// bad, or the run ends.
    async fn consume(&mut self, body: Body) -> Result<(), ApiError> {
        let ended = self.state.hub.ended(self.id.clone(), self.viewer.clone());
        tokio::pin!(ended);
        let mut body = body.into_data_stream();
        let mut lines = LineSplitter::default();
        loop {
            let chunk = tokio::select! {
                biased;
                // The run ended while the body was still coming: tell the
                // worker now, rather than when it next writes.
                status = &mut ended, if !self.ended_it() => {
                    return Err(self.refusal(status?).await);
                }
                chunk = body.next() => chunk,
            };
            let chunk = match chunk {
                Some(Ok(chunk)) => chunk,
                // The worker went away mid-body: what it sent whole is kept.
                Some(Err(_)) => return Ok(()),
                None => {
                    let events = lines.finish()?;
                    return self.send(events).await;
                }
            };
            let (events, bad) = lines.push(&chunk);
            // The lines before a bad one are published, then the bad one
            // answers: nothing after it is.
            self.send(events).await?;
            if let Some(bad) = bad {
                return Err(bad);
            }
            if self.ended_it() {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, events: Vec<AgentEvent>) -> Result<(), ApiError> {
        if events.is_empty() && self.last.is_some() {
            return Ok(());
        }
        let count = events.len() as Seq;
        let given = self.given.map(|given| given + self.sent);
        let published = self
            .state
            .hub
            .publish(self.id.clone(), self.viewer.clone(), given, events)
            .await?;
        self.sent += count;
        self.appended += published.appended;
        self.last = Some(published);
        Ok(())
    }

    /// Why nothing more can be published to the run, which has ended with
    /// `status`: the hub's own answer, which names the run's offset (or
    /// says it is no push run).
    async fn refusal(&self, status: RunStatus) -> ApiError {
        let asked = self
            .state
            .hub
            .publish(self.id.clone(), self.viewer.clone(), None, Vec::new());
        match asked.await {
            Err(e) => e.into(),
            Ok(published) => HubError::Finished {
                status,
                offset: published.offset,
            }
            .into(),
        }
    }

    /// Whether a line of this body ended the run.
    fn ended_it(&self) -> bool {
        self.last.is_some_and(|p| p.status != RunStatus::Running)
    }
}

/// Splits a body into lines as its chunks come, parsing each whole line.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
    /// Lines seen so far, blank ones included, for error messages.
    line: usize,
}

impl LineSplitter {
    /// The events of the lines `chunk` completes, and the error of the
    /// first bad one (the lines after it are dropped).
    fn push(&mut self, chunk: &[u8]) -> (Vec<AgentEvent>, Option<ApiError>) {
        let mut events = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(end);
            rest = &tail[1..];
            let outcome = if self.partial.is_empty() {
                self.line(line)
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole)
            };
            match outcome {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {}
                Err(e) => return (events, Some(e)),
            }
        }
        if self.partial.len() + rest.len() > MAX_LINE_BYTES {
            return (events, Some(too_long(self.line + 1)));
        }
        self.partial.extend_from_slice(rest);
        (events, None)
    }

    /// The last line, when the body does not end with a line break.
    fn finish(&mut self) -> Result<Vec<AgentEvent>, ApiError> {
        let last = std::mem::take(&mut self.partial);
        Ok(self.line(&last)?.into_iter().collect())
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<AgentEvent>, ApiError> {
        self.line += 1;
        if line.len() > MAX_LINE_BYTES {
            return Err(too_long(self.line));
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let text = std::str::from_utf8(line).map_err(|_| invalid(self.line, "not UTF-8"))?;
        lines::parse(text, "producer_error")
            .map(Some)
            .map_err(|why| invalid(self.line, &why))
    }
}

fn invalid(line: usize, why: &str) -> ApiError {
    ApiError::InvalidEvent(format!(
        "line {line} is not an event ({why}); the lines before it were published, it and the lines after it were not"
    ))
}

fn too_long(line: usize) -> ApiError {
    ApiError::TooLarge {
        code: "line_too_large",
        message: format!(
            "line {line} is longer than {MAX_LINE_BYTES} bytes; the lines before it were published"
        ),
    }
}

/// NDJSON, or a type a hand-written call sends it as: none, JSON, plain
/// text, or `curl --data-binary`'s own form type. A multipart upload or
/// anything else is surely a mistake.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let kind = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if matches!(
        kind.as_str(),
        "application/x-ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/json"
            | "text/plain"
            | "application/x-www-form-urlencoded"
    ) {
        return Ok(());
    }
    Err(ApiError::UnsupportedMediaType(format!(
        "publish events as Content-Type: application/x-ndjson (one event object per line), not `{kind}`"
    )))
}

/// The `Sluice-Offset` header, if given.
fn offset(headers: &HeaderMap) -> Result<Option<Seq>, ApiError> {
    let Some(value) = headers.get(OFFSET_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::InvalidParam(
                "Sluice-Offset must be a whole number: the events published before this body"
                    .into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_a_bad_line_is_named() {
        let mut lines = LineSplitter::default();
        let (events, bad) = lines.push(b"{\"event\":\"token\",\"text\":\"a\"}\n{\"event\":\"to");
        assert_eq!(events, vec![AgentEvent::Token("a".into())]);
        assert!(bad.is_none());
        let (events, bad) = lines
            .push(b"ken\",\"text\":\"b\"}\r\n\n{nope}\n{\"event\":\"token\",\"text\":\"c\"}\n");
        assert_eq!(events, vec![AgentEvent::Token("b".into())]);
        let message = bad.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("line 4 is not an event"), "{message}");
    }

    #[test]
    fn the_last_line_needs_no_line_break_and_long_lines_are_refused() {
        let mut lines = LineSplitter::default();
        assert!(lines.push(b"{\"event\":\"done\"}").1.is_none());
        assert!(matches!(
            lines.finish().as_deref(),
            Ok([AgentEvent::Done { .. }])
        ));
        let mut lines = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE_BYTES / 2 + 1];
        assert!(lines.push(&long).1.is_none());
        let refused = lines.push(&long).1.map(|e| e.code());
        assert_eq!(refused, Some("line_too_large"));
    }

    #[test]
    fn offsets_and_content_types_are_checked() {
        let mut headers = HeaderMap::new();
        assert!(matches!(offset(&headers), Ok(None)));
        headers.insert(OFFSET_HEADER, "12".parse().unwrap());
        assert!(matches!(offset(&headers), Ok(Some(12))));
        headers.insert(OFFSET_HEADER, "-1".parse().unwrap());
        assert!(offset(&headers).is_err());
        assert!(check_content_type(&headers).is_ok());
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-ndjson; charset=utf-8".parse().unwrap(),
        );
        assert!(check_content_type(&headers).is_ok());
        headers.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=x".parse().unwrap(),
        );
        assert!(check_content_type(&headers).is_err());
    }
}
