//! Ids of evicted runs, so that asking for one answers `410` rather than
//! `404` for a while.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::hub::{RunId, Viewer};

/// How long an evicted run's id is remembered.
pub(crate) const GONE_FOR: Duration = Duration::from_secs(24 * 60 * 60);
/// How many evicted ids are remembered at most (about 100 bytes each).
pub(super) const GONE_MAX: usize = 100_000;

/// Ids of evicted runs, oldest first, bounded in count and age.
#[derive(Default)]
pub(super) struct GoneIds {
    /// Each id's owner (another key must get 404).
    owners: HashMap<RunId, Viewer>,
    order: VecDeque<(Instant, RunId)>,
}

impl GoneIds {
    pub(super) fn insert(&mut self, id: RunId, owner: Viewer, now: Instant) {
        if self.order.len() >= GONE_MAX {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.owners.remove(&oldest);
            }
        }
        self.owners.insert(id.clone(), owner);
        self.order.push_back((now, id));
    }

    pub(super) fn contains(&self, id: &RunId, viewer: &Viewer) -> bool {
        self.owners.get(id) == Some(viewer)
    }

    pub(super) fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < GONE_FOR {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.owners.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> RunId {
        RunId::parse(&format!("run{n}")).unwrap()
    }

    #[test]
    fn evicted_ids_are_remembered_for_a_day_within_a_bounded_count() {
        let mut gone = GoneIds::default();
        let start = Instant::now();
        for n in 0..GONE_MAX + 10 {
            gone.insert(id(n), None, start);
        }
        assert_eq!(gone.owners.len(), GONE_MAX);
        assert!(!gone.contains(&id(0), &None), "the oldest ids make room");
        assert!(gone.contains(&id(GONE_MAX + 9), &None));
        assert!(
            !gone.contains(&id(GONE_MAX + 9), &Some("other".into())),
            "only for its owner"
        );
        gone.prune(start + GONE_FOR - Duration::from_secs(1));
        assert!(gone.contains(&id(GONE_MAX + 9), &None));
        gone.prune(start + GONE_FOR);
        assert!(gone.owners.is_empty() && gone.order.is_empty());
    }
}
