//! Retained memory of finished runs' logs, per event, against the bytes of
//! the frames themselves: what a node holds for every run it keeps for
//! resumes. `cargo bench --bench memory`.
//!
//! Two measures, both taken in this process around building the logs:
//! the bytes the allocator was asked for and still holds (exact, counted by
//! an instrumented allocator), and the resident set (what the operating
//! system sees, including the allocator's own overhead per allocation).
//! The workloads are the load bench's throughput scenario (100 runs of
//! 20,000 sim tokens, finished) and its c100k scenario (19,000 runs still
//! going, 75 events in); a running run's log also holds its metadata and
//! its newest frames unsealed.

use std::alloc::System;
use std::time::SystemTime;

use sluice::agent::AgentEvent;
use sluice::hub::log::RunLog;
use sluice::hub::record::Recorder;
use sluice::hub::{RunId, RunMeta};
use sluice::wire::Format;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const RUNS: usize = 100;
const TOKENS: usize = 20_000;

fn meta(id: &RunId) -> RunMeta {
    RunMeta {
        id: id.clone(),
        agent: "sim".into(),
        model: "sim".into(),
        prompt: "bench".into(),
        created_at: SystemTime::now(),
        chat: None,
        cancel_on_disconnect: false,
        owner: None,
    }
}

/// A run of `tokens` sim tokens as the hub logs it, finished or still going.
fn run(n: usize, tokens: usize, finished: bool) -> (RunMeta, RunLog) {
    let id = RunId::generate().unwrap_or_else(|e| panic!("randomness: {e}"));
    let meta = meta(&id);
    let log = RunLog::new();
    let (mut recorder, first) = Recorder::start(&meta);
    log.append(first);
    let seed = sluice::agent::sim::prompt_seed(&format!("bench{n}"));
    for i in 0..tokens as u64 {
        log.append(recorder.record(AgentEvent::Token(sluice::agent::sim::token(seed, i))));
    }
    if finished {
        log.append(recorder.record(AgentEvent::Done {
            finish_reason: "stop".into(),
            usage: Default::default(),
        }));
    }
    (meta, log)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// What building something kept: bytes the allocator still holds,
/// resident bytes gained, allocations still live.
struct Kept {
    held: i64,
    rss: u64,
    allocations: i64,
}

/// Runs `build` and measures what its result keeps.
fn measure<T>(build: impl FnOnce() -> T) -> (T, Kept) {
    let rss_before = rss_bytes();
    let region = Region::new(GLOBAL);
    let built = build();
    let change = region.change();
    let kept = Kept {
        held: change.bytes_allocated as i64 - change.bytes_deallocated as i64
            + change.bytes_reallocated as i64,
        rss: rss_bytes().saturating_sub(rss_before),
        allocations: change.allocations as i64 - change.deallocations as i64,
    };
    (built, kept)
}

#[allow(clippy::print_stdout)]
fn report(what: &str, events: u64, frame_bytes: u64, kept: &Kept) {
    let per = |n: f64| n / events as f64;
    println!(
        "{what:<34} {:>6.1} B/event held ({:.2}x frames) {:>6.1} B/event RSS ({:.2}x) {:>5.2} allocations/event  [{events} events, frames {:.1} B/event]",
        per(kept.held as f64),
        kept.held as f64 / frame_bytes as f64,
        per(kept.rss as f64),
        kept.rss as f64 / frame_bytes as f64,
        per(kept.allocations as f64),
        per(frame_bytes as f64),
    );
}

/// Events and frame bytes of `logs`.
fn totals(logs: &[(RunMeta, RunLog)]) -> (u64, u64) {
    let events = logs.iter().map(|(_, log)| log.position().0 as u64).sum();
    let frames = logs.iter().map(|(_, log)| log.bytes()).sum();
    (events, frames)
}

fn main() {
    // The logs of the throughput scenario, format=sluice.
    let (logs, kept) = measure(|| (0..RUNS).map(|n| run(n, TOKENS, true)).collect::<Vec<_>>());
    let (events, frames) = totals(&logs);
    report("finished runs (sluice frames)", events, frames, &kept);

    // The same runs read once in another format: the rendering is kept
    // beside the frames for every later subscriber of that format.
    for format in [Format::OpenAi, Format::AiSdk] {
        let (rendered, kept) = measure(|| {
            let mut rendered = 0u64;
            for (meta, log) in &logs {
                // Less the formats read before: their views are kept too.
                let before = log.view_bytes();
                let mut cursor = 0;
                while let sluice::hub::log::Read::Chunk { events, .. } =
                    log.read_as(cursor, format, meta)
                {
                    cursor += events;
                }
                rendered += log.view_bytes() - before;
            }
            rendered
        });
        let what = format!("+ a view in format={}", format.name());
        report(&what, events, rendered, &kept);
    }
    drop(logs);

    // Runs still going, as in the c100k scenario: 19,000 streams of a
    // token a second, 74 tokens in when measured.
    let (running, kept) = measure(|| (0..19_000).map(|n| run(n, 74, false)).collect::<Vec<_>>());
    let (events, frames) = totals(&running);
    report("running runs (75 events each)", events, frames, &kept);
}
