//! Per-key limits on starting runs: a rate (`auth.runs_per_minute`) and a
//! number running at once (`auth.max_running_per_key`). Both answer `429`
//! with `Retry-After`, and both recover as soon as the load drops.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::error::ApiError;

/// A token bucket per key: bursts of up to `per_minute` runs, refilled at
/// `per_minute` a minute, so a client that slows down is served again at once.
pub struct RunRate {
    per_minute: u64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RunRate {
    /// A limit of `per_minute` runs per key; 0 turns it off.
    pub(crate) fn new(per_minute: u64) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one run from `key`'s allowance, or says how long to wait.
    pub fn take(&self, key: &str) -> Result<(), ApiError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = self.per_minute as f64;
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_second)
            .min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / per_second);
        Err(ApiError::TooMany {
            code: "rate_limited",
            message: format!(
                "this key may start {} runs a minute; try again in {} s",
                self.per_minute,
                wait.as_secs().max(1)
            ),
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        })
    }
}

/// `429` when `key` already has `max` runs running (0: no limit).
pub fn check_running(running: usize, max: u64) -> Result<(), ApiError> {
    if max > 0 && running as u64 >= max {
        return Err(ApiError::TooMany {
            code: "too_many_running_runs",
            message: format!("this key already has {max} runs running; wait for one to end"),
            retry_after_secs: 5,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits_and_others_are_unaffected() {
        let rate = RunRate::new(3);
        for _ in 0..3 {
            assert!(rate.take("a").is_ok());
        }
        let Err(ApiError::TooMany {
            retry_after_secs, ..
        }) = rate.take("a")
        else {
            panic!("the fourth run in a burst is refused")
        };
        assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}");
        assert!(rate.take("b").is_ok(), "another key has its own allowance");
        assert!(RunRate::new(0).take("a").is_ok(), "0 means no limit");
    }

    #[test]
    fn running_runs_are_capped() {
        assert!(check_running(2, 3).is_ok());
        assert!(check_running(3, 3).is_err());
        assert!(check_running(100, 0).is_ok());
    }
}
