//! SPEC 13, Run webhooks on one node: which URLs are taken, the schedule
//! of attempts, the deliveries' API per key, the metric, the logs. The
//! signatures are verified by the official `standardwebhooks` libraries in
//! `tests/browser/webhooks.test.mjs` and `receivers.rs`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A server whose webhooks may go under `allowed`, with `more` settings.
fn config(allowed: &str, more: &str) -> String {
    format!(
        "[webhooks]\nsecret = \"{SECRET}\"\nallowed_urls = [\"{allowed}\"]\ntimeout_secs = 1\n{more}\n"
    )
}

/// `request`, with `key` as a bearer token if given: its status and JSON.
async fn answer(mut request: reqwest::RequestBuilder, key: Option<&str>) -> (u16, Value) {
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_run(app: &TestApp, key: Option<&str>, body: Value) -> (u16, Value) {
    answer(app.client.post(app.url("/api/runs")).json(&body), key).await
}

async fn deliveries(app: &TestApp, key: Option<&str>, query: &str) -> (u16, Value) {
    let url = app.url(&format!("/api/webhooks/deliveries{query}"));
    answer(app.client.get(url), key).await
}

async fn retry(app: &TestApp, key: Option<&str>, id: &str) -> (u16, Value) {
    let url = app.url(&format!("/api/webhooks/deliveries/{id}/retry"));
    answer(app.client.post(url), key).await
}

/// Waits until `key`'s only delivery has `status`; returns it.
async fn delivery_when(app: &TestApp, key: Option<&str>, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = deliveries(app, key, "").await;
        let first = body["deliveries"][0].clone();
        if first["status"] == status {
            return first;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery is not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_webhook_url_outside_allowed_urls_is_refused_and_starts_no_run() {
    let app = spawn_with(&config("https://app.example.com/hooks/", "")).await;
    for url in [
        "https://app.example.com.evil.net/hooks/",
        "https://app.example.com@evil.net/hooks/",
        "https://user:secret@app.example.com/hooks/",
        "http://app.example.com/hooks/",
        "ftp://app.example.com/hooks/",
        "https://app.example.com:8443/hooks/",
        "https://app.example.com/hooksevil",
        "https://app.example.com/hooks/../admin",
        "/hooks/relative",
        "not a url",
    ] {
        let (status, body) = post_run(&app, None, json!({"prompt": "x", "webhook_url": url})).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "invalid_param", "{url}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("webhook_url"),
            "{body}"
        );
    }
    let (_, runs) = app.get_json("/api/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "{runs}");
    // Under the prefix it is taken.
    let (status, _) = post_run(
        &app,
        None,
        json!({"prompt": "x", "params": {"tokens": 1}, "webhook_url": "https://app.example.com/hooks/a?b=c"}),
    )
    .await;
    assert_eq!(status, 201);

    // With webhooks off, any webhook_url is refused the same way.
    let off = spawn_app().await;
    let (status, body) = post_run(
        &off,
        None,
        json!({"prompt": "x", "webhook_url": "https://app.example.com/hooks/"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_param");
    let (_, runs) = off.get_json("/api/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn failed_attempts_follow_the_retry_schedule_with_one_webhook_id_then_fail() {
    let receiver = Receiver::start(Vec::new(), Answer::Status(500)).await;
    let app = spawn_with(&config(&receiver.url("/hooks/"), "retry_secs = [1, 2]")).await;
    let (status, run) = post_run(
        &app,
        None,
        json!({"prompt": "x", "params": {"tokens": 2}, "webhook_url": receiver.url("/hooks/run")}),
    )
    .await;
    assert_eq!(status, 201);
    let hits = receiver.wait_hits(3, Duration::from_secs(20)).await;
    let failed = delivery_when(&app, None, "failed").await;
    assert_eq!(hits.len(), 3, "three attempts, no fourth: {hits:?}");
    assert!(hits
        .iter()
        .all(|hit| hit.id == hits[0].id && hit.path == "/hooks/run"));
    assert!(hits[0].id.starts_with("msg_"));
    assert_eq!(hits[0].body["data"]["id"], run["id"]);
    // The waits between attempts are retry_secs: 1 s, then 2 s.
    let waits = [hits[1].at - hits[0].at, hits[2].at - hits[1].at];
    assert!(waits[0] >= Duration::from_millis(900), "{waits:?}");
    assert!(waits[1] >= Duration::from_millis(1900), "{waits:?}");
    assert!(waits[1] < Duration::from_secs(10), "{waits:?}");
    assert_eq!(failed["id"], hits[0].id.as_str());
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["last_status"], 500);
    assert!(failed["last_error"].as_str().unwrap().contains("500"));
    assert_eq!(failed["next_attempt_at"], Value::Null);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("sluice_webhook_deliveries_total{outcome=\"retried\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_webhook_deliveries_total{outcome=\"failed\"} 1"));
    assert!(metrics.contains("sluice_webhook_deliveries_total{outcome=\"delivered\"} 0"));
}

#[tokio::test]
async fn a_timeout_is_retried_and_a_2xx_delivers() {
    let receiver = Receiver::start(
        vec![Answer::After(Duration::from_secs(3), 200)],
        Answer::Status(204),
    )
    .await;
    let app = spawn_with(&config(&receiver.url("/hooks/"), "retry_secs = [1, 1]")).await;
    post_run(
        &app,
        None,
        json!({"prompt": "x", "params": {"tokens": 2}, "webhook_url": receiver.url("/hooks/")}),
    )
    .await;
    let delivered = delivery_when(&app, None, "delivered").await;
    assert_eq!(delivered["attempts"], 2);
    assert_eq!(delivered["last_status"], 204);
    assert_eq!(delivered["last_error"], Value::Null);
    let (_, pending) = deliveries(&app, None, "?status=pending").await;
    assert_eq!(pending["deliveries"].as_array().unwrap().len(), 0);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].id, hits[1].id);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("sluice_webhook_deliveries_total{outcome=\"retried\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_webhook_deliveries_total{outcome=\"delivered\"} 1"));
}

#[tokio::test]
async fn deliveries_are_listed_and_retried_by_their_own_key_only() {
    let receiver = Receiver::start(Vec::new(), Answer::Status(410)).await;
    let toml = format!(
        "{}\n[[auth.keys]]\nname = \"a\"\nkey = \"key-a\"\n[[auth.keys]]\nname = \"b\"\nkey = \"key-b\"\n",
        config(&receiver.url("/hooks/"), "retry_secs = [1, 1, 1]")
    );
    let app = spawn_with(&toml).await;
    let (status, run) = post_run(
        &app,
        Some("key-a"),
        json!({"prompt": "x", "params": {"tokens": 2}, "webhook_url": receiver.url("/hooks/")}),
    )
    .await;
    assert_eq!(status, 201);
    // 410 stops at once: one attempt, failed.
    let failed = delivery_when(&app, Some("key-a"), "failed").await;
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["last_status"], 410);
    assert_eq!(failed["run_id"], run["id"]);
    assert_eq!(receiver.hits().len(), 1);
    let id = failed["id"].as_str().unwrap().to_owned();

    let (status, listed) = deliveries(&app, Some("key-a"), "?status=failed").await;
    assert_eq!(status, 200);
    assert_eq!(listed["deliveries"].as_array().unwrap().len(), 1);
    let (_, none) = deliveries(&app, Some("key-a"), "?status=delivered").await;
    assert_eq!(none["deliveries"].as_array().unwrap().len(), 0);
    let (status, bad) = deliveries(&app, Some("key-a"), "?status=lost").await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (400, &json!("invalid_param"))
    );
    let (status, _) = deliveries(&app, None, "").await;
    assert_eq!(status, 401);

    // Another key neither sees nor retries it.
    let (_, theirs) = deliveries(&app, Some("key-b"), "").await;
    assert_eq!(theirs["deliveries"].as_array().unwrap().len(), 0);
    let (status, body) = retry(&app, Some("key-b"), &id).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("delivery_not_found"))
    );
    let (status, _) = retry(&app, Some("key-a"), "msg_unknown").await;
    assert_eq!(status, 404);
    assert_eq!(receiver.hits().len(), 1);

    // The owner sends it again, to a receiver that now takes it.
    receiver.then(Answer::Status(200));
    let (status, pending) = retry(&app, Some("key-a"), &id).await;
    assert_eq!(status, 202, "{pending}");
    assert_eq!(pending["id"], id.as_str());
    assert_eq!(pending["status"], "pending");
    let delivered = delivery_when(&app, Some("key-a"), "delivered").await;
    assert_eq!(delivered["attempts"], 2);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[1].id, id);
    let (status, body) = retry(&app, Some("key-a"), &id).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("delivery_not_failed"))
    );
    assert_eq!(body["status"], "delivered");
}

#[tokio::test]
async fn every_way_a_run_ends_sends_its_snapshot_once() {
    let receiver = Receiver::start(Vec::new(), Answer::Status(200)).await;
    let app = spawn_with(&config(&receiver.url("/hooks/"), "")).await;
    let hook = receiver.url("/hooks/");
    let (_, done) = post_run(
        &app,
        None,
        json!({"prompt": "done", "params": {"tokens": 5}, "webhook_url": hook}),
    )
    .await;
    let (_, error) = post_run(
        &app,
        None,
        json!({"prompt": "error", "params": {"tokens": 5, "fail_after": 2}, "webhook_url": hook}),
    )
    .await;
    let (_, cancelled) = post_run(
        &app,
        None,
        json!({"prompt": "cancel", "params": {"tokens": 500, "interval_ms": 20}, "webhook_url": hook}),
    )
    .await;
    let (_, plain) = post_run(
        &app,
        None,
        json!({"prompt": "no hook", "params": {"tokens": 2}}),
    )
    .await;
    let cancelled_id = cancelled["id"].as_str().unwrap();
    // Cancelled once it has streamed a few tokens.
    loop {
        let (_, snapshot) = app.get_json(&format!("/api/runs/{cancelled_id}")).await;
        if snapshot["events"].as_u64().unwrap() > 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.delete(&format!("/api/runs/{cancelled_id}"))
            .await
            .status(),
        202
    );
    let hits = receiver.wait_hits(3, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.hits().len(),
        3,
        "one each, none for the run without a hook"
    );
    for (run, status) in [
        (&done, "done"),
        (&error, "error"),
        (&cancelled, "cancelled"),
    ] {
        let id = run["id"].as_str().unwrap();
        let hit = hits
            .iter()
            .find(|hit| hit.body["data"]["id"] == id)
            .unwrap_or_else(|| panic!("no webhook for the {status} run"));
        let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
        assert_eq!(hit.body["type"], "run.finished");
        assert!(hit.body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(hit.body["data"]["status"], status);
        assert_eq!(
            hit.body["data"], snapshot,
            "the body's data is the run's snapshot"
        );
        assert!(!snapshot["text"].as_str().unwrap().is_empty());
        assert!(hit.signature.starts_with("v1,"));
        assert!(hit.timestamp.parse::<u64>().is_ok());
    }
    assert!(hits.iter().all(|hit| hit.body["data"]["id"] != plain["id"]));
    let (_, listed) = deliveries(&app, None, "?status=delivered").await;
    assert_eq!(listed["deliveries"].as_array().unwrap().len(), 3);
}

/// The logs at `debug` of a node that retries a delivery carry neither the
/// secret nor the body.
#[tokio::test]
async fn logs_carry_neither_the_secret_nor_the_body() {
    let receiver = Receiver::start(vec![Answer::Status(503)], Answer::Status(200)).await;
    let dir = std::env::temp_dir().join(format!("sluice-webhook-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("sluice.toml");
    std::fs::write(
        &config_path,
        config(&receiver.url("/hooks/"), "retry_secs = [1]"),
    )
    .unwrap();
    let log_path = dir.join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = [0u8; 256];
    let n = child.stdout.as_mut().unwrap().read(&mut line).unwrap();
    let line = String::from_utf8_lossy(&line[..n]).into_owned();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();
    let run: Value = client
        .post(format!("{base}/api/runs"))
        .json(&json!({"prompt": "zebra-quartz-marker", "params": {"tokens": 8}, "webhook_url": receiver.url("/hooks/")}))
        .json_answer().await;
    let hits = receiver.wait_hits(2, Duration::from_secs(20)).await;
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = hits[1].body["data"]["text"].as_str().unwrap().to_owned();
    assert_eq!(hits[1].body["data"]["id"], run["id"]);
    assert!(
        logs.contains(&hits[0].id),
        "the logs name the delivery:\n{logs}"
    );
    let secret = SECRET.trim_start_matches("whsec_");
    assert!(!logs.contains(secret), "the secret is in the logs");
    assert!(
        !logs.contains("zebra-quartz-marker"),
        "the body is in the logs"
    );
    assert!(!logs.contains("run.finished"), "the body is in the logs");
    assert!(!logs.contains(text.trim()), "the run's text is in the logs");
    assert!(
        !logs.contains(&hits[0].signature),
        "a signature is in the logs"
    );
}

#[tokio::test]
async fn a_pending_delivery_says_when_its_next_attempt_is_due() {
    let receiver = Receiver::start(Vec::new(), Answer::Status(500)).await;
    let app = spawn_with(&config(&receiver.url("/hooks/"), "retry_secs = [30]")).await;
    post_run(
        &app,
        None,
        json!({"prompt": "x", "params": {"tokens": 2}, "webhook_url": receiver.url("/hooks/")}),
    )
    .await;
    receiver.wait_hits(1, Duration::from_secs(20)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let pending = loop {
        let (_, body) = deliveries(&app, None, "?status=pending").await;
        if body["deliveries"][0]["attempts"] == 1 {
            break body["deliveries"][0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(pending["last_status"], 500);
    let next = humantime::parse_rfc3339(pending["next_attempt_at"].as_str().unwrap()).unwrap();
    let wait = next
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        wait > Duration::from_secs(20) && wait <= Duration::from_secs(31),
        "{pending}"
    );
}

/// SPEC 13: deliveries are listed newest first, and a retry starts its
/// delivery again as the newest.
#[tokio::test]
async fn a_retried_delivery_is_listed_first() {
    let receiver = Receiver::start(Vec::new(), Answer::Status(410)).await;
    let app = spawn_with(&config(&receiver.url("/hooks/"), "")).await;
    let mut runs = Vec::new();
    for n in 1..=2 {
        let body =
            json!({"prompt": "x", "params": {"tokens": 2}, "webhook_url": receiver.url("/hooks/")});
        let (status, run) = post_run(&app, None, body).await;
        assert_eq!(status, 201);
        runs.push(run["id"].clone());
        receiver.wait_hits(n, Duration::from_secs(20)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let (_, body) = deliveries(&app, None, "?status=failed").await;
        if body["deliveries"].as_array().unwrap().len() == 2 {
            break body["deliveries"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not both failed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&failed[0]["run_id"], &failed[1]["run_id"]),
        (&runs[1], &runs[0])
    );
    let (status, _) = retry(&app, None, failed[1]["id"].as_str().unwrap()).await;
    assert_eq!(status, 202);
    let (_, all) = deliveries(&app, None, "").await;
    assert_eq!(all["deliveries"][0]["run_id"], runs[0], "{all}");
    assert_eq!(all["deliveries"][1]["run_id"], runs[1], "{all}");
}
