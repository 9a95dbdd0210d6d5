//! The load benchmark: the release `sluice` binary on a free loopback port,
//! and a load generator in this process that opens many concurrent SSE
//! streams to the `sim` agent and measures what a client sees and what the
//! server spends.
//!
//! `cargo bench --bench streams` (add `-- --quick` for a run small enough for
//! CI). Results: a table on stdout and JSON lines in `target/bench/`.
//!
//! The generator reads each stream with a bare hyper HTTP/1 connection and
//! counts events by scanning for the blank line that ends each one, so it
//! allocates nothing per event. Timings are recorded into vectors sized up
//! front. The server runs on core 0 and the generator on core 1 when
//! `taskset` is available.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// One scenario: `streams` clients, each reading a run of `tokens` tokens
/// at `interval_ms`, their connections opened over `ramp`.
struct Scenario {
    name: &'static str,
    streams: usize,
    tokens: usize,
    interval_ms: u64,
    ramp: Duration,
}

/// What one stream saw.
#[derive(Default)]
struct Seen {
    events: u64,
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
    failed: bool,
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers the one-shot scenarios can run against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Sluice,
    /// `benches/compare/axum_minimal.rs`: the floor of this stack.
    AxumMinimal,
    /// `benches/compare/nextjs`: a Next.js App Router route handler.
    NextJs,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Sluice => "sluice",
            Self::AxumMinimal => "axum-minimal",
            Self::NextJs => "nextjs",
        }
    }
}

fn start_server(target: Target) -> Server {
    let (binary, args): (String, Vec<&str>) = match target {
        Target::Sluice => (
            env!("CARGO_BIN_EXE_sluice").to_owned(),
            vec!["serve", "--bind", "127.0.0.1:0"],
        ),
        Target::NextJs => {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/compare/nextjs");
            let ready = std::path::Path::new(dir).join(".next/BUILD_ID").exists();
            if !ready {
                for args in [
                    &["ci", "--no-audit", "--no-fund"][..],
                    &["run", "build"][..],
                ] {
                    let status = Command::new("npm").args(args).current_dir(dir).status();
                    assert!(
                        status.is_ok_and(|s| s.success()),
                        "npm {args:?} failed in {dir}"
                    );
                }
            }
            ("node".to_owned(), vec!["serve.mjs"])
        }
        Target::AxumMinimal => {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--release", "--example", "compare-axum"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "cannot build the compare-axum example"
            );
            (
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/target/release/examples/compare-axum"
                )
                .to_owned(),
                vec!["127.0.0.1:0"],
            )
        }
    };
    let binary = binary.as_str();
    let dir = match target {
        Target::NextJs => concat!(env!("CARGO_MANIFEST_DIR"), "/benches/compare/nextjs"),
        _ => env!("CARGO_MANIFEST_DIR"),
    };
    let pinned = Command::new("taskset").arg("-V").output().is_ok();
    let mut command = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", binary]);
        c
    } else {
        Command::new(binary)
    };
    let mut child = command
        .current_dir(dir)
        .args(args)
        .env("SLUICE_RUNS_RETENTION_SECS", "30")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("no listen line: {e}"));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    if pinned {
        let _ = Command::new("taskset")
            .args(["-cp", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }
    Server { child, addr }
}

/// `pid` and all its descendants: a server may be several processes.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((child, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

/// CPU seconds the process tree has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    process_tree(pid)
        .into_iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (ticks(11) + ticks(12)) / 100.0
        })
        .sum()
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`), summed over the tree.
fn status_kib(pid: u32, field: &str) -> u64 {
    process_tree(pid)
        .into_iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Reads one SSE response to its end, timing events as they arrive.
async fn read_stream(
    addr: SocketAddr,
    path: String,
    last_event_id: Option<String>,
    expected: usize,
) -> Seen {
    let mut seen = Seen {
        gaps: Vec::with_capacity(expected),
        ..Seen::default()
    };
    let started = Instant::now();
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        seen.failed = true;
        return seen;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        seen.failed = true;
        return seen;
    };
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header("host", "bench");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let Ok(request) = request.body(Empty::<Bytes>::new()) else {
        seen.failed = true;
        return seen;
    };
    let Ok(response) = sender.send_request(request).await else {
        seen.failed = true;
        return seen;
    };
    if !response.status().is_success() {
        seen.failed = true;
        return seen;
    }
    let mut body = response.into_body();
    let mut previous_newline = false;
    let mut last_event: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            seen.failed = true;
            break;
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        for &byte in data.iter() {
            if byte == b'\n' && previous_newline {
                seen.events += 1;
                // Event 1 is `run`; the first token is event 2.
                if seen.events == 2 {
                    seen.ttft = Some(now - started);
                }
                if seen.events >= 3 {
                    if let Some(last) = last_event {
                        seen.gaps.push(now - last);
                    }
                }
                last_event = Some(now);
                previous_newline = false;
            } else {
                previous_newline = byte == b'\n';
            }
        }
    }
    seen
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The server's state when a scenario starts, to measure what it costs.
struct Baseline {
    pid: u32,
    cpu: f64,
    rss: u64,
    started: Instant,
}

impl Baseline {
    fn take(server: &Server) -> Self {
        let pid = server.child.id();
        Self {
            pid,
            cpu: cpu_seconds(pid),
            rss: status_kib(pid, "VmRSS:"),
            started: Instant::now(),
        }
    }
}

/// Runs `streams` concurrent one-shot streams and reports.
async fn run_scenario(server: &Server, s: &Scenario, target: Target) -> serde_json::Value {
    let baseline = Baseline::take(server);
    let started = baseline.started;
    let mut tasks = Vec::with_capacity(s.streams);
    for i in 0..s.streams {
        if !s.ramp.is_zero() {
            let due = s.ramp.mul_f64(i as f64 / s.streams as f64);
            tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
        }
        let path = format!(
            "/api/agent/stream?prompt=bench{i}&tokens={}&interval_ms={}",
            s.tokens, s.interval_ms
        );
        tasks.push(tokio::spawn(read_stream(server.addr, path, None, s.tokens)));
    }
    // The peak: all streams open (sampled once the ramp is over).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_open = status_kib(baseline.pid, "VmRSS:");
    let mut result = report(s.name, s.streams, s.interval_ms, tasks, &baseline, rss_open).await;
    result["server"] = json!(target.name());
    result
}

async fn report(
    name: &str,
    streams: usize,
    interval_ms: u64,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
    baseline: &Baseline,
    rss_open: u64,
) -> serde_json::Value {
    let mut events = 0u64;
    let mut failures = 0usize;
    let mut ttfts = Vec::with_capacity(tasks.len());
    let mut gaps = Vec::new();
    for task in tasks {
        let seen = task.await.unwrap_or(Seen {
            failed: true,
            ..Seen::default()
        });
        events += seen.events;
        failures += usize::from(seen.failed);
        ttfts.extend(seen.ttft);
        gaps.extend(seen.gaps);
    }
    let elapsed = baseline.started.elapsed().as_secs_f64();
    let pid = baseline.pid;
    let cpu = cpu_seconds(pid) - baseline.cpu;
    ttfts.sort();
    gaps.sort();
    json!({
        "scenario": name,
        "streams": streams,
        "interval_ms": interval_ms,
        "events": events,
        "events_per_s": events as f64 / elapsed,
        "ttft_p50_ms": percentile(&ttfts, 0.5),
        "ttft_p99_ms": percentile(&ttfts, 0.99),
        "gap_p50_ms": percentile(&gaps, 0.5),
        "gap_p99_ms": percentile(&gaps, 0.99),
        "gap_max_ms": gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1000.0),
        "cpu_s_per_million_events": if events > 0 { cpu / (events as f64 / 1e6) } else { 0.0 },
        "peak_rss_kib": status_kib(pid, "VmHWM:"),
        "rss_per_open_stream_kib": (rss_open.saturating_sub(baseline.rss)) as f64 / streams as f64,
        "failures": failures,
        "seconds": elapsed,
    })
}

/// One run watched by `subscribers` clients of `/api/runs/{id}/events`.
async fn fan_out(server: &Server, subscribers: usize, tokens: usize) -> serde_json::Value {
    let id = create_run(server.addr, tokens, 10).await;
    let baseline = Baseline::take(server);
    let tasks: Vec<_> = (0..subscribers)
        .map(|_| {
            tokio::spawn(read_stream(
                server.addr,
                format!("/api/runs/{id}/events"),
                None,
                tokens,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_open = status_kib(baseline.pid, "VmRSS:");
    report("fan-out", subscribers, 10, tasks, &baseline, rss_open).await
}

/// `clients` reconnect at once to a finished run, from its middle.
async fn resume_storm(server: &Server, clients: usize, tokens: usize) -> serde_json::Value {
    let id = create_run(server.addr, tokens, 0).await;
    // Let the run finish.
    let _ = read_stream(server.addr, format!("/api/runs/{id}/events"), None, tokens).await;
    let baseline = Baseline::take(server);
    let from = format!("{id}:{}", tokens / 2);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(read_stream(
                server.addr,
                format!("/api/runs/{id}/events"),
                Some(from.clone()),
                tokens / 2,
            ))
        })
        .collect();
    let rss_open = status_kib(baseline.pid, "VmRSS:");
    report("resume storm", clients, 0, tasks, &baseline, rss_open).await
}

async fn create_run(addr: SocketAddr, tokens: usize, interval_ms: u64) -> String {
    let client = reqwest::Client::new();
    let body: serde_json::Value = client
        .post(format!("http://{addr}/api/runs"))
        .json(&json!({"prompt": "bench", "params": {"tokens": tokens, "interval_ms": interval_ms}}))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("create run: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("create run: {e}"));
    body["id"].as_str().unwrap_or_default().to_owned()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scenarios = if quick {
        vec![
            Scenario {
                name: "throughput",
                streams: 20,
                tokens: 2_000,
                interval_ms: 0,
                ramp: Duration::ZERO,
            },
            Scenario {
                name: "concurrency",
                streams: 500,
                tokens: 20,
                interval_ms: 100,
                ramp: Duration::from_millis(500),
            },
            Scenario {
                name: "idle",
                streams: 1_000,
                tokens: 3,
                interval_ms: 1_000,
                ramp: Duration::from_millis(500),
            },
        ]
    } else {
        vec![
            Scenario {
                name: "throughput",
                streams: 100,
                tokens: 20_000,
                interval_ms: 0,
                ramp: Duration::ZERO,
            },
            Scenario {
                name: "concurrency",
                streams: 5_000,
                tokens: 100,
                interval_ms: 100,
                ramp: Duration::from_secs(2),
            },
            Scenario {
                name: "idle",
                streams: 10_000,
                tokens: 5,
                interval_ms: 2_000,
                ramp: Duration::from_secs(2),
            },
        ]
    };
    let (fan_out_subscribers, resume_clients) = if quick { (100, 100) } else { (1_000, 1_000) };
    let compare = std::env::args().any(|a| a == "--compare");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let mut results = Vec::new();
    let targets: &[Target] = if compare {
        &[Target::Sluice, Target::AxumMinimal, Target::NextJs]
    } else {
        &[Target::Sluice]
    };
    for &target in targets {
        // A fresh server per target, so memory figures start from the same place.
        let server = start_server(target);
        runtime.block_on(async {
            for scenario in &scenarios {
                results.push(run_scenario(&server, scenario, target).await);
            }
            if target == Target::Sluice && !compare {
                results.push(fan_out(&server, fan_out_subscribers, 500).await);
                results.push(resume_storm(&server, resume_clients, 2_000).await);
            }
        });
    }
    print_table(&results);
    if compare {
        print_ratios(&results);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench");
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut file) = std::fs::File::create(format!("{dir}/streams.jsonl")) {
        for result in &results {
            let _ = writeln!(file, "{result}");
        }
    }
    let failures: u64 = results
        .iter()
        .map(|r| r["failures"].as_u64().unwrap_or(0))
        .sum();
    if failures > 0 {
        eprintln!("{failures} streams failed");
        std::process::exit(1);
    }
}

/// Sluice against each comparison server, per scenario, as ratios.
#[allow(clippy::print_stdout)]
fn print_ratios(results: &[serde_json::Value]) {
    for other in ["axum-minimal", "nextjs"] {
        println!("\nsluice / {other}:");
        for sluice in results.iter().filter(|r| r["server"] == "sluice") {
            let Some(floor) = results
                .iter()
                .find(|r| r["server"] == other && r["scenario"] == sluice["scenario"])
            else {
                continue;
            };
            let ratio = |key: &str| {
                let (a, b) = (
                    sluice[key].as_f64().unwrap_or(0.0),
                    floor[key].as_f64().unwrap_or(0.0),
                );
                if b > 0.0 {
                    a / b
                } else {
                    f64::NAN
                }
            };
            println!(
                "  {:<12} events/s {:.2}x   cpu-s per M events {:.2}x   RSS per open stream {:.2}x",
                sluice["scenario"].as_str().unwrap_or_default(),
                ratio("events_per_s"),
                ratio("cpu_s_per_million_events"),
                ratio("rss_per_open_stream_kib"),
            );
        }
    }
}

#[allow(clippy::print_stdout)]
fn print_table(results: &[serde_json::Value]) {
    println!(
        "{:<13} {:>7} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>10} {:>5}",
        "scenario",
        "streams",
        "events/s",
        "ttft p50",
        "ttft p99",
        "gap p50",
        "gap p99",
        "gap max",
        "cpu-s/M ev",
        "peak RSS",
        "KiB/strm",
        "fail"
    );
    for r in results {
        println!(
            "{:<13} {:>7} {:>12.0} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>11.2} {:>7.1}MiB {:>10.1} {:>5}",
            format!(
                "{}{}",
                r["scenario"].as_str().unwrap_or_default(),
                match r["server"].as_str() {
                    Some("axum-minimal") => " (axum)",
                    Some("nextjs") => " (next)",
                    _ => "",
                }
            ),
            r["streams"],
            r["events_per_s"].as_f64().unwrap_or(0.0),
            r["ttft_p50_ms"].as_f64().unwrap_or(0.0),
            r["ttft_p99_ms"].as_f64().unwrap_or(0.0),
            r["gap_p50_ms"].as_f64().unwrap_or(0.0),
            r["gap_p99_ms"].as_f64().unwrap_or(0.0),
            r["gap_max_ms"].as_f64().unwrap_or(0.0),
            r["cpu_s_per_million_events"].as_f64().unwrap_or(0.0),
            r["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            r["rss_per_open_stream_kib"].as_f64().unwrap_or(0.0),
            r["failures"],
        );
    }
}
