//! Where a run lives in Redis: the keys, the stream entry ids and how an
//! owner is written, and how long things are kept.

use crate::hub::{RunId, Seq, Viewer};

/// A run's stream keeps at most about this many events (`MAXLEN ~`).
pub(super) const MAX_EVENTS: usize = 1_000_000;
/// How long an evicted run's id answers `410` rather than `404`.
pub(super) const GONE_SECS: u64 = crate::hub::node::GONE_FOR.as_secs();
/// The pub/sub channel of cancel requests.
pub(super) const CANCEL_CHANNEL: &str = "sluice:cancel";
/// Every run by creation time: what listings walk.
pub(super) const RUNS: &str = "sluice:runs";
/// Runs a node drives that are still running: what the reaper scans.
pub(super) const RUNNING: &str = "sluice:running";
/// Push runs still running: what every node's idle watch scans.
pub(super) const PUSHING: &str = "sluice:pushing";

pub(crate) fn run_key(id: &RunId) -> String {
    format!("sluice:run:{id}")
}

pub(super) fn events_key(id: &RunId) -> String {
    format!("sluice:run:{id}:ev")
}

pub(super) fn watch_key(id: &RunId) -> String {
    format!("sluice:run:{id}:watch")
}

pub(super) fn gone_key(id: &RunId) -> String {
    format!("sluice:gone:{id}")
}

/// Claimed by the node that ends a lost run, so that only one does.
pub(super) fn reaped_key(id: &RunId) -> String {
    format!("sluice:run:{id}:reaped")
}

/// The owner's length first, so that no owner and chat id pair can be
/// read as another.
pub(super) fn chat_key(owner: &Viewer, chat: &str) -> String {
    let owner = owner_field(owner);
    format!("sluice:chat:{}:{owner}:{chat}", owner.len())
}

pub(super) fn node_key(node: &str) -> String {
    format!("sluice:node:{node}")
}

/// How an owner is stored: empty when auth is off, `k:{name}` otherwise.
pub(crate) fn owner_field(owner: &Viewer) -> String {
    owner
        .as_ref()
        .map_or_else(String::new, |name| format!("k:{name}"))
}

/// The viewer an owner field names: the inverse of [`owner_field`].
pub(crate) fn owner_of(field: &str) -> Viewer {
    field.strip_prefix("k:").map(str::to_owned)
}

/// `{seq}-0` back to `seq`.
pub(super) fn seq_of(entry_id: &str) -> Seq {
    entry_id
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub(super) type StreamEntries = Vec<(String, Vec<Vec<u8>>)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_stored_so_that_no_key_name_looks_like_no_auth() {
        assert_eq!(owner_field(&None), "");
        assert_eq!(owner_field(&Some(String::new())), "k:");
        assert_eq!(owner_field(&Some("ci".into())), "k:ci");
    }

    #[test]
    fn entry_ids_read_back_as_seqs() {
        assert_eq!(seq_of("17-0"), 17);
    }
}
