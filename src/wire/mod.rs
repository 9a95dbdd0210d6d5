//! Run events on the wire, one file per client format.
//!
//! [`sse`] is Sluice's own format: each event is encoded once, when it is
//! logged, and that frame is shared by every subscriber. [`openai`] and
//! [`ai_sdk`] re-render the logged events for clients that speak those
//! protocols. A run's log renders each event once per format in use (see
//! [`crate::hub::log`]), never once per subscriber, so a [`Render`] sees
//! every event of its run, in order, exactly once.
//!
//! Resume works the same in every format: the frame that ends the
//! rendering of event `seq` carries `id: {run_id}:{seq}` and frames before
//! it in the same rendering carry none, so `Last-Event-ID` names a run
//! event whatever the format.

pub mod ai_sdk;
pub mod openai;
pub mod sse;

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// The formats a client may ask for with `format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// Sluice's own events (SPEC 2): `id`, `event` and one `data` line.
    #[default]
    Sluice,
    /// OpenAI Chat Completions streaming: `chat.completion.chunk`s.
    OpenAi,
    /// The Vercel AI SDK's UI message stream, protocol v1.
    AiSdk,
}

impl Format {
    /// The format named `name` in a query string, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sluice" => Some(Self::Sluice),
            "openai" => Some(Self::OpenAi),
            "ai-sdk" => Some(Self::AiSdk),
            _ => None,
        }
    }

    /// The name a query string uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sluice => "sluice",
            Self::OpenAi => "openai",
            Self::AiSdk => "ai-sdk",
        }
    }

    /// The comment written after `keep_alive_secs` without an event.
    ///
    /// For `openai` it has no blank line after it: the official Python SDK,
    /// once it has seen an `id:`, turns a lone blank line into an empty
    /// event and fails on it (openai-python #2722).
    pub fn keep_alive(self) -> &'static [u8] {
        match self {
            Self::OpenAi => b": keep-alive\n",
            Self::Sluice | Self::AiSdk => sse::KEEP_ALIVE,
        }
    }

    /// A renderer for one run's events in this format; `None` for Sluice's
    /// own format, which the log holds already.
    pub fn renderer(self, head: &RunHead) -> Option<Box<dyn Render>> {
        match self {
            Self::Sluice => None,
            Self::OpenAi => Some(Box::new(openai::Chunks::new(head))),
            Self::AiSdk => Some(Box::new(ai_sdk::Chunks::new(head))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a format needs to know of a run beyond its events.
#[derive(Debug, Clone)]
pub struct RunHead {
    /// The run's id: the SSE `id:` prefix, and the base of the formats' own message ids.
    pub run_id: String,
    /// The agent's model, or its name when it has none.
    pub model: String,
    /// When the run started, in Unix seconds.
    pub created: u64,
}

/// One logged run event, as a renderer reads it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The event's number in its run: what `Last-Event-ID` resumes after.
    pub seq: u64,
    /// The SSE event name (`token`, `done`, …) that picks how it is rendered.
    pub name: &'a str,
    /// The event's data: compact JSON.
    pub data: &'a str,
}

impl<'a> Event<'a> {
    /// Event `seq` read back from its Sluice frame.
    pub fn from_frame(seq: u64, frame: &'a [u8]) -> Self {
        let (name, data) = sse::parts(frame);
        Self {
            seq,
            name: name.unwrap_or("message"),
            data: data.unwrap_or("null"),
        }
    }
}

/// Renders a run's events, in order, in one format.
pub trait Render: Send {
    /// The bytes for one event: whole SSE frames, the last carrying the
    /// event's id; empty when the format has nothing for it.
    fn render(&mut self, event: Event<'_>) -> Bytes;
}

/// Builds the frames of one event's rendering: each `data:` line is a frame
/// of its own, and [`Frames::finish`] puts the id on the last one.
pub(crate) struct Frames {
    seq: u64,
    /// Frames before the last, complete.
    done: BytesMut,
    /// The last frame's `data:` value, not yet written.
    last: Option<BytesMut>,
}

impl Frames {
    pub(crate) fn new(seq: u64) -> Self {
        Self {
            seq,
            done: BytesMut::new(),
            last: None,
        }
    }

    /// Adds a frame whose data is `value` as compact JSON.
    pub(crate) fn json<T: Serialize + ?Sized>(&mut self, value: &T) {
        let mut data = BytesMut::with_capacity(128);
        if serde_json::to_writer((&mut data).writer(), value).is_err() {
            data.clear();
            data.put_slice(b"null");
        }
        self.raw(data);
    }

    /// Adds a frame whose data is `data` as it is (one line, no line break).
    pub(crate) fn raw(&mut self, data: BytesMut) {
        if let Some(previous) = self.last.replace(data) {
            self.done.put_slice(b"data: ");
            self.done.put_slice(&previous);
            self.done.put_slice(b"\n\n");
        }
    }

    /// The frames, with `id: {run_id}:{seq}` on the last one.
    pub(crate) fn finish(self, run_id: &str) -> Bytes {
        let Some(last) = self.last else {
            return Bytes::new();
        };
        let mut out = self.done;
        out.reserve(last.len() + run_id.len() + 32);
        out.put_slice(b"id: ");
        out.put_slice(run_id.as_bytes());
        out.put_u8(b':');
        out.put_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(&last);
        out.put_slice(b"\n\n");
        out.freeze()
    }
}

/// The `text` of a `{"text": …}` event as the JSON string it was logged
/// as, still escaped, so that it can be copied into another frame without
/// decoding and encoding it again.
pub(crate) fn raw_text(data: &str) -> Option<&serde_json::value::RawValue> {
    #[derive(serde::Deserialize)]
    struct Text<'a> {
        #[serde(borrow)]
        text: &'a serde_json::value::RawValue,
    }
    let text: Text<'_> = serde_json::from_str(data).ok()?;
    text.text.get().starts_with('"').then_some(text.text)
}

/// A `tool_call` event's parts, from either shape an agent may write:
/// OpenAI's nested `{"id", "type", "function": {"name", "arguments"}}` or
/// the flat `{"id", "name", "arguments"}` of a jsonl line.
pub(crate) struct ToolCall<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// As written: usually a JSON string, sometimes an object.
    pub arguments: Option<&'a serde_json::Value>,
}

impl<'a> ToolCall<'a> {
    pub(crate) fn of(data: &'a serde_json::Value) -> Self {
        let fields = data
            .get("function")
            .filter(|f| f.is_object())
            .unwrap_or(data);
        let text = |value: &'a serde_json::Value, key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
        };
        Self {
            id: text(data, "id"),
            name: text(fields, "name"),
            arguments: fields.get("arguments").filter(|a| !a.is_null()),
        }
    }
}

/// `[DONE]`: the end of an `openai` or `ai-sdk` stream.
pub(crate) const DONE: &[u8] = b"[DONE]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_goes_on_the_last_frame_only() {
        let mut frames = Frames::new(7);
        frames.json(&serde_json::json!({"a": 1}));
        frames.raw(BytesMut::from(DONE));
        assert_eq!(
            &frames.finish("r")[..],
            b"data: {\"a\":1}\n\nid: r:7\ndata: [DONE]\n\n"
        );
        assert!(Frames::new(1).finish("r").is_empty());
    }

    #[test]
    fn formats_parse_by_name() {
        for format in [Format::Sluice, Format::OpenAi, Format::AiSdk] {
            assert_eq!(Format::parse(format.name()), Some(format));
        }
        assert_eq!(Format::parse("OpenAI"), None);
        assert_eq!(Format::parse(""), None);
    }

    #[test]
    fn tool_calls_read_alike_nested_or_flat() {
        let nested = serde_json::json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
        let flat = serde_json::json!({"id": "c1", "name": "f", "arguments": "{}"});
        for data in [&nested, &flat] {
            let call = ToolCall::of(data);
            assert_eq!((call.id, call.name), ("c1", "f"));
            assert_eq!(call.arguments, Some(&serde_json::json!("{}")));
        }
    }

    #[test]
    fn token_text_is_copied_still_escaped() {
        let raw = raw_text(r#"{"text":"a\nb\"c"}"#).map(|r| r.get().to_owned());
        assert_eq!(raw.as_deref(), Some(r#""a\nb\"c""#));
        assert!(raw_text(r#"{"text":5}"#).is_none());
        assert!(raw_text("nonsense").is_none());
    }
}
