//! SPEC 11.2, the OpenAI-compatible front door over HTTP: every call is a
//! run, listed, shared, cancelled and resumed like any other; errors in
//! OpenAI's shape; the models are the agents. The official client itself is
//! driven in `openai_sdk.rs`.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_completion_is_a_run_with_the_runs_text() {
    let app = spawn_app().await;
    let response = post_json(
        &app,
        "/v1/chat/completions",
        None,
        json!({"model": "sim", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "tell me"}
        ], "max_tokens": 7, "interval_ms": 0, "temperature": 0.3, "n": 1, "user": "u"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], format!("chatcmpl-{run}"));
    assert_eq!(body["model"], "sim");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["usage"]["completion_tokens"], 7);
    let (_, snapshot) = app.get_json(&format!("/api/runs/{run}")).await;
    assert_eq!(body["choices"][0]["message"]["content"], snapshot["text"]);
    assert_eq!(snapshot["prompt"], "tell me");
    assert_eq!(snapshot["status"], "done");
    let (_, list) = app.get_json("/api/runs").await;
    assert_eq!(list["runs"][0]["id"], run.as_str());
}

#[tokio::test]
async fn a_streamed_completion_is_shared_resumed_and_cancelled_like_any_run() {
    let app = spawn_app().await;
    let response = post_json(
        &app,
        "/v1/chat/completions",
        None,
        json!({"model": "sim", "messages": [{"role": "user", "content": "go"}],
               "stream": true, "max_tokens": 400, "interval_ms": 20,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let mut stream = response.bytes_stream().eventsource();
    let mut last_id = String::new();
    for _ in 0..4 {
        let event = stream.next().await.unwrap().unwrap();
        assert!(event.data.contains("chat.completion.chunk"));
        last_id = event.id;
    }
    // Another viewer, in Sluice's own format.
    let viewer = app.get(&format!("/api/runs/{run}/events")).await;
    assert_eq!(viewer.status(), 200);
    let viewer = tokio::spawn(collect(viewer));
    // The client drops; it resumes within the disconnect grace.
    drop(stream);
    let resumed = app
        .client
        .get(app.url(&format!("/api/runs/{run}/events?format=openai")))
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let mut resumed = resumed.bytes_stream().eventsource();
    let next = resumed.next().await.unwrap().unwrap();
    let seq = |id: &str| id.rsplit_once(':').unwrap().1.parse::<u64>().unwrap();
    assert_eq!(seq(&next.id), seq(&last_id) + 1, "no gap, no duplicate");
    assert_eq!(app.delete(&format!("/api/runs/{run}")).await.status(), 202);
    let mut rest = Vec::new();
    while let Some(Ok(event)) = resumed.next().await {
        rest.push(event.data);
    }
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    let finish: Value = serde_json::from_str(&rest[rest.len() - 3]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "cancelled");
    let seen = tokio::time::timeout(Duration::from_secs(10), viewer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.last().unwrap().data["finish_reason"], "cancelled");
}

/// Bad completion requests: the body, and the status, code and OpenAI error
/// type each gets.
fn bad_completions() -> [(Value, u16, &'static str, &'static str); 6] {
    [
        (
            json!({"model": "gpt-9", "messages": []}),
            404,
            "model_not_found",
            "not_found_error",
        ),
        (
            json!({"messages": []}),
            400,
            "invalid_json",
            "invalid_request_error",
        ),
        (
            json!({"model": "sim"}),
            400,
            "invalid_json",
            "invalid_request_error",
        ),
        (
            json!({"model": "sim", "messages": [{"role": "robot", "content": "x"}]}),
            400,
            "invalid_json",
            "invalid_request_error",
        ),
        (
            json!({"model": "sim", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            400,
            "invalid_param",
            "invalid_request_error",
        ),
        (
            json!({"model": "sim", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            400,
            "invalid_json",
            "invalid_request_error",
        ),
    ]
}

/// A failed run: 502 with the agent's own code and words.
async fn assert_a_failed_run_is_a_502_in_its_own_words(app: &TestApp, key: Option<&str>) {
    let response = post_json(
        app,
        "/v1/chat/completions",
        key,
        json!({"model": "sim", "messages": [{"role": "user", "content": "x"}], "fail_after": 2, "interval_ms": 0}),
    )
    .await;
    assert_eq!(response.status(), 502);
    assert!(response.headers().contains_key("x-run-id"));
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "simulated_failure");
    assert_eq!(error["error"]["type"], "sluice_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("fail_after"));
}

#[tokio::test]
async fn front_door_errors_come_in_openais_shape() {
    let app = spawn_with(ALICE_AND_BOB).await;
    let key = Some("alice-key");
    let cases = bad_completions();
    for (body, status, code, kind) in cases {
        let response = post_json(&app, "/v1/chat/completions", key, body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}");
        assert_eq!(error["error"]["type"], kind, "{body}");
        assert!(error["error"]["message"].as_str().unwrap().len() > 5);
    }
    let response = post_json(&app, "/v1/chat/completions", Some("wrong"), json!({})).await;
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
    let response = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_a_failed_run_is_a_502_in_its_own_words(&app, key).await;
    // Nothing was started by a refused call: only the failed run is listed.
    let runs = app
        .client
        .get(app.url("/api/runs"))
        .bearer_auth("alice-key")
        .json_answer()
        .await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn models_are_the_agents() {
    let app = spawn_with("[agents.echo]\nkind = \"command\"\ncommand = [\"cat\"]\n").await;
    let (status, body) = app.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    let mut ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["echo", "sim"]);
    assert_eq!(
        body["data"][0],
        json!({"id": body["data"][0]["id"], "object": "model", "created": 0, "owned_by": "sluice"})
    );
}
