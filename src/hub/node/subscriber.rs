//! One subscriber's cursor into a run's log, and what its leaving means
//! for a run that ends when its clients leave.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::run::{schedule_idle_check, Run};
use crate::hub::changes::Changes;
use crate::hub::log::Read;
use crate::hub::{Chunk, HubError, Resume, RunStatus, Seq};
use crate::wire::Format;

/// The run's events after `after` in `format`, retained then live; a
/// subscriber that leaves last may start the disconnect grace.
pub(super) fn subscribe(
    run: Arc<Run>,
    after: Seq,
    format: Format,
    grace: Duration,
) -> Result<Resume, HubError> {
    // Watch before reading the position, so an append in between still
    // wakes this subscriber.
    let changed = run.log().watch();
    let (len, ended) = run.log().position();
    let len = len as Seq;
    if ended && after >= len {
        return Ok(Resume::Finished);
    }
    if after > len {
        return Err(HubError::BeyondEnd { after, last: len });
    }
    run.subscribers.fetch_add(1, Ordering::SeqCst);
    run.epoch.fetch_add(1, Ordering::SeqCst);
    let subscriber = Subscriber {
        run,
        grace,
        cursor: after as usize,
        format,
        changed,
    };
    let stream = futures::stream::unfold(subscriber, |mut sub| async move {
        let chunk = sub.next_chunk().await?;
        Some((chunk, sub))
    });
    Ok(Resume::Events(stream.boxed()))
}

/// One subscriber's cursor into a run's log.
struct Subscriber {
    run: Arc<Run>,
    grace: Duration,
    cursor: usize,
    format: Format,
    changed: Changes,
}

impl Subscriber {
    async fn next_chunk(&mut self) -> Option<Chunk> {
        loop {
            let read = match self.format {
                Format::Sluice => self.run.log().read(self.cursor),
                format => self.run.log().read_as(self.cursor, format, self.run.meta()),
            };
            match read {
                // Events the format has nothing for: on to the next.
                Read::Chunk { bytes, events, .. } if bytes.is_empty() => {
                    self.cursor += events;
                    continue;
                }
                Read::Chunk {
                    bytes,
                    events,
                    ready,
                } => {
                    self.cursor += events;
                    return Some(Chunk {
                        bytes,
                        events: events as u64,
                        lag: ready.saturating_sub(1) as u64,
                    });
                }
                Read::Ended => return None,
                Read::Pending => {}
            }
            self.changed.changed().await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let left = self.run.subscribers.fetch_sub(1, Ordering::SeqCst) - 1;
        self.run.epoch.fetch_add(1, Ordering::SeqCst);
        if left == 0
            && !self.run.is_mirror()
            && self.run.meta().cancel_on_disconnect
            && self.run.log().status() == RunStatus::Running
        {
            schedule_idle_check(self.run.clone(), self.grace);
        }
    }
}
