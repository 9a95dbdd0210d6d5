//! SPEC 4, the built-in `sim` agent: deterministic text, a shorter run a
//! prefix of a longer one, `fail_after`, its parameters from a query or a
//! POST, `ttft_ms` null with no token, the empty prompt.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

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

#[tokio::test]
async fn a_run_cancelled_before_its_first_token_has_a_null_ttft() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"params": {"tokens": 5, "interval_ms": 60000}}))
        .await;
    let response = app.get(&format!("/api/runs/{id}/events")).await;
    let reader = tokio::spawn(collect(response));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let deleted = app.delete(&format!("/api/runs/{id}")).await;
    assert_eq!(deleted.status(), 202);
    let events = reader.await.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["run", "done"]);
    assert_eq!(events[1].data["finish_reason"], "cancelled");
    assert!(events[1].data["ttft_ms"].is_null());
    assert_eq!(events[1].data["usage"]["output_tokens"], 0);
}
