//! Bytes to text without ever splitting a UTF-8 character between two
//! tokens: a `command` agent's stdout, an `http` agent's `text` body. Bytes
//! that are not UTF-8 become U+FFFD.

use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Decodes chunks of bytes as they arrive, holding back an incomplete
/// character at the end of a chunk until the next one completes it.
#[derive(Debug, Default)]
pub struct Utf8Chunks {
    carry: Vec<u8>,
}

impl Utf8Chunks {
    /// The text that `bytes` completes; `None` when it completes none.
    pub fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.carry.extend_from_slice(bytes);
        let (text, rest) = split_utf8(&self.carry);
        self.carry = rest;
        (!text.is_empty()).then_some(text)
    }

    /// Whatever is left at the end: an incomplete character as U+FFFD.
    pub fn finish(self) -> Option<String> {
        (!self.carry.is_empty()).then(|| String::from_utf8_lossy(&self.carry).into_owned())
    }
}

/// A reader's bytes as text chunks, one per read.
pub fn text_chunks(
    mut reader: impl AsyncRead + Unpin + Send + 'static,
) -> impl Stream<Item = String> + Send {
    async_stream::stream! {
        let mut buf = vec![0u8; 8192];
        let mut chunks = Utf8Chunks::default();
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(text) = chunks.push(&buf[..n]) {
                yield text;
            }
        }
        if let Some(text) = chunks.finish() {
            yield text;
        }
    }
}

/// The longest decodable prefix of `bytes` and the incomplete character after it.
fn split_utf8(bytes: &[u8]) -> (String, Vec<u8>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), Vec::new()),
        Err(e) if e.error_len().is_none() => {
            let (done, rest) = bytes.split_at(e.valid_up_to());
            (String::from_utf8_lossy(done).into_owned(), rest.to_vec())
        }
        Err(_) => {
            // Invalid in the middle: decode what is complete, keep a trailing partial character.
            let keep = trailing_partial(bytes);
            let (done, rest) = bytes.split_at(bytes.len() - keep);
            (String::from_utf8_lossy(done).into_owned(), rest.to_vec())
        }
    }
}

/// How many bytes at the end of `bytes` start a character not yet complete.
fn trailing_partial(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 != 0x80 {
            let needed = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if needed > back { back } else { 0 };
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_never_split_between_tokens() {
        let text = "héllo ✓ 𝄞";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let (first, carry) = split_utf8(&bytes[..cut]);
            let mut rest = carry;
            rest.extend_from_slice(&bytes[cut..]);
            let (second, left) = split_utf8(&rest);
            assert!(left.is_empty());
            assert_eq!(format!("{first}{second}"), text, "cut at {cut}");
        }
        let (text, rest) = split_utf8(b"a\xffb\xe2\x9c");
        assert_eq!(text, "a\u{fffd}b");
        assert_eq!(rest, b"\xe2\x9c");
    }

    #[test]
    fn chunks_hold_a_character_back_until_it_is_complete() {
        let mut chunks = Utf8Chunks::default();
        let bytes = "a✓".as_bytes();
        assert_eq!(chunks.push(&bytes[..2]).as_deref(), Some("a"));
        assert_eq!(chunks.push(&bytes[2..3]), None);
        assert_eq!(chunks.push(&bytes[3..]).as_deref(), Some("✓"));
        assert_eq!(chunks.push(b"\xe2\x9c"), None);
        assert_eq!(chunks.finish().as_deref(), Some("\u{fffd}"));
    }
}
