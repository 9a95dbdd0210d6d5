//! `sluice bench` (SPEC 14): a load test of any SSE endpoint. It opens N
//! concurrent `GET` streams, ramped over a time, reads each to its end (or
//! to the test's end), and reports streams ok and failed, events per
//! second, time to first event, the gaps between events, and the server's
//! answers by status. Connections to a loopback server are spread over
//! several loopback source addresses (127.0.0.1, .2, …), past one
//! address's ephemeral ports.

pub mod reader;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use reader::{Seen, Target};

/// What to test.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `http://` SSE endpoint every stream GETs.
    pub url: String,
    /// Streams to open: the concurrency under test.
    pub streams: usize,
    /// Time over which the streams are opened evenly, so the server is not hit all at once.
    pub ramp: Duration,
    /// Streams still open this long after the start are closed and count
    /// as ok; `None`: each is read until the server ends it.
    pub duration: Option<Duration>,
    /// Sent with every request, such as credentials.
    pub headers: Vec<(String, String)>,
}

/// Why a plan cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The URL is not an `http://` URL whose host resolves.
    #[error("{0}")]
    Url(String),
    /// A `--header` that is not a valid `Name: value`.
    #[error("--header `{0}` is not `Name: value`")]
    Header(String),
}

/// Connections per loopback source address at most. A socket bound to an
/// address with port 0 gets its port from half of the ephemeral range
/// first (14,116 ports of the default 32768–60999); past that, each bind
/// searched for a free port for about 3 ms here, which stalled the load
/// generator for seconds at 19,000 streams from one address.
pub const PER_SOURCE: usize = 10_000;
/// How long a bench without `--duration-secs` waits for its streams at most.
const NO_DURATION_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Parses `Name: value`.
pub fn header(text: &str) -> Result<(String, String), PlanError> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| PlanError::Header(text.to_owned()))?;
    let name = name.trim();
    if name.is_empty() || hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(PlanError::Header(text.to_owned()));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// The address, host and path of an `http://` URL.
fn target(url: &str, headers: Vec<(String, String)>) -> Result<Target, PlanError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| PlanError::Url(format!("`{url}`: {e}")))?;
    if parsed.scheme() != "http" {
        return Err(PlanError::Url(format!(
            "`{url}`: only http:// URLs (put a TLS endpoint behind a plain-HTTP port to test it)"
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| PlanError::Url(format!("`{url}` has no host")))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| PlanError::Url(format!("`{url}`: cannot resolve {host}")))?;
    let mut path = parsed.path().to_owned();
    if let Some(query) = parsed.query() {
        path.push('?');
        path.push_str(query);
    }
    let host = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(Target {
        addr,
        host,
        path,
        headers,
    })
}

/// Source addresses for `streams` connections to `addr`: several loopback
/// ones (127.0.0.2 and up) for an IPv4 loopback server, else the system's
/// choice.
fn sources(addr: SocketAddr, streams: usize) -> Vec<Option<IpAddr>> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && streams > PER_SOURCE => {
            let count = streams.div_ceil(PER_SOURCE).min(250);
            (0..count)
                .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))))
                .collect()
        }
        _ => vec![None],
    }
}

/// Counters the progress line reads while the test runs.
#[derive(Default)]
struct Live {
    open: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Runs `plan`; `progress` is called once a second with the whole seconds
/// elapsed and a line saying how the streams stand.
pub async fn run(
    plan: &Plan,
    progress: impl Fn(u64, &str) + Send + 'static,
) -> Result<Report, PlanError> {
    let target = Arc::new(target(&plan.url, plan.headers.clone())?);
    let sources = sources(target.addr, plan.streams);
    let started = Instant::now();
    let until = tokio::time::Instant::now() + plan.duration.unwrap_or(NO_DURATION_LIMIT);
    let live = Arc::new(Live::default());
    let ticker = tokio::spawn({
        let live = live.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                progress(
                    started.elapsed().as_secs(),
                    &format!(
                        "{:>6.1} s  open {:>6}  ok {:>6}  failed {:>6}",
                        started.elapsed().as_secs_f64(),
                        live.open.load(Ordering::Relaxed),
                        live.ok.load(Ordering::Relaxed),
                        live.failed.load(Ordering::Relaxed),
                    ),
                );
            }
        }
    });
    let mut tasks = Vec::with_capacity(plan.streams);
    for i in 0..plan.streams {
        // Stream i opens at i/N of the ramp.
        let at = plan.ramp.mul_f64(i as f64 / plan.streams.max(1) as f64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + at)).await;
        let (target, live) = (target.clone(), live.clone());
        let source = sources[i % sources.len()];
        tasks.push(tokio::spawn(async move {
            live.open.fetch_add(1, Ordering::Relaxed);
            let seen = reader::read(&target, source, until).await;
            live.open.fetch_sub(1, Ordering::Relaxed);
            let counter = if seen.ok() { &live.ok } else { &live.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            seen
        }));
    }
    let mut seen = Vec::with_capacity(tasks.len());
    for task in tasks {
        seen.push(task.await.unwrap_or_else(|_| Seen {
            error: Some("panic"),
            ..Seen::default()
        }));
    }
    ticker.abort();
    Ok(Report::of(plan, &seen, started.elapsed(), sources.len()))
}

/// What a load test measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The endpoint tested, so a saved report says what it measured.
    pub url: String,
    /// Streams opened.
    pub streams: usize,
    /// Streams that ended cleanly or were still open at the test's end.
    pub ok: usize,
    /// Streams that failed; any makes `sluice bench` exit non-zero.
    pub failed: usize,
    /// SSE events read, over all streams.
    pub events: u64,
    /// Response body bytes read, over all streams.
    pub bytes: u64,
    /// The test's wall-clock time, the basis of the rates.
    pub elapsed: Duration,
    /// `None` when no stream got an event (or two, for gaps).
    pub first_event: Option<Percentiles>,
    /// Time between consecutive events of a stream: how smoothly tokens arrive.
    pub gap: Option<Percentiles>,
    /// The server's answers: status codes, and `error` for none.
    pub statuses: BTreeMap<String, usize>,
    /// Failed streams by why.
    pub errors: BTreeMap<String, usize>,
    /// Source addresses used: several for many streams to a loopback server, past one address's ports.
    pub sources: usize,
}

/// Milliseconds at p50, p99 and the maximum.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// The median: what a typical stream saw.
    pub p50: f64,
    /// The tail: what the unluckiest 1% saw.
    pub p99: f64,
    /// The worst seen.
    pub max: f64,
}

impl Percentiles {
    fn of(mut values: Vec<Duration>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let at = |p: f64| {
            values
                .get(((values.len() as f64 - 1.0) * p).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Some(Self {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

impl Report {
    fn of(plan: &Plan, seen: &[Seen], elapsed: Duration, sources: usize) -> Self {
        let mut statuses = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for s in seen {
            let status = s
                .status
                .map_or_else(|| "error".to_owned(), |s| s.to_string());
            *statuses.entry(status).or_default() += 1;
            if let Some(error) = s.error {
                *errors.entry(error.to_owned()).or_default() += 1;
            }
        }
        let ok = seen.iter().filter(|s| s.ok()).count();
        Self {
            url: plan.url.clone(),
            streams: seen.len(),
            ok,
            failed: seen.len() - ok,
            events: seen.iter().map(|s| s.events).sum(),
            bytes: seen.iter().map(|s| s.bytes).sum(),
            elapsed,
            first_event: Percentiles::of(seen.iter().filter_map(|s| s.first_event).collect()),
            gap: Percentiles::of(seen.iter().flat_map(|s| s.gaps.iter().copied()).collect()),
            statuses,
            errors,
            sources,
        }
    }

    /// Events per second over the whole test.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let ms = |p: &Option<Percentiles>| {
            p.map_or(
                Value::Null,
                |p| json!({"p50": p.p50, "p99": p.p99, "max": p.max}),
            )
        };
        json!({
            "url": self.url,
            "streams": self.streams,
            "ok": self.ok,
            "failed": self.failed,
            "events": self.events,
            "bytes": self.bytes,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "events_per_sec": self.events_per_sec(),
            "first_event_ms": ms(&self.first_event),
            "gap_ms": ms(&self.gap),
            "statuses": self.statuses,
            "errors": self.errors,
            "source_addresses": self.sources,
        })
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(why, n)| format!("{why}: {n}"))
            .collect();
        let mut table = format!(
            "url               {}\n\
             streams           {} ok, {} failed (of {})\n\
             events            {} in {:.2} s: {:.0} events/s\n\
             first event       {}\n\
             gap               {}\n\
             answers           {}\n",
            self.url,
            self.ok,
            self.failed,
            self.streams,
            self.events,
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            self.first_event.map_or_else(
                || "-".to_owned(),
                |p| format!("p50 {:.1} ms, p99 {:.1} ms", p.p50, p.p99)
            ),
            self.gap.map_or_else(
                || "-".to_owned(),
                |p| format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    p.p50, p.p99, p.max
                )
            ),
            statuses.join(", "),
        );
        if !errors.is_empty() {
            table.push_str(&format!("failures          {}\n", errors.join(", ")));
        }
        table
    }
}
