//! Push runs under load (SPEC 12): one worker's streamed publish, watched
//! by many subscribers.
//!
//! - `publish`: the worker writes its lines as fast as the connection
//!   takes them; what counts is how many events per second reach every
//!   subscriber, and the server's CPU per delivered event.
//! - `publish latency`: the worker writes one line every 2 ms, each
//!   carrying the time it was written; one more subscriber reads every
//!   event and measures how long after its line was written it arrived.
//!   On loopback, written is as good as reaching Sluice.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::{
    cpu_seconds, kib, percentile, process_cpu_seconds, read_stream, report, Baseline, Server,
    Target, SLACK,
};

/// Lines per body chunk when the worker writes at full speed.
const LINES_PER_CHUNK: usize = 100;

/// Creates a push run; its id.
async fn create_push(server: &Server) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("http://{}/api/runs", server.addr))
        .json(&json!({"agent": "push", "prompt": "bench"}))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("create push run: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("create push run: {e}"));
    body["id"].as_str().unwrap_or_default().to_owned()
}

/// Streams `lines` token lines (then `done`) to run `id` in one request,
/// in chunks of `per_chunk` lines, `pause` apart; each token's text is
/// the nanoseconds since `base` when its chunk was written. The time the
/// whole publish took.
async fn publish(
    server: &Server,
    id: &str,
    lines: usize,
    per_chunk: usize,
    pause: Duration,
    base: Instant,
) -> Duration {
    let started = Instant::now();
    // The state is how many token lines are written; `None` once `done` is.
    let chunks = futures::stream::unfold(Some(0usize), move |sent| async move {
        let sent = sent?;
        if sent > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let count = per_chunk.min(lines - sent);
        let now = base.elapsed().as_nanos();
        let mut chunk = String::with_capacity(count * 40 + 20);
        for _ in 0..count {
            chunk.push_str(&format!("{{\"event\":\"token\",\"text\":\"{now}\"}}\n"));
        }
        let next = if sent + count == lines {
            chunk.push_str("{\"event\":\"done\"}\n");
            None
        } else {
            Some(sent + count)
        };
        Some((Ok::<_, std::io::Error>(chunk), next))
    });
    let answer = reqwest::Client::new()
        .post(format!("http://{}/api/runs/{id}/events", server.addr))
        .header("content-type", "application/x-ndjson")
        .header("sluice-offset", "0")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let answer: Value = answer.json().await.unwrap_or_default();
    assert_eq!(
        answer["status"], "done",
        "the publish ended the run: {answer}"
    );
    started.elapsed()
}

/// Reads run `id` and measures, for each token, how long after `base` +
/// its text it arrived.
async fn probe(server_addr: std::net::SocketAddr, id: String, base: Instant) -> Vec<Duration> {
    let response = reqwest::Client::new()
        .get(format!("http://{server_addr}/api/runs/{id}/events"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("probe: {e}"));
    let mut body = response.bytes_stream();
    let mut latencies = Vec::new();
    let mut pending = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        let now = base.elapsed();
        pending.extend_from_slice(&chunk);
        let end = pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |at| at + 1);
        for line in pending[..end].split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data: {\"text\":\"") else {
                continue;
            };
            let digits: &[u8] = data.split(|b| *b == b'"').next().unwrap_or_default();
            if let Some(sent) = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            {
                latencies.push(now.saturating_sub(Duration::from_nanos(sent)));
            }
        }
        pending.drain(..end);
    }
    latencies
}

/// `subscribers` readers of run `id`, each expecting `lines` events.
fn subscribe(
    server: &Server,
    id: &str,
    subscribers: usize,
    lines: usize,
) -> Vec<tokio::task::JoinHandle<super::Seen>> {
    (0..subscribers)
        .map(|_| {
            tokio::spawn(read_stream(
                server.addr,
                format!("/api/runs/{id}/events"),
                None,
                lines,
                SLACK,
            ))
        })
        .collect()
}

/// `baseline` with its clock and CPU figures taken again now (its memory
/// figure stays: from before the subscribers connected).
fn restart(baseline: Baseline) -> Baseline {
    Baseline {
        cpu: baseline.pids.iter().map(|&pid| cpu_seconds(pid)).sum(),
        loadgen_cpu: process_cpu_seconds(std::process::id()),
        started: Instant::now(),
        ..baseline
    }
}

/// The two push-run scenarios against a fresh server each.
pub async fn scenarios(start: impl Fn() -> Server, subscribers: usize, quick: bool) -> Vec<Value> {
    let mut results = Vec::new();
    // Throughput: one streamed publish at full speed.
    {
        let server = start();
        let lines = if quick { 10_000 } else { 100_000 };
        let id = create_push(&server).await;
        let baseline = Baseline::take(&server);
        let tasks = subscribe(&server, &id, subscribers, lines);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_open = kib(&baseline.pids, "VmRSS:");
        // Time and CPU from the first line on, not from the connections.
        let baseline = restart(baseline);
        let took = publish(
            &server,
            &id,
            lines,
            LINES_PER_CHUNK,
            Duration::ZERO,
            Instant::now(),
        )
        .await;
        let mut result = report("publish", subscribers, 0, tasks, &baseline, rss_open).await;
        result["server"] = json!(Target::Sluice.name());
        result["published_lines_per_s"] = json!(lines as f64 / took.as_secs_f64());
        results.push(result);
    }
    // Latency: one line every 2 ms, one subscriber timing each.
    {
        let server = start();
        let lines = if quick { 300 } else { 2_000 };
        let id = create_push(&server).await;
        let baseline = Baseline::take(&server);
        let base = Instant::now();
        let tasks = subscribe(&server, &id, subscribers, lines);
        let probe = tokio::spawn(probe(server.addr, id.clone(), base));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_open = kib(&baseline.pids, "VmRSS:");
        publish(&server, &id, lines, 1, Duration::from_millis(2), base).await;
        let mut latencies = probe.await.unwrap_or_default();
        latencies.sort();
        let mut result = report(
            "publish latency",
            subscribers,
            2,
            tasks,
            &baseline,
            rss_open,
        )
        .await;
        result["server"] = json!(Target::Sluice.name());
        result["line_to_subscriber_p50_ms"] = json!(percentile(&latencies, 0.5));
        result["line_to_subscriber_p99_ms"] = json!(percentile(&latencies, 0.99));
        result["line_to_subscriber_samples"] = json!(latencies.len());
        results.push(result);
    }
    results
}

/// The figures a table of ordinary scenarios has no column for.
#[allow(clippy::print_stdout)]
pub fn print(results: &[Value]) {
    for r in results {
        if let Some(rate) = r["published_lines_per_s"].as_f64() {
            println!(
                "\npublish: one streamed publish of {:.0} lines/s, to {} subscribers: {:.0} events/s delivered",
                rate,
                r["streams"],
                r["events_per_s"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(p50) = r["line_to_subscriber_p50_ms"].as_f64() {
            println!(
                "publish latency: a line reaching Sluice to a subscriber reading it: p50 {p50:.2} ms, p99 {:.2} ms ({} lines)",
                r["line_to_subscriber_p99_ms"].as_f64().unwrap_or(0.0),
                r["line_to_subscriber_samples"]
            );
        }
    }
}
