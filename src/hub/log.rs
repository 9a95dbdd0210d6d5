//! One run's event log: frames appended by the run's driver, read by any
//! number of subscribers, each from its own cursor.
//!
//! The lock is per run and held only to push or to clone a few `Bytes`
//! handles, never across an await: a std `Mutex` is cheaper than tokio's for
//! that. Waiting is done on a change signal (`hub::changes`) whose
//! version moves on every append, so a subscriber that read the log and
//! then waits cannot miss an event appended in between.
//!
//! The log keeps Sluice's own frames. A subscriber in another format
//! (`format=openai`, `ai-sdk`) reads a view: the same events rendered in
//! that format, each once, when the first subscriber of the format gets to
//! it, and then shared like the frames are.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::changes::{Changes, Signal};
use super::frames::Frames;
use super::record::Entry;
use super::RunMeta;
use super::RunStatus;
use crate::wire::{Event, Format, Render};

/// At most this many bytes go into one coalesced chunk, so a subscriber far
/// behind (a resume of a long run) is served in pieces of bounded size.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// A run's log.
#[derive(Debug)]
pub struct RunLog {
    state: Mutex<LogState>,
    changed: Signal,
    /// Woken once, by the terminal event: for those who wait for the end
    /// only, and should not wake on every event.
    ended: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct LogState {
    /// Frame of event `seq` at index `seq - 1`.
    frames: Frames,
    text: String,
    end: Option<Ended>,
    /// The events in other formats, for as far as subscribers have read.
    views: Vec<View>,
}

/// A run's events rendered in one other format.
struct View {
    format: Format,
    render: Box<dyn Render>,
    /// The rendering of event `seq` at index `seq - 1` (empty when the
    /// format has nothing for it).
    frames: Frames,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("format", &self.format)
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Ended {
    status: RunStatus,
    usage: Value,
    at: SystemTime,
}

/// What a subscriber finds at its cursor.
#[derive(Debug, PartialEq)]
pub enum Read {
    /// Frames from the cursor on, concatenated, how many there are, and how
    /// many were ready in all.
    Chunk {
        /// The frames, concatenated.
        bytes: Bytes,
        /// How many frames `bytes` holds.
        events: usize,
        /// How many were ready in all.
        ready: usize,
    },
    /// Nothing yet; wait for the next append.
    Pending,
    /// The run has ended and the cursor is past its last event.
    Ended,
}

/// A consistent view of the log for snapshots.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    /// Events logged.
    pub(crate) events: u64,
    /// The run's status.
    pub(crate) status: RunStatus,
    /// When the terminal event was logged.
    pub(crate) finished_at: Option<SystemTime>,
    /// All token text, when asked for.
    pub(crate) text: Option<String>,
    /// The terminal event's usage.
    pub(crate) usage: Option<Value>,
}

impl Default for RunLog {
    fn default() -> Self {
        Self::new()
    }
}

impl RunLog {
    /// An empty log.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(LogState::default()),
            changed: Signal::default(),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// Append one entry and wake the subscribers; returns the frame's size.
    /// Entries after the terminal one are ignored.
    pub fn append(&self, entry: Entry) -> usize {
        let size = entry.frame.len();
        let ends = entry.end.is_some();
        {
            let mut state = self.lock();
            if state.end.is_some() {
                return 0;
            }
            state.frames.push(entry.frame);
            if let Some(text) = &entry.token {
                state.text.push_str(text);
            }
            if let Some(end) = entry.end {
                // A finished run is kept as it is until evicted: without
                // the spare capacity its vectors grew (up to half of them).
                state.frames.finish();
                state.text.shrink_to_fit();
                state.end = Some(Ended {
                    status: end.status,
                    usage: end.usage,
                    at: SystemTime::now(),
                });
            }
        }
        self.changed.send();
        if ends {
            self.ended.notify_waiters();
        }
        size
    }

    /// Resolves with the run's status once it has ended, woken by the
    /// terminal event alone.
    pub(crate) async fn wait_end(&self) -> RunStatus {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let status = self.status();
            if status != RunStatus::Running {
                return status;
            }
            ended.await;
        }
    }

    /// Everything after the first `cursor` events, up to [`MAX_CHUNK_BYTES`]
    /// (at least one frame), as one chunk.
    pub fn read(&self, cursor: usize) -> Read {
        let state = self.lock();
        chunk_of(&state.frames, cursor, state.end.is_some())
    }

    /// Like [`RunLog::read`], in `format`: events not yet rendered in it are
    /// rendered now, once for every subscriber of the format. A chunk's
    /// bytes are empty when the format has nothing for its events. `meta`
    /// is read only when the format's first subscriber arrives.
    pub fn read_as(&self, cursor: usize, format: Format, meta: &RunMeta) -> Read {
        let mut state = self.lock();
        let state = &mut *state;
        let index = match state.views.iter().position(|v| v.format == format) {
            Some(index) => index,
            None => match format.renderer(&meta.head()) {
                Some(render) => {
                    state.views.push(View {
                        format,
                        render,
                        frames: Frames::default(),
                    });
                    state.views.len() - 1
                }
                None => return chunk_of(&state.frames, cursor, state.end.is_some()),
            },
        };
        let view = &mut state.views[index];
        // Render up to the cursor, then about one chunk beyond it: never the
        // whole of a long run at once under the lock.
        let mut ahead = 0;
        let rendered_before = view.frames.len();
        while let Some(frame) = state.frames.get(view.frames.len()) {
            if view.frames.len() > cursor && ahead >= MAX_CHUNK_BYTES {
                break;
            }
            let seq = view.frames.len() as u64 + 1;
            let rendered = view.render.render(Event::from_frame(seq, &frame));
            if view.frames.len() >= cursor {
                ahead += rendered.len();
            }
            view.frames.push(rendered);
        }
        let ended = state.end.is_some() && view.frames.len() == state.frames.len();
        if ended && view.frames.len() > rendered_before {
            // The view is complete now: kept as it is, like the log.
            view.frames.finish();
        }
        chunk_of(&view.frames, cursor, ended)
    }

    /// A receiver that wakes on the next append.
    pub(crate) fn watch(&self) -> Changes {
        self.changed.subscribe()
    }

    /// Up to `max` frames after the first `cursor`, each on its own.
    pub(crate) fn frames(&self, cursor: usize, max: usize) -> Vec<Bytes> {
        let state = self.lock();
        (cursor..cursor.saturating_add(max))
            .map_while(|i| state.frames.get(i))
            .collect()
    }

    /// Number of events and whether the run has ended, read together.
    pub fn position(&self) -> (usize, bool) {
        let state = self.lock();
        (state.frames.len(), state.end.is_some())
    }

    /// The run's status.
    pub(crate) fn status(&self) -> RunStatus {
        self.lock()
            .end
            .as_ref()
            .map_or(RunStatus::Running, |end| end.status)
    }

    /// Bytes of all frames.
    pub fn bytes(&self) -> u64 {
        self.lock().frames.bytes()
    }

    /// The log as a snapshot shows it.
    pub(crate) fn summary(&self, with_text: bool) -> Summary {
        let state = self.lock();
        Summary {
            events: state.frames.len() as u64,
            status: state.end.as_ref().map_or(RunStatus::Running, |e| e.status),
            finished_at: state.end.as_ref().map(|e| e.at),
            text: with_text.then(|| state.text.clone()),
            usage: state.end.as_ref().map(|e| e.usage.clone()),
        }
    }

    /// Bytes of the other formats' renderings held for subscribers.
    pub fn view_bytes(&self) -> u64 {
        let state = self.lock();
        state.views.iter().map(|view| view.frames.bytes()).sum()
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock leaves the log consistent (every
        // mutation is a single push or assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The frames after the first `cursor`, up to [`MAX_CHUNK_BYTES`] (at
/// least one frame), as one chunk; `ended` says the run has no more. A run
/// of frames sealed together is a slice of their segment, not a copy.
fn chunk_of(frames: &Frames, cursor: usize, ended: bool) -> Read {
    let ready = frames.len().saturating_sub(cursor);
    if ready == 0 {
        return if ended { Read::Ended } else { Read::Pending };
    }
    let (pieces, events) = frames.pieces(cursor, MAX_CHUNK_BYTES);
    let bytes = match <[Bytes; 1]>::try_from(pieces) {
        Ok([one]) => one,
        Err(pieces) => {
            let size = pieces.iter().map(Bytes::len).sum();
            let mut chunk = BytesMut::with_capacity(size);
            for piece in &pieces {
                chunk.extend_from_slice(piece);
            }
            chunk.freeze()
        }
    };
    Read::Chunk {
        bytes,
        events,
        ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::record::RunEnd;

    fn entry(text: &str) -> Entry {
        Entry {
            frame: Bytes::from(format!("data: {text}\n\n")),
            token: Some(text.to_owned()),
            end: None,
        }
    }

    fn end() -> Entry {
        Entry {
            frame: Bytes::from_static(b"event: done\n\n"),
            token: None,
            end: Some(RunEnd {
                status: RunStatus::Done,
                usage: Value::Null,
                ttft: None,
                duration: std::time::Duration::ZERO,
            }),
        }
    }

    #[test]
    fn reads_everything_ready_from_any_cursor_in_one_chunk() {
        let log = RunLog::new();
        assert_eq!(log.read(0), Read::Pending);
        log.append(entry("a"));
        log.append(entry("b"));
        log.append(entry("c"));
        assert_eq!(
            log.read(0),
            Read::Chunk {
                bytes: Bytes::from_static(b"data: a\n\ndata: b\n\ndata: c\n\n"),
                events: 3,
                ready: 3
            }
        );
        assert_eq!(
            log.read(2),
            Read::Chunk {
                bytes: Bytes::from_static(b"data: c\n\n"),
                events: 1,
                ready: 1
            }
        );
        assert_eq!(log.read(3), Read::Pending);
        log.append(end());
        assert_eq!(log.read(4), Read::Ended);
        assert_eq!(log.read(99), Read::Ended);
        assert_eq!(log.status(), RunStatus::Done);
        assert_eq!(log.summary(true).text.as_deref(), Some("abc"));
    }

    #[test]
    fn nothing_is_appended_after_the_end() {
        let log = RunLog::new();
        log.append(end());
        assert_eq!(log.append(entry("late")), 0);
        assert_eq!(log.position(), (1, true));
    }

    #[test]
    fn chunks_are_bounded_but_never_empty() {
        let log = RunLog::new();
        let big = "x".repeat(MAX_CHUNK_BYTES / 3);
        for _ in 0..10 {
            log.append(entry(&big));
        }
        let mut cursor = 0;
        let mut total = 0;
        while let Read::Chunk { bytes, events, .. } = log.read(cursor) {
            assert!(events >= 1);
            assert!(bytes.len() <= MAX_CHUNK_BYTES || events == 1);
            cursor += events;
            total += bytes.len();
        }
        assert_eq!(cursor, 10);
        assert_eq!(total as u64, log.bytes());
    }

    proptest::proptest! {
        /// Whatever the texts and wherever a subscriber starts, reading the
        /// log chunk by chunk yields exactly the events after its cursor.
        #[test]
        fn reading_from_any_cursor_yields_exactly_the_later_events(
            texts in proptest::collection::vec(crate::wire::sse::tests::nasty_text(), 0..40),
            start in 0usize..45,
        ) {
            use crate::agent::AgentEvent;
            use crate::hub::record::Recorder;
            use crate::hub::RunMeta;
            let meta = RunMeta::for_test("r");
            let log = RunLog::new();
            let (mut recorder, first) = Recorder::start(&meta);
            log.append(first);
            for text in &texts {
                log.append(recorder.record(AgentEvent::Token(text.clone())));
            }
            let cursor = start.min(texts.len() + 1);
            let mut bytes = Vec::new();
            let mut at = cursor;
            while let Read::Chunk { bytes: chunk, events, .. } = log.read(at) {
                bytes.extend_from_slice(&chunk);
                at += events;
            }
            proptest::prop_assert_eq!(at, texts.len() + 1);
            let events = crate::wire::sse::tests::parse_all(&bytes);
            let first_seq = cursor + 1;
            proptest::prop_assert_eq!(events.len(), texts.len() + 1 - cursor);
            for (i, event) in events.iter().enumerate() {
                let seq = first_seq + i;
                proptest::prop_assert_eq!(&event.id, &format!("r:{seq}"));
                if seq >= 2 {
                    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
                    proptest::prop_assert_eq!(data["text"].as_str(), Some(texts[seq - 2].as_str()));
                }
            }
            proptest::prop_assert_eq!(log.summary(true).text, Some(texts.concat()));
        }
    }

    /// Another format is rendered once per event: every subscriber of it
    /// gets the very same bytes, and the rendering of a run read twice is
    /// held once.
    #[test]
    fn another_format_is_rendered_once_and_shared_by_its_subscribers() {
        use crate::agent::AgentEvent;
        use crate::hub::record::Recorder;
        use crate::hub::RunMeta;
        use crate::wire::Format;
        let meta = RunMeta::for_test("r");
        let log = RunLog::new();
        let (mut recorder, first) = Recorder::start(&meta);
        log.append(first);
        for text in ["a", "b", "c"] {
            log.append(recorder.record(AgentEvent::Token(text.into())));
        }
        let last = |log: &RunLog| match log.read_as(3, Format::OpenAi, &meta) {
            Read::Chunk {
                bytes, events: 1, ..
            } => bytes,
            other => panic!("{other:?}"),
        };
        let (one, two) = (last(&log), last(&log));
        assert_eq!(one.as_ptr(), two.as_ptr(), "the same bytes, not a copy");
        let whole = |log: &RunLog| match log.read_as(0, Format::OpenAi, &meta) {
            Read::Chunk {
                bytes, events: 4, ..
            } => bytes,
            other => panic!("{other:?}"),
        };
        let rendered = log.view_bytes();
        assert_eq!(whole(&log), whole(&log));
        assert_eq!(whole(&log).len() as u64, rendered);
        assert_eq!(log.view_bytes(), rendered, "read again, rendered once");
        assert!(String::from_utf8_lossy(&one).contains(r#""delta":{"content":"c"}"#));
        // Sluice's own format is the log itself: no view.
        assert!(matches!(
            log.read_as(0, Format::Sluice, &meta),
            Read::Chunk { events: 4, .. }
        ));
        assert_eq!(log.view_bytes(), rendered);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_is_woken_by_an_append() {
        let log = std::sync::Arc::new(RunLog::new());
        let mut rx = log.watch();
        let writer = log.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            writer.append(entry("late"));
        });
        assert_eq!(log.read(0), Read::Pending);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed()).await;
        assert!(woke.is_ok());
        assert!(matches!(log.read(0), Read::Chunk { events: 1, .. }));
        assert!(task.await.is_ok());
    }
}
