//! SPEC 6, Configuration, `kind = "command"`: the agent with small scripts:
//! text and jsonl, failure, a clean environment, bounded lines, and cancel
//! leaving no process behind.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// The real interpreter: `python3` on PATH may be a shim that needs the
/// environment a command agent does not get.
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs the command-agent test scripts");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn script(name: &str) -> String {
    format!("{}/tests/api/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn app() -> TestApp {
    std::env::set_var("SLUICE_TEST_PASSED", "yes");
    let py = python();
    spawn_with(&format!(
        r#"
[agents.echo]
kind = "command"
command = ["{py}", "{echo}"]
params = {{ n = "a number to echo" }}

[agents.events]
kind = "command"
protocol = "jsonl"
command = ["{py}", "{events}"]

[agents.fail]
kind = "command"
command = ["{py}", "{fail}"]

[agents.env]
kind = "command"
command = ["{py}", "{env}"]
env = {{ FOO = "bar" }}
pass_env = ["SLUICE_TEST_PASSED"]

[agents.forever]
kind = "command"
command = ["/bin/sh", "{forever}"]
pass_env = ["PATH"]

[agents.long]
kind = "command"
protocol = "jsonl"
max_line_bytes = 1000
command = ["{py}", "{long}"]

[agents.garbage]
kind = "command"
protocol = "jsonl"
command = ["{py}", "{garbage}"]
"#,
        echo = script("echo_text.py"),
        events = script("events.py"),
        fail = script("fail.py"),
        env = script("env.py"),
        forever = script("forever.sh"),
        long = script("long_line.py"),
        garbage = script("garbage.py"),
    ))
    .await
}

#[tokio::test]
async fn text_protocol_streams_stdout_chunks_and_the_run_arrives_on_stdin() {
    let app = app().await;
    let events = app
        .events("/api/agent/stream?agent=echo&prompt=hi&n=3")
        .await;
    let run = assert_contiguous(&events, 1);
    assert_eq!(
        text_of(&events),
        format!("echo: hi n=3 id={} ünïcode✓ ", &run[..8])
    );
    assert!(
        tokens_of(&events).len() >= 3,
        "chunks arrive as they are written: {events:?}"
    );
    let done = &events.last().unwrap().data;
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"]["output_tokens"], tokens_of(&events).len());
    let (status, _) = app.get_json("/api/agent/stream?agent=echo&m=1").await;
    assert_eq!(status, 400, "only the parameters the config lists");
}

#[tokio::test]
async fn jsonl_protocol_carries_every_kind_of_event() {
    let app = app().await;
    let events = app.events("/api/agent/stream?agent=events").await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "run",
            "reasoning",
            "token",
            "tool_call",
            "tool_result",
            "token",
            "done"
        ]
    );
    assert_eq!(events[1].data, json!({"text": "Which tool?"}));
    assert_eq!(
        events[3].data,
        json!({"id": "c1", "name": "clock", "arguments": "{}"})
    );
    assert_eq!(events[4].data, json!({"id": "c1", "content": "12:00"}));
    assert_eq!(text_of(&events), "Let me check: it is noon.");
    assert_eq!(
        events[6].data["usage"],
        json!({"output_tokens": 2, "prompt_tokens": 9})
    );
}

#[tokio::test]
async fn a_non_zero_exit_is_an_error_with_the_last_stderr_lines() {
    let app = app().await;
    let events = app.events("/api/agent/stream?agent=fail").await;
    assert_eq!(text_of(&events), "partial");
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "command_failed");
    let message = last.data["message"].as_str().unwrap();
    assert!(message.contains("status 3"), "{message}");
    assert!(message.contains("fatal: the tool exploded"), "{message}");
    assert!(
        message.contains("noise line 14") && !message.contains("noise line 4\n"),
        "only the last lines: {message}"
    );
}

#[tokio::test]
async fn the_environment_is_clean_but_for_what_the_config_passes() {
    let app = app().await;
    let events = app.events("/api/agent/stream?agent=env").await;
    assert_eq!(text_of(&events), "FOO SLUICE_TEST_PASSED");
}

#[tokio::test]
async fn bad_output_and_overlong_lines_end_the_run_with_an_error() {
    let app = app().await;
    let events = app.events("/api/agent/stream?agent=long").await;
    assert_eq!(tokens_of(&events), ["ok"]);
    assert_eq!(events.last().unwrap().data["code"], "command_line_too_long");
    let events = app.events("/api/agent/stream?agent=garbage").await;
    assert_eq!(events.last().unwrap().data["code"], "command_bad_output");
    assert!(events.last().unwrap().data["message"]
        .as_str()
        .unwrap()
        .contains("this is not json"));
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

#[tokio::test]
async fn cancel_kills_the_process_group_and_leaves_no_zombie() {
    let app = app().await;
    let id = app.create_run(json!({"agent": "forever"})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
        let text = snapshot["text"].as_str().unwrap_or_default().to_owned();
        if text.contains("tick") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pids: Vec<u32> = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("pids "))
        .unwrap_or_else(|| panic!("no pids in {text:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (script, sleeper) = (pids[0], pids[1]);
    assert!(alive(script) && alive(sleeper));
    let response = app.delete(&format!("/api/runs/{id}")).await;
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(3);
    while (std::path::Path::new(&format!("/proc/{script}")).exists() || alive(sleeper))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{script}")).exists(),
        "the script was killed and reaped (no zombie)"
    );
    assert!(
        !alive(sleeper),
        "its child in the same process group was killed too"
    );
    let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["status"], "cancelled");
}
