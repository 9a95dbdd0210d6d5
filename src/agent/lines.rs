//! The event-line protocol: one JSON object per line, `{"event": NAME,
//! …fields}`. A `command` agent's `jsonl` stdout speaks it, and so will an
//! `http` agent's `ndjson` body and a push run's published lines: one parser
//! for all of them, so a line means the same wherever it comes from.
//!
//! - `{"event": "token", "text": "…"}` is a token;
//! - `{"event": "done", "finish_reason"?, "usage"?}` ends the run (`stop` by default);
//! - `{"event": "error", "code"?, "message"?}` ends it with an error;
//! - any other name is that event, with the other fields as its data.

use serde_json::{Map, Value};

use super::AgentEvent;

/// One line as an event, or why it is not one (the caller names the error
/// code: `command_bad_output`, `upstream_bad_chunk`, …). An `error` line
/// without a valid snake_case `code` gets `default_error_code`.
pub fn parse(line: &str, default_error_code: &str) -> Result<AgentEvent, String> {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(line) else {
        return Err(format!("not a JSON object: {}", excerpt(line)));
    };
    let Some(Value::String(name)) = fields.remove("event") else {
        return Err(format!("no \"event\" name: {}", excerpt(line)));
    };
    let text = |fields: &Map<String, Value>, key: &str| {
        fields.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    Ok(match name.as_str() {
        "token" => match text(&fields, "text") {
            Some(t) => AgentEvent::Token(t),
            None => return Err("a token event needs \"text\"".into()),
        },
        "done" => AgentEvent::Done {
            finish_reason: text(&fields, "finish_reason").unwrap_or_else(|| "stop".into()),
            usage: fields
                .get("usage")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        },
        "error" => AgentEvent::Error {
            code: text(&fields, "code")
                .filter(|code| is_snake_case(code))
                .unwrap_or_else(|| default_error_code.to_owned()),
            message: text(&fields, "message").unwrap_or_default(),
        },
        _ => AgentEvent::Other {
            name,
            data: Value::Object(fields),
        },
    })
}

fn is_snake_case(code: &str) -> bool {
    !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn excerpt(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lines_map_to_events() {
        let parse = |line| parse(line, "command_error");
        assert_eq!(
            parse(r#"{"event":"token","text":"hi"}"#),
            Ok(AgentEvent::Token("hi".into()))
        );
        assert_eq!(
            parse(r#"{"event":"tool_result","id":"c1","content":"42"}"#),
            Ok(AgentEvent::Other {
                name: "tool_result".into(),
                data: json!({"id": "c1", "content": "42"})
            })
        );
        assert_eq!(
            parse(r#"{"event":"done","finish_reason":"length","usage":{"output_tokens":3}}"#),
            Ok(AgentEvent::Done {
                finish_reason: "length".into(),
                usage: json!({"output_tokens": 3})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            })
        );
        assert_eq!(
            parse(r#"{"event":"done"}"#),
            Ok(AgentEvent::Done {
                finish_reason: "stop".into(),
                usage: Map::new()
            })
        );
        assert_eq!(
            parse(r#"{"event":"error","code":"Bad Code","message":"m"}"#),
            Ok(AgentEvent::Error {
                code: "command_error".into(),
                message: "m".into()
            })
        );
        assert_eq!(
            parse(r#"{"event":"error","code":"quota_exceeded"}"#),
            Ok(AgentEvent::Error {
                code: "quota_exceeded".into(),
                message: String::new()
            })
        );
        for bad in [
            "not json",
            "[1]",
            r#"{"text":"no event"}"#,
            r#"{"event":"token"}"#,
            r#"{"event":5}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}x", "y".repeat(300));
        let message = parse(&long).unwrap_err();
        assert!(message.ends_with('…') && message.len() < 260, "{message}");
    }
}
