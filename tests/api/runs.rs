//! SPEC 2, Runs and events: the one-shot route's event order, ids and
//! headers; the `run` event first, before any token is due.

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
