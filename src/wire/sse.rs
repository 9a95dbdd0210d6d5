//! Server-Sent Events on the wire.
//!
//! A run event is encoded here exactly once, into a [`Bytes`] frame that the
//! run's log keeps and every subscriber writes as it is. The id and event
//! name are values Sluice controls (checked by [`is_event_name`] and
//! [`crate::RunId`]), and the data is compact JSON, in which every newline
//! and carriage return is escaped: so one event is always one `data:` line.

use bytes::Bytes;
use serde::Serialize;

/// The comment sent after `keep_alive_secs` without an event.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Tells a client to reconnect after `retry_ms`, for streams ended by shutdown.
pub fn retry_frame(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n\n"))
}

/// Whether `name` may be used as an SSE event name: 1 to 64 characters of
/// ASCII letters, digits, `_`, `-` and `.` (never a line break or `:`).
pub fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Encode one event as `id: {run_id}:{seq}`, `event: {event}` and one
/// `data:` line of compact JSON, followed by the blank line that ends it.
///
/// `run_id` and `event` must not contain line breaks; callers pass values
/// checked by [`crate::RunId::parse`] and [`is_event_name`].
pub fn encode<T: Serialize + ?Sized>(run_id: &str, seq: u64, event: &str, data: &T) -> Bytes {
    SCRATCH.with(|scratch| {
        // Written into this thread's scratch buffer, then copied into one
        // allocation of exactly the frame's size: the log keeps no spare
        // capacity, and no second allocation that a `Bytes` made from a
        // half-full buffer would need (together about 60 bytes per event).
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            let mut buf = Vec::with_capacity(128);
            write_frame(&mut buf, run_id, seq, event, data);
            return Bytes::from(buf);
        };
        buf.clear();
        write_frame(&mut buf, run_id, seq, event, data);
        let frame = Bytes::copy_from_slice(&buf);
        // A huge frame does not keep its buffer for the thread's life.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
        frame
    })
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn write_frame<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    run_id: &str,
    seq: u64,
    event: &str,
    data: &T,
) {
    buf.extend_from_slice(b"id: ");
    buf.extend_from_slice(run_id.as_bytes());
    buf.push(b':');
    buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    buf.extend_from_slice(b"\nevent: ");
    buf.extend_from_slice(event.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    let mark = buf.len();
    // Serializing into memory cannot fail for I/O reasons, and the data types
    // Sluice passes (structs, strings, `serde_json::Value`) always serialize;
    // should that ever change, `null` keeps the frame well formed.
    if serde_json::to_writer(&mut *buf, data).is_err() {
        buf.truncate(mark);
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b"\n\n");
}

/// An event's name and data line, read back from a frame that [`encode`]
/// wrote.
pub fn parts(frame: &[u8]) -> (Option<&str>, Option<&str>) {
    let text = std::str::from_utf8(frame).unwrap_or_default();
    let mut name = None;
    let mut data = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("event: ") {
            name = Some(rest);
        } else if let Some(rest) = line.strip_prefix("data: ") {
            data = Some(rest);
        }
    }
    (name, data)
}

/// The frames of a chunk of frames that [`encode`] wrote, each with the
/// blank line that ends it. Safe to split at a blank line: a frame's one
/// `data:` line never holds a raw line break.
pub fn frames(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .windows(2)
            .position(|pair| pair == b"\n\n")
            .map_or(rest.len(), |at| at + 2);
        let (frame, tail) = rest.split_at(end);
        rest = tail;
        Some(frame)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frame_has_id_event_and_one_data_line() {
        let frame = encode("abc", 42, "token", &json!({"text": "a\nb\r\nc"}));
        assert_eq!(
            &frame[..],
            b"id: abc:42\nevent: token\ndata: {\"text\":\"a\\nb\\r\\nc\"}\n\n"
        );
    }

    #[test]
    fn sequence_numbers_encode_in_decimal() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let frame = encode("r", n, "e", &json!(null));
            let text = String::from_utf8(frame.to_vec()).unwrap_or_default();
            assert!(text.starts_with(&format!("id: r:{n}\n")), "{text}");
        }
    }

    /// Token text with the characters that break naive SSE writers.
    pub fn nasty_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let chars = prop_oneof![
            4 => any::<char>(),
            1 => Just('\n'),
            1 => Just('\r'),
            1 => Just(':'),
            1 => Just('\u{2028}'),
            1 => Just('\0'),
        ];
        proptest::collection::vec(chars, 0..48).prop_map(String::from_iter)
    }

    /// Parses frames with an SSE parser Sluice did not write.
    pub fn parse_all(bytes: &[u8]) -> Vec<eventsource_stream::Event> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes.to_vec())]);
        futures::executor::block_on(chunks.eventsource().collect::<Vec<_>>())
            .into_iter()
            .filter_map(Result::ok)
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn any_token_text_survives_encoding_and_parsing(text in nasty_text(), seq in 1u64..u64::MAX) {
            let frame = encode("run_1", seq, "token", &json!({"text": text}));
            let data_lines = frame.split(|b| *b == b'\n').filter(|l| l.starts_with(b"data:")).count();
            proptest::prop_assert_eq!(data_lines, 1);
            let events = parse_all(&frame);
            proptest::prop_assert_eq!(events.len(), 1);
            proptest::prop_assert_eq!(&events[0].id, &format!("run_1:{seq}"));
            proptest::prop_assert_eq!(&events[0].event, "token");
            let data: serde_json::Value = serde_json::from_str(&events[0].data).unwrap_or_default();
            proptest::prop_assert_eq!(data["text"].as_str(), Some(text.as_str()));
        }
    }

    #[test]
    fn chunks_split_into_their_frames() {
        let mut chunk = encode("r", 1, "token", &json!({"text": "a\n\nb"})).to_vec();
        chunk.extend_from_slice(&encode("r", 2, "done", &json!({})));
        let frames: Vec<&[u8]> = frames(&chunk).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(parts(frames[1]), (Some("done"), Some("{}")));
        assert_eq!(parts(frames[0]).1, Some(r#"{"text":"a\n\nb"}"#));
    }

    #[test]
    fn event_names_reject_line_breaks_and_colons() {
        assert!(is_event_name("tool_call"));
        assert!(is_event_name("reasoning.delta"));
        for bad in ["", "a\nb", "a\rb", "a:b", "a b", &"x".repeat(65)] {
            assert!(!is_event_name(bad), "{bad:?}");
        }
    }
}
