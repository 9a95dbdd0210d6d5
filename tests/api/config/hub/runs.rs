//! SPEC 6, Configuration, `[hub] backend = "redis"`, and SPEC 5 across
//! nodes: a run on one node streams, resumes, lists and cancels through the
//! other; a killed owner, a stopping node, a Redis restart, the disconnect
//! grace, a finished and an evicted run; chats and OpenAI streams (SPEC 11)
//! resumed on another node.

use std::process::Command;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::cluster::*;
use crate::helpers::*;

#[tokio::test]
async fn a_run_on_one_node_streams_resumes_lists_and_cancels_through_the_other() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let proxy = round_robin(vec![addr_of(&a), addr_of(&b)]).await;

    // A run started on A, read whole from B.
    let id = create_run(&a.base, json!({"tokens": 30, "interval_ms": 20})).await;
    let (events, _) = read(
        &format!("{}/api/runs/{id}/events", b.base),
        None,
        usize::MAX,
    )
    .await;
    assert_contiguous(&events, 1);
    assert_eq!(events.len(), 32);
    assert_eq!(events.last().unwrap().event, "done");
    let (_, snapshot) = get_json(&format!("{}/api/runs/{id}", a.base)).await;
    assert_eq!(snapshot["text"].as_str().unwrap(), text_of(&events));

    // A one-shot stream through the balancer, cut after 10 events, resumed
    // by the next connection, which the balancer sends to the other node.
    let one_shot = format!("http://{proxy}/api/agent/stream?prompt=lb&tokens=40&interval_ms=30");
    let (first, _) = read(&one_shot, None, 10).await;
    let last_id = first.last().unwrap().id.clone();
    let (rest, _) = read(&one_shot, Some(&last_id), usize::MAX).await;
    let mut all = first.clone();
    all.extend(rest);
    let run = assert_contiguous(&all, 1);
    assert_eq!(all.len(), 42, "one run, no gap, no duplicate");
    assert_eq!(all.last().unwrap().event, "done");
    let (_, snapshot) = get_json(&format!("{}/api/runs/{run}", b.base)).await;
    assert_eq!(snapshot["text"].as_str().unwrap(), text_of(&all));

    // Both nodes list the same runs: exactly the two started.
    for base in [&a.base, &b.base] {
        let (status, list) = get_json(&format!("{base}/api/runs")).await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![run.as_str(), id.as_str()], "from {base}");
    }

    // A cancel sent to B reaches the run on A.
    let long = create_run(&a.base, json!({"tokens": 1000, "interval_ms": 20})).await;
    let watcher = tokio::spawn({
        let url = format!("{}/api/runs/{long}/events", a.base);
        async move { read(&url, None, usize::MAX).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = reqwest::Client::new()
        .delete(format!("{}/api/runs/{long}", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    let seen = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .unwrap()
        .unwrap();
    let end = seen.last().unwrap();
    assert_eq!(end.event, "done");
    assert_eq!(end.data["finish_reason"], "cancelled");
    assert_contiguous(&seen, 1);
}

#[tokio::test]
async fn when_the_owner_is_killed_its_runs_end_with_node_lost_everywhere() {
    let Some(redis) = Redis::start() else { return };
    let (mut a, b) = (node(&redis), node(&redis));
    let id = create_run(&a.base, json!({"tokens": 1000, "interval_ms": 20})).await;
    let watcher = tokio::spawn({
        let url = format!("{}/api/runs/{id}/events", b.base);
        async move { read(&url, None, usize::MAX).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let killed = Instant::now();
    let seen = tokio::time::timeout(Duration::from_secs(15), watcher)
        .await
        .expect("the subscriber on B gets an end")
        .unwrap();
    assert_contiguous(&seen, 1);
    let end = seen.last().unwrap();
    assert_eq!(end.event, "error");
    assert_eq!(end.data["code"], "node_lost");
    // Worst case by design: the lease expires up to 2 s after the kill, the
    // reaper (every 1 s) sees it up to 1 s later and waits one more lease
    // (2 s); 3 s more for a loaded machine running debug builds.
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "node_lost once the 2 s lease expired, not much later: {:?}",
        killed.elapsed()
    );
    let (_, snapshot) = get_json(&format!("{}/api/runs/{id}", b.base)).await;
    assert_eq!(snapshot["status"], "error");
    assert_eq!(snapshot["events"], seen.len());
}

#[tokio::test]
async fn clients_of_a_stopping_node_resume_on_the_other() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let url = format!(
        "{}/api/agent/stream?prompt=stop&tokens=1000&interval_ms=20",
        a.base
    );
    let reader = tokio::spawn(async move { read(&url, None, usize::MAX).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (before, retry) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(retry, "the stopping node tells its client to reconnect");
    assert!(
        before
            .iter()
            .all(|e| e.event == "run" || e.event == "token"),
        "no terminal event before the node went away"
    );
    // The client reconnects, here to B, and resumes where it was.
    let all = resumed_on(&b.base, &before).await;
    assert_contiguous(&all, 1);
    let end = all.last().unwrap();
    assert_eq!(
        end.event, "error",
        "the run could not finish within the grace"
    );
    assert_eq!(end.data["code"], "node_lost");
    drop(a);
}

#[tokio::test]
async fn a_redis_restart_mid_run_loses_nothing_and_refuses_new_runs_meanwhile() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (a, b) = (node(&redis), node(&redis));
    let id = create_run(&a.base, json!({"tokens": 150, "interval_ms": 20})).await;
    let watcher = tokio::spawn({
        let url = format!("{}/api/runs/{id}/events", b.base);
        async move { read(&url, None, usize::MAX).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.stop();
    // While Redis is down, a new run is refused with a clear error.
    let response = reqwest::Client::new()
        .post(format!("{}/api/runs", a.base))
        .json(&json!({"prompt": "down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "hub_unavailable", "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.run();
    let seen = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .expect("the run completes on B after the restart")
        .unwrap();
    assert_contiguous(&seen, 1);
    assert_eq!(seen.len(), 152, "every event, once");
    assert_eq!(seen.last().unwrap().event, "done");
    let (_, snapshot) = get_json(&format!("{}/api/runs/{id}", a.base)).await;
    assert_eq!(snapshot["text"].as_str().unwrap(), text_of(&seen));
    // And new runs work again.
    create_run(&a.base, json!({"tokens": 1})).await;
}

#[tokio::test]
async fn the_disconnect_grace_counts_subscribers_on_every_node() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    // A one-shot run on A, whose client leaves A and comes back on B: the
    // run goes on past A's 1 s grace, to its natural end.
    let url = format!(
        "{}/api/agent/stream?prompt=move&tokens=60&interval_ms=50",
        a.base
    );
    let (first, _) = read(&url, None, 3).await;
    let all = resumed_on(&b.base, &first).await;
    assert_contiguous(&all, 1);
    let end = all.last().unwrap();
    assert_eq!(end.event, "done");
    assert_eq!(
        end.data["finish_reason"], "stop",
        "not cancelled: B's subscriber counted"
    );
    assert_eq!(all.len(), 62);

    // One whose client leaves for good is cancelled after the grace.
    let url = format!(
        "{}/api/agent/stream?prompt=leave&tokens=200&interval_ms=50",
        a.base
    );
    let (first, _) = read(&url, None, 3).await;
    let run = first[0].id.rsplit_once(':').unwrap().0.to_owned();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (_, snapshot) = get_json(&format!("{}/api/runs/{run}", b.base)).await;
        if snapshot["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "still {snapshot}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A finished run asked of a node that did not drive it: `204` for a
/// resume from its last event, `410` once its retention is over.
#[tokio::test]
async fn the_other_node_answers_204_for_a_finished_run_and_410_once_it_is_evicted() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let retention = [("SLUICE_RUNS_RETENTION_SECS", "1")];
    let (a, b) = (node_with(&redis, &retention), node_with(&redis, &retention));
    // Runs on A, read to their end there; each resumed from B after its
    // last event.
    let run_to_end = || async {
        let id = create_run(&a.base, json!({"tokens": 3, "interval_ms": 0})).await;
        let (events, _) = read(
            &format!("{}/api/runs/{id}/events", a.base),
            None,
            usize::MAX,
        )
        .await;
        assert_eq!(events.last().unwrap().event, "done");
        (id, events.last().unwrap().id.clone())
    };
    let resume_on_b = |id: String, last_id: String| {
        reqwest::Client::new()
            .get(format!("{}/api/runs/{id}/events", b.base))
            .header("last-event-id", last_id)
            .send()
    };

    let (first, last_id) = run_to_end().await;
    let response = resume_on_b(first, last_id).await.unwrap();
    assert_eq!(response.status(), 204, "nothing after the terminal event");

    // A second run, which B never saw, asked of B after its retention.
    let (second, last_id) = run_to_end().await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let response = resume_on_b(second.clone(), last_id).await.unwrap();
    assert_eq!(response.status(), 410);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "run_evicted");
    let (status, _) = get_json(&format!("{}/api/runs/{second}", b.base)).await;
    assert_eq!(status, 410);
}

/// The `data` of each event of `response`, until it ends or after `stop_after`.
async fn data_of(response: reqwest::Response, stop_after: usize) -> Vec<(String, String)> {
    let mut stream = response.bytes_stream().eventsource();
    let mut seen = Vec::new();
    while let Some(Ok(event)) = stream.next().await {
        seen.push((event.id, event.data));
        if seen.len() >= stop_after {
            break;
        }
    }
    seen
}

/// useChat sends to A, the page reloads, and its resume reaches B.
async fn assert_a_chat_started_on_a_resumes_on_b(client: &reqwest::Client, a: &Served, b: &Served) {
    let sent = client
        .post(format!("{}/api/chat?tokens=40&interval_ms=30", a.base))
        .json(
            &json!({"id": "chat-1", "trigger": "submit-message", "messages": [
                {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hello"}]}
            ]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let run = sent.headers()["x-run-id"].to_str().unwrap().to_owned();
    let first = data_of(sent, 4).await;
    let resumed = client
        .get(format!("{}/api/chat/chat-1/stream", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200, "B finds the chat A started");
    assert_eq!(resumed.headers()["x-run-id"], run.as_str());
    let all = data_of(resumed, usize::MAX).await;
    assert_eq!(all[..4], first[..], "from the run's first event");
    assert_eq!(all.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = all[..all.len() - 1]
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter(|c| c["type"] == "text-delta")
        .map(|c| c["delta"].as_str().unwrap().to_owned())
        .collect();
    let (_, snapshot) = get_json(&format!("{}/api/runs/{run}", a.base)).await;
    assert_eq!(text, snapshot["text"].as_str().unwrap());
    assert_eq!(chunks[chunks.len() - 1]["type"], "finish");
    for base in [&a.base, &b.base] {
        let again = client
            .get(format!("{base}/api/chat/chat-1/stream"))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 204, "finished: {base}");
    }
}

/// An OpenAI stream from A, cut, resumed on B after the last id read.
async fn assert_an_openai_stream_started_on_a_resumes_on_b(
    client: &reqwest::Client,
    a: &Served,
    b: &Served,
) {
    let sent = client
        .post(format!("{}/v1/chat/completions", a.base))
        .json(
            &json!({"model": "sim", "stream": true, "max_tokens": 40, "interval_ms": 30,
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    let run = sent.headers()["x-run-id"].to_str().unwrap().to_owned();
    let mut all = data_of(sent, 5).await;
    let rest = client
        .get(format!("{}/api/runs/{run}/events?format=openai", b.base))
        .header("last-event-id", &all.last().unwrap().0)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 200);
    all.extend(data_of(rest, usize::MAX).await);
    assert_eq!(all.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = all[..all.len() - 1]
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"] == "assistant")
        .count();
    assert_eq!(roles, 1);
    assert!(chunks.iter().all(|c| c["id"] == format!("chatcmpl-{run}")));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (_, snapshot) = get_json(&format!("{}/api/runs/{run}", b.base)).await;
    assert_eq!(text, snapshot["text"].as_str().unwrap());
    assert_eq!(snapshot["status"], "done");
}

#[tokio::test]
async fn chats_and_openai_streams_started_on_one_node_resume_on_the_other() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let client = reqwest::Client::new();
    assert_a_chat_started_on_a_resumes_on_b(&client, &a, &b).await;
    assert_an_openai_stream_started_on_a_resumes_on_b(&client, &a, &b).await;
}
