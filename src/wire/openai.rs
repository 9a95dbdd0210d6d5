//! `format=openai`: OpenAI Chat Completions streaming (SPEC 11.1), read as
//! it is by the official `openai` SDKs.
//!
//! | run event | chunk |
//! |---|---|
//! | `run` | `delta` `{"role": "assistant", "content": ""}` |
//! | `token` | `delta` `{"content"}` |
//! | `reasoning` | `delta` `{"reasoning_content"}` |
//! | `tool_call` | `delta` `{"tool_calls": [{"index", "id", "type", "function"}]}` |
//! | `done` | empty `delta` with `finish_reason`, a `usage` chunk, `[DONE]` |
//! | `error` | `{"error": {"message", "type": "sluice_error", "code"}}` |
//!
//! Other events have no chunk.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::{raw_text, Event, Frames, Render, RunHead, ToolCall, DONE};

/// Renders one run's events as `chat.completion.chunk`s.
pub struct Chunks {
    run_id: String,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[{"index":0,"delta":`
    choice_head: Vec<u8>,
    /// The same object's fields before `"choices"`, for the usage chunk.
    head: Value,
    /// Tool calls so far: the next one's `index`.
    tool_calls: u64,
}

impl Chunks {
    /// A renderer for `run`, whose id and model every chunk carries.
    pub fn new(run: &RunHead) -> Self {
        let head = json!({
            "id": completion_id(&run.run_id),
            "object": "chat.completion.chunk",
            "created": run.created,
            "model": run.model,
        });
        let mut choice_head = serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec());
        choice_head.pop();
        choice_head.extend_from_slice(br#","choices":[{"index":0,"delta":"#);
        Self {
            run_id: run.run_id.clone(),
            choice_head,
            head,
            tool_calls: 0,
        }
    }

    /// A chunk with one choice: `delta` (JSON) and `finish_reason`.
    fn choice(&self, delta: &[u8], finish_reason: Option<&str>) -> BytesMut {
        let mut data = BytesMut::with_capacity(self.choice_head.len() + delta.len() + 32);
        data.put_slice(&self.choice_head);
        data.put_slice(delta);
        data.put_slice(br#","finish_reason":"#);
        match finish_reason {
            Some(reason) => {
                let _ = serde_json::to_writer((&mut data).writer(), reason);
            }
            None => data.put_slice(b"null"),
        }
        data.put_slice(b"}]}");
        data
    }
}

impl Render for Chunks {
    fn render(&mut self, event: Event<'_>) -> Bytes {
        let mut frames = Frames::new(event.seq);
        match event.name {
            "run" => frames.raw(self.choice(br#"{"role":"assistant","content":""}"#, None)),
            "token" => {
                if let Some(text) = raw_text(event.data) {
                    let delta = [br#"{"content":"#, text.get().as_bytes(), b"}"].concat();
                    frames.raw(self.choice(&delta, None));
                }
            }
            "reasoning" => {
                if let Some(text) = raw_text(event.data) {
                    let delta = [br#"{"reasoning_content":"#, text.get().as_bytes(), b"}"].concat();
                    frames.raw(self.choice(&delta, None));
                }
            }
            "tool_call" => {
                let data: Value = serde_json::from_str(event.data).unwrap_or_default();
                let call = tool_call(self.tool_calls, &data);
                self.tool_calls += 1;
                let delta = json!({ "tool_calls": [call] });
                frames.raw(self.choice(delta.to_string().as_bytes(), None));
            }
            "done" => {
                let data: Value = serde_json::from_str(event.data).unwrap_or_default();
                let reason = data
                    .get("finish_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("stop");
                frames.raw(self.choice(b"{}", Some(reason)));
                let mut usage_chunk = self.head.clone();
                if let Some(object) = usage_chunk.as_object_mut() {
                    object.insert("choices".into(), json!([]));
                    object.insert("usage".into(), usage(data.get("usage")));
                }
                frames.json(&usage_chunk);
                frames.raw(BytesMut::from(DONE));
            }
            "error" => {
                let data: Value = serde_json::from_str(event.data).unwrap_or_default();
                let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or_default();
                frames.json(&json!({"error": {
                    "message": text("message"),
                    "type": "sluice_error",
                    "code": text("code"),
                }}));
            }
            _ => {}
        }
        frames.finish(&self.run_id)
    }
}

/// The completion id of a run: `chatcmpl-{run_id}`.
pub fn completion_id(run_id: &str) -> String {
    format!("chatcmpl-{run_id}")
}

/// A `tool_call` event's data as an OpenAI tool call at `index`; the
/// arguments are always a string, as OpenAI sends them.
pub fn tool_call(index: u64, data: &Value) -> Value {
    let call = ToolCall::of(data);
    let arguments = match call.arguments {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    json!({
        "index": index,
        "id": call.id,
        "type": data.get("type").and_then(Value::as_str).unwrap_or("function"),
        "function": {"name": call.name, "arguments": arguments},
    })
}

/// A run's usage in OpenAI's names: what is known, `completion_tokens`
/// being the run's `output_tokens`.
pub fn usage(usage: Option<&Value>) -> Value {
    let empty = Map::new();
    let usage = usage.and_then(Value::as_object).unwrap_or(&empty);
    let count = |keys: &[&str]| keys.iter().find_map(|key| usage.get(*key)?.as_u64());
    let completion = count(&["output_tokens", "completion_tokens"]).unwrap_or(0);
    let prompt = count(&["input_tokens", "prompt_tokens"]).unwrap_or(0);
    let total = count(&["total_tokens"]).unwrap_or(prompt + completion);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> RunHead {
        RunHead {
            run_id: "r1".into(),
            model: "sim".into(),
            created: 1_700_000_000,
        }
    }

    fn data_lines(bytes: &Bytes) -> Vec<Value> {
        crate::wire::sse::tests::parse_all(bytes)
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap_or(Value::String(e.data.clone())))
            .collect()
    }

    #[test]
    fn a_run_renders_as_chat_completion_chunks() {
        let mut chunks = Chunks::new(&head());
        let run = chunks.render(Event {
            seq: 1,
            name: "run",
            data: "{}",
        });
        assert_eq!(
            &run[..],
            &br#"id: r1:1
data: {"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1700000000,"model":"sim","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}

"#[..]
        );
        let token = chunks.render(Event {
            seq: 2,
            name: "token",
            data: r#"{"text":" a\n\"b\""}"#,
        });
        assert_eq!(
            data_lines(&token)[0]["choices"][0]["delta"]["content"],
            " a\n\"b\""
        );
        let skipped = chunks.render(Event {
            seq: 3,
            name: "tool_result",
            data: r#"{"id":"c1","content":"42"}"#,
        });
        assert!(skipped.is_empty());
        let call = chunks.render(Event {
            seq: 4,
            name: "tool_call",
            data: r#"{"id":"c1","type":"function","function":{"name":"f","arguments":{"x":1}}}"#,
        });
        let call = &data_lines(&call)[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["index"], 0);
        assert_eq!(call["function"]["arguments"], r#"{"x":1}"#);
        let done = chunks.render(Event {
            seq: 5,
            name: "done",
            data: r#"{"finish_reason":"cancelled","usage":{"output_tokens":1},"ttft_ms":1.0,"duration_ms":2.0}"#,
        });
        let events = crate::wire::sse::tests::parse_all(&done);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].id, "");
        assert_eq!(events[1].id, "");
        assert_eq!(events[2].id, "r1:5");
        assert_eq!(events[2].data, "[DONE]");
        let lines = data_lines(&done);
        assert_eq!(lines[0]["choices"][0]["finish_reason"], "cancelled");
        assert_eq!(lines[0]["choices"][0]["delta"], json!({}));
        assert_eq!(
            lines[1]["usage"],
            json!({"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1})
        );
        assert_eq!(lines[1]["choices"], json!([]));
    }

    #[test]
    fn an_error_is_an_error_object() {
        let mut chunks = Chunks::new(&head());
        let error = chunks.render(Event {
            seq: 9,
            name: "error",
            data: r#"{"code":"simulated_failure","message":"boom"}"#,
        });
        assert_eq!(
            data_lines(&error),
            vec![
                json!({"error": {"message": "boom", "type": "sluice_error", "code": "simulated_failure"}})
            ]
        );
    }
}
