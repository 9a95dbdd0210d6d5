//! SPEC 6, Configuration, `[hub] backend = "redis"`, and SPEC 13 across
//! nodes: pending webhooks live in Redis, outlive a killed node, survive a
//! restart, and failed ones are listed and retried through another node.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::cluster::*;
use crate::helpers::*;

/// Webhooks to `receiver` with quick retries and a 2 s timeout.
fn webhooks_config(receiver: &Receiver) -> String {
    format!(
        "[webhooks]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nallowed_urls = [\"{}\"]\ntimeout_secs = 2\nretry_secs = [1, 1, 1, 1, 1]\n",
        receiver.url("/hooks/")
    )
}

async fn create_hooked_run(base: &str, params: Value, hook: &str) -> String {
    let body = json!({"prompt": "hooked", "params": params, "webhook_url": hook});
    create_run_as(base, body).await
}

/// Waits until `base` lists the delivery of run `id` as `status`.
async fn delivery_of(base: &str, id: &str, status: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, body) = get_json(&format!("{base}/api/webhooks/deliveries")).await;
        let found = body["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["run_id"] == id && d["status"] == status)
            .cloned();
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {status} delivery of {id}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_pending_webhook_outlives_its_killed_node_with_one_attempt_at_a_time() {
    let Some(redis) = Redis::start() else { return };
    let hold = Duration::from_millis(300);
    let receiver = Receiver::start(
        vec![Answer::After(hold, 500), Answer::After(hold, 500)],
        Answer::After(hold, 200),
    )
    .await;
    let toml = webhooks_config(&receiver);
    let (mut a, b) = (
        node_with_config(&redis, &toml),
        node_with_config(&redis, &toml),
    );
    let id = create_hooked_run(&a.base, json!({"tokens": 2}), &receiver.url("/hooks/")).await;
    // Killed in the middle of its first attempt.
    receiver.wait_hits(1, Duration::from_secs(10)).await;
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let delivered = delivery_of(&b.base, &id, "delivered", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hits = receiver.hits();
    assert_eq!(
        hits.len(),
        3,
        "the killed attempt, a 500, then the 200: {hits:?}"
    );
    assert!(hits.iter().all(|hit| hit.id == hits[0].id), "{hits:?}");
    assert_eq!(hits.iter().filter(|hit| hit.answered == 200).count(), 1);
    assert_eq!(receiver.max_in_flight(), 1, "never two attempts at once");
    assert_eq!(delivered["id"], hits[0].id.as_str());
    assert_eq!(hits[2].body["data"]["id"], id.as_str());
    assert_eq!(hits[2].body["data"]["status"], "done");
}

#[tokio::test]
async fn a_run_whose_node_is_killed_gets_its_webhook_from_another_node() {
    let Some(redis) = Redis::start() else { return };
    let receiver = Receiver::start(Vec::new(), Answer::Status(200)).await;
    let toml = webhooks_config(&receiver);
    let (mut a, b) = (
        node_with_config(&redis, &toml),
        node_with_config(&redis, &toml),
    );
    let id = create_hooked_run(
        &a.base,
        json!({"tokens": 1000, "interval_ms": 20}),
        &receiver.url("/hooks/"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.child.kill().unwrap();
    let _ = a.child.wait();
    delivery_of(&b.base, &id, "delivered", Duration::from_secs(30)).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].body["data"]["id"], id.as_str());
    assert_eq!(
        hits[0].body["data"]["status"], "error",
        "ended by the reaper: node_lost"
    );
    let (_, snapshot) = get_json(&format!("{}/api/runs/{id}", b.base)).await;
    assert_eq!(hits[0].body["data"]["text"], snapshot["text"]);
}

#[tokio::test]
async fn pending_webhooks_survive_a_restart_of_the_only_node() {
    let Some(redis) = Redis::start() else { return };
    let receiver = Receiver::start(Vec::new(), Answer::Status(503)).await;
    let toml = webhooks_config(&receiver);
    let mut a = node_with_config(&redis, &toml);
    let id = create_hooked_run(&a.base, json!({"tokens": 2}), &receiver.url("/hooks/")).await;
    // Its first attempt failed and is recorded: the delivery is pending.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get_json(&format!(
            "{}/api/webhooks/deliveries?status=pending",
            a.base
        ))
        .await;
        if body["deliveries"][0]["attempts"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no pending delivery: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A clean stop (SIGTERM), then a new process on the same Redis.
    Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    let _ = a.child.wait();
    receiver.then(Answer::Status(200));
    let restarted = node_with_config(&redis, &toml);
    let delivered = delivery_of(&restarted.base, &id, "delivered", Duration::from_secs(30)).await;
    let hits = receiver.hits();
    assert_eq!(
        hits.len(),
        2,
        "the 503 before the restart, the 200 after: {hits:?}"
    );
    assert!(hits.iter().all(|hit| hit.id == hits[0].id));
    assert_eq!(hits[1].answered, 200);
    assert_eq!(delivered["attempts"], 2);
}

#[tokio::test]
async fn a_failed_webhook_is_listed_and_retried_through_another_node() {
    let Some(redis) = Redis::start() else { return };
    let receiver = Receiver::start(Vec::new(), Answer::Status(410)).await;
    let toml = webhooks_config(&receiver);
    let (a, b) = (
        node_with_config(&redis, &toml),
        node_with_config(&redis, &toml),
    );
    let id = create_hooked_run(&a.base, json!({"tokens": 2}), &receiver.url("/hooks/")).await;
    let failed = delivery_of(&b.base, &id, "failed", Duration::from_secs(20)).await;
    assert_eq!(
        (failed["attempts"].as_u64(), failed["last_status"].as_u64()),
        (Some(1), Some(410))
    );
    let (_, listed) = get_json(&format!("{}/api/webhooks/deliveries?status=failed", b.base)).await;
    assert_eq!(listed["deliveries"].as_array().unwrap().len(), 1);
    receiver.then(Answer::Status(200));
    let delivery = failed["id"].as_str().unwrap();
    let client = reqwest::Client::new();
    let retry = |base: String| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("{base}/api/webhooks/deliveries/{delivery}/retry"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, pending) = retry(b.base.clone()).await;
    assert_eq!((status, &pending["status"]), (202, &json!("pending")));
    let delivered = delivery_of(&a.base, &id, "delivered", Duration::from_secs(20)).await;
    assert_eq!(delivered["attempts"], 2);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[1].id, delivery);
    let (status, refused) = retry(a.base.clone()).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (409, &json!("delivery_not_failed"))
    );
    let response = client
        .post(format!("{}/api/webhooks/deliveries/msg_none/retry", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}
