//! The one-shot route: event order, ids, headers, determinism, keep-alive.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn one_shot_streams_run_tokens_and_done_with_ids_and_headers() {
    let app = spawn_app().await;
    let response = app
        .get("/api/agent/stream?prompt=hello&tokens=5&interval_ms=0")
        .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none());
    let run_id = headers["x-run-id"].to_str().unwrap().to_owned();
    let events = collect(response).await;

    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["run", "token", "token", "token", "token", "token", "done"]
    );
    assert_eq!(assert_contiguous(&events, 1), run_id);
    assert_eq!(run_id.len(), 32);
    assert!(run_id.bytes().all(|b| b.is_ascii_alphanumeric()));

    let run = &events[0].data;
    assert_eq!(run["run_id"], run_id.as_str());
    assert_eq!(run["agent"], "sim");
    let created = run["created_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(created).is_ok(), "{created}");

    let done = &events[6].data;
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"]["output_tokens"], 5);
    assert!(done["ttft_ms"].as_f64().is_some());
    assert!(done["duration_ms"].as_f64().is_some());
    for token in &events[1..6] {
        let text = token.data["text"].as_str().unwrap();
        assert!(text.starts_with(' ') && text.len() > 1, "{text:?}");
    }
}

#[tokio::test]
async fn the_run_event_arrives_before_the_first_token_is_due() {
    let app = spawn_app().await;
    let response = app.get("/api/agent/stream?tokens=1&interval_ms=5000").await;
    let mut stream = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    let first = tokio::time::timeout(
        Duration::from_secs(3),
        futures::StreamExt::next(&mut stream),
    )
    .await
    .expect("the run event must not wait for the first token");
    assert_eq!(first.unwrap().unwrap().event, "run");
}

#[tokio::test]
async fn text_is_deterministic_and_a_shorter_run_is_a_prefix() {
    let app = spawn_app().await;
    let a = app
        .events("/api/agent/stream?prompt=p&seed=7&tokens=30&interval_ms=0")
        .await;
    let b = app
        .events("/api/agent/stream?prompt=other&seed=7&tokens=30&interval_ms=3")
        .await;
    let short = app
        .events("/api/agent/stream?prompt=p&seed=7&tokens=10&interval_ms=0")
        .await;
    let other_seed = app
        .events("/api/agent/stream?prompt=p&seed=8&tokens=30&interval_ms=0")
        .await;
    assert_eq!(tokens_of(&a).len(), 30);
    assert_eq!(
        tokens_of(&a),
        tokens_of(&b),
        "seed decides, not pace or prompt"
    );
    assert_eq!(tokens_of(&short), tokens_of(&a)[..10]);
    assert_ne!(tokens_of(&a), tokens_of(&other_seed));

    let hello1 = app
        .events("/api/agent/stream?prompt=hello&interval_ms=0")
        .await;
    let hello2 = app
        .events("/api/agent/stream?prompt=hello&interval_ms=0")
        .await;
    let bye = app
        .events("/api/agent/stream?prompt=bye&interval_ms=0")
        .await;
    assert_eq!(tokens_of(&hello1).len(), 48, "default tokens");
    assert_eq!(
        text_of(&hello1),
        text_of(&hello2),
        "default seed comes from the prompt"
    );
    assert_ne!(text_of(&hello1), text_of(&bye));
    // The same text as the library's simulator computes, independently of HTTP.
    let expected: String = (0..48)
        .map(|i| sluice::agent::sim::token(sluice::agent::sim::prompt_seed("hello"), i))
        .collect();
    assert_eq!(text_of(&hello1), expected);
}

#[tokio::test]
async fn a_missing_prompt_is_the_empty_prompt() {
    let app = spawn_app().await;
    let none = app.events("/api/agent/stream?tokens=5&interval_ms=0").await;
    let empty = app
        .events("/api/agent/stream?prompt=&tokens=5&interval_ms=0")
        .await;
    assert_eq!(text_of(&none), text_of(&empty));
}

#[tokio::test]
async fn fail_after_ends_with_a_simulated_failure() {
    let app = spawn_app().await;
    let events = app
        .events("/api/agent/stream?tokens=10&fail_after=3&interval_ms=0")
        .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["run", "token", "token", "token", "error"]);
    assert_eq!(events[4].data["code"], "simulated_failure");
    assert!(events[4].data["message"].as_str().unwrap().len() > 5);
    let run_id = assert_contiguous(&events, 1);
    let (_, snapshot) = app.get_json(&format!("/api/runs/{run_id}")).await;
    assert_eq!(snapshot["status"], "error");

    let events = app
        .events("/api/agent/stream?tokens=10&fail_after=0&interval_ms=0")
        .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["run", "error"]);
}

#[tokio::test]
async fn a_quiet_stream_gets_keep_alive_comments() {
    let app = spawn_with("[server]\nkeep_alive_secs = 1\n").await;
    let response = app.get("/api/agent/stream?tokens=1&interval_ms=2500").await;
    let body = response.text().await.unwrap();
    let token_at = body.find("event: token").unwrap();
    let keep_alive_at = body.find(": keep-alive\n\n").expect(&body);
    assert!(keep_alive_at < token_at, "{body}");
    assert!(body.ends_with("\n\n"));
    // Parsers skip comments: the events are still exactly run, token, done.
    let parsed: Vec<String> = body
        .split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("event: ")))
        .map(str::to_owned)
        .collect();
    assert_eq!(parsed, ["run", "token", "done"]);
}

#[tokio::test]
async fn params_reach_the_agent_as_json_from_post_too() {
    let app = spawn_app().await;
    let id = app
        .create_run(serde_json::json!({"prompt": "p", "params": {"tokens": 4, "interval_ms": 0, "seed": 7}}))
        .await;
    let posted = app.events(&format!("/api/runs/{id}/events")).await;
    let one_shot = app
        .events("/api/agent/stream?prompt=p&tokens=4&interval_ms=0&seed=7")
        .await;
    assert_eq!(tokens_of(&posted), tokens_of(&one_shot));
    assert_eq!(tokens_of(&posted).len(), 4);
}
