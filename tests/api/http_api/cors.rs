//! SPEC 3, HTTP API, CORS (not in SPEC): off by default; on for the
//! configured origins only, credentials included.

use crate::helpers::*;

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/api/runs"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,last-event-id",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn no_origin_is_allowed_by_default() {
    let app = spawn_app().await;
    let response = preflight(&app, "https://app.example.com").await;
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let response = app
        .client
        .get(app.url("/api/agents"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test]
async fn configured_origins_may_call_with_credentials_and_others_may_not() {
    let app = spawn_with("[server]\ncors_origins = [\"https://app.example.com\"]\n").await;
    let response = preflight(&app, "https://app.example.com").await;
    assert!(response.status().is_success());
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for header in [
        "authorization",
        "last-event-id",
        "x-api-key",
        "content-type",
    ] {
        assert!(allowed.contains(header), "{allowed}");
    }
    let response = app
        .client
        .get(app.url("/api/agent/stream?tokens=1&interval_ms=0"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("x-run-id"), "{exposed}");
    let other = preflight(&app, "https://evil.example.com").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
