//! SPEC 11.3, the AI SDK chat transport (`POST /api/chat`) over HTTP: a chat
//! is a run that its key can resume and stop; a body that is no transport
//! body starts nothing; a finished chat answers 204. The `ai` package itself
//! is driven in tests/browser/ai-sdk.test.mjs.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

fn chat_body(chat: &str, text: &str) -> Value {
    json!({
        "id": chat,
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}],
        "trigger": "submit-message",
        "messageId": null,
    })
}

#[tokio::test]
async fn a_chat_is_a_run_that_its_key_can_resume_and_stop() {
    let app = spawn_with(ALICE_AND_BOB).await;
    let response = post_json(
        &app,
        "/api/chat?tokens=300&interval_ms=20",
        Some("alice-key"),
        chat_body("chat-1", "hello there"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-vercel-ai-ui-message-stream"], "v1");
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let mut first = response.bytes_stream().eventsource();
    let start: Value = serde_json::from_str(&first.next().await.unwrap().unwrap().data).unwrap();
    assert_eq!(start, json!({"type": "start", "messageId": run}));
    drop(first);

    let resume = |key: &'static str, chat: &'static str| {
        let request = app
            .client
            .get(app.url(&format!(
                "/api/chat/{chat}/stream?tokens=300&interval_ms=20"
            )))
            .bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    // Another key's chat of the same id does not exist for it.
    assert_eq!(resume("bob-key", "chat-1").await.status(), 204);
    assert_eq!(resume("alice-key", "chat-2").await.status(), 204);
    let again = resume("alice-key", "chat-1").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["x-run-id"], run.as_str());
    let mut again = again.bytes_stream().eventsource();
    let start_again: Value =
        serde_json::from_str(&again.next().await.unwrap().unwrap().data).unwrap();
    assert_eq!(start_again, start, "from the run's first event");

    let stop = |key: &'static str| {
        let request = app
            .client
            .delete(app.url("/api/chat/chat-1/stream"))
            .bearer_auth(key);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(stop("bob-key").await, 204);
    assert_eq!(stop("alice-key").await, 202);
    let mut last = String::new();
    while let Some(Ok(event)) = again.next().await {
        if event.data != "[DONE]" {
            last = event.data;
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&last).unwrap(),
        json!({"type": "abort"})
    );
    assert_eq!(stop("alice-key").await, 204);
    assert_eq!(resume("alice-key", "chat-1").await.status(), 204);
    let snapshot = app
        .client
        .get(app.url(&format!("/api/runs/{run}")))
        .bearer_auth("alice-key")
        .json_answer()
        .await;
    assert_eq!(snapshot["status"], "cancelled");
    assert_eq!(snapshot["prompt"], "hello there");
}

#[tokio::test]
async fn a_chat_body_that_is_no_transport_body_is_refused_and_starts_nothing() {
    let app = spawn_app().await;
    for body in [
        json!({"messages": []}),
        json!({"id": "c", "messages": "hi"}),
        json!({"id": "c", "messages": [{"role": "tool", "parts": []}]}),
        json!({"id": "", "messages": []}),
        json!({"id": "c", "messages": [], "params": 5}),
    ] {
        let response = post_json(&app, "/api/chat", None, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_json", "{body}");
    }
    let response = post_json(&app, "/api/chat?agent=nope", None, chat_body("c", "x")).await;
    assert_eq!(response.status(), 400);
    let response = post_json(&app, "/api/chat?colour=red", None, chat_body("c", "x")).await;
    assert_eq!(response.status(), 400, "the sim refuses unknown parameters");
    let (_, list) = app.get_json("/api/runs").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_finished_chat_answers_204_and_its_text_is_the_runs() {
    let app = spawn_app().await;
    let response = post_json(
        &app,
        "/api/chat?tokens=5&interval_ms=0",
        None,
        chat_body("done-chat", "hi"),
    )
    .await;
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let body = response.text().await.unwrap();
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|c| c["type"] == "text-delta")
        .map(|c| c["delta"].as_str().unwrap().to_owned())
        .collect();
    let (_, snapshot) = app.get_json(&format!("/api/runs/{run}")).await;
    assert_eq!(text, snapshot["text"].as_str().unwrap());
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(app.get("/api/chat/done-chat/stream").await.status(), 204);
    assert_eq!(app.delete("/api/chat/done-chat/stream").await.status(), 204);
}
