//! SPEC 12, Push runs: a worker publishes a run's events with
//! `POST /api/runs/{id}/events`, as batches or one long streamed body,
//! exactly once with `Sluice-Offset`; endings, cancel, bad input and auth.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

const KEYS: &str = "[[auth.keys]]\nname = \"alice\"\nkey = \"alice-key\"\n\n[[auth.keys]]\nname = \"bob\"\nkey = \"bob-key\"\n";

/// The lines sent to a channel, as a request body that stays open until
/// the sender is dropped.
fn receiver_stream(
    receiver: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|line| (line, receiver))
    })
}

fn token(text: &str) -> String {
    format!("{}\n", json!({"event": "token", "text": text}))
}

/// Creates a push run; its id, `publish_url` and `events_url`.
async fn create_push(app: &TestApp, key: Option<&str>, agent: &str) -> (String, String, String) {
    let mut request = app
        .client
        .post(app.url("/api/runs"))
        .json(&json!({"agent": agent, "prompt": "a job"}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["publish_url"].as_str().unwrap().to_owned(),
        body["events_url"].as_str().unwrap().to_owned(),
    )
}

/// Publishes `body` to `path` with `Sluice-Offset: offset` when given.
async fn publish(app: &TestApp, path: &str, offset: Option<u64>, body: String) -> (u16, Value) {
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(offset) = offset {
        request = request.header("sluice-offset", offset.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_streamed_publish_reaches_subscribers_line_by_line_before_its_body_ends() {
    let app = spawn_app().await;
    let (id, publish_url, _) = create_push(&app, None, "push").await;
    assert_eq!(publish_url, format!("/api/runs/{id}/events"));
    let response = app.get(&format!("/api/runs/{id}/events")).await;
    let mut events = response.bytes_stream().eventsource();
    assert_eq!(events.next().await.unwrap().unwrap().event, "run");

    let (lines, body) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(receiver_stream(body));
    let publishing = tokio::spawn(
        app.client
            .post(app.url(&publish_url))
            .header("content-type", "application/x-ndjson")
            .header("sluice-offset", "0")
            .body(body)
            .send(),
    );
    for word in ["one", " two", " three"] {
        lines.send(Ok(token(word))).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("the line reached the subscriber while the body was still open")
            .unwrap()
            .unwrap();
        assert_eq!(event.event, "token");
        assert_eq!(
            serde_json::from_str::<Value>(&event.data).unwrap()["text"],
            word
        );
    }
    // A line split over two writes is one event.
    lines.send(Ok("{\"event\":\"to".into())).await.unwrap();
    lines
        .send(Ok(
            "ken\",\"text\":\" four\"}\n{\"event\":\"done\"}\n".into()
        ))
        .await
        .unwrap();
    drop(lines);
    let answer = publishing.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"appended": 5, "offset": 5, "status": "done"})
    );
    let rest: Vec<_> = events.collect().await;
    let names: Vec<String> = rest.into_iter().map(|e| e.unwrap().event).collect();
    assert_eq!(names, ["token", "done"]);
    let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["text"], "one two three four");
    assert_eq!(snapshot["status"], "done");
    assert_eq!(snapshot["agent"], "push");
}

#[tokio::test]
async fn retries_replays_and_gaps_leave_exactly_the_producers_sequence() {
    let app = spawn_app().await;
    let (id, url, _) = create_push(&app, None, "push").await;
    let words: Vec<String> = (0..12).map(|n| format!(" w{n}")).collect();
    let lines =
        |from: usize, to: usize| words[from..to].iter().map(|w| token(w)).collect::<String>();
    assert_eq!(
        publish(&app, &url, Some(0), lines(0, 4)).await,
        (
            200,
            json!({"appended": 4, "offset": 4, "status": "running"})
        )
    );
    // The answer was lost: the same batch again duplicates nothing.
    assert_eq!(
        publish(&app, &url, Some(0), lines(0, 4)).await.1["appended"],
        0
    );
    // An overlapping retry appends only what is new.
    assert_eq!(
        publish(&app, &url, Some(2), lines(2, 7)).await.1,
        json!({"appended": 3, "offset": 7, "status": "running"})
    );
    // A gap: nothing appended, and the answer names where to go on from.
    let (status, body) = publish(&app, &url, Some(9), lines(9, 12)).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "offset_mismatch");
    assert_eq!(body["offset"], 7);
    assert_eq!(
        publish(&app, &url, Some(7), lines(7, 12)).await.1["offset"],
        12
    );
    let done =
        "{\"event\":\"done\",\"usage\":{\"output_tokens\":12,\"input_tokens\":3}}\n".to_owned();
    assert_eq!(
        publish(&app, &url, Some(12), done.clone()).await.1,
        json!({"appended": 1, "offset": 13, "status": "done"})
    );
    // A retry of the terminal line after the end: run_finished, not a duplicate.
    let (status, body) = publish(&app, &url, Some(12), done).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "run_finished");
    assert_eq!(body["status"], "done");
    let events = app.events(&format!("/api/runs/{id}/events")).await;
    assert_contiguous(&events, 1);
    assert_eq!(tokens_of(&events), words);
    assert_eq!(events.last().unwrap().data["usage"]["input_tokens"], 3);
}

#[tokio::test]
async fn bad_lines_are_refused_by_number_and_the_lines_before_them_kept() {
    let app = spawn_app().await;
    let (id, url, _) = create_push(&app, None, "push").await;
    let body = format!(
        "{}\n{}{{\"text\":\"no event name\"}}\n{}",
        token("a"),
        token("b"),
        token("never")
    );
    let (status, error) = publish(&app, &url, Some(0), body).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "invalid_event");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 4 "),
        "{error}"
    );
    let long = format!(
        "{}\n",
        json!({"event": "token", "text": "x".repeat(1024 * 1024)})
    );
    let (status, error) = publish(&app, &url, Some(2), format!("{}{long}", token("c"))).await;
    assert_eq!(status, 413);
    assert_eq!(error["error"]["code"], "line_too_large");
    let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["text"], "abc");
    assert_eq!(
        snapshot["status"], "running",
        "a bad line does not end the run"
    );
    // Not a push run, and not NDJSON.
    let sim = app
        .create_run(json!({"params": {"tokens": 1000, "interval_ms": 50}}))
        .await;
    let (status, error) = publish(&app, &format!("/api/runs/{sim}/events"), None, token("x")).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (409, Some("not_a_push_run"))
    );
    let response = app
        .client
        .post(app.url(&url))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(token("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let response = app
        .client
        .post(app.url(&url))
        .header("sluice-offset", "-3")
        .body(token("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_streamed_publish_open_when_the_run_is_cancelled_is_answered_409_within_a_second() {
    let app = spawn_app().await;
    let (id, url, _) = create_push(&app, None, "push").await;
    let (lines, body) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    lines.send(Ok(token("a"))).await.unwrap();
    let body = reqwest::Body::wrap_stream(receiver_stream(body));
    let publishing = tokio::spawn(app.client.post(app.url(&url)).body(body).send());
    app.wait_for_text(&id, "a").await;
    let cancelled = Instant::now();
    assert_eq!(app.delete(&format!("/api/runs/{id}")).await.status(), 202);
    let answer = tokio::time::timeout(Duration::from_secs(5), publishing)
        .await
        .expect("the worker is told")
        .unwrap()
        .unwrap();
    let waited = cancelled.elapsed();
    assert!(waited < Duration::from_secs(1), "told after {waited:?}");
    assert_eq!(answer.status(), 409);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "run_finished");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["offset"], 1);
    drop(lines);
}

#[tokio::test]
async fn an_idle_producer_ends_the_run_with_producer_timeout() {
    let app = spawn_with("[agents.jobs]\nkind = \"push\"\nidle_timeout_secs = 1\n").await;
    let (id, url, _) = create_push(&app, None, "jobs").await;
    assert_eq!(publish(&app, &url, None, token("a")).await.0, 200);
    let snapshot = app
        .wait_for_status(&id, "error", Duration::from_secs(10))
        .await;
    assert_eq!(snapshot["status"], "error");
    let events = app.events(&format!("/api/runs/{id}/events")).await;
    let end = events.last().unwrap();
    assert_eq!(end.data["code"], "producer_timeout");
    assert_eq!(text_of(&events), "a");
    let (status, body) = publish(&app, &url, None, token("late")).await;
    assert_eq!((status, body["status"].as_str()), (409, Some("error")));
}

#[tokio::test]
async fn push_runs_are_made_by_post_api_runs_only() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/api/agent/stream?agent=push&prompt=x").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_param"))
    );
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "push", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (_, models) = app.get_json("/v1/models").await;
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["id"] != "push"));
    let (_, agents) = app.get_json("/api/agents").await;
    assert!(agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "push" && a["kind"] == "push"));
    let (_, list) = app.get_json("/api/runs").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn only_the_runs_key_or_its_publish_token_may_publish() {
    let app = spawn_with(KEYS).await;
    let (id, publish_url, events_url) = create_push(&app, Some("alice-key"), "push").await;
    let (other, other_publish_url, _) = create_push(&app, Some("alice-key"), "push").await;
    assert!(publish_url.starts_with(&format!("/api/runs/{id}/events?access_token=")));
    let post = |path: String, key: Option<&'static str>, body: String| {
        let mut request = app.client.post(app.url(&path)).body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let path = format!("/api/runs/{id}/events");
    assert_eq!(post(path.clone(), None, token("x")).await, 401);
    assert_eq!(post(path.clone(), Some("wrong"), token("x")).await, 401);
    assert_eq!(post(path.clone(), Some("bob-key"), token("x")).await, 404);
    // The other run's publish token, and the reading token of events_url.
    let other_token = other_publish_url.split_once("access_token=").unwrap().1;
    assert_eq!(
        post(
            format!("{path}?access_token={other_token}"),
            None,
            token("x")
        )
        .await,
        401
    );
    assert_eq!(post(events_url.clone(), None, token("x")).await, 401);
    // A reading token for all of the key's runs cannot publish either.
    let minted: Value = app
        .client
        .post(app.url("/api/tokens"))
        .bearer_auth("alice-key")
        .json(&json!({}))
        .json_answer()
        .await;
    let read_token = minted["token"].as_str().expect("a token").to_owned();
    assert_eq!(
        post(
            format!("{path}?access_token={read_token}"),
            None,
            token("x")
        )
        .await,
        401
    );
    // The publish token publishes, and does nothing else.
    assert_eq!(post(publish_url.clone(), None, token("a")).await, 200);
    assert_eq!(post(path.clone(), Some("alice-key"), token("b")).await, 200);
    assert_eq!(app.get(&publish_url).await.status(), 401, "it cannot read");
    let token_only = publish_url.split_once("access_token=").unwrap().1;
    assert_eq!(
        app.get(&format!("/api/agent/stream?access_token={token_only}"))
            .await
            .status(),
        401,
        "nor start a run"
    );
    let (_, snapshot) = {
        let response = app
            .client
            .get(app.url(&format!("/api/runs/{id}")))
            .bearer_auth("alice-key")
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(snapshot["text"], "ab");
    let _ = other;
}

#[tokio::test]
async fn random_splits_retries_and_replays_leave_each_event_once_in_order() {
    let app = spawn_app().await;
    for seed in 1..=8u64 {
        let (id, url, _) = create_push(&app, None, "push").await;
        let words: Vec<String> = (0..80).map(|n| format!(" s{seed}w{n}")).collect();
        publish_randomly(&app.client, &app.url(&url), seed, &words).await;
        let events = app.events(&format!("/api/runs/{id}/events")).await;
        assert_contiguous(&events, 1);
        assert_eq!(tokens_of(&events), words, "seed {seed}");
        assert_eq!(events.last().unwrap().event, "done");
    }
}
