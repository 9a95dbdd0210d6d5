//! SPEC 13, Run webhooks under load: a thousand runs that end together,
//! a receiver that takes 200 ms to answer each webhook. Every run gets
//! its one delivery, and no more than `max_concurrent` are ever in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RUNS: usize = 1_000;
const MAX_CONCURRENT: usize = 50;
/// Clients creating the runs at once.
const CREATORS: usize = 32;
const TOKENS: u64 = 5;

/// Creates [`RUNS`] runs from [`CREATORS`] clients at once, each with a
/// webhook to `url`; their ids.
async fn create_runs_at_once(app: &Arc<TestApp>, url: &str) -> HashSet<String> {
    let creators: Vec<_> = (0..CREATORS)
        .map(|creator| {
            let app = app.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (creator..RUNS).step_by(CREATORS) {
                    let id = app
                        .create_run(json!({
                            "prompt": format!("load {i}"),
                            "params": {"tokens": TOKENS, "interval_ms": 100},
                            "webhook_url": url,
                        }))
                        .await;
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut runs = HashSet::new();
    for creator in creators {
        runs.extend(creator.await.unwrap());
    }
    runs
}

/// Waits until the receiver has had [`RUNS`] webhooks, 60 s at most.
async fn wait_for_every_webhook(receiver: &Receiver, started: Instant) {
    let deadline = started + Duration::from_secs(60);
    loop {
        let received = receiver.hits().len();
        if received >= RUNS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver got {received} of {RUNS} webhooks within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Distinct webhook-ids, one request per delivery, each run's exactly once.
fn assert_each_run_got_one_delivery(hits: &[Hit], runs: &HashSet<String>) {
    let ids: HashSet<&str> = hits.iter().map(|hit| hit.id.as_str()).collect();
    assert_eq!(ids.len(), RUNS, "distinct webhook-ids");
    assert_eq!(hits.len(), RUNS, "one request per delivery, no retry");
    let mut per_run: HashMap<&str, usize> = HashMap::new();
    for hit in hits {
        assert_eq!(hit.answered, 200);
        assert_eq!(hit.body["type"], "run.finished");
        let run = hit.body["data"]["id"].as_str().unwrap_or_default();
        *per_run.entry(run).or_default() += 1;
    }
    assert!(
        per_run.len() == RUNS && runs.iter().all(|run| per_run.get(run.as_str()) == Some(&1)),
        "each run's webhook exactly once"
    );
}

/// The deliveries' API lists every run's delivery, made at the first attempt.
async fn assert_every_run_is_listed_delivered_at_the_first_attempt(app: &TestApp) {
    let (status, body) = app
        .get_json("/api/webhooks/deliveries?status=delivered&limit=1000")
        .await;
    assert_eq!(status, 200);
    let listed = body["deliveries"].as_array().unwrap();
    assert_eq!(listed.len(), RUNS);
    let listed_runs: HashSet<&str> = listed
        .iter()
        .map(|d| d["run_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(listed_runs.len(), RUNS);
    assert!(
        listed.iter().all(|d: &Value| d["attempts"] == 1),
        "no retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runs_ending_together_get_one_delivery_each_within_the_bound() {
    let receiver =
        Receiver::start(Vec::new(), Answer::After(Duration::from_millis(200), 200)).await;
    // A timeout far above the receiver's 200 ms, so that a slow machine
    // makes no retry (which would send a webhook-id twice).
    let app = spawn_with(&format!(
        "[webhooks]\nsecret = \"{SECRET}\"\nallowed_urls = [\"{}\"]\ntimeout_secs = 30\nmax_concurrent = {MAX_CONCURRENT}\n",
        receiver.url("/hooks/")
    ))
    .await;
    let app = Arc::new(app);
    let url = receiver.url("/hooks/run");

    // Made in a fraction of a second (a run lasts 0.5 s), the runs end in
    // a burst: far more deliveries are due at once than the bound lets out.
    let started = Instant::now();
    let runs = create_runs_at_once(&app, &url).await;
    assert_eq!(runs.len(), RUNS);
    let created = started.elapsed();

    wait_for_every_webhook(&receiver, started).await;
    let delivered = started.elapsed();
    // A moment for any extra (duplicate) attempt to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = receiver.hits();
    eprintln!(
        "{RUNS} runs created in {created:?}; {} webhooks received by {delivered:?}; at most {} in flight",
        hits.len(),
        receiver.max_in_flight()
    );

    assert_each_run_got_one_delivery(&hits, &runs);
    // The bound holds, and is reached: the burst waited for free slots.
    assert_eq!(receiver.max_in_flight(), MAX_CONCURRENT);

    assert_every_run_is_listed_delivered_at_the_first_attempt(&app).await;
}
