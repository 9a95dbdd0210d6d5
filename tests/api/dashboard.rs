//! SPEC 7, The dashboard: its files, embedded in the binary or read from
//! `--web-dir`, with their types and security headers.

use std::process::Command;

use crate::helpers::*;

#[tokio::test]
async fn the_dashboard_and_its_files_are_served_with_their_types() {
    let app = spawn_app().await;
    for (path, content_type, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<label for=\"prompt\">Prompt</label>",
        ),
        (
            "/index.html",
            "text/html; charset=utf-8",
            "<script type=\"module\" src=\"/app.js\">",
        ),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            "new EventSource(",
        ),
        (
            "/webhooks.js",
            "text/javascript; charset=utf-8",
            "export class WebhooksPanel",
        ),
        (
            "/style.css",
            "text/css; charset=utf-8",
            "prefers-color-scheme: dark",
        ),
        ("/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
    let (status, body) = app.get_json("/secrets.txt").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(app.get("/..%2FCargo.toml").await.status(), 404);
}

#[tokio::test]
async fn the_page_uses_no_external_resources_and_no_inline_code() {
    let app = spawn_app().await;
    let html = app.get("/").await.text().await.unwrap();
    let css = app.get("/style.css").await.text().await.unwrap();
    let js = app.get("/app.js").await.text().await.unwrap();
    let hooks_js = app.get("/webhooks.js").await.text().await.unwrap();
    for (name, text) in [
        ("index.html", &html),
        ("style.css", &css),
        ("app.js", &js),
        ("webhooks.js", &hooks_js),
    ] {
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{name} refers to another origin"
        );
    }
    assert!(
        !html.contains("<style"),
        "no inline styles: a strict CSP must hold"
    );
    assert!(!html.contains(" style=\""), "no inline style attributes");
    assert!(!html.contains("<script>"), "no inline scripts");
}

#[tokio::test]
async fn web_dir_serves_the_files_from_disk_on_every_request() {
    let dir = std::env::temp_dir().join(format!("sluice-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>first edit</h1>").unwrap();
    let served = serve_binary(
        &["--bind", "127.0.0.1:0", "--web-dir", dir.to_str().unwrap()],
        &[],
    );
    let base = served.base.clone();
    /// Fetches `path` as text.
    async fn text(url: String) -> String {
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }
    let page = text(format!("{base}/")).await;
    assert_eq!(page, "<h1>first edit</h1>");
    std::fs::write(dir.join("index.html"), "<h1>second edit</h1>").unwrap();
    let page = text(format!("{base}/")).await;
    assert_eq!(page, "<h1>second edit</h1>", "no restart needed");
    let missing = reqwest::get(format!("{base}/app.js")).await.unwrap();
    assert_eq!(
        missing.status(),
        404,
        "a file missing from --web-dir is not found"
    );
    drop(served);

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "127.0.0.1:0", "--web-dir"])
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("index.html"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_dashboard_is_served_with_security_headers() {
    let app = spawn_app().await;
    for path in ["/", "/app.js", "/webhooks.js", "/style.css"] {
        let response = app.get(path).await;
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
    }
}
