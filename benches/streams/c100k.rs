//! `c100k` (issue 17): 100,000 concurrent streams on one node. They are
//! opened over a ramp (100,000 over a minute, the same rate for fewer),
//! held all open for a minute with a token a second each, and every one
//! must be delivered whole: a stream that did not get its `run`, all its
//! tokens and `done` failed. Reported: RSS per open stream with all of them
//! open, the server's CPU during the hold, gap and TTFT percentiles.
//!
//! Each stream takes one descriptor in the server and one in this process,
//! so both need an open-files limit above the stream count: `main` raises
//! the soft limit to the hard one (the servers inherit it) and
//! [`check_descriptors`] refuses to start when that is still too low.
//! `--c100k-streams N` runs fewer. Connections come from loopback source
//! addresses 127.0.0.2 and up, [`PER_SOURCE`] each, past one address's
//! ephemeral ports. An address still holding sockets is skipped: the
//! ports of an earlier run whose client closed first stay in TIME_WAIT for
//! a minute, and `bind` will not take them.
//!
//! Streams that failed are counted by why (`failure_reasons`: the reader's
//! error, `cut` for still going at the time limit, `short` for ended early),
//! and the kernel's TCP counters that tell of drops and memory pressure are
//! reported as they moved during the run (`kernel_tcp`; they count the
//! whole network namespace).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    kib, process_cpu_seconds, read_events, report, start_server_with, Baseline, Server, Target,
};

pub const NAME: &str = "c100k";
/// Streams when `--c100k-streams` does not say.
const DEFAULT_STREAMS: usize = 100_000;
/// Streams opened per second: 100,000 over a minute.
const RAMP_PER_SECOND: f64 = 100_000.0 / 60.0;
/// How long all streams are held open and measured.
const HOLD: Duration = Duration::from_secs(60);
/// From the last stream's request to the hold: its answer and first token.
const SETTLE: Duration = Duration::from_secs(2);
const INTERVAL_MS: u64 = 1_000;
/// Connections per loopback source address: `sluice bench`'s (see why
/// there).
const PER_SOURCE: usize = sluice::bench::PER_SOURCE;
/// Descriptors a process needs besides one per stream: the listener, the
/// poller, stdio, files under `/proc`.
const SPARE_DESCRIPTORS: u64 = 200;

/// Sockets an address may already hold and still be used as a source.
const BUSY_SOURCE: usize = 100;
/// The kernel's TCP counters reported (`/proc/net/netstat`, `/proc/net/snmp`).
const TCP_COUNTERS: [&str; 16] = [
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.SyncookiesSent",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPBacklogDrop",
    "TcpExt.TCPRcvQDrop",
    "TcpExt.PruneCalled",
    "TcpExt.RcvPruned",
    "TcpExt.TCPMemoryPressures",
    "TcpExt.TCPAbortOnMemory",
    "TcpExt.TCPAbortOnData",
    "TcpExt.TCPAbortOnTimeout",
    "TcpExt.TCPTimeouts",
    "Tcp.RetransSegs",
    "Tcp.AttemptFails",
    "Tcp.EstabResets",
];

/// The stream count: `--c100k-streams N`, else 100,000.
pub fn streams(args: &[String]) -> usize {
    args.windows(2)
        .find(|w| w[0] == "--c100k-streams")
        .map(|w| {
            w[1].parse()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("--c100k-streams {}: not a positive count", w[1]))
        })
        .unwrap_or(DEFAULT_STREAMS)
}

/// Whether this process, and so the servers it starts, may hold `streams`
/// connections: `Err` says what is needed and what there is.
pub fn check_descriptors(streams: usize, (soft, hard): (u64, u64)) -> Result<(), String> {
    let needed = streams as u64 + SPARE_DESCRIPTORS;
    if soft >= needed {
        return Ok(());
    }
    Err(format!(
        "c100k: {streams} streams need about {needed} open files in the server and as many \
         in this load generator (one socket per stream on each side), but the open-files \
         limit is {soft} (soft) / {hard} (hard) per process, and only root \
         (CAP_SYS_RESOURCE) can raise the hard one.\n\
         Raise it (`ulimit -Hn`, systemd LimitNOFILE=, docker --ulimit nofile=N:N) or run \
         fewer streams: --c100k-streams {}",
        soft.saturating_sub(SPARE_DESCRIPTORS)
    ))
}

/// How the streams stand, for the progress lines.
#[derive(Default)]
struct Progress {
    opened: AtomicUsize,
    ended: AtomicUsize,
    failed: AtomicUsize,
    /// Failed streams by why.
    reasons: Mutex<BTreeMap<&'static str, usize>>,
}

/// `count` loopback addresses from 127.0.0.2 up, skipping those that hold
/// sockets still (an earlier run's, in TIME_WAIT).
fn sources(count: usize) -> Vec<IpAddr> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let sources: Vec<IpAddr> = (2..=254u8)
        .map(|last| Ipv4Addr::new(127, 0, 0, last))
        .filter(|ip| {
            // The address as /proc/net/tcp prints it: its bytes as a
            // host-order integer.
            let hex = format!("{:08X}:", u32::from_ne_bytes(ip.octets()));
            let held = tcp
                .lines()
                .filter(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .is_some_and(|a| a.starts_with(&hex))
                })
                .count();
            held < BUSY_SOURCE
        })
        .take(count)
        .map(IpAddr::V4)
        .collect();
    assert!(
        sources.len() == count,
        "{NAME}: not enough free loopback source addresses"
    );
    sources
}

/// The kernel's TCP counters, `Section.Name`, from `/proc/net/netstat`
/// and `/proc/net/snmp` (pairs of lines: names, then values).
fn tcp_counters() -> BTreeMap<String, i64> {
    let mut counters = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut names = names.split_whitespace();
            let section = names.next().unwrap_or_default().trim_end_matches(':');
            for (name, value) in names.zip(values.split_whitespace().skip(1)) {
                if let Ok(value) = value.parse() {
                    counters.insert(format!("{section}.{name}"), value);
                }
            }
        }
    }
    counters
}

/// A moment of the server and of this process: CPU seconds and RSS.
struct Sample {
    at: Instant,
    cpu: f64,
    loadgen_cpu: f64,
    rss: u64,
}

impl Sample {
    fn take(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            cpu: pids.iter().map(|&pid| super::cpu_seconds(pid)).sum(),
            loadgen_cpu: process_cpu_seconds(std::process::id()),
            rss: kib(pids, "VmRSS:"),
        }
    }
}

/// Starts `target` with room for `streams` running runs and open streams
/// (Sluice's defaults: 10,000 and 100,000), and runs the scenario.
pub async fn scenario(target: Target, streams: usize) -> Value {
    let limit = streams.max(100_000).to_string();
    let server = start_server_with(
        target,
        &[
            ("SLUICE_SERVER_MAX_RUNNING", limit.as_str()),
            ("SLUICE_SERVER_MAX_STREAMS", limit.as_str()),
        ],
    );
    let mut result = run(&server, streams).await;
    result["server"] = json!(target.name());
    result
}

async fn run(server: &Server, streams: usize) -> Value {
    let ramp = Duration::from_secs_f64(streams as f64 / RAMP_PER_SECOND);
    // Each stream lasts the ramp, the settling and the hold, so the first
    // one opened is still going when the hold ends.
    let tokens = (ramp + SETTLE + HOLD).as_secs_f64().ceil() as usize;
    let expected = tokens as u64 + 2;
    let limit = Duration::from_millis(INTERVAL_MS * tokens as u64) + super::SLACK;
    let sources = sources(streams.div_ceil(PER_SOURCE));
    eprintln!(
        "{NAME}: {streams} streams of {tokens} tokens at {INTERVAL_MS} ms, opened over {:.1} s \
         from {} source address(es) from {}, held {} s",
        ramp.as_secs_f64(),
        sources.len(),
        sources[0],
        HOLD.as_secs()
    );
    let progress = Arc::new(Progress::default());
    let tcp_before = tcp_counters();
    let baseline = Baseline::take(server);
    let started = baseline.started;
    let ticker = tokio::spawn({
        let progress = progress.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            every.tick().await;
            loop {
                every.tick().await;
                eprintln!(
                    "{NAME}: {:>5.0} s  opened {:>6}  ended {:>6}  failed {:>6}",
                    started.elapsed().as_secs_f64(),
                    progress.opened.load(Ordering::Relaxed),
                    progress.ended.load(Ordering::Relaxed),
                    progress.failed.load(Ordering::Relaxed),
                );
            }
        }
    });
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let due = ramp.mul_f64(i as f64 / streams as f64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
        let path =
            format!("/api/agent/stream?prompt={NAME}{i}&tokens={tokens}&interval_ms={INTERVAL_MS}");
        let (addr, source, progress) = (server.addr, sources[i % sources.len()], progress.clone());
        progress.opened.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let mut seen = read_events(addr, Some(source), path, None, tokens, limit).await;
            // Delivered whole, or failed.
            seen.failed |= seen.events != expected;
            progress.ended.fetch_add(1, Ordering::Relaxed);
            if seen.failed {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                let why = seen.error.unwrap_or("short");
                if let Ok(mut reasons) = progress.reasons.lock() {
                    *reasons.entry(why).or_default() += 1;
                }
            }
            seen
        }));
    }
    let at = |offset: Duration| tokio::time::Instant::from_std(started + offset);
    tokio::time::sleep_until(at(ramp + SETTLE)).await;
    let hold_start = Sample::take(&baseline.pids);
    let open_at_hold_start = streams - progress.ended.load(Ordering::Relaxed);
    tokio::time::sleep_until(at(ramp + SETTLE + HOLD)).await;
    let hold_end = Sample::take(&baseline.pids);
    let open_at_hold_end = streams - progress.ended.load(Ordering::Relaxed);
    let mut result = report(NAME, streams, INTERVAL_MS, tasks, &baseline, hold_end.rss).await;
    ticker.abort();
    let tcp_after = tcp_counters();
    let kernel_tcp: BTreeMap<&str, i64> = TCP_COUNTERS
        .iter()
        .map(|&key| {
            let value = |c: &BTreeMap<String, i64>| c.get(key).copied().unwrap_or(0);
            (key, value(&tcp_after) - value(&tcp_before))
        })
        .filter(|(_, delta)| *delta != 0)
        .collect();
    let reasons = progress
        .reasons
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let hold_s = (hold_end.at - hold_start.at).as_secs_f64();
    let hold_cpu = hold_end.cpu - hold_start.cpu;
    let per_stream = |rss: u64| rss.saturating_sub(baseline.rss) as f64 / streams as f64;
    let extra = json!({
        "ramp_s": ramp.as_secs_f64(),
        "tokens_per_stream": tokens,
        "expected_events_per_stream": expected,
        "hold_s": hold_s,
        "open_at_hold_start": open_at_hold_start,
        "open_at_hold_end": open_at_hold_end,
        "rss_baseline_kib": baseline.rss,
        "rss_hold_start_kib": hold_start.rss,
        "rss_hold_end_kib": hold_end.rss,
        "rss_per_stream_hold_start_kib": per_stream(hold_start.rss),
        "hold_server_cpu_s": hold_cpu,
        "hold_server_cpu_share": hold_cpu / hold_s,
        "hold_cpu_s_per_million_events": hold_cpu / (streams as f64 * hold_s / 1e6),
        "hold_loadgen_cpu_share": (hold_end.loadgen_cpu - hold_start.loadgen_cpu) / hold_s,
        "source_addresses": sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "open_files_limit": super::open_files_limit().0,
        "failure_reasons": reasons,
        "kernel_tcp": kernel_tcp,
    });
    if let (Some(result), Value::Object(extra)) = (result.as_object_mut(), extra) {
        result.extend(extra);
    }
    result
}

/// The c100k rows in words: what the hold cost.
#[allow(clippy::print_stdout)]
pub fn print(results: &[Value]) {
    for r in results.iter().filter(|r| r["scenario"] == NAME) {
        let f = |key: &str| r[key].as_f64().unwrap_or(0.0);
        println!(
            "\n{NAME} ({}): {} streams opened over {:.1} s, {} of them open through a {:.0} s hold",
            r["server"].as_str().unwrap_or_default(),
            r["streams"],
            f("ramp_s"),
            r["open_at_hold_end"],
            f("hold_s"),
        );
        println!(
            "  RSS {:.0} MiB at the hold's end, {:.1} KiB per open stream ({:.1} at its start); peak {:.0} MiB",
            f("rss_hold_end_kib") / 1024.0,
            f("rss_per_open_stream_kib"),
            f("rss_per_stream_hold_start_kib"),
            f("peak_rss_kib") / 1024.0,
        );
        println!(
            "  server CPU in the hold {:.1} s, {:.0}% of a core ({:.2} CPU-s per M events); load generator {:.0}%",
            f("hold_server_cpu_s"),
            f("hold_server_cpu_share") * 100.0,
            f("hold_cpu_s_per_million_events"),
            f("hold_loadgen_cpu_share") * 100.0,
        );
        println!(
            "  gap p50 / p99 / max {:.1} / {:.1} / {:.1} ms; TTFT p99 {:.1} ms; {} events, {} failed streams {}",
            f("gap_p50_ms"),
            f("gap_p99_ms"),
            f("gap_max_ms"),
            f("ttft_p99_ms"),
            r["events"],
            r["failures"],
            r["failure_reasons"],
        );
        println!("  kernel TCP counters during the run: {}", r["kernel_tcp"]);
    }
}
