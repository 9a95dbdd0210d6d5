//! Run webhooks off the hot path (SPEC 13): the same streamed runs twice
//! in one bench run, on two fresh servers of the same build, first with
//! webhooks off, then on.
//!
//! Each run is made with `POST /api/runs` and read whole over SSE by its
//! own client, which times the gaps between its events. The runs start
//! spread over one second, so they end spread over one second too, while
//! the receiver (in this process, on a thread of its own) holds each
//! webhook 200 ms before it answers `200`: deliveries queue up behind
//! `max_concurrent` and are sent while later runs still stream. What
//! counts: whether the streams' gaps grow with webhooks on, how long after
//! the last run's end the last delivery is answered, and that the receiver
//! never holds more than `max_concurrent` at once. A missing delivery
//! counts as a failure.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    cpu_seconds, kib, read_stream, report, start_server_with, Baseline, Seen, Server, Target, SLACK,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long the receiver holds each webhook before answering.
const HOLD: Duration = Duration::from_millis(200);
/// The sender's bound (the default of `webhooks.max_concurrent`).
const MAX_CONCURRENT: usize = 64;
const TOKENS: usize = 20;
const INTERVAL_MS: u64 = 50;
/// Over how long the runs are started, and so end.
const SPREAD: Duration = Duration::from_secs(1);

/// What the receiver saw.
#[derive(Default)]
struct Received {
    ids: HashSet<String>,
    runs: HashSet<String>,
    requests: usize,
    last_answer: Option<Instant>,
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Received>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A webhook receiver on a free loopback port, served by a thread of its
/// own so that its work does not delay the clients' reading; it stops
/// when dropped.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, addr) = std::sync::mpsc::channel();
        let shared = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("receiver runtime: {e}"));
            runtime.block_on(async move {
                let app = axum::Router::new().fallback(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let state = shared.clone();
                        async move { state.answer(&headers, &body).await }
                    },
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .unwrap_or_else(|e| panic!("receiver: {e}"));
                let _ = ready.send(listener.local_addr());
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addr = addr
            .recv()
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the receiver did not start"));
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    fn requests(&self) -> usize {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ReceiverState {
    async fn answer(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> axum::http::StatusCode {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(HOLD).await;
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let run = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|body| body["data"]["id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        {
            let mut received = self
                .received
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            received.requests += 1;
            received.ids.insert(id);
            received.runs.insert(run);
            received.last_answer = Some(Instant::now());
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        axum::http::StatusCode::OK
    }
}

/// Makes one run (with a webhook to `webhook` if any) and reads it whole.
async fn run_and_read(
    client: reqwest::Client,
    addr: SocketAddr,
    i: usize,
    webhook: Option<String>,
) -> Seen {
    let mut body = json!({
        "prompt": format!("webhooks {i}"),
        "params": {"tokens": TOKENS, "interval_ms": INTERVAL_MS},
    });
    if let Some(url) = webhook {
        body["webhook_url"] = json!(url);
    }
    let created = client
        .post(format!("http://{addr}/api/runs"))
        .json(&body)
        .send()
        .await
        .and_then(|r| r.error_for_status());
    let id = match created {
        Ok(answer) => answer
            .json::<Value>()
            .await
            .ok()
            .and_then(|body| body["id"].as_str().map(str::to_owned)),
        Err(_) => None,
    };
    let Some(id) = id else {
        return Seen {
            failed: true,
            ended: Some(Instant::now()),
            ..Seen::default()
        };
    };
    let limit = Duration::from_millis(INTERVAL_MS * TOKENS as u64) + SLACK;
    read_stream(addr, format!("/api/runs/{id}/events"), None, TOKENS, limit).await
}

/// One pass: `runs` runs on a fresh server, with webhooks to `receiver`
/// when there is one.
async fn pass(runs: usize, receiver: Option<&Receiver>) -> Value {
    let allowed = receiver.map(|r| format!("http://{}/hooks/", r.addr));
    let max_concurrent = MAX_CONCURRENT.to_string();
    let mut env: Vec<(&str, &str)> = Vec::new();
    if let Some(allowed) = &allowed {
        env.extend([
            ("SLUICE_WEBHOOKS_SECRET", SECRET),
            ("SLUICE_WEBHOOKS_ALLOWED_URLS", allowed.as_str()),
            ("SLUICE_WEBHOOKS_MAX_CONCURRENT", max_concurrent.as_str()),
        ]);
    }
    let server: Server = start_server_with(Target::Sluice, &env);
    let addr = server.addr;
    let client = reqwest::Client::new();
    let baseline = Baseline::take(&server);
    let started = baseline.started;
    // When each stream ended, for the spread of the runs' ends.
    let ends = Arc::new(Mutex::new(Vec::with_capacity(runs)));
    let mut tasks = Vec::with_capacity(runs);
    for i in 0..runs {
        let due = SPREAD.mul_f64(i as f64 / runs as f64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
        let webhook = allowed.as_ref().map(|a| format!("{a}run"));
        let (client, ends) = (client.clone(), ends.clone());
        tasks.push(tokio::spawn(async move {
            let seen = run_and_read(client, addr, i, webhook).await;
            if let Some(ended) = seen.ended {
                ends.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(ended);
            }
            seen
        }));
    }
    let rss_open = kib(&baseline.pids, "VmRSS:");
    let name = if receiver.is_some() {
        "webhooks on"
    } else {
        "webhooks off"
    };
    let mut result = report(name, runs, INTERVAL_MS, tasks, &baseline, rss_open).await;
    let ends = std::mem::take(
        &mut *ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let first_end = ends.iter().min().copied().unwrap_or(started);
    let last_end = ends.iter().max().copied().unwrap_or(started);
    let cpu = |baseline: &Baseline| {
        baseline
            .pids
            .iter()
            .map(|&pid| cpu_seconds(pid))
            .sum::<f64>()
            - baseline.cpu
    };
    result["server"] = json!(Target::Sluice.name());
    result["runs_end_spread_s"] = json!((last_end - first_end).as_secs_f64());
    result["server_cpu_s_streams"] = json!(cpu(&baseline));
    if let Some(receiver) = receiver {
        let deadline = Instant::now() + Duration::from_secs(60);
        while receiver.requests() < runs && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        result["server_cpu_s_until_delivered"] = json!(cpu(&baseline));
        // Room for an extra attempt to show.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let received = receiver.lock();
        let missing = runs.saturating_sub(received.runs.len());
        let max_in_flight = receiver.state.max_in_flight.load(Ordering::SeqCst);
        result["webhooks_received"] = json!(received.requests);
        result["webhook_ids"] = json!(received.ids.len());
        result["webhook_runs"] = json!(received.runs.len());
        result["webhooks_max_in_flight"] = json!(max_in_flight);
        result["webhooks_max_concurrent"] = json!(MAX_CONCURRENT);
        result["last_delivery_after_last_end_s"] =
            json!(received.last_answer.map_or(f64::NAN, |at| at
                .saturating_duration_since(last_end)
                .as_secs_f64()));
        // A run without its delivery, or the bound broken, fails the run.
        let broken = usize::from(max_in_flight > MAX_CONCURRENT);
        let failures = result["failures"].as_u64().unwrap_or(0);
        result["failures"] = json!(failures + (missing + broken) as u64);
    }
    result
}

/// Both passes, webhooks off then on, `runs` runs each.
pub async fn scenarios(quick: bool) -> Vec<Value> {
    let runs = if quick { 200 } else { 1_000 };
    let off = pass(runs, None).await;
    let receiver = Receiver::start();
    let on = pass(runs, Some(&receiver)).await;
    vec![off, on]
}

/// The figures the table of ordinary scenarios has no column for.
#[allow(clippy::print_stdout)]
pub fn print(results: &[Value]) {
    let find = |name: &str| results.iter().find(|r| r["scenario"] == name);
    let (Some(off), Some(on)) = (find("webhooks off"), find("webhooks on")) else {
        return;
    };
    let number = |r: &Value, key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    println!(
        "\nwebhooks: {} runs of {TOKENS} tokens every {INTERVAL_MS} ms, started over {:.1} s, each read over SSE; the receiver answers each webhook after {} ms; max_concurrent {MAX_CONCURRENT}",
        on["streams"],
        SPREAD.as_secs_f64(),
        HOLD.as_millis(),
    );
    println!(
        "  {:<8} {:>9} {:>9} {:>9} {:>11} {:>14} {:>13} {:>14} {:>14} {:>10}",
        "webhooks",
        "gap p50",
        "gap p99",
        "gap max",
        "ends over",
        "CPU-s streams",
        "CPU-s +hooks",
        "last delivery",
        "max in flight",
        "delivered"
    );
    for (label, r) in [("off", off), ("on", on)] {
        let hooks = r.get("webhooks_received").is_some();
        let or_dash = |text: String| if hooks { text } else { "-".to_owned() };
        println!(
            "  {:<8} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>9.2} s {:>14.2} {:>13} {:>14} {:>14} {:>10}",
            label,
            number(r, "gap_p50_ms"),
            number(r, "gap_p99_ms"),
            number(r, "gap_max_ms"),
            number(r, "runs_end_spread_s"),
            number(r, "server_cpu_s_streams"),
            or_dash(format!("{:.2}", number(r, "server_cpu_s_until_delivered"))),
            or_dash(format!(
                "+{:.2} s",
                number(r, "last_delivery_after_last_end_s")
            )),
            or_dash(r["webhooks_max_in_flight"].to_string()),
            or_dash(format!("{}/{}", r["webhook_runs"], r["streams"])),
        );
    }
    println!(
        "  ends over: from the first stream's end to the last. CPU-s: the server's, until the last stream ended, and with webhooks on until the last delivery was answered. last delivery: after the last stream ended."
    );
}
