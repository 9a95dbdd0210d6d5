//! SPEC 5, Resume, sharing and disconnects: `Last-Event-ID` through a cut
//! connection and its 204/404/410/400 rules; two subscribers of one run; the
//! disconnect grace; retention's byte budget.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_cut_connection_resumes_with_text_identical_to_an_uninterrupted_run() {
    let app = spawn_app().await;
    let id = app
        .create_run(
            json!({"prompt": "cut", "params": {"tokens": 40, "interval_ms": 10, "seed": 3}}),
        )
        .await;
    // Cut after 700 bytes: inside the 5th or 6th event, mid-line.
    let proxy = cutting_proxy(app.addr, 700).await;
    let url = format!("http://{proxy}/api/runs/{id}/events");
    let seen = read_reconnecting(&app.client, &url).await;
    assert_eq!(seen.connections, 2, "the cut forced exactly one reconnect");
    assert_contiguous(&seen.events, 1);
    assert_eq!(seen.events.last().unwrap().event, "done");

    let whole = app.events(&format!("/api/runs/{id}/events")).await;
    assert_eq!(seen.events, whole, "same events, same ids, same data");
    let independent = app
        .events("/api/agent/stream?prompt=x&tokens=40&interval_ms=0&seed=3")
        .await;
    assert_eq!(text_of(&seen.events), text_of(&independent));
}

#[tokio::test]
async fn a_one_shot_reconnect_resumes_the_same_run_and_starts_no_other() {
    let app = spawn_app().await;
    let proxy = cutting_proxy(app.addr, 900).await;
    let url = format!("http://{proxy}/api/agent/stream?prompt=once&tokens=30&interval_ms=10");
    let seen = read_reconnecting(&app.client, &url).await;
    assert_eq!(seen.connections, 2);
    assert_eq!(seen.run_ids.len(), 2);
    assert_eq!(
        seen.run_ids[0], seen.run_ids[1],
        "the reconnect resumed the same run"
    );
    assert_eq!(assert_contiguous(&seen.events, 1), seen.run_ids[0]);
    assert_eq!(tokens_of(&seen.events).len(), 30);

    let (_, list) = app.get_json("/api/runs").await;
    assert_eq!(
        list["runs"].as_array().unwrap().len(),
        1,
        "no second run was started"
    );
    let expected = app
        .events("/api/agent/stream?prompt=once&tokens=30&interval_ms=0")
        .await;
    assert_eq!(text_of(&seen.events), text_of(&expected));
}

#[tokio::test]
async fn the_query_parameter_resumes_and_the_header_wins_over_it() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"params": {"tokens": 6, "interval_ms": 0}}))
        .await;
    let whole = app.events(&format!("/api/runs/{id}/events")).await;
    let after3 = app
        .events(&format!("/api/runs/{id}/events?last_event_id={id}:3"))
        .await;
    assert_eq!(after3, whole[3..]);
    let one_shot = app
        .events(&format!("/api/agent/stream?last_event_id={id}:5"))
        .await;
    assert_eq!(one_shot, whole[5..]);

    let response = app
        .client
        .get(app.url(&format!("/api/runs/{id}/events?last_event_id={id}:1")))
        .header("Last-Event-ID", format!("{id}:6"))
        .send()
        .await
        .unwrap();
    let events = collect(response).await;
    assert_eq!(events, whole[6..], "the header's cursor was used");
}

#[tokio::test]
async fn a_finished_run_with_nothing_after_the_cursor_is_204() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"params": {"tokens": 2, "interval_ms": 0}}))
        .await;
    let whole = app.events(&format!("/api/runs/{id}/events")).await;
    let last = &whole.last().unwrap().id;
    for path in [
        format!("/api/runs/{id}/events"),
        "/api/agent/stream?prompt=ignored".to_owned(),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .header("Last-Event-ID", last)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "{path}");
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let (_, list) = app.get_json("/api/runs").await;
    assert_eq!(
        list["runs"].as_array().unwrap().len(),
        1,
        "a 204 starts no run"
    );
}

#[tokio::test]
async fn an_unknown_run_is_404_on_every_sse_route() {
    let app = spawn_app().await;
    let unknown = "0123456789abcdef0123456789abcdef";
    for (path, header) in [
        (format!("/api/runs/{unknown}/events"), None),
        (
            format!("/api/runs/{unknown}/events"),
            Some(format!("{unknown}:1")),
        ),
        ("/api/agent/stream".to_owned(), Some(format!("{unknown}:1"))),
        (format!("/api/agent/stream?last_event_id={unknown}:4"), None),
    ] {
        let mut request = app.client.get(app.url(&path));
        if let Some(header) = &header {
            request = request.header("Last-Event-ID", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 404, "{path} {header:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "run_not_found");
    }
}

#[tokio::test]
async fn an_evicted_run_is_410_for_resume_and_snapshot() {
    let app = spawn_with("[runs]\nretention_secs = 1\n").await;
    let id = app
        .create_run(json!({"params": {"tokens": 2, "interval_ms": 0}}))
        .await;
    let whole = app.events(&format!("/api/runs/{id}/events")).await;
    assert_eq!(whole.len(), 4);
    let mut status = 200;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = app.get(&format!("/api/runs/{id}")).await.status().as_u16();
        if status != 200 {
            break;
        }
    }
    assert_eq!(
        status, 410,
        "the run is evicted within its retention plus the sweep"
    );
    for (path, header) in [
        (format!("/api/runs/{id}/events"), format!("{id}:1")),
        ("/api/agent/stream".to_owned(), format!("{id}:2")),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .header("Last-Event-ID", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 410, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "run_evicted");
    }
    assert_eq!(
        app.get(&format!("/api/runs/{id}/events")).await.status(),
        410
    );
}

#[tokio::test]
async fn a_malformed_or_foreign_last_event_id_is_400() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"params": {"tokens": 2, "interval_ms": 0}}))
        .await;
    let other = app
        .create_run(json!({"params": {"tokens": 2, "interval_ms": 0}}))
        .await;
    for (path, header) in [
        ("/api/agent/stream".to_owned(), "garbage".to_owned()),
        ("/api/agent/stream".to_owned(), format!("{id}:x")),
        ("/api/agent/stream".to_owned(), format!("{id}:-1")),
        (format!("/api/runs/{id}/events"), "a:b:c d".to_owned()),
        (format!("/api/runs/{id}/events"), format!("{other}:1")),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .header("Last-Event-ID", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path} {header}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_param");
    }
}

#[tokio::test]
async fn a_cursor_past_the_end_is_204_when_finished_and_400_while_running() {
    let app = spawn_app().await;
    let finished = app
        .create_run(json!({"params": {"tokens": 2, "interval_ms": 0}}))
        .await;
    app.events(&format!("/api/runs/{finished}/events")).await;
    let response = app
        .client
        .get(app.url(&format!("/api/runs/{finished}/events")))
        .header("Last-Event-ID", format!("{finished}:99"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    let running = app
        .create_run(json!({"params": {"tokens": 1000, "interval_ms": 50}}))
        .await;
    let response = app
        .client
        .get(app.url(&format!("/api/runs/{running}/events")))
        .header("Last-Event-ID", format!("{running}:500"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_param");
}

#[tokio::test]
async fn two_subscribers_receive_identical_bytes() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"params": {"tokens": 20, "interval_ms": 20}}))
        .await;
    let path = format!("/api/runs/{id}/events");
    let read = |path: String| {
        let client = app.client.clone();
        let url = app.url(&path);
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    };
    let (a, b) = tokio::join!(read(path.clone()), read(path.clone()));
    assert!(a.len() > 1000);
    assert_eq!(a, b);
    let late = read(path).await;
    assert_eq!(
        a, late,
        "a subscriber after the end gets the same bytes from the first event"
    );
}

#[tokio::test]
async fn a_one_shot_run_is_cancelled_after_the_grace_once_its_client_leaves() {
    let app = spawn_with("[runs]\ndisconnect_grace_secs = 1\n").await;
    let response = app
        .get("/api/agent/stream?tokens=1000&interval_ms=20")
        .await;
    let id = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let mut stream = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    drop(stream);
    let snapshot = app
        .wait_for_status(&id, "cancelled", Duration::from_secs(6))
        .await;
    assert_eq!(snapshot["status"], "cancelled");
    let tokens = snapshot["usage"]["output_tokens"].as_u64().unwrap();
    assert!(tokens < 1000, "the agent stopped early: {tokens}");
    let events = snapshot["events"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, later) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(
        later["events"].as_u64().unwrap(),
        events,
        "nothing is generated after the cancel"
    );
}

#[tokio::test]
async fn a_reconnect_within_the_grace_keeps_a_one_shot_run_alive() {
    let app = spawn_with("[runs]\ndisconnect_grace_secs = 1\n").await;
    let response = app.get("/api/agent/stream?tokens=100&interval_ms=30").await;
    let id = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    drop(response);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resumed = app
        .client
        .get(app.url("/api/agent/stream"))
        .header("Last-Event-ID", format!("{id}:1"))
        .send()
        .await
        .unwrap();
    let events = collect(resumed).await;
    assert_eq!(events.last().unwrap().data["finish_reason"], "stop");
    assert_eq!(tokens_of(&events).len(), 100);
}

#[tokio::test]
async fn a_posted_run_continues_with_no_subscriber() {
    let app = spawn_with("[runs]\ndisconnect_grace_secs = 1\n").await;
    let id = app
        .create_run(json!({"prompt": "alone", "params": {"tokens": 30, "interval_ms": 50}}))
        .await;
    let snapshot = app
        .wait_for_status(&id, "done", Duration::from_secs(10))
        .await;
    assert_eq!(snapshot["status"], "done");
    assert_eq!(snapshot["usage"]["output_tokens"], 30);
    let expected = app
        .events("/api/agent/stream?prompt=alone&tokens=30&interval_ms=0")
        .await;
    assert_eq!(snapshot["text"], text_of(&expected));
    assert_eq!(snapshot["events"], 32);
}

#[tokio::test]
async fn a_posted_run_with_cancel_on_disconnect_is_cancelled_when_nobody_watches() {
    let app = spawn_with("[runs]\ndisconnect_grace_secs = 1\n").await;
    let id = app
        .create_run(
            json!({"params": {"tokens": 1000, "interval_ms": 20}, "cancel_on_disconnect": true}),
        )
        .await;
    let snapshot = app
        .wait_for_status(&id, "cancelled", Duration::from_secs(6))
        .await;
    assert_eq!(snapshot["status"], "cancelled");
}

#[tokio::test]
async fn the_byte_budget_evicts_the_oldest_finished_runs_first() {
    // Each run of 20 tokens is about 2 KB of frames; the budget holds one.
    let app = spawn_with("[runs]\nretention_bytes = 3000\n").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = app
            .create_run(json!({"params": {"tokens": 20, "interval_ms": 0}}))
            .await;
        app.wait_for_status(&id, "done", Duration::from_secs(5))
            .await;
        ids.push(id);
    }
    let mut statuses = Vec::new();
    for id in &ids {
        statuses.push(app.get(&format!("/api/runs/{id}")).await.status().as_u16());
    }
    assert_eq!(statuses, [410, 410, 200]);
}
