//! SPEC 6, Configuration, `kind = "openai"`: the agent against the mock
//! upstream: mapping, honest endings, timeouts, and cancel reaching the
//! upstream.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::upstream;
use crate::helpers::*;

const MODELS: &[&str] = &[
    "normal",
    "usage",
    "usage-null-choices",
    "tools",
    "reasoning",
    "error-object",
    "http-429",
    "http-500",
    "hang-first",
    "slow-first",
    "hang-idle",
    "eof",
    "slow",
    "missing",
];

/// One `openai` agent per mock behaviour, named after it.
fn config(base: &str, extra: &str) -> String {
    let mut toml = format!("{extra}\n");
    for model in MODELS {
        toml.push_str(&format!(
            "[agents.{model}]\nkind = \"openai\"\nbase_url = \"{base}\"\nmodel = \"{model}\"\n\
             first_token_timeout_secs = 1\nidle_timeout_secs = 0.5\n\n"
        ));
    }
    toml
}

async fn setup(extra: &str) -> (TestApp, upstream::Mock) {
    let (base, mock) = upstream::start().await;
    (spawn_with(&config(&base, extra)).await, mock)
}

fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

#[tokio::test]
async fn content_streams_as_tokens_and_the_request_asks_for_a_stream_with_usage() {
    let (base, mock) = upstream::start().await;
    std::env::set_var("SLUICE_TEST_UPSTREAM_KEY", "sk-test-secret");
    let app = spawn_with(&format!(
        "[agents.up]\nkind = \"openai\"\nbase_url = \"{base}\"\nmodel = \"normal\"\n\
         api_key_env = \"SLUICE_TEST_UPSTREAM_KEY\"\nsystem_prompt = \"Be brief.\"\n\
         headers = {{ \"X-Extra\" = \"header-secret\" }}\n\
         defaults = {{ temperature = 0.2, max_tokens = 32 }}\nallow_params = [\"temperature\"]\n"
    ))
    .await;
    let events = app
        .events("/api/agent/stream?agent=up&prompt=Say%20hello&temperature=0.7")
        .await;
    assert_eq!(names(&events), ["run", "token", "token", "done"]);
    assert_eq!(tokens_of(&events), ["Hello", " world"]);
    assert_contiguous(&events, 1);
    let done = &events[3].data;
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(
        done["usage"],
        json!({"output_tokens": 2, "output_tokens_counted": true})
    );

    let body = mock.last_body();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["model"], "normal");
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])
    );
    assert_eq!(body["temperature"], 0.7, "a per-run parameter, as a number");
    assert_eq!(body["max_tokens"], 32, "a config default");
    assert_eq!(
        mock.0
            .lock()
            .unwrap()
            .authorization
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some("Bearer sk-test-secret")
    );

    let (status, body) = app
        .get_json("/api/agent/stream?agent=up&max_tokens=5")
        .await;
    assert_eq!(status, 400, "only the parameters the config allows");
    assert_eq!(body["error"]["code"], "invalid_param");

    let listing = app.get("/api/agents").await.text().await.unwrap();
    assert!(
        !listing.contains("sk-test-secret") && !listing.contains("header-secret"),
        "{listing}"
    );
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let up = listing["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "up")
        .unwrap()
        .clone();
    assert_eq!(up["kind"], "openai");
    assert_eq!(up["model"], "normal");
    assert_eq!(
        up["params"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["temperature"]
    );
}

#[tokio::test]
async fn the_usage_chunk_becomes_done_usage_also_with_null_choices() {
    let (app, _) = setup("").await;
    let events = app.events("/api/agent/stream?agent=usage").await;
    let done = &events.last().unwrap().data;
    assert_eq!(done["finish_reason"], "length");
    assert_eq!(
        done["usage"],
        json!({"prompt_tokens": 5, "output_tokens": 2, "total_tokens": 7})
    );
    let events = app
        .events("/api/agent/stream?agent=usage-null-choices")
        .await;
    assert_eq!(
        events.last().unwrap().data["usage"],
        json!({"prompt_tokens": 3, "output_tokens": 1, "total_tokens": 4})
    );
}

#[tokio::test]
async fn tool_call_deltas_are_assembled_into_one_event() {
    let (app, _) = setup("").await;
    let events = app.events("/api/agent/stream?agent=tools").await;
    assert_eq!(names(&events), ["run", "tool_call", "done"]);
    assert_eq!(
        events[1].data,
        json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}})
    );
    assert_eq!(events[2].data["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn reasoning_content_becomes_reasoning_events() {
    let (app, _) = setup("").await;
    let events = app.events("/api/agent/stream?agent=reasoning").await;
    assert_eq!(
        names(&events),
        ["run", "reasoning", "reasoning", "token", "done"]
    );
    assert_eq!(events[1].data["text"], "Let me think.");
    assert_eq!(tokens_of(&events), ["Answer"]);
}

#[tokio::test]
async fn broken_streams_end_with_an_error_that_says_how() {
    let (app, _) = setup("").await;
    for (agent, code, message, tokens) in [
        ("error-object", "upstream_error", "the model fell over", 1),
        (
            "http-429",
            "upstream_http_429",
            "rate limited, slow down",
            0,
        ),
        (
            "http-500",
            "upstream_http_500",
            "internal upstream failure",
            0,
        ),
        ("eof", "upstream_truncated", "without a finish_reason", 2),
        ("hang-first", "upstream_first_token_timeout", "no token", 0),
        ("hang-idle", "upstream_idle_timeout", "mid-stream", 1),
        ("missing", "upstream_http_404", "model missing not found", 0),
    ] {
        let started = Instant::now();
        let events = app
            .events(&format!("/api/agent/stream?agent={agent}"))
            .await;
        let last = events.last().unwrap();
        assert_eq!(last.event, "error", "{agent}: {events:?}");
        assert_eq!(last.data["code"], code, "{agent}");
        let text = last.data["message"].as_str().unwrap();
        assert!(text.contains(message), "{agent}: {text}");
        assert_eq!(tokens_of(&events).len(), tokens, "{agent}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{agent} ended promptly"
        );
        let run = assert_contiguous(&events, 1);
        let (_, snapshot) = app.get_json(&format!("/api/runs/{run}")).await;
        assert_eq!(snapshot["status"], "error", "{agent}");
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_reported_as_such() {
    // Bound and never listening for the whole test: connections are refused,
    // and no other process can take the port in the meantime.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let app = spawn_with(&format!(
        "[agents.gone]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"m\"\n"
    ))
    .await;
    let events = app.events("/api/agent/stream?agent=gone").await;
    let last = events.last().unwrap();
    assert_eq!(last.data["code"], "upstream_unreachable");
    assert!(
        last.data["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "{:?}",
        last.data
    );
}

#[tokio::test]
async fn keep_alive_comments_flow_while_the_upstream_thinks() {
    let (base, _) = upstream::start().await;
    let app = spawn_with(&format!(
        "[server]\nkeep_alive_secs = 1\n[agents.thinker]\nkind = \"openai\"\nbase_url = \"{base}\"\n\
         model = \"slow-first\"\nfirst_token_timeout_secs = 10\n"
    ))
    .await;
    let body = app
        .get("/api/agent/stream?agent=thinker")
        .await
        .text()
        .await
        .unwrap();
    let keep_alive = body.find(": keep-alive").expect(&body);
    let token = body.find("event: token").expect(&body);
    assert!(keep_alive < token, "{body}");
    assert!(body.contains("\"finish_reason\":\"stop\""));
}

#[tokio::test]
async fn delete_closes_the_upstream_connection_at_once_and_reports_partial_usage() {
    let (app, mock) = setup("").await;
    let id = app
        .create_run(json!({"agent": "slow", "prompt": "go on"}))
        .await;
    let mut seen = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = mock.chunks_sent();
        if seen >= 4 {
            break;
        }
    }
    assert!(seen >= 4, "the upstream is streaming");
    let deleted_at = Instant::now();
    let response = app.delete(&format!("/api/runs/{id}")).await;
    assert_eq!(response.status(), 202);
    let mut closed = None;
    for _ in 0..40 {
        if let Some(at) = mock.closed_at() {
            closed = Some(at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let closed = closed.expect("the upstream saw its connection closed");
    let delay = closed.saturating_duration_since(deleted_at);
    assert!(
        delay < Duration::from_secs(1),
        "closed {delay:?} after DELETE"
    );
    let snapshot = app
        .wait_for_status(&id, "cancelled", Duration::from_secs(2))
        .await;
    let output = snapshot["usage"]["output_tokens"].as_u64().unwrap();
    assert!(output >= 3, "partial usage is reported: {snapshot}");
    let sent = mock.chunks_sent();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.chunks_sent(), sent, "the upstream stopped generating");
}

#[tokio::test]
async fn a_one_shot_client_that_leaves_closes_the_upstream_after_the_grace() {
    let (app, mock) = setup("[runs]\ndisconnect_grace_secs = 1\n").await;
    let response = app.get("/api/agent/stream?agent=slow").await;
    let id = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let mut stream = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    for _ in 0..3 {
        futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
    }
    let left_at = Instant::now();
    drop(stream);
    let snapshot = app
        .wait_for_status(&id, "cancelled", Duration::from_secs(5))
        .await;
    assert_eq!(snapshot["status"], "cancelled");
    let closed = mock
        .closed_at()
        .expect("the upstream connection was closed");
    let after = closed.saturating_duration_since(left_at);
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed {after:?} after the client left"
    );
}

#[tokio::test]
async fn a_run_longer_than_max_run_secs_ends_with_its_own_error() {
    let (base, mock) = upstream::start().await;
    let app = spawn_with(&format!(
        "[agents.bounded]\nkind = \"openai\"\nbase_url = \"{base}\"\nmodel = \"slow\"\nmax_run_secs = 1\n"
    ))
    .await;
    let started = Instant::now();
    let events = app.events("/api/agent/stream?agent=bounded").await;
    let last = events.last().unwrap();
    assert_eq!(last.data["code"], "upstream_run_timeout", "{:?}", last.data);
    assert!(
        tokens_of(&events).len() >= 5,
        "it was streaming until the limit"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        mock.closed_at().is_some(),
        "and the upstream request was dropped"
    );
}
