//! Reading an `http` agent's answer in its format (SPEC 10's table). Each
//! format is a [`Reader`] that turns the body's items into run events and
//! says how a clean end finishes; [`upstream::relay_body`](relay_body) is
//! the one loop they share with the `openai` kind: the deadlines, a broken
//! body as `upstream_truncated`, and a stop at the first terminal event.

use bytes::Bytes;
use eventsource_stream::Event;
use serde_json::{json, Map, Value};

#[cfg(doc)]
use crate::agent::upstream::relay_body;

use crate::agent::lines;
use crate::agent::upstream::{excerpt, Reader};
use crate::agent::utf8::Utf8Chunks;
use crate::agent::AgentEvent;

/// The longest `ndjson` line read; a longer one ends the run.
const MAX_LINE: usize = 1024 * 1024;

/// `text`: every chunk is token text, never splitting a character; a clean
/// end is `done` `stop`.
#[derive(Default)]
pub struct Text(Utf8Chunks);

impl Reader for Text {
    type Item = Bytes;
    fn read(&mut self, bytes: Bytes) -> Vec<AgentEvent> {
        self.0
            .push(&bytes)
            .map(AgentEvent::Token)
            .into_iter()
            .collect()
    }
    fn finish(self) -> Vec<AgentEvent> {
        let mut out: Vec<AgentEvent> = self.0.finish().map(AgentEvent::Token).into_iter().collect();
        out.push(AgentEvent::stop());
        out
    }
}

/// `ndjson`: each line one event, exactly as a `command` agent's jsonl; a
/// clean end is `done` `stop`.
#[derive(Default)]
pub struct Ndjson {
    pending: Vec<u8>,
}

impl Reader for Ndjson {
    type Item = Bytes;
    fn read(&mut self, bytes: Bytes) -> Vec<AgentEvent> {
        // Only the new bytes can hold the end of the pending line.
        let mut from = self.pending.len();
        self.pending.extend_from_slice(&bytes);
        let mut out = Vec::new();
        while let Some(at) = self.pending[from..].iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=from + at).collect();
            out.extend(ndjson_line(&line));
            from = 0;
        }
        if self.pending.len() > MAX_LINE {
            out.push(AgentEvent::error(
                "upstream_bad_chunk",
                format!("the application sent a line longer than {MAX_LINE} bytes"),
            ));
        }
        out
    }
    fn finish(self) -> Vec<AgentEvent> {
        let mut out: Vec<AgentEvent> = ndjson_line(&self.pending).into_iter().collect();
        out.push(AgentEvent::stop());
        out
    }
}

/// One ndjson line's event; None for a blank line.
fn ndjson_line(line: &[u8]) -> Option<AgentEvent> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    Some(
        lines::parse(line, "upstream_error")
            .unwrap_or_else(|m| AgentEvent::error("upstream_bad_chunk", m)),
    )
}

/// Plain `sse`: named events map to themselves, unnamed data to tokens or
/// `message` events; a clean end is `done` `stop`.
pub struct Sse;

impl Reader for Sse {
    type Item = Event;
    fn read(&mut self, event: Event) -> Vec<AgentEvent> {
        sse_event(&event.event, &event.data).into_iter().collect()
    }
    fn finish(self) -> Vec<AgentEvent> {
        vec![AgentEvent::stop()]
    }
}

/// Whether an SSE event is an OpenAI `chat.completion.chunk`: what tells the
/// `openai` format from plain `sse` under `auto`.
pub fn is_openai_chunk(event: &Event) -> bool {
    serde_json::from_str::<Value>(&event.data)
        .ok()
        .is_some_and(|v| v.get("object").and_then(Value::as_str) == Some("chat.completion.chunk"))
}

/// One SSE event as a run event (SPEC 10, `sse`); None for an empty one.
fn sse_event(name: &str, data: &str) -> Option<AgentEvent> {
    if data.is_empty() {
        return None;
    }
    let json: Option<Value> = serde_json::from_str(data).ok();
    if !name.is_empty() && name != "message" {
        let Some(Value::Object(mut fields)) = json else {
            return Some(AgentEvent::Other {
                name: name.to_owned(),
                data: json.unwrap_or_else(|| Value::String(data.to_owned())),
            });
        };
        // The same fields as an event line, with the SSE name as its event.
        fields.insert("event".into(), Value::String(name.to_owned()));
        let line = Value::Object(fields).to_string();
        return Some(
            lines::parse(&line, "upstream_error")
                .unwrap_or_else(|m| AgentEvent::error("upstream_bad_chunk", m)),
        );
    }
    let text = match &json {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Object(fields)) => ["text", "delta", "content"]
            .iter()
            .find_map(|key| fields.get(*key).and_then(Value::as_str))
            .map(str::to_owned),
        _ => None,
    };
    Some(match text {
        Some(text) => AgentEvent::Token(text),
        None => AgentEvent::Other {
            name: "message".into(),
            data: json.unwrap_or_else(|| Value::String(data.to_owned())),
        },
    })
}

/// The AI SDK's UI message stream (v1): typed JSON chunks, `[DONE]` last; a
/// clean end without a `finish` chunk is `upstream_truncated`.
pub struct UiMessages;

impl Reader for UiMessages {
    type Item = Event;
    fn read(&mut self, event: Event) -> Vec<AgentEvent> {
        let data = event.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Vec::new();
        }
        match serde_json::from_str::<Value>(data) {
            Ok(chunk) => ui_chunk(&chunk).into_iter().collect(),
            Err(e) => vec![AgentEvent::error(
                "upstream_bad_chunk",
                format!(
                    "the application sent a chunk that is not JSON ({e}): {}",
                    excerpt(data)
                ),
            )],
        }
    }
    fn finish(self) -> Vec<AgentEvent> {
        vec![AgentEvent::error(
            "upstream_truncated",
            "the application's UI message stream ended without a finish chunk",
        )]
    }
}

/// One UI message stream chunk as a run event (SPEC 10, `ai-sdk`); None for
/// the chunk types that carry nothing for a run (start, text-start, …).
fn ui_chunk(chunk: &Value) -> Option<AgentEvent> {
    let kind = chunk.get("type").and_then(Value::as_str)?;
    let text = |key: &str| chunk.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(match kind {
        "text-delta" => AgentEvent::Token(text("delta")?),
        "reasoning-delta" => AgentEvent::Other {
            name: "reasoning".into(),
            data: json!({"text": text("delta")?}),
        },
        "tool-input-available" => {
            let input = chunk.get("input").cloned().unwrap_or(Value::Null);
            AgentEvent::Other {
                name: "tool_call".into(),
                data: json!({
                    "id": text("toolCallId").unwrap_or_default(),
                    "type": "function",
                    "function": {"name": text("toolName").unwrap_or_default(), "arguments": input.to_string()},
                }),
            }
        }
        "tool-output-available" => AgentEvent::Other {
            name: "tool_result".into(),
            data: json!({
                "id": text("toolCallId").unwrap_or_default(),
                "content": chunk.get("output").cloned().unwrap_or(Value::Null),
            }),
        },
        "finish" => AgentEvent::Done {
            finish_reason: text("finishReason").unwrap_or_else(|| "stop".into()),
            usage: Map::new(),
        },
        "error" => AgentEvent::error(
            "upstream_error",
            text("errorText").unwrap_or_else(|| "the application reported an error".into()),
        ),
        "abort" => AgentEvent::Done {
            finish_reason: "cancelled".into(),
            usage: Map::new(),
        },
        data if data.starts_with("data-") => AgentEvent::Other {
            name: data.to_owned(),
            data: chunk.get("data").cloned().unwrap_or(Value::Null),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Option<AgentEvent> {
        Some(AgentEvent::Token(text.into()))
    }

    #[test]
    fn sse_events_map_as_the_table_says() {
        // The seed's route: unnamed data, a JSON object with text.
        assert_eq!(sse_event("message", r#"{"text":"hi"}"#), token("hi"));
        assert_eq!(sse_event("message", r#"{"delta":"a"}"#), token("a"));
        assert_eq!(sse_event("message", r#"{"content":"b"}"#), token("b"));
        assert_eq!(sse_event("message", r#""plain""#), token("plain"));
        assert_eq!(
            sse_event("message", r#"{"progress":3}"#),
            Some(AgentEvent::Other {
                name: "message".into(),
                data: json!({"progress": 3})
            })
        );
        assert_eq!(
            sse_event("message", "not json"),
            Some(AgentEvent::Other {
                name: "message".into(),
                data: json!("not json")
            })
        );
        assert_eq!(sse_event("token", r#"{"text":"t"}"#), token("t"));
        assert_eq!(
            sse_event("done", r#"{"finish_reason":"length"}"#),
            Some(AgentEvent::Done {
                finish_reason: "length".into(),
                usage: Map::new()
            })
        );
        assert_eq!(
            sse_event("error", r#"{"code":"quota","message":"m"}"#),
            Some(AgentEvent::Error {
                code: "quota".into(),
                message: "m".into()
            })
        );
        assert_eq!(
            sse_event("tool_call", r#"{"id":"c"}"#),
            Some(AgentEvent::Other {
                name: "tool_call".into(),
                data: json!({"id": "c"})
            })
        );
        assert_eq!(sse_event("message", ""), None);
    }

    #[test]
    fn ui_message_chunks_map_as_the_table_says() {
        assert_eq!(
            ui_chunk(&json!({"type": "text-delta", "id": "1", "delta": "Hi"})),
            token("Hi")
        );
        assert_eq!(ui_chunk(&json!({"type": "start"})), None);
        assert_eq!(ui_chunk(&json!({"type": "text-start", "id": "1"})), None);
        assert_eq!(
            ui_chunk(
                &json!({"type": "tool-input-available", "toolCallId": "c1", "toolName": "clock", "input": {"tz": "UTC"}})
            ),
            Some(AgentEvent::Other {
                name: "tool_call".into(),
                data: json!({"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{\"tz\":\"UTC\"}"}})
            })
        );
        assert_eq!(
            ui_chunk(&json!({"type": "finish"})),
            Some(AgentEvent::Done {
                finish_reason: "stop".into(),
                usage: Map::new()
            })
        );
        assert_eq!(
            ui_chunk(&json!({"type": "abort"})),
            Some(AgentEvent::Done {
                finish_reason: "cancelled".into(),
                usage: Map::new()
            })
        );
        assert_eq!(
            ui_chunk(&json!({"type": "error", "errorText": "boom"})),
            Some(AgentEvent::error("upstream_error", "boom"))
        );
        assert_eq!(
            ui_chunk(&json!({"type": "data-weather", "data": {"t": 20}})),
            Some(AgentEvent::Other {
                name: "data-weather".into(),
                data: json!({"t": 20})
            })
        );
    }
}
