//! A run's stream entries. Each holds the event's frame as sent (`f`) and,
//! beside it, what a follower would otherwise parse back out of the frame:
//! the event's kind (`k`: `token`, `event` or the status it ends the run
//! with), a token's text (`t`) and a `done` end's usage (`u`).
//!
//! Entries written by a node older than these fields hold `f` alone; they
//! are read back by parsing the frame, so nodes of both versions can share
//! one Redis during a rolling upgrade (an older node reads `f` only).

use bytes::Bytes;

use super::keys::{seq_of, StreamEntries, MAX_EVENTS};
use crate::hub::record::Entry;
use crate::hub::Seq;

/// The `XADD` that appends `entry` as event `seq` of the stream `key`,
/// bounded like every run's stream (`MAXLEN ~`).
pub(super) fn xadd(key: &str, seq: Seq, entry: &Entry) -> redis::Cmd {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(MAX_EVENTS)
        .arg(format!("{seq}-0"));
    add_fields(&mut xadd, entry);
    xadd
}

/// Appends `entry`'s fields to an `XADD` that names its key and id.
fn add_fields(xadd: &mut redis::Cmd, entry: &Entry) {
    xadd.arg("f")
        .arg(entry.frame.as_ref())
        .arg("k")
        .arg(entry.kind());
    if let Some(token) = &entry.token {
        xadd.arg("t").arg(token);
    }
    if let Some(usage) = entry.frame_usage() {
        xadd.arg("u").arg(usage.to_string());
    }
}

/// Appends `entry` to a script call as four arguments: frame, kind, token
/// text and usage, the last two empty when the entry has none.
pub(super) fn add_script_args(script: &mut redis::Cmd, entry: &Entry) {
    script
        .arg(entry.frame.as_ref())
        .arg(entry.kind())
        .arg(entry.token.as_deref().unwrap_or_default())
        .arg(
            entry
                .frame_usage()
                .map_or_else(String::new, ToString::to_string),
        );
}

/// Stream entries as log entries, with their seqs.
pub(super) fn entries_of(entries: StreamEntries) -> Vec<(Seq, Entry)> {
    entries
        .into_iter()
        .filter_map(|(id, fields)| Some((seq_of(&id), entry_of(fields)?)))
        .collect()
}

/// One stream entry's fields as a log entry; `None` without a frame.
fn entry_of(fields: Vec<Vec<u8>>) -> Option<Entry> {
    let (mut frame, mut kind, mut token, mut usage) = (None, None, None, None);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match name.as_slice() {
            b"f" => frame = Some(Bytes::from(value)),
            b"k" => kind = String::from_utf8(value).ok(),
            b"t" => token = String::from_utf8(value).ok(),
            b"u" => usage = String::from_utf8(value).ok(),
            _ => {}
        }
    }
    let frame = frame?;
    let stored = kind.and_then(|kind| Entry::stored(frame.clone(), &kind, token, usage.as_deref()));
    Some(stored.unwrap_or_else(|| Entry::parse(frame)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::record::Recorder;
    use crate::hub::RunMeta;

    fn fields(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                redis::Arg::Cursor => Vec::new(),
            })
            .collect()
    }

    /// What is written reads back as the entry it was, and a frame alone
    /// (an older node's entry) reads back the same.
    #[test]
    fn entries_read_back_with_or_without_their_kind() {
        let meta = RunMeta::for_test("r1");
        let (mut recorder, first) = Recorder::start(&meta);
        let token = recorder.record(crate::agent::AgentEvent::Token(" a\nb".into()));
        let done = recorder.cancelled();
        for entry in [first, token, done] {
            let mut xadd = redis::Cmd::new();
            add_fields(&mut xadd, &entry);
            let bare = vec![b"f".to_vec(), entry.frame.to_vec()];
            for fields in [fields(&xadd), bare] {
                let back = entry_of(fields).unwrap();
                assert_eq!(back.frame, entry.frame);
                assert_eq!(back.token, entry.token);
                assert_eq!(back.kind(), entry.kind());
                assert_eq!(back.frame_usage(), entry.frame_usage());
            }
        }
        assert!(entry_of(vec![b"k".to_vec(), b"token".to_vec()]).is_none());
    }
}
