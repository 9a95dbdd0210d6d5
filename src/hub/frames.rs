//! A run's frames, kept compact: retained memory is close to the frame
//! bytes themselves.
//!
//! A frame arrives as its own `Bytes` (encoded once, shared with whoever
//! already holds it). Kept that way, every event would cost a 32-byte
//! handle and an allocation's overhead beside its ~80 bytes. So the newest
//! frames sit in an open tail, and once the tail holds a segment's worth
//! (or the run ends) it is sealed: copied once into one allocation, with a
//! 4-byte end offset per frame. A subscriber behind is served a slice of a
//! segment, or the pieces of several copied together.
//!
//! A segment is [`SEGMENT_FRAMES`] frames, or fewer if they reach
//! [`SEGMENT_BYTES`] first: by count, so that a slow run (a token a second,
//! thousands of them open at once) does not hold its events in the costly
//! form for minutes.

use bytes::{Bytes, BytesMut};

/// The tail is sealed once it holds this many frames.
const SEGMENT_FRAMES: usize = 64;
/// Or this many bytes: a subscriber's largest chunk, so that one of large
/// frames is a single slice.
const SEGMENT_BYTES: usize = 64 * 1024;

/// Frames of events `1..=len()`, the first at index 0.
#[derive(Debug)]
pub(crate) struct Frames {
    /// The tail is sealed once it holds this many frames,
    segment_frames: usize,
    /// or this many bytes.
    segment_bytes: usize,
    sealed: Vec<Segment>,
    /// Frames in sealed segments.
    sealed_len: usize,
    /// The newest frames, each as it came.
    open: Vec<Bytes>,
    open_bytes: usize,
    /// Bytes of all frames.
    bytes: u64,
}

/// Consecutive frames in one allocation.
#[derive(Debug)]
struct Segment {
    /// Index of its first frame.
    first: usize,
    bytes: Bytes,
    /// End offset in `bytes` of each frame.
    ends: Vec<u32>,
}

impl Segment {
    fn range(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        start..self.ends[i] as usize
    }
}

impl Default for Frames {
    fn default() -> Self {
        Self::with_segments_of(SEGMENT_FRAMES, SEGMENT_BYTES)
    }
}

impl Frames {
    /// Frames sealed in segments of `segment_frames` frames, or fewer once
    /// they hold `segment_bytes`.
    pub(crate) fn with_segments_of(segment_frames: usize, segment_bytes: usize) -> Self {
        Self {
            segment_frames,
            segment_bytes,
            sealed: Vec::new(),
            sealed_len: 0,
            open: Vec::new(),
            open_bytes: 0,
            bytes: 0,
        }
    }

    /// Number of frames.
    pub(crate) fn len(&self) -> usize {
        self.sealed_len + self.open.len()
    }

    /// Bytes of all frames.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends a frame.
    pub(crate) fn push(&mut self, frame: Bytes) {
        // A segment's offsets are u32: seal what is there before a frame
        // that would take the tail past them.
        if u32::try_from(self.open_bytes + frame.len()).is_err() {
            self.seal();
        }
        self.bytes += frame.len() as u64;
        self.open_bytes += frame.len();
        self.open.push(frame);
        if self.open.len() >= self.segment_frames || self.open_bytes >= self.segment_bytes {
            self.seal();
        }
    }

    /// Seals the tail and drops all spare capacity: for a log that is
    /// complete and kept as it is.
    pub(crate) fn finish(&mut self) {
        self.seal();
        // A tail that could not be sealed (one frame of 4 GiB) stays open.
        self.open.shrink_to_fit();
        self.sealed.shrink_to_fit();
    }

    fn seal(&mut self) {
        // A segment's offsets are u32: a tail past 4 GiB (one frame can be
        // large) stays as it is.
        if self.open.is_empty() || u32::try_from(self.open_bytes).is_err() {
            return;
        }
        let mut bytes = BytesMut::with_capacity(self.open_bytes);
        let mut ends = Vec::with_capacity(self.open.len());
        for frame in &self.open {
            bytes.extend_from_slice(frame);
            ends.push(bytes.len() as u32);
        }
        let first = self.sealed_len;
        self.sealed_len += self.open.len();
        self.open.clear();
        self.open_bytes = 0;
        self.sealed.push(Segment {
            first,
            bytes: bytes.freeze(),
            ends,
        });
    }

    /// Frame `i`, shared (a slice of its segment once sealed).
    pub(crate) fn get(&self, i: usize) -> Option<Bytes> {
        if i >= self.sealed_len {
            return self.open.get(i - self.sealed_len).cloned();
        }
        let segment = &self.sealed[self.segment_of(i)];
        Some(segment.bytes.slice(segment.range(i - segment.first)))
    }

    /// Index of the sealed segment holding frame `i` (`i < sealed_len`).
    fn segment_of(&self, i: usize) -> usize {
        self.sealed
            .partition_point(|s| s.first <= i)
            .saturating_sub(1)
    }

    /// The frames from `from` on, as consecutive pieces of at most `max`
    /// bytes in all (but at least one frame): each run of a sealed segment
    /// as one slice, open frames one by one. Returns the pieces and how
    /// many frames they hold.
    pub(crate) fn pieces(&self, from: usize, max: usize) -> (Vec<Bytes>, usize) {
        let mut pieces = Vec::new();
        let mut size = 0;
        let mut at = from;
        if at < self.sealed_len {
            for segment in &self.sealed[self.segment_of(at)..] {
                let first = at - segment.first;
                let mut last = first;
                let mut full = false;
                while last < segment.ends.len() {
                    let len = segment.range(last).len();
                    if size > 0 && size + len > max {
                        full = true;
                        break;
                    }
                    size += len;
                    last += 1;
                }
                if last > first {
                    let start = segment.range(first).start;
                    pieces.push(segment.bytes.slice(start..segment.ends[last - 1] as usize));
                    at = segment.first + last;
                }
                if full {
                    return (pieces, at - from);
                }
            }
        }
        let open = at.saturating_sub(self.sealed_len);
        for frame in self.open.get(open..).unwrap_or_default() {
            if size > 0 && size + frame.len() > max {
                break;
            }
            size += frame.len();
            pieces.push(frame.clone());
            at += 1;
        }
        (pieces, at - from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever the frames' sizes, the segment size and the cursor,
        /// the frames read back are the ones pushed, and the pieces from a
        /// cursor are the later frames, bounded as asked.
        #[test]
        fn frames_read_back_as_pushed_from_any_cursor(
            sizes in proptest::collection::vec(0usize..40, 0..60),
            segment_frames in 1usize..10,
            segment in 1usize..100,
            from in 0usize..65,
            max in 1usize..120,
            finish in proptest::bool::ANY,
        ) {
            let pushed: Vec<Bytes> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| Bytes::from(vec![b'a' + (i % 26) as u8; n]))
                .collect();
            let mut frames = Frames::with_segments_of(segment_frames, segment);
            for frame in &pushed {
                frames.push(frame.clone());
            }
            if finish {
                frames.finish();
            }
            proptest::prop_assert_eq!(frames.len(), pushed.len());
            let total: usize = pushed.iter().map(Bytes::len).sum();
            proptest::prop_assert_eq!(frames.bytes(), total as u64);
            for (i, frame) in pushed.iter().enumerate() {
                proptest::prop_assert_eq!(frames.get(i), Some(frame.clone()));
            }
            proptest::prop_assert_eq!(frames.get(pushed.len()), None);
            let (pieces, count) = frames.pieces(from, max);
            let got: Vec<u8> = pieces.concat();
            let later = pushed.get(from..).unwrap_or_default();
            let want: Vec<u8> = later[..count].concat();
            proptest::prop_assert_eq!(got.len(), want.len());
            proptest::prop_assert_eq!(&got, &want);
            if later.is_empty() {
                proptest::prop_assert_eq!(count, 0);
            } else {
                proptest::prop_assert!(count >= 1, "at least one frame");
                // Over `max` only by one frame alone (after empty ones,
                // which a view has for events its format skips).
                let alone = want.len() == later[count - 1].len();
                proptest::prop_assert!(want.len() <= max || alone);
                // As many as fit: the next frame would not have.
                if let Some(next) = later.get(count) {
                    proptest::prop_assert!(want.len() + next.len() > max);
                }
            }
        }
    }

    #[test]
    fn a_sealed_run_of_frames_is_served_as_one_slice() {
        let mut frames = Frames::with_segments_of(64, 10);
        for _ in 0..4 {
            frames.push(Bytes::from_static(b"abc"));
        }
        // 12 bytes: sealed as one segment, the open tail empty.
        let (pieces, count) = frames.pieces(1, 100);
        assert_eq!((pieces.len(), count), (1, 3));
        assert_eq!(pieces[0], Bytes::from_static(b"abcabcabc"));
        frames.push(Bytes::from_static(b"d"));
        let (pieces, count) = frames.pieces(0, 100);
        assert_eq!((pieces.len(), count), (2, 5));
    }
}
