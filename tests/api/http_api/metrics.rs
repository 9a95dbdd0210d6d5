//! SPEC 3, HTTP API, `/metrics` and `/readyz` as a scraper and a load
//! balancer see them.

use std::collections::HashMap;

use serde_json::json;

use crate::helpers::*;

/// Samples of a text exposition: `name{labels}` → value.
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn metrics(app: &TestApp) -> HashMap<String, f64> {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    scrape(&response.text().await.unwrap())
}

/// Every metric is exposed from the start.
fn assert_exposed(before: &HashMap<String, f64>) {
    for name in [
        "sluice_streams_open",
        "sluice_runs_running",
        "sluice_events_sent_total",
        "sluice_bytes_sent_total",
        "sluice_resumes_total",
        "sluice_ttft_seconds_count",
        "sluice_run_duration_seconds_count",
    ] {
        assert!(
            before.contains_key(name),
            "{name} is exposed from the start"
        );
    }
}

/// A run done, one failed, and a resumed read of the failed one; the bytes
/// of the done run's and the resumed read's bodies.
async fn finish_fail_and_resume(app: &TestApp) -> f64 {
    let body = app
        .get("/api/agent/stream?tokens=5&interval_ms=0")
        .await
        .bytes()
        .await
        .unwrap();
    let failed = app
        .events("/api/agent/stream?tokens=5&fail_after=2&interval_ms=0")
        .await;
    let run = failed[0].id.rsplit_once(':').unwrap().0.to_owned();
    let resumed = app
        .client
        .get(app.url(&format!("/api/runs/{run}/events")))
        .header("Last-Event-ID", format!("{run}:1"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    (body.len() + resumed.len()) as f64
}

/// Holds both stream slots, then gets refused once; cancels the held run.
async fn hold_both_stream_slots_and_get_refused(app: &TestApp) {
    let id = app
        .create_run(json!({"params": {"tokens": 1000, "interval_ms": 20}}))
        .await;
    let held1 = app.get(&format!("/api/runs/{id}/events")).await;
    let held2 = app.get(&format!("/api/runs/{id}/events")).await;
    assert_eq!(app.get("/api/agent/stream").await.status(), 503);
    let during = metrics(app).await;
    assert_eq!(during["sluice_streams_open"], 2.0);
    assert_eq!(
        during["sluice_runs_running"], 1.0,
        "the refused stream started no run"
    );
    assert_eq!(
        during["sluice_rejections_total{reason=\"too_many_streams\"}"],
        1.0
    );
    drop((held1, held2));
    app.delete(&format!("/api/runs/{id}")).await;
}

/// What the runs, streams and the refusal above add up to.
fn assert_counted(after: &HashMap<String, f64>, direct: f64) {
    assert_eq!(
        after["sluice_runs_total{agent=\"sim\",outcome=\"done\"}"],
        1.0
    );
    assert_eq!(
        after["sluice_runs_total{agent=\"sim\",outcome=\"error\"}"],
        1.0
    );
    assert_eq!(
        after["sluice_runs_total{agent=\"sim\",outcome=\"cancelled\"}"],
        1.0
    );
    assert_eq!(after["sluice_resumes_total"], 1.0);
    assert!(after["sluice_ttft_seconds_count"] >= 2.0);
    assert_eq!(after["sluice_run_duration_seconds_count"], 3.0);
    // 7 events of the first run, 5 of the failed one, 4 of the resumed read, plus the held streams'.
    assert!(
        after["sluice_events_sent_total"] >= 16.0,
        "{}",
        after["sluice_events_sent_total"]
    );
    assert!(
        after["sluice_bytes_sent_total"] >= direct,
        "bytes are counted as written"
    );
    assert_eq!(after["sluice_streams_open"], 0.0);
    // The resumed read of a finished run found its events waiting: lag above 0.
    let writes = after["sluice_subscriber_lag_events_count"];
    let kept_up = after["sluice_subscriber_lag_events_bucket{le=\"0\"}"];
    assert!(
        writes > kept_up && kept_up >= 1.0,
        "{writes} writes, {kept_up} without lag"
    );
}

#[tokio::test]
async fn metrics_count_runs_events_bytes_resumes_and_rejections() {
    let app = spawn_with("[server]\nmax_streams = 2\n").await;
    let before = metrics(&app).await;
    assert_exposed(&before);
    let direct = finish_fail_and_resume(&app).await;
    hold_both_stream_slots_and_get_refused(&app).await;
    let after = metrics(&app).await;
    assert_counted(&after, direct);
}

#[tokio::test]
async fn readyz_and_healthz_answer_while_serving() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    assert_eq!(app.get("/healthz").await.status(), 200);
}
