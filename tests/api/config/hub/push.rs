//! SPEC 6, Configuration, `[hub] backend = "redis"`, and SPEC 12 across
//! nodes: a producer publishing through either node, retrying, outliving its
//! node, cancelled, idle or left by its subscribers.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::cluster::*;
use crate::helpers::*;

/// Publishes `lines` to `url` with `Sluice-Offset: offset`; the answer.
async fn publish_to(url: &str, offset: u64, lines: &[String]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-ndjson")
        .header("sluice-offset", offset.to_string())
        .body(lines.concat())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn token_lines(from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|n| format!("{}\n", json!({"event": "token", "text": format!(" t{n}")})))
        .collect()
}

/// A push run created on `base`; its id.
async fn create_push(base: &str) -> String {
    create_run_as(base, json!({"agent": "push", "prompt": "a job"})).await
}

#[tokio::test]
async fn a_producer_alternating_between_nodes_with_retries_gives_every_node_the_same_sequence() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let proxy = round_robin(vec![addr_of(&a), addr_of(&b)]).await;
    let id = create_push(&a.base).await;
    let watchers: Vec<_> = [&a.base, &b.base]
        .into_iter()
        .map(|base| {
            let url = format!("{base}/api/runs/{id}/events");
            tokio::spawn(async move { read(&url, None, usize::MAX).await.0 })
        })
        .collect();
    // Each batch goes through the balancer, so to the nodes in turn; each
    // is sent twice, as a worker whose answer was lost would, and every
    // other one overlaps the previous batch by two lines.
    let url = format!("http://{proxy}/api/runs/{id}/events");
    let mut offset = 0;
    for batch in 0..10 {
        let from = if batch % 2 == 1 { offset - 2 } else { offset };
        let lines = token_lines(from, offset + 5);
        for attempt in 0..2 {
            let (status, answer) = publish_to(&url, from as u64, &lines).await;
            assert_eq!(status, 200, "batch {batch}, attempt {attempt}: {answer}");
            assert_eq!(answer["offset"], offset + 5);
        }
        offset += 5;
        // A gap is refused, whichever node it reaches.
        let (status, answer) = publish_to(&url, offset as u64 + 3, &token_lines(0, 1)).await;
        assert_eq!(
            (status, answer["offset"].as_u64()),
            (409, Some(offset as u64))
        );
    }
    let (status, answer) =
        publish_to(&url, offset as u64, &["{\"event\":\"done\"}\n".to_owned()]).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("done")));
    let expected: Vec<String> = (0..offset).map(|n| format!(" t{n}")).collect();
    let mut seen = Vec::new();
    for watcher in watchers {
        let events = tokio::time::timeout(Duration::from_secs(15), watcher)
            .await
            .expect("both nodes' subscribers see the end")
            .unwrap();
        assert_contiguous(&events, 1);
        assert_eq!(tokens_of(&events), expected);
        assert_eq!(events.last().unwrap().event, "done");
        seen.push(events);
    }
    assert_eq!(
        seen[0], seen[1],
        "the same events, ids and data on both nodes"
    );
    let (_, snapshot) = get_json(&format!("{}/api/runs/{id}", b.base)).await;
    assert_eq!(snapshot["status"], "done");
    assert_eq!(snapshot["text"], expected.concat());
}

#[tokio::test]
async fn a_push_run_outlives_the_node_that_created_it() {
    let Some(redis) = Redis::start() else { return };
    let (mut a, b) = (node(&redis), node(&redis));
    let id = create_push(&a.base).await;
    let on_a = format!("{}/api/runs/{id}/events", a.base);
    assert_eq!(publish_to(&on_a, 0, &token_lines(0, 3)).await.0, 200);
    let watcher = tokio::spawn({
        let url = format!("{}/api/runs/{id}/events", b.base);
        async move { read(&url, None, usize::MAX).await.0 }
    });
    a.child.kill().unwrap();
    let _ = a.child.wait();
    // The lease of the killed node runs out meanwhile: nothing ends the
    // run, since no node drives it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let on_b = format!("{}/api/runs/{id}/events", b.base);
    // The worker retries its last batch through B, then goes on.
    let (status, answer) = publish_to(&on_b, 0, &token_lines(0, 6)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["appended"].as_u64(), answer["offset"].as_u64()),
        (Some(3), Some(6))
    );
    let (status, _) = publish_to(&on_b, 6, &["{\"event\":\"done\"}\n".to_owned()]).await;
    assert_eq!(status, 200);
    let events = tokio::time::timeout(Duration::from_secs(15), watcher)
        .await
        .expect("the subscriber on B sees the end")
        .unwrap();
    assert_contiguous(&events, 1);
    assert_eq!(
        tokens_of(&events),
        (0..6).map(|n| format!(" t{n}")).collect::<Vec<_>>()
    );
    assert_eq!(events.last().unwrap().event, "done");
}

/// A streamed publish through A learns at once that B cancelled its run.
async fn assert_a_streamed_publish_through_a_learns_that_b_cancelled(a: &Served, b: &Served) {
    let id = create_push(&a.base).await;
    let (lines, body) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    lines.send(Ok(token_lines(0, 1).concat())).await.unwrap();
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(body, |mut body| async move {
        body.recv().await.map(|line| (line, body))
    }));
    let publishing = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/api/runs/{id}/events", a.base))
            .body(body)
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&format!("{}/api/runs/{id}", b.base)).await.1["events"] != 2 {
        assert!(Instant::now() < deadline, "the first line never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = reqwest::Client::new()
        .delete(format!("{}/api/runs/{id}", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer = tokio::time::timeout(Duration::from_secs(5), publishing)
        .await
        .expect("the worker on A is told")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 409);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["status"], "cancelled");
    drop(lines);
}

/// An idle producer: some node ends the run with producer_timeout.
async fn assert_an_idle_producer_ends_with_producer_timeout(a: &Served, b: &Served) {
    let response = reqwest::Client::new()
        .post(format!("{}/api/runs", a.base))
        .json(&json!({"agent": "quick", "prompt": "idle"}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let idle = body["id"].as_str().unwrap().to_owned();
    let (events, _) = read(
        &format!("{}/api/runs/{idle}/events", b.base),
        None,
        usize::MAX,
    )
    .await;
    assert_eq!(events.last().unwrap().data["code"], "producer_timeout");
    assert_eq!(events.len(), 2);
}

/// Made with cancel_on_disconnect: cancelled once no node has had a
/// subscriber for the disconnect grace (1 s here).
async fn assert_cancel_on_disconnect_counts_subscribers_on_every_node(a: &Served, b: &Served) {
    let response = reqwest::Client::new()
        .post(format!("{}/api/runs", a.base))
        .json(&json!({"agent": "push", "cancel_on_disconnect": true}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let left = body["id"].as_str().unwrap().to_owned();
    let on_b = format!("{}/api/runs/{left}/events", b.base);
    assert_eq!(publish_to(&on_b, 0, &token_lines(0, 1)).await.0, 200);
    let (seen, _) = read(&on_b, None, 2).await;
    assert_eq!(seen.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, snapshot) = get_json(&format!("{}/api/runs/{left}", a.base)).await;
        if snapshot["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "never cancelled: {snapshot}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn push_runs_on_the_shared_hub_are_cancelled_and_time_out_from_any_node() {
    let Some(redis) = Redis::start() else { return };
    let quick = "[agents.quick]\nkind = \"push\"\nidle_timeout_secs = 1\n";
    let (a, b) = (
        node_with_config(&redis, quick),
        node_with_config(&redis, quick),
    );
    assert_a_streamed_publish_through_a_learns_that_b_cancelled(&a, &b).await;
    assert_an_idle_producer_ends_with_producer_timeout(&a, &b).await;
    assert_cancel_on_disconnect_counts_subscribers_on_every_node(&a, &b).await;
}

#[tokio::test]
async fn random_publishes_through_both_nodes_leave_each_event_once_in_order() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let proxy = round_robin(vec![addr_of(&a), addr_of(&b)]).await;
    let client = reqwest::Client::new();
    for seed in 1..=3u64 {
        let id = create_push(&a.base).await;
        let words: Vec<String> = (0..60).map(|n| format!(" s{seed}w{n}")).collect();
        let url = format!("http://{proxy}/api/runs/{id}/events");
        publish_randomly(&client, &url, seed, &words).await;
        for base in [&a.base, &b.base] {
            let (events, _) = read(&format!("{base}/api/runs/{id}/events"), None, usize::MAX).await;
            assert_contiguous(&events, 1);
            assert_eq!(tokens_of(&events), words, "seed {seed}, read from {base}");
            assert_eq!(events.last().unwrap().event, "done");
        }
    }
}
