//! SPEC 3, HTTP API, the routes: runs created, snapshotted, listed and
//! cancelled; agents and health listed; keep-alive comments; the 503 limits
//! and `max_run_secs`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn post_creates_a_run_with_location_and_a_relative_events_url() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/runs"))
        .json(&json!({"agent": "sim", "prompt": "hi", "params": {"tokens": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["status"], "running");
    assert_eq!(location, format!("/api/runs/{id}"));
    assert_eq!(body["events_url"], format!("/api/runs/{id}/events"));
    let events = app.events(body["events_url"].as_str().unwrap()).await;
    assert_eq!(tokens_of(&events).len(), 3);
}

#[tokio::test]
async fn delete_cancels_a_running_run_and_subscribers_get_done_cancelled() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"params": {"tokens": 1000, "interval_ms": 20}}))
        .await;
    let response = app.get(&format!("/api/runs/{id}/events")).await;
    let mut stream = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    let mut events = Vec::new();
    while events.len() < 3 {
        events.push(parse(stream.next().await.unwrap().unwrap()));
    }
    let deleted = app.delete(&format!("/api/runs/{id}")).await;
    assert_eq!(deleted.status(), 202);
    let body: serde_json::Value = deleted.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    while let Some(Ok(event)) = stream.next().await {
        events.push(parse(event));
    }
    assert_contiguous(&events, 1);
    let last = events.last().unwrap();
    assert_eq!(last.event, "done");
    assert_eq!(last.data["finish_reason"], "cancelled");
    assert!(tokens_of(&events).len() < 1000);
    assert_eq!(
        last.data["usage"]["output_tokens"],
        tokens_of(&events).len() as u64
    );

    let again = app.delete(&format!("/api/runs/{id}")).await;
    assert_eq!(again.status(), 200, "already finished");
    let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["status"], "cancelled");
    assert!(snapshot["finished_at"].is_string());
}

#[tokio::test]
async fn a_snapshot_has_the_text_so_far_and_the_contract_fields() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"prompt": "snap", "params": {"tokens": 5, "interval_ms": 0}}))
        .await;
    let events = app.events(&format!("/api/runs/{id}/events")).await;
    let (status, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(status, 200);
    for key in [
        "id",
        "agent",
        "prompt",
        "status",
        "created_at",
        "finished_at",
        "events",
        "text",
        "usage",
    ] {
        assert!(snapshot.get(key).is_some(), "missing {key}: {snapshot}");
    }
    assert_eq!(snapshot["id"], id.as_str());
    assert_eq!(snapshot["prompt"], "snap");
    assert_eq!(snapshot["agent"], "sim");
    assert_eq!(snapshot["status"], "done");
    assert_eq!(snapshot["events"], 7);
    assert_eq!(snapshot["text"], text_of(&events));
    assert_eq!(snapshot["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_a_clamped_limit() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.create_run(
                json!({"prompt": format!("p{i}"), "params": {"tokens": 1, "interval_ms": 0}}),
            )
            .await,
        );
    }
    let (status, list) = app.get_json("/api/runs").await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    assert!(
        list["runs"][0].get("text").is_none(),
        "listings leave out the text"
    );
    assert_eq!(list["runs"][0]["prompt"], "p2");

    for (query, expected) in [
        ("2", 2),
        ("0", 1),
        ("-5", 1),
        ("5000", 3),
        ("abc", 3),
        ("", 3),
    ] {
        let (status, list) = app.get_json(&format!("/api/runs?limit={query}")).await;
        assert_eq!(status, 200, "limit={query}");
        assert_eq!(
            list["runs"].as_array().unwrap().len(),
            expected,
            "limit={query}"
        );
    }
}

#[tokio::test]
async fn agents_and_health_are_listed() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/api/agents").await;
    assert_eq!(status, 200);
    let sim = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "sim")
        .unwrap();
    assert_eq!(sim["kind"], "sim");
    assert!(sim["model"].is_null());
    for param in ["tokens", "interval_ms", "seed", "fail_after"] {
        assert!(sim["params"][param].is_string(), "{param}");
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn max_streams_answers_503_then_recovers() {
    let app = spawn_with("[server]\nmax_streams = 1\n").await;
    let first = app.get("/api/agent/stream?tokens=50&interval_ms=20").await;
    assert_eq!(first.status(), 200);
    let second = app.get("/api/agent/stream?tokens=1").await;
    assert_eq!(second.status(), 503);
    assert!(second.headers().get("retry-after").is_some());
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    drop(first);
    let mut status = 503;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = app.get("/api/agent/stream?tokens=1&interval_ms=0").await;
        status = response.status().as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn max_running_answers_503_then_recovers() {
    let app = spawn_with("[server]\nmax_running = 1\n").await;
    let id = app
        .create_run(json!({"params": {"tokens": 1000, "interval_ms": 20}}))
        .await;
    let refused = app
        .client
        .post(app.url("/api/runs"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("retry-after").is_some());
    app.delete(&format!("/api/runs/{id}")).await;
    let accepted = app
        .client
        .post(app.url("/api/runs"))
        .json(&json!({"params": {"tokens": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 201);
}

#[tokio::test]
async fn a_run_longer_than_max_run_secs_ends_with_run_timeout() {
    let app = spawn_with("[runs]\nmax_run_secs = 1\n").await;
    let started = std::time::Instant::now();
    let events = app
        .events("/api/agent/stream?tokens=1000&interval_ms=20")
        .await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "run_timeout");
    assert!(tokens_of(&events).len() > 10, "it ran until the limit");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
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
