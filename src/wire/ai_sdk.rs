//! `format=ai-sdk`: the Vercel AI SDK's UI message stream, protocol v1
//! (SPEC 11.1), read as it is by the `ai` package (`useChat`,
//! `DefaultChatTransport`, `readUIMessageStream`).
//!
//! | run event | chunks |
//! |---|---|
//! | `run` | `start` `{messageId: run_id}`, `start-step` |
//! | `token` | `text-start` (when no text part is open), `text-delta` |
//! | `reasoning` | `reasoning-start` (when none is open), `reasoning-delta` |
//! | `tool_call` | `tool-input-available` `{toolCallId, toolName, input}` |
//! | `tool_result` | `tool-output-available` `{toolCallId, output}` |
//! | another `NAME` | `data-NAME` `{data}` |
//! | `done` | open part ended, `finish-step`, `finish` (`abort` when cancelled), `[DONE]` |
//! | `error` | `error` `{errorText}`, `[DONE]` |
//!
//! A part's id is `text-{seq}` or `reasoning-{seq}`, after the event that
//! opened it: derived from the run alone, so the same on every resume and
//! every node. Chunks carry only the fields the protocol defines, so the
//! `ai` package's schema accepts them (AI SDK 5's strict one too).

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::{raw_text, Event, Frames, Render, RunHead, ToolCall, DONE};

/// The response header that tells the `ai` package what it reads.
pub const HEADER: (&str, &str) = ("x-vercel-ai-ui-message-stream", "v1");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartKind {
    Text,
    Reasoning,
}

impl PartKind {
    fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Reasoning => "reasoning",
        }
    }
}

/// Renders one run's events as UI message chunks.
pub struct Chunks {
    run_id: String,
    /// The text or reasoning part open now, and its id.
    open: Option<(PartKind, String)>,
}

impl Chunks {
    /// A renderer for `run`, whose id becomes the message's `messageId`.
    pub fn new(run: &RunHead) -> Self {
        Self {
            run_id: run.run_id.clone(),
            open: None,
        }
    }

    /// Ends the open part, if any.
    fn close(&mut self, frames: &mut Frames) {
        if let Some((kind, id)) = self.open.take() {
            frames.json(&json!({"type": format!("{}-end", kind.name()), "id": id}));
        }
    }

    /// A `text-delta` or `reasoning-delta`, opening a part of that kind
    /// first unless one is open.
    fn delta(&mut self, frames: &mut Frames, kind: PartKind, seq: u64, data: &str) {
        let Some(text) = raw_text(data) else {
            return;
        };
        if self.open.as_ref().is_some_and(|(open, _)| *open != kind) {
            self.close(frames);
        }
        let id = match &self.open {
            Some((_, id)) => id.clone(),
            None => {
                let id = format!("{}-{seq}", kind.name());
                frames.json(&json!({"type": format!("{}-start", kind.name()), "id": id}));
                self.open = Some((kind, id.clone()));
                id
            }
        };
        let mut chunk = BytesMut::with_capacity(48 + id.len() + text.get().len());
        chunk.put_slice(br#"{"type":""#);
        chunk.put_slice(kind.name().as_bytes());
        chunk.put_slice(br#"-delta","id":"#);
        let _ = serde_json::to_writer((&mut chunk).writer(), &id);
        chunk.put_slice(br#","delta":"#);
        chunk.put_slice(text.get().as_bytes());
        chunk.put_u8(b'}');
        frames.raw(chunk);
    }
}

impl Render for Chunks {
    fn render(&mut self, event: Event<'_>) -> Bytes {
        let mut frames = Frames::new(event.seq);
        match event.name {
            "run" => {
                frames.json(&json!({"type": "start", "messageId": self.run_id}));
                frames.json(&json!({"type": "start-step"}));
            }
            "token" => self.delta(&mut frames, PartKind::Text, event.seq, event.data),
            "reasoning" => self.delta(&mut frames, PartKind::Reasoning, event.seq, event.data),
            name => {
                let data: Value = serde_json::from_str(event.data).unwrap_or_default();
                self.close(&mut frames);
                let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or_default();
                match name {
                    "tool_call" => {
                        let call = ToolCall::of(&data);
                        let input = match call.arguments {
                            Some(Value::String(arguments)) => serde_json::from_str(arguments)
                                .unwrap_or_else(|_| Value::String(arguments.clone())),
                            Some(other) => other.clone(),
                            None => json!({}),
                        };
                        frames.json(&json!({
                            "type": "tool-input-available",
                            "toolCallId": call.id,
                            "toolName": call.name,
                            "input": input,
                        }));
                    }
                    "tool_result" => frames.json(&json!({
                        "type": "tool-output-available",
                        "toolCallId": text("id"),
                        "output": data.get("content").cloned().unwrap_or_default(),
                    })),
                    "done" => {
                        frames.json(&json!({"type": "finish-step"}));
                        if data.get("finish_reason").and_then(Value::as_str) == Some("cancelled") {
                            frames.json(&json!({"type": "abort"}));
                        } else {
                            frames.json(&json!({"type": "finish"}));
                        }
                        frames.raw(BytesMut::from(DONE));
                    }
                    "error" => {
                        frames.json(&json!({"type": "error", "errorText": text("message")}));
                        frames.raw(BytesMut::from(DONE));
                    }
                    other => frames.json(&json!({"type": format!("data-{other}"), "data": data})),
                }
            }
        }
        frames.finish(&self.run_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_all(events: &[(&str, &str)]) -> Vec<(String, Value)> {
        let mut chunks = Chunks::new(&RunHead {
            run_id: "r".into(),
            model: "sim".into(),
            created: 0,
        });
        let mut bytes = Vec::new();
        for (i, (name, data)) in events.iter().enumerate() {
            bytes.extend_from_slice(&chunks.render(Event {
                seq: i as u64 + 1,
                name,
                data,
            }));
        }
        crate::wire::sse::tests::parse_all(&bytes)
            .into_iter()
            .map(|e| {
                let data = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data));
                (e.id, data)
            })
            .collect()
    }

    #[test]
    fn parts_open_and_close_around_other_events() {
        let chunks = render_all(&[
            ("run", "{}"),
            ("reasoning", r#"{"text":"hm"}"#),
            ("token", r#"{"text":"a"}"#),
            ("token", r#"{"text":"b"}"#),
            (
                "tool_call",
                r#"{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}"#,
            ),
            ("tool_result", r#"{"id":"c1","content":"42"}"#),
            ("progress", r#"{"pct":50}"#),
            ("done", r#"{"finish_reason":"stop","usage":{}}"#),
        ]);
        let types: Vec<&str> = chunks
            .iter()
            .map(|(_, c)| c["type"].as_str().unwrap_or("[DONE]"))
            .collect();
        assert_eq!(
            types,
            [
                "start",
                "start-step",
                "reasoning-start",
                "reasoning-delta",
                "reasoning-end",
                "text-start",
                "text-delta",
                "text-delta",
                "text-end",
                "tool-input-available",
                "tool-output-available",
                "data-progress",
                "finish-step",
                "finish",
                "[DONE]"
            ]
        );
        assert_eq!(chunks[0].1, json!({"type": "start", "messageId": "r"}));
        assert_eq!(
            chunks[6].1,
            json!({"type": "text-delta", "id": "text-3", "delta": "a"})
        );
        assert_eq!(chunks[7].1["id"], "text-3");
        assert_eq!(chunks[9].1["input"], json!({"x": 1}));
        assert_eq!(
            chunks[11].1,
            json!({"type": "data-progress", "data": {"pct": 50}})
        );
        // Ids only on each event's last frame (a parser keeps the last id
        // it saw, so frames without one show the previous event's).
        let ids: Vec<&str> = chunks.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids[0], "");
        assert_eq!(ids[1], "r:1");
        assert_eq!(ids[12..], ["r:7", "r:7", "r:8"]);
    }

    #[test]
    fn cancel_aborts_and_error_says_why() {
        let cancelled = render_all(&[
            ("run", "{}"),
            ("token", r#"{"text":"a"}"#),
            ("done", r#"{"finish_reason":"cancelled"}"#),
        ]);
        let types: Vec<&str> = cancelled
            .iter()
            .map(|(_, c)| c["type"].as_str().unwrap_or("[DONE]"))
            .collect();
        assert_eq!(&types[4..], ["text-end", "finish-step", "abort", "[DONE]"]);
        let failed = render_all(&[("run", "{}"), ("error", r#"{"code":"x","message":"boom"}"#)]);
        assert_eq!(failed[2].1, json!({"type": "error", "errorText": "boom"}));
        assert_eq!(failed[3].1, Value::String("[DONE]".into()));
    }
}
