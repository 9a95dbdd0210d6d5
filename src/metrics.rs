//! Prometheus metrics, shown by `GET /metrics` in the classic text format.
//!
//! Counters on the hot path are single atomics (`sluice_events_sent_total`,
//! `sluice_bytes_sent_total`, bumped once per written chunk, not per event);
//! labelled families are touched once per run or per rejection. The two
//! gauges are read from their sources when scraped, so they cannot drift.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric Sluice keeps.
pub struct Metrics {
    registry: Registry,
    streams_open: IntGauge,
    runs_running: IntGauge,
    runs: IntCounterVec,
    events_sent: IntCounter,
    bytes_sent: IntCounter,
    resumes: IntCounter,
    rejections: IntCounterVec,
    ttft: Histogram,
    run_duration: Histogram,
    subscriber_lag: Histogram,
    webhook_deliveries: IntCounterVec,
}

impl Metrics {
    /// The metrics, registered. Fails only if a metric definition is wrong,
    /// which the tests would show.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let webhook_deliveries = counter_vec(
            r,
            "sluice_webhook_deliveries_total",
            "Webhook attempts by outcome: delivered, retried (another attempt follows), failed",
            &["outcome"],
        )?;
        for outcome in ["delivered", "retried", "failed"] {
            webhook_deliveries.with_label_values(&[outcome]);
        }
        Ok(Arc::new(Self {
            streams_open: register(r, IntGauge::new("sluice_streams_open", OPEN_HELP)?)?,
            runs_running: register(r, IntGauge::new("sluice_runs_running", RUNNING_HELP)?)?,
            runs: counter_vec(r, "sluice_runs_total", RUNS_HELP, &["agent", "outcome"])?,
            events_sent: register(r, IntCounter::new("sluice_events_sent_total", EVENTS_HELP)?)?,
            bytes_sent: register(r, IntCounter::new("sluice_bytes_sent_total", BYTES_HELP)?)?,
            resumes: register(r, IntCounter::new("sluice_resumes_total", RESUMES_HELP)?)?,
            rejections: counter_vec(r, "sluice_rejections_total", REJECTIONS_HELP, &["reason"])?,
            ttft: histogram(
                r,
                "sluice_ttft_seconds",
                "Time from a run's start to its first token",
                exponential_buckets(0.005, 2.0, 14)?,
            )?,
            run_duration: histogram(
                r,
                "sluice_run_duration_seconds",
                "Time from a run's start to its end",
                exponential_buckets(0.05, 2.0, 16)?,
            )?,
            subscriber_lag: histogram(
                r,
                "sluice_subscriber_lag_events",
                "Events already waiting beyond the first when a subscriber wrote (0: it keeps up)",
                vec![0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0],
            )?,
            webhook_deliveries,
            registry,
        }))
    }

    /// A chunk of `events` events, `bytes` long, was written to a subscriber
    /// that was `lag` events behind.
    pub fn sent(&self, events: u64, bytes: u64, lag: u64) {
        self.events_sent.inc_by(events);
        self.bytes_sent.inc_by(bytes);
        self.subscriber_lag.observe(lag as f64);
    }

    /// A stream was resumed from a `Last-Event-ID`.
    pub fn resumed(&self) {
        self.resumes.inc();
    }

    /// A request was refused; `reason` is the error code.
    pub fn rejected(&self, reason: &str) {
        self.rejections.with_label_values(&[reason]).inc();
    }

    /// A webhook attempt ended: `delivered`, `retried` or `failed`.
    pub fn webhook(&self, outcome: &str) {
        self.webhook_deliveries.with_label_values(&[outcome]).inc();
    }

    /// A run ended, with `outcome` its status (`RunStatus::as_str`).
    pub fn run_finished(
        &self,
        agent: &str,
        outcome: &str,
        ttft: Option<Duration>,
        duration: Duration,
    ) {
        self.runs.with_label_values(&[agent, outcome]).inc();
        if let Some(ttft) = ttft {
            self.ttft.observe(ttft.as_secs_f64());
        }
        self.run_duration.observe(duration.as_secs_f64());
    }

    /// The exposition, with the gauges read now.
    pub fn render(&self, streams_open: usize, runs_running: usize) -> String {
        self.streams_open
            .set(i64::try_from(streams_open).unwrap_or(i64::MAX));
        self.runs_running
            .set(i64::try_from(runs_running).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        // Encoding into memory fails only on an invalid metric, which `new` rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

const OPEN_HELP: &str = "SSE responses open now";
const RUNNING_HELP: &str = "Runs running now on this node";
const RUNS_HELP: &str = "Runs finished, by agent and outcome";
const EVENTS_HELP: &str = "Events written to subscribers";
const BYTES_HELP: &str = "Bytes of events written to subscribers";
const RESUMES_HELP: &str = "Streams resumed with Last-Event-ID (header or last_event_id)";
const REJECTIONS_HELP: &str = "Requests refused by a limit or by auth, by reason";

/// `metric`, registered in `registry` (the registry keeps a handle).
fn register<M>(registry: &Registry, metric: M) -> Result<M, prometheus::Error>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Result<Histogram, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(registry, Histogram::with_opts(opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exposed_with_its_type() {
        let Ok(metrics) = Metrics::new() else {
            panic!("metrics")
        };
        metrics.sent(3, 120, 2);
        metrics.resumed();
        metrics.rejected("too_many_streams");
        metrics.run_finished(
            "sim",
            "done",
            Some(Duration::from_millis(40)),
            Duration::from_secs(2),
        );
        let text = metrics.render(7, 2);
        for line in [
            "# TYPE sluice_streams_open gauge",
            "sluice_streams_open 7",
            "# TYPE sluice_runs_running gauge",
            "sluice_runs_running 2",
            "# TYPE sluice_runs_total counter",
            "sluice_runs_total{agent=\"sim\",outcome=\"done\"} 1",
            "sluice_events_sent_total 3",
            "sluice_bytes_sent_total 120",
            "sluice_resumes_total 1",
            "sluice_rejections_total{reason=\"too_many_streams\"} 1",
            "# TYPE sluice_ttft_seconds histogram",
            "sluice_ttft_seconds_count 1",
            "# TYPE sluice_run_duration_seconds histogram",
            "sluice_run_duration_seconds_sum 2",
            "# TYPE sluice_subscriber_lag_events histogram",
            "sluice_subscriber_lag_events_bucket{le=\"1\"} 0",
            "sluice_subscriber_lag_events_bucket{le=\"4\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
