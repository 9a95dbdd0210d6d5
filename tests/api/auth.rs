//! SPEC 8, Auth: keys, ownership, access tokens, session cookies, the abuse
//! table, and `--allow-anonymous` for a public address.

use std::process::Command;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use crate::helpers::*;

async fn app() -> TestApp {
    spawn_with(&format!(
        "[[auth.keys]]\nname = \"alice\"\nkey = \"alice-key\"\n\n[[auth.keys]]\nname = \"bob\"\nkey_sha256 = \"{}\"\n",
        bob_digest()
    ))
    .await
}

/// Bob's key is configured by its SHA-256, as `key_sha256`.
fn bob_digest() -> String {
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(b"bob-key");
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn with_key(key: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn create(app: &TestApp, client: &reqwest::Client, params: Value) -> Value {
    let response = client
        .post(app.url("/api/runs"))
        .json(&json!({"params": params}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn status(client: &reqwest::Client, method: &str, url: &str) -> u16 {
    client
        .request(method.parse().unwrap(), url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_api_route_needs_a_valid_key_and_the_open_routes_stay_open() {
    let app = app().await;
    let anonymous = reqwest::Client::new();
    let wrong = with_key("alice-kez");
    for (method, path) in [
        ("GET", "/api/agents"),
        ("GET", "/api/runs"),
        ("POST", "/api/runs"),
        ("GET", "/api/agent/stream"),
        ("GET", "/api/runs/0123456789abcdef0123456789abcdef"),
        ("DELETE", "/api/runs/0123456789abcdef0123456789abcdef"),
        ("GET", "/api/runs/0123456789abcdef0123456789abcdef/events"),
        ("POST", "/api/session"),
        ("POST", "/api/tokens"),
    ] {
        for client in [&anonymous, &wrong] {
            let response = client
                .request(method.parse().unwrap(), app.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{method} {path}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{method} {path}");
        }
    }
    for path in ["/", "/app.js", "/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            status(&anonymous, "GET", &app.url(path)).await,
            200,
            "{path}"
        );
    }
    // Both headers are accepted; a key from the file and one given as its digest.
    assert_eq!(
        status(&with_key("alice-key"), "GET", &app.url("/api/agents")).await,
        200
    );
    let x_api_key = anonymous
        .get(app.url("/api/agents"))
        .header("X-API-Key", "bob-key")
        .send()
        .await
        .unwrap();
    assert_eq!(x_api_key.status(), 200);
    let metrics = anonymous
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_rejections_total{reason=\"unauthorized\"} 18"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_key_sees_only_its_own_runs_and_others_get_404() {
    let app = app().await;
    let (alice, bob) = (with_key("alice-key"), with_key("bob-key"));
    let run = create(&app, &alice, json!({"tokens": 5, "interval_ms": 0})).await;
    let id = run["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/api/runs/{id}")),
        ("GET", format!("/api/runs/{id}/events")),
        ("GET", format!("/api/agent/stream?last_event_id={id}:1")),
        ("DELETE", format!("/api/runs/{id}")),
    ] {
        assert_eq!(
            status(&bob, method, &app.url(&path)).await,
            404,
            "bob {method} {path}"
        );
    }
    let bobs: Value = bob.get(app.url("/api/runs")).json_answer().await;
    assert_eq!(bobs["runs"], json!([]));
    let alices: Value = alice.get(app.url("/api/runs")).json_answer().await;
    assert_eq!(alices["runs"][0]["id"], id);
    let events = collect(
        alice
            .get(app.url(&format!("/api/runs/{id}/events")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tokens_of(&events).len(), 5);
}

#[tokio::test]
async fn events_url_carries_a_token_for_that_run_only() {
    let app = app().await;
    let alice = with_key("alice-key");
    let run = create(&app, &alice, json!({"tokens": 3, "interval_ms": 0})).await;
    let other = create(&app, &alice, json!({"tokens": 3, "interval_ms": 0})).await;
    let url = run["events_url"].as_str().unwrap();
    assert!(url.starts_with(&format!(
        "/api/runs/{}/events?access_token=",
        run["id"].as_str().unwrap()
    )));
    let plain = reqwest::Client::new();
    let events = collect(plain.get(app.url(url)).send().await.unwrap()).await;
    assert_eq!(
        tokens_of(&events).len(),
        3,
        "the URL works as it is, with no header"
    );
    let token = url.split("access_token=").nth(1).unwrap();
    let other_id = other["id"].as_str().unwrap();
    let run_id = run["id"].as_str().unwrap();
    for (path, expected) in [
        (
            format!("/api/runs/{other_id}/events?access_token={token}"),
            401,
        ),
        (format!("/api/agent/stream?access_token={token}"), 401),
        (format!("/api/runs/{run_id}?access_token={token}"), 401),
        (format!("/api/runs?access_token={token}"), 401),
        (
            format!("/api/agent/stream?last_event_id={run_id}:2&access_token={token}"),
            200,
        ),
    ] {
        assert_eq!(
            status(&plain, "GET", &app.url(&path)).await,
            expected,
            "{path}"
        );
    }
}

/// A key-scoped token starts runs that belong to its key, and reaches no
/// other key's run; no token is minted for another key's run.
async fn assert_a_key_token_reaches_its_keys_runs_only(
    app: &TestApp,
    alice: &reqwest::Client,
    plain: &reqwest::Client,
    token: &str,
    bobs_id: &str,
) {
    let one_shot = plain
        .get(app.url(&format!(
            "/api/agent/stream?tokens=2&interval_ms=0&access_token={token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        one_shot.status(),
        200,
        "a key token starts runs on the one-shot route"
    );
    let run_id = one_shot.headers()["x-run-id"].to_str().unwrap().to_owned();
    collect(one_shot).await;
    let (_, alices) = {
        let r = alice
            .get(app.url(&format!("/api/runs/{run_id}")))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(alices["id"], run_id.as_str(), "the run belongs to alice");
    assert_eq!(
        status(
            plain,
            "GET",
            &app.url(&format!("/api/runs/{bobs_id}/events?access_token={token}"))
        )
        .await,
        404,
        "alice's token does not reach bob's run"
    );
    let foreign = alice
        .post(app.url("/api/tokens"))
        .json(&json!({"run_id": bobs_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404, "no token for another key's run");
}

/// A token with a changed signature or payload, or no token at all: 401.
async fn assert_tampered_tokens_are_refused(app: &TestApp, plain: &reqwest::Client, token: &str) {
    let (payload, mac) = token.split_once('.').unwrap();
    let mut tampered_mac = mac.to_owned();
    tampered_mac.replace_range(0..1, if mac.starts_with('A') { "B" } else { "A" });
    for bad in [
        format!("{payload}.{tampered_mac}"),
        format!("{payload}x.{mac}"),
        "not-a-token".into(),
    ] {
        let response = plain
            .get(app.url(&format!("/api/agent/stream?access_token={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{bad}");
    }
}

/// A token past its `ttl_secs`: 401, saying it expired.
async fn assert_an_expired_token_is_refused(
    app: &TestApp,
    alice: &reqwest::Client,
    plain: &reqwest::Client,
) {
    let short: Value = alice
        .post(app.url("/api/tokens"))
        .json(&json!({"ttl_secs": 1}))
        .json_answer()
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = plain
        .get(app.url(&format!(
            "/api/agent/stream?access_token={}",
            short["token"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    let body: Value = expired.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

#[tokio::test]
async fn minted_tokens_are_scoped_and_refused_when_tampered_expired_or_foreign() {
    let app = app().await;
    let (alice, bob) = (with_key("alice-key"), with_key("bob-key"));
    let bobs_run = create(&app, &bob, json!({"tokens": 3, "interval_ms": 0})).await;
    let bobs_id = bobs_run["id"].as_str().unwrap();
    let minted: Value = alice.post(app.url("/api/tokens")).json_answer().await;
    assert_eq!(minted["scope"], "key");
    let token = minted["token"].as_str().unwrap();
    let plain = reqwest::Client::new();
    assert_a_key_token_reaches_its_keys_runs_only(&app, &alice, &plain, token, bobs_id).await;
    assert_tampered_tokens_are_refused(&app, &plain, token).await;
    assert_an_expired_token_is_refused(&app, &alice, &plain).await;
}

#[tokio::test]
async fn a_session_cookie_stands_for_the_key() {
    let app = app().await;
    let response = with_key("alice-key")
        .post(app.url("/api/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with("sluice_session="));
    let browser = reqwest::Client::new();
    let created = browser
        .post(app.url("/api/runs"))
        .header("cookie", &pair)
        .json(&json!({"params": {"tokens": 2, "interval_ms": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = browser
        .get(app.url(&format!("/api/runs/{id}/events")))
        .header("cookie", format!("theme=dark; {pair}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        events.status(),
        200,
        "EventSource sends the cookie by itself"
    );
    assert_eq!(
        status(
            &with_key("alice-key"),
            "GET",
            &app.url(&format!("/api/runs/{id}"))
        )
        .await,
        200,
        "the run belongs to the key behind the cookie"
    );
    let forged = browser
        .get(app.url("/api/runs"))
        .header("cookie", "sluice_session=forged.value")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let logout = browser
        .delete(app.url("/api/session"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert!(logout.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

/// One running run per key: a second is refused with 429 until the first
/// is cancelled; another key has its own limit.
async fn assert_one_running_run_per_key(
    app: &TestApp,
    alice: &reqwest::Client,
    bob: &reqwest::Client,
) {
    let post = |client: &reqwest::Client, params: Value| {
        client
            .post(app.url("/api/runs"))
            .json(&json!({"params": params}))
            .send()
    };

    // One running run per key.
    let long = post(alice, json!({"tokens": 1000, "interval_ms": 20}))
        .await
        .unwrap();
    assert_eq!(long.status(), 201);
    let long_id = long.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = post(alice, json!({"tokens": 1})).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"]["code"],
        "too_many_running_runs"
    );
    assert_eq!(
        post(bob, json!({"tokens": 1})).await.unwrap().status(),
        201,
        "bob has his own limit"
    );
    app.client
        .delete(app.url(&format!("/api/runs/{long_id}")))
        .header("authorization", "Bearer alice-key")
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn per_key_rate_and_concurrency_limits_answer_429_then_recover() {
    let app = spawn_with(&format!(
        "[auth]\nruns_per_minute = 30\nmax_running_per_key = 1\n\n[[auth.keys]]\nname = \"alice\"\nkey = \"alice-key\"\n\n\
         [[auth.keys]]\nname = \"bob\"\nkey_sha256 = \"{}\"\n",
        bob_digest()
    ))
    .await;
    let (alice, bob) = (with_key("alice-key"), with_key("bob-key"));
    let post = |client: &reqwest::Client, params: Value| {
        client
            .post(app.url("/api/runs"))
            .json(&json!({"params": params}))
            .send()
    };

    assert_one_running_run_per_key(&app, &alice, &bob).await;

    // 30 a minute: the burst is spent, then one comes back every two seconds.
    let mut accepted = 1; // the long run above
    let mut limited = None;
    for _ in 0..200 {
        let response = post(&alice, json!({"tokens": 1, "interval_ms": 0}))
            .await
            .unwrap();
        match response.status().as_u16() {
            201 => accepted += 1,
            429 => {
                let retry_after = response.headers().get("retry-after").cloned();
                let body: Value = response.json().await.unwrap();
                if body["error"]["code"] == "rate_limited" {
                    limited = Some((retry_after, body));
                    break;
                }
                // The previous one-token run was still running: the other limit.
                assert_eq!(body["error"]["code"], "too_many_running_runs");
            }
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (retry_after, body) = limited.expect("the rate limit was reached");
    assert!(
        (29..=31).contains(&accepted),
        "{accepted} runs before the limit"
    );
    let seconds: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("30 runs a minute"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        post(&alice, json!({"tokens": 1})).await.unwrap().status(),
        201,
        "recovered"
    );
}

#[test]
fn a_public_address_without_keys_needs_allow_anonymous() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "it never listened");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-anonymous"), "{stderr}");
}

#[tokio::test]
async fn a_public_address_with_keys_needs_no_flag_and_asks_for_them() {
    let served = serve_binary(
        &["--bind", "0.0.0.0:0"],
        &[("SLUICE_API_KEYS", "env-secret")],
    );
    let port = served.base.rsplit(':').next().unwrap();
    let url = format!("http://127.0.0.1:{port}/api/agents");
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 401);
    let allowed = reqwest::Client::new()
        .get(&url)
        .header("X-API-Key", "env-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
}

#[tokio::test]
async fn allow_anonymous_serves_a_public_address() {
    let served = serve_binary(&["--bind", "0.0.0.0:0", "--allow-anonymous"], &[]);
    assert!(
        served.base.starts_with("http://0.0.0.0:"),
        "{}",
        served.base
    );
    let port = served.base.rsplit(':').next().unwrap();
    let response = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// SPEC 5 and 8 together: an evicted run is `410` to its owner for a day,
/// and still `404` to another key, which must not learn it existed.
#[tokio::test]
async fn an_evicted_run_is_gone_to_its_owner_and_unknown_to_another_key() {
    // Each run of 20 tokens is about 2 KB of frames; the budget holds one.
    let app = spawn_with(&format!(
        "{ALICE_AND_BOB}\n[runs]\nretention_bytes = 3000\n"
    ))
    .await;
    let (alice, bob) = (with_key("alice-key"), with_key("bob-key"));
    let first = create(&app, &alice, json!({"tokens": 20, "interval_ms": 0})).await;
    let first = first["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        create(&app, &alice, json!({"tokens": 20, "interval_ms": 0})).await;
        let url = app.url(&format!("/api/runs/{first}"));
        if status(&alice, "GET", &url).await == 410 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {first} never evicted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for path in [
        format!("/api/runs/{first}"),
        format!("/api/runs/{first}/events"),
    ] {
        let url = app.url(&path);
        assert_eq!(status(&alice, "GET", &url).await, 410, "alice {path}");
        assert_eq!(status(&bob, "GET", &url).await, 404, "bob {path}");
    }
}
