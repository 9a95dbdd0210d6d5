//! The load benchmark: the release `sluice` binary on a free loopback port,
//! and a load generator in this process that opens many concurrent SSE
//! streams to the `sim` agent and measures what a client sees and what the
//! server spends.
//!
//! `cargo bench --bench streams` (add `-- --quick` for a run small enough for
//! CI). Results: a table on stdout and JSON lines in `target/bench/`.
//!
//! `-- --scenario c100k` (issue 17, `streams/c100k.rs`) holds 100,000
//! streams open on one node for a minute, against Sluice, or against the
//! servers `--server` names (`sluice`, `axum-minimal`; no other). It runs
//! only when named, never in the default set, `--quick` or `--compare`.
//! Each stream takes a descriptor in the server and one here: the bench
//! raises its soft open-files limit to the hard one at start (the servers
//! inherit it) and refuses to run c100k, saying what it needs, when that is
//! too low; `--c100k-streams N` runs N streams instead (under
//! `ulimit -n 20000`, up to 19,800).
//!
//! The generator reads each stream with a bare hyper HTTP/1 connection and
//! counts events by scanning for the blank line that ends each one, so it
//! allocates nothing per event. Timings are recorded into vectors sized up
//! front. The server runs on the first CPU this process may use and the
//! generator on the second, when `taskset` is available and there are two.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "streams/c100k.rs"]
mod c100k;
#[path = "streams/publish.rs"]
mod publish;
#[path = "streams/report.rs"]
mod report;
#[path = "streams/webhooks.rs"]
mod webhooks;

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
    /// Body bytes read.
    bytes: u64,
    /// When the stream ended (or gave up).
    ended: Option<Instant>,
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
    failed: bool,
    /// Why the reader gave up, if it did: the reader's error, or `cut`
    /// when the time limit closed it still going.
    error: Option<&'static str>,
}

struct Server {
    child: Child,
    addr: SocketAddr,
    /// The server's executable name, as `/proc/PID/comm` shows it.
    name: String,
    /// More nodes of the same deployment: clients are spread over all
    /// nodes, and their CPU and memory count too.
    peers: Vec<Server>,
    /// The Redis that the nodes share, counted too.
    redis: Option<Child>,
}

impl Server {
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(self.peers.iter().map(|p| p.child.id()));
        pids.extend(self.redis.as_ref().map(Child::id));
        pids
    }

    /// Where the `i`-th client connects: the nodes in turn.
    fn addr_for(&self, i: usize) -> SocketAddr {
        match i % (self.peers.len() + 1) {
            0 => self.addr,
            n => self.peers[n - 1].addr,
        }
    }
}

impl Drop for Server {
    /// SIGTERM first, so that a profiler wrapping the server writes its
    /// report; SIGKILL if it has not exited after a few seconds.
    fn drop(&mut self) {
        // The server itself, which a wrapper such as heaptrack runs as its
        // child: the wrapper writes its report once the server has exited.
        let server: Vec<String> = process_tree(self.child.id())
            .into_iter()
            .filter(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                self.name.starts_with(comm.trim())
            })
            .map(|pid| pid.to_string())
            .collect();
        // A wrapper that runs the server in its own process (valgrind)
        // passes the signal on.
        let server = if server.is_empty() {
            vec![self.child.id().to_string()]
        } else {
            server
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .args(server)
            .stderr(Stdio::null())
            .status();
        // A profiler may take a while to write its report.
        for _ in 0..600 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(redis) = self.redis.as_mut() {
            let _ = redis.kill();
            let _ = redis.wait();
        }
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
    /// Two Sluice nodes sharing a Redis hub, clients spread over both.
    SluiceRedis,
}

impl Target {
    fn parse(name: &str) -> Option<Self> {
        [
            Self::Sluice,
            Self::AxumMinimal,
            Self::NextJs,
            Self::SluiceRedis,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sluice => "sluice",
            Self::AxumMinimal => "axum-minimal",
            Self::NextJs => "nextjs",
            Self::SluiceRedis => "sluice-redis-2-nodes",
        }
    }
}

/// Two Sluice nodes on a Redis of their own (a free port, no persistence).
fn start_cluster() -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"));
    let mut command = Command::new("taskset");
    match pinning() {
        Some((server_cpu, _)) => {
            command.args(["-c", &server_cpu.to_string(), "redis-server"]);
        }
        None => command = Command::new("redis-server"),
    }
    let redis = command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{port}");
    let env = [
        ("SLUICE_HUB_BACKEND", "redis"),
        ("SLUICE_HUB_URL", url.as_str()),
    ];
    let mut first = start_server_with(Target::Sluice, &env);
    first.peers.push(start_server_with(Target::Sluice, &env));
    first.redis = Some(redis);
    first
}

fn start_server(target: Target) -> Server {
    match target {
        Target::SluiceRedis => start_cluster(),
        _ => start_server_with(target, &[]),
    }
}

fn start_server_with(target: Target, env: &[(&str, &str)]) -> Server {
    let (binary, args): (String, Vec<&str>) = match target {
        Target::Sluice | Target::SluiceRedis => (
            // Another build, for comparing two versions on one machine.
            std::env::var("STREAMS_BENCH_SLUICE")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").to_owned()),
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
    let pinned = pinning();
    // `STREAMS_BENCH_WRAP="heaptrack"` (or perf, valgrind...) runs the
    // server under a profiler.
    let wrap = std::env::var("STREAMS_BENCH_WRAP").unwrap_or_default();
    let mut line: Vec<&str> = wrap.split_whitespace().collect();
    line.push(binary);
    let server_cpu = pinned.map(|(cpu, _)| cpu.to_string()).unwrap_or_default();
    if pinned.is_some() {
        line.splice(0..0, ["taskset", "-c", server_cpu.as_str()]);
    }
    let mut command = Command::new(line[0]);
    command.args(&line[1..]);
    let mut child = command
        .current_dir(dir)
        .args(args)
        .env("SLUICE_RUNS_RETENTION_SECS", "30")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    // The listen line; a profiler may print lines of its own first.
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("http://"))
                .and_then(|a| a.parse().ok())
        })
        .unwrap_or_else(|| panic!("{binary} printed no listen line"));
    if let Some((_, load_cpu)) = pinned {
        let _ = Command::new("taskset")
            .args([
                "-cp",
                &load_cpu.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status();
    }
    let name = std::path::Path::new(binary)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Server {
        child,
        addr,
        name,
        peers: Vec::new(),
        redis: None,
    }
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
    process_tree(pid).into_iter().map(process_cpu_seconds).sum()
}

/// CPU seconds of one process, its threads included.
fn process_cpu_seconds(pid: u32) -> f64 {
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
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// The kernel's USER_HZ, the unit of /proc's CPU times (`getconf CLK_TCK`).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The CPUs for the server and for the load generator: the first two this
/// process may run on (a container's cpuset need not start at 0), or None
/// when there is one, or no `taskset`.
fn pinning() -> Option<(usize, usize)> {
    Command::new("taskset").arg("-V").output().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    let mut cpus = list
        .trim()
        .split(',')
        .filter_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            Some(first.trim().parse::<usize>().ok()?..=last.trim().parse::<usize>().ok()?)
        })
        .flatten();
    Some((cpus.next()?, cpus.next()?))
}

/// This process's open-files limit, soft and hard, after raising the soft
/// one to the hard one (once); the servers it starts inherit it.
fn open_files_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    static LIMIT: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return (0, 0);
        };
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            (hard, hard)
        } else {
            (soft, hard)
        }
    })
}

/// A `/proc/PID/status` field in KiB, summed over several process trees.
fn kib(pids: &[u32], field: &str) -> u64 {
    pids.iter().map(|&pid| status_kib(pid, field)).sum()
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
    limit: Duration,
) -> Seen {
    read_events(addr, None, path, last_event_id, expected, limit).await
}

/// One stream through `sluice bench`'s reader (the same code users run),
/// from `source` if given, seen as this bench counts: event 1 is `run`, so
/// the first token is event 2 and gaps are counted between tokens; a stream
/// still going at `limit` failed.
async fn read_events(
    addr: SocketAddr,
    source: Option<IpAddr>,
    path: String,
    last_event_id: Option<String>,
    expected: usize,
    limit: Duration,
) -> Seen {
    let target = sluice::bench::reader::Target {
        addr,
        host: "bench".to_owned(),
        path,
        headers: last_event_id
            .map(|id| vec![("last-event-id".to_owned(), id)])
            .unwrap_or_default(),
    };
    let until = tokio::time::Instant::now() + limit;
    let read = sluice::bench::reader::read(&target, source, until).await;
    let mut gaps = read.gaps.into_iter();
    let ttft = read
        .first_event
        .zip(gaps.next())
        .map(|(first, gap)| first + gap);
    let mut seen = Seen {
        gaps: Vec::with_capacity(expected),
        ..Seen::default()
    };
    seen.gaps.extend(gaps);
    seen.events = read.events;
    seen.bytes = read.bytes;
    seen.ttft = ttft;
    seen.failed = read.error.is_some() || read.cut;
    seen.error = read.error.or(read.cut.then_some("cut"));
    seen.ended = Some(Instant::now());
    seen
}

/// How much longer than nominal a stream may take before it counts as
/// failed: enough for the slowest comparison server to finish the
/// throughput scenario.
const SLACK: Duration = Duration::from_secs(90);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The server's state when a scenario starts, to measure what it costs.
struct Baseline {
    pids: Vec<u32>,
    cpu: f64,
    /// This process's CPU seconds: the load generator's own cost.
    loadgen_cpu: f64,
    rss: u64,
    started: Instant,
}

impl Baseline {
    fn take(server: &Server) -> Self {
        let pids = server.pids();
        Self {
            cpu: pids.iter().map(|&pid| cpu_seconds(pid)).sum(),
            loadgen_cpu: process_cpu_seconds(std::process::id()),
            rss: kib(&pids, "VmRSS:"),
            pids,
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
        let limit = s.ramp + Duration::from_millis(s.interval_ms * s.tokens as u64) + SLACK;
        tasks.push(tokio::spawn(read_stream(
            server.addr_for(i),
            path,
            None,
            s.tokens,
            limit,
        )));
    }
    // The peak: all streams open (sampled once the ramp is over).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_open = kib(&baseline.pids, "VmRSS:");
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
    let mut bytes = 0u64;
    let mut failures = 0usize;
    let mut ttfts = Vec::with_capacity(tasks.len());
    let mut gaps = Vec::new();
    let mut last_end = baseline.started;
    for task in tasks {
        let seen = task.await.unwrap_or(Seen {
            failed: true,
            ..Seen::default()
        });
        events += seen.events;
        bytes += seen.bytes;
        last_end = last_end.max(seen.ended.unwrap_or_else(Instant::now));
        failures += usize::from(seen.failed);
        ttfts.extend(seen.ttft);
        gaps.extend(seen.gaps);
    }
    // Until the last stream ended, not until this report: the report
    // waits a moment to sample memory with every stream open.
    let elapsed = (last_end - baseline.started).as_secs_f64();
    let pids = &baseline.pids;
    let cpu = pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>() - baseline.cpu;
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
        "bytes": bytes,
        "cpu_s_per_gib": if bytes > 0 { cpu / (bytes as f64 / (1u64 << 30) as f64) } else { 0.0 },
        "peak_rss_kib": kib(pids, "VmHWM:"),
        "rss_per_open_stream_kib": (rss_open.saturating_sub(baseline.rss)) as f64 / streams as f64,
        "failures": failures,
        "seconds": elapsed,
        "server_cpu_share": cpu / elapsed,
        "loadgen_cpu_share": (process_cpu_seconds(std::process::id()) - baseline.loadgen_cpu) / elapsed,
    })
}

/// The wire formats the fan-out scenarios compare (SPEC 11.1).
const FORMATS: [&str; 3] = ["sluice", "openai", "ai-sdk"];

/// One run watched by `subscribers` clients of
/// `/api/runs/{id}/events?format=`. Every SSE event a client reads counts
/// as delivered (for a token, one in every format). `name` is the
/// scenario's; the format is added to it.
async fn fan_out(
    server: &Server,
    name: &str,
    subscribers: usize,
    tokens: usize,
    interval_ms: u64,
    format: &str,
) -> serde_json::Value {
    let id = create_run(server.addr, tokens, interval_ms).await;
    let baseline = Baseline::take(server);
    let tasks: Vec<_> = (0..subscribers)
        .map(|_| {
            tokio::spawn(read_stream(
                server.addr,
                format!("/api/runs/{id}/events?format={format}"),
                None,
                tokens,
                Duration::from_millis(interval_ms * tokens as u64) + SLACK,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_open = kib(&baseline.pids, "VmRSS:");
    let name = if format == "sluice" {
        name.to_owned()
    } else {
        format!("{name} {format}")
    };
    let mut result = report(&name, subscribers, interval_ms, tasks, &baseline, rss_open).await;
    result["server"] = json!(Target::Sluice.name());
    result["format"] = json!(format);
    result
}

/// What the other formats cost against Sluice's own in each fan-out
/// scenario: CPU per delivered event and per delivered byte, as ratios
/// (issue 14 asks ≤ 2× per event).
#[allow(clippy::print_stdout)]
fn print_format_costs(results: &[serde_json::Value]) {
    for (scenario, label) in [
        ("fan-out live", "live run, subscribers keeping up"),
        ("fan-out", "finished run, read whole: bound by bytes"),
    ] {
        let of = |format: &str, field: &str| {
            results
                .iter()
                .filter(|r| r["format"] == format)
                .find(|r| {
                    let name = r["scenario"].as_str().unwrap_or_default();
                    name == scenario || name == format!("{scenario} {format}")
                })
                .and_then(|r| r[field].as_f64())
        };
        let (Some(own), Some(own_gib)) = (
            of("sluice", "cpu_s_per_million_events").filter(|c| *c > 0.0),
            of("sluice", "cpu_s_per_gib").filter(|c| *c > 0.0),
        ) else {
            continue;
        };
        println!("\n{scenario} ({label}), against format=sluice:");
        for format in &FORMATS[1..] {
            if let (Some(event), Some(gib)) = (
                of(format, "cpu_s_per_million_events"),
                of(format, "cpu_s_per_gib"),
            ) {
                println!(
                    "  {format:<7} CPU per event {event:.3} / {own:.3} CPU-s per M = {:.2}x; per byte {:.2}x",
                    event / own,
                    gib / own_gib
                );
            }
        }
    }
}

/// `clients` reconnect at once to a finished run, from its middle.
async fn resume_storm(server: &Server, clients: usize, tokens: usize) -> serde_json::Value {
    let id = create_run(server.addr, tokens, 0).await;
    // Let the run finish.
    let _ = read_stream(
        server.addr,
        format!("/api/runs/{id}/events"),
        None,
        tokens,
        SLACK,
    )
    .await;
    let baseline = Baseline::take(server);
    let from = format!("{id}:{}", tokens / 2);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(read_stream(
                server.addr,
                format!("/api/runs/{id}/events"),
                Some(from.clone()),
                tokens / 2,
                SLACK,
            ))
        })
        .collect();
    let rss_open = kib(&baseline.pids, "VmRSS:");
    let mut result = report("resume storm", clients, 0, tasks, &baseline, rss_open).await;
    result["server"] = json!(Target::Sluice.name());
    result
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

/// The scenarios at full size, or small enough for CI (`--quick`).
fn scenarios(quick: bool) -> Vec<Scenario> {
    let (scale, ramp) = if quick { (10, 500) } else { (1, 2_000) };
    vec![
        Scenario {
            name: "throughput",
            streams: 100 / (scale / 2).max(1),
            tokens: 20_000 / scale,
            interval_ms: 0,
            ramp: Duration::ZERO,
        },
        Scenario {
            name: "concurrency",
            streams: 5_000 / scale,
            tokens: if quick { 20 } else { 100 },
            interval_ms: 100,
            ramp: Duration::from_millis(ramp),
        },
        Scenario {
            name: "idle",
            streams: 10_000 / scale,
            tokens: if quick { 3 } else { 5 },
            interval_ms: if quick { 1_000 } else { 2_000 },
            ramp: Duration::from_millis(ramp),
        },
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `--docs-from docs/performance.jsonl` writes `docs/` again from the
    // results of an earlier `--compare` run, without running anything.
    if let Some(path) = args
        .windows(2)
        .find(|w| w[0] == "--docs-from")
        .map(|w| w[1].clone())
    {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let results: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        report::write_docs(concat!(env!("CARGO_MANIFEST_DIR"), "/docs"), &results);
        return;
    }
    let open_files = open_files_limit();
    let quick = args.iter().any(|a| a == "--quick");
    let compare = args.iter().any(|a| a == "--compare");
    let cluster = args.iter().any(|a| a == "--cluster");
    let targets: Vec<Target> = if compare {
        vec![Target::Sluice, Target::AxumMinimal, Target::NextJs]
    } else if cluster {
        vec![Target::Sluice, Target::SluiceRedis]
    } else {
        let named: Vec<Target> = args
            .windows(2)
            .filter(|w| w[0] == "--server")
            .filter_map(|w| Target::parse(&w[1]))
            .collect();
        if named.is_empty() {
            vec![Target::Sluice]
        } else {
            named
        }
    };
    let (fan_out_subscribers, resume_clients) = if quick { (100, 100) } else { (1_000, 1_000) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let mut results = Vec::new();
    // `--scenario NAME` (repeatable) runs only those.
    let only: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--scenario")
        .map(|w| w[1].as_str())
        .collect();
    // c100k runs only when named; needs descriptors, checked up front.
    let c100k_streams = only.contains(&c100k::NAME).then(|| c100k::streams(&args));
    if let Some(streams) = c100k_streams {
        if let Err(why) = c100k::check_descriptors(streams, open_files) {
            eprintln!("\n{why}\n");
            std::process::exit(2);
        }
    }
    // `--cluster` compares the concurrency scenario only, unless told.
    let wanted = |name: &str| {
        if only.is_empty() {
            !cluster || name == "concurrency"
        } else {
            only.contains(&name)
        }
    };
    for &target in &targets {
        runtime.block_on(async {
            // A fresh server per scenario, so that memory figures start from
            // the same place and no run's log outlives its scenario.
            for scenario in scenarios(quick).iter().filter(|s| wanted(s.name)) {
                let server = start_server(target);
                results.push(run_scenario(&server, scenario, target).await);
            }
            if target == Target::Sluice && wanted("fan-out") {
                let tokens = if quick { 2_000 } else { 20_000 };
                // The first fan-out of a bench process costs the server more,
                // whatever its format (the load generator's buffers are cold,
                // so it reads in smaller pieces): one unreported run first.
                {
                    let server = start_server(target);
                    fan_out(&server, "warm-up", fan_out_subscribers, tokens, 0, "sluice").await;
                }
                // A run followed live by many, in each wire format: one
                // event every 20 ms, each written to every subscriber.
                let live_tokens = if quick { 150 } else { 500 };
                for format in FORMATS {
                    let server = start_server(target);
                    let live = fan_out(
                        &server,
                        "fan-out live",
                        fan_out_subscribers,
                        live_tokens,
                        20,
                        format,
                    );
                    results.push(live.await);
                }
                // The throughput scenario's run, finished, read whole by
                // many: 64 KiB writes, so the cost follows the bytes.
                for format in FORMATS {
                    let server = start_server(target);
                    results.push(
                        fan_out(&server, "fan-out", fan_out_subscribers, tokens, 0, format).await,
                    );
                }
            }
            if target == Target::Sluice && wanted("publish") {
                let subscribers = if quick { 20 } else { 100 };
                let start = || start_server(target);
                results.extend(publish::scenarios(start, subscribers, quick).await);
            }
            if target == Target::Sluice && wanted("resume") {
                let server = start_server(target);
                results.push(resume_storm(&server, resume_clients, 2_000).await);
            }
            if target == Target::Sluice && wanted("webhooks") {
                results.extend(webhooks::scenarios(quick).await);
            }
            // One node, against Sluice and its floor; Next.js would need
            // far more memory.
            if let Some(streams) = c100k_streams {
                if matches!(target, Target::Sluice | Target::AxumMinimal) {
                    results.push(c100k::scenario(target, streams).await);
                } else {
                    eprintln!("{}: skipped for {}", c100k::NAME, target.name());
                }
            }
        });
    }
    print_table(&results);
    print_format_costs(&results);
    publish::print(&results);
    webhooks::print(&results);
    c100k::print(&results);
    if targets.len() > 1 {
        print_ratios(&results);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench");
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut file) = std::fs::File::create(format!("{dir}/streams.jsonl")) {
        for result in &results {
            let _ = writeln!(file, "{result}");
        }
    }
    if compare && !quick {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs");
        report::write_docs(docs, &results);
    }
    // Sluice's own failures fail the run; a comparison server's are data.
    let failures: u64 = results
        .iter()
        .filter(|r| r["server"] == Target::Sluice.name())
        .map(|r| r["failures"].as_u64().unwrap_or(0))
        .sum();
    if failures > 0 {
        eprintln!("{failures} sluice streams failed");
        std::process::exit(1);
    }
}

/// Sluice against each comparison server, per scenario, as ratios.
#[allow(clippy::print_stdout)]
fn print_ratios(results: &[serde_json::Value]) {
    for other in ["axum-minimal", "nextjs", "sluice-redis-2-nodes"] {
        if !results.iter().any(|r| r["server"] == other) {
            continue;
        }
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
                    Some("sluice-redis-2-nodes") => " (redis)",
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
