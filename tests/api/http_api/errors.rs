//! SPEC 3, HTTP API, errors: every mistake gets a JSON error with the right
//! status and code, and none of them disturbs a run streaming meanwhile.

use serde_json::{json, Value};

use crate::helpers::*;

enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
}

/// A bad request: method, path, body, and the status and error code it gets.
type Case = (&'static str, String, Body, u16, &'static str);

/// Bad parameters on the one-shot route.
fn stream_cases(big_prompt: &str) -> Vec<Case> {
    vec![
        (
            "GET",
            "/api/agent/stream?tokens=0".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?tokens=100001".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?tokens=ten".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?interval_ms=-1".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?interval_ms=60001".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?seed=abc".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?tokens=5&fail_after=5".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?colour=red".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?tokens=1&tokens=2".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            "/api/agent/stream?agent=nope".into(),
            Body::None,
            400,
            "unknown_agent",
        ),
        (
            "GET",
            "/api/agent/stream?last_event_id=garbage".into(),
            Body::None,
            400,
            "invalid_param",
        ),
        (
            "GET",
            format!("/api/agent/stream?prompt={big_prompt}"),
            Body::None,
            413,
            "prompt_too_large",
        ),
    ]
}

/// Bad bodies for `POST /api/runs`.
fn post_cases(big_prompt: &str) -> Vec<Case> {
    vec![
        (
            "POST",
            "/api/runs".into(),
            Body::Raw(b"not json".to_vec()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/runs".into(),
            Body::Raw(Vec::new()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/runs".into(),
            Body::Json(json!({"prompt": 5})),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/runs".into(),
            Body::Json(json!({"params": [1]})),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/runs".into(),
            Body::Json(json!({"promt": "typo"})),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/runs".into(),
            Body::Json(json!({"params": {"tokens": 0}})),
            400,
            "invalid_param",
        ),
        (
            "POST",
            "/api/runs".into(),
            Body::Json(json!({"agent": "nope"})),
            400,
            "unknown_agent",
        ),
        (
            "POST",
            "/api/runs".into(),
            Body::Json(json!({"prompt": big_prompt})),
            413,
            "prompt_too_large",
        ),
        (
            "POST",
            "/api/runs".into(),
            Body::Raw(vec![b' '; 2 * 1024 * 1024]),
            413,
            "body_too_large",
        ),
    ]
}

/// Unknown runs and routes, wrong methods.
fn route_cases() -> Vec<Case> {
    vec![
        (
            "GET",
            "/api/runs/0123456789abcdef0123456789abcdef".into(),
            Body::None,
            404,
            "run_not_found",
        ),
        (
            "GET",
            "/api/runs/not:an:id".into(),
            Body::None,
            404,
            "run_not_found",
        ),
        (
            "DELETE",
            "/api/runs/0123456789abcdef0123456789abcdef".into(),
            Body::None,
            404,
            "run_not_found",
        ),
        (
            "GET",
            "/api/runs/0123456789abcdef0123456789abcdef/events".into(),
            Body::None,
            404,
            "run_not_found",
        ),
        ("GET", "/nope".into(), Body::None, 404, "not_found"),
        ("GET", "/api/nope".into(), Body::None, 404, "not_found"),
        (
            "PUT",
            "/api/runs".into(),
            Body::None,
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/agent/stream".into(),
            Body::None,
            405,
            "method_not_allowed",
        ),
    ]
}

/// Sends one bad request and checks its JSON error.
async fn assert_json_error(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Body,
    status: u16,
    code: &str,
) {
    let mut request = app.client.request(method.parse().unwrap(), app.url(path));
    request = match body {
        Body::None => request,
        Body::Json(value) => request.json(&value),
        Body::Raw(bytes) => request
            .header("content-type", "application/json")
            .body(bytes),
    };
    let response = request.send().await.unwrap();
    let shown = &path[..path.len().min(80)];
    assert_eq!(response.status().as_u16(), status, "{method} {shown}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{method} {shown}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{method} {shown}: {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.len() > 3, "{method} {shown}: {body}");
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors_and_disturbs_no_other_run() {
    let app = spawn_app().await;
    // A run streaming while the bad requests come in.
    let witness_url = app.url("/api/agent/stream?prompt=witness&tokens=60&interval_ms=10");
    let client = app.client.clone();
    let witness =
        tokio::spawn(async move { collect(client.get(witness_url).send().await.unwrap()).await });

    let big_prompt = "x".repeat(40_000);
    let cases = stream_cases(&big_prompt)
        .into_iter()
        .chain(post_cases(&big_prompt))
        .chain(route_cases());
    for (method, path, body, status, code) in cases {
        assert_json_error(&app, method, &path, body, status, code).await;
    }

    let (_, list) = app.get_json("/api/runs").await;
    assert_eq!(
        list["runs"].as_array().unwrap().len(),
        1,
        "no bad request started a run"
    );
    let events = witness.await.unwrap();
    assert_contiguous(&events, 1);
    assert_eq!(events.last().unwrap().data["finish_reason"], "stop");
    let expected = app
        .events("/api/agent/stream?prompt=witness&tokens=60&interval_ms=0")
        .await;
    assert_eq!(text_of(&events), text_of(&expected));
}

#[tokio::test]
async fn invalid_param_messages_name_the_parameter() {
    let app = spawn_app().await;
    for (query, param) in [
        ("tokens=0", "tokens"),
        ("interval_ms=x", "interval_ms"),
        ("seed=-3", "seed"),
        ("tokens=3&fail_after=9", "fail_after"),
        ("temperature=1", "temperature"),
    ] {
        let (status, body) = app.get_json(&format!("/api/agent/stream?{query}")).await;
        assert_eq!(status, 400);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(param), "{query}: {message}");
    }
}

#[tokio::test]
async fn oversized_urls_and_heads_are_refused_and_the_server_goes_on() {
    let app = spawn_app().await;
    let long = "x".repeat(70 * 1024);
    let (status, body) = app
        .get_json(&format!("/api/agents?q={}", &long[..62 * 1024]))
        .await;
    assert_eq!(status, 414);
    assert_eq!(body["error"]["code"], "uri_too_long");
    // A 1 MB query goes past what the HTTP parser reads at all: 431 from it, no body.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "GET /api/agent/stream?prompt={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "y".repeat(1024 * 1024)
    );
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut answer),
    )
    .await
    .unwrap()
    .unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "the server goes on"
    );
    let (_, metrics) = (0, app.get("/metrics").await.text().await.unwrap());
    assert!(
        metrics.contains("sluice_rejections_total{reason=\"uri_too_long\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_that_sends_its_headers_too_slowly_is_disconnected() {
    let app = spawn_with("[server]\nheader_read_timeout_secs = 1\n").await;
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 256];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut slow, &mut buf),
    )
    .await;
    let n = read
        .expect("the server gave up on the slow client")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(800) && took < std::time::Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "others are served meanwhile"
    );
}
