//! SPEC 10, `kind = "http"`: an endpoint of the user's application as an
//! agent. A small application server, started here on a free port, answers
//! in each format and fails in each way; Sluice relays it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

use crate::helpers::*;

/// One request the application received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Application {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When a streaming answer was dropped by its reader.
    aborted_at: Arc<Mutex<Option<Instant>>>,
}

impl Application {
    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

struct AbortWatch(Arc<Mutex<Option<Instant>>>);

impl Drop for AbortWatch {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

enum Step {
    Send(&'static str),
    Bytes(&'static [u8]),
    Sleep(u64),
    Break,
}

fn answer(
    app: &Application,
    content_type: &str,
    extra: Option<(&str, &str)>,
    steps: Vec<Step>,
) -> Response {
    let watch = AbortWatch(app.aborted_at.clone());
    let stream = async_stream::stream! {
        let _watch = watch;
        for step in steps {
            match step {
                Step::Send(text) => yield Ok(Bytes::from_static(text.as_bytes())),
                Step::Bytes(bytes) => yield Ok(Bytes::from_static(bytes)),
                Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::Break => yield Err(std::io::Error::other("the application crashed")),
            }
        }
    };
    let mut response = Response::builder().header("content-type", content_type);
    if let Some((name, value)) = extra {
        response = response.header(name, value);
    }
    response.body(Body::from_stream(stream)).unwrap()
}

async fn route(
    State(app): State<Application>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    app.seen.lock().unwrap().push(Seen {
        method,
        uri,
        headers,
        body,
    });
    use Step::*;
    let ui = Some(("x-vercel-ai-ui-message-stream", "v1"));
    match name.as_str() {
        "ndjson" => answer(&app, "application/x-ndjson", None, vec![
            Send("{\"event\":\"token\",\"text\":\"Hel\"}\n{\"event\":\"tok"),
            Send("en\",\"text\":\"lo\"}\n\n{\"event\":\"tool_call\",\"id\":\"c1\"}\n"),
            Send("{\"event\":\"done\",\"finish_reason\":\"length\",\"usage\":{\"output_tokens\":2}}\n"),
        ]),
        "ndjson-open" => answer(&app, "application/x-ndjson", None, vec![Send("{\"event\":\"token\",\"text\":\"a\"}\n")]),
        "ndjson-bad" => answer(&app, "application/x-ndjson", None, vec![Send("{\"event\":\"token\",\"text\":\"a\"}\nnot json\n")]),
        // The seed's GET route handler: `data: ${JSON.stringify(chunk)}\n\n`.
        "seed" => answer(&app, "text/event-stream", None, vec![
            Send("data: {\"type\":\"token\",\"content\":\"Once\"}\n\n"),
            Sleep(30),
            Send("data: {\"type\":\"token\",\"content\":\" upon\"}\n\n"),
            Send("data: {\"type\":\"status\",\"step\":2}\n\n"),
            Send("data: \" a time\"\n\n"),
        ]),
        "sse-named" => answer(&app, "text/event-stream", None, vec![
            Send("event: token\ndata: {\"text\":\"x\"}\n\n"),
            Send("event: error\ndata: {\"code\":\"quota_exceeded\",\"message\":\"no more\"}\n\n"),
        ]),
        "openai" => answer(&app, "text/event-stream", None, vec![
            Send("data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n"),
            Send("data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"),
        ]),
        "openai-cut" => answer(&app, "text/event-stream", None, vec![
            Send("data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n"),
        ]),
        "ai-sdk" => answer(&app, "text/event-stream", ui, vec![
            Send("data: {\"type\":\"start\",\"messageId\":\"m1\"}\n\n"),
            Send("data: {\"type\":\"text-start\",\"id\":\"t\"}\n\n"),
            Send("data: {\"type\":\"text-delta\",\"id\":\"t\",\"delta\":\"Bon\"}\n\n"),
            Send("data: {\"type\":\"text-delta\",\"id\":\"t\",\"delta\":\"jour\"}\n\n"),
            Send("data: {\"type\":\"text-end\",\"id\":\"t\"}\n\n"),
            Send("data: {\"type\":\"finish\"}\n\ndata: [DONE]\n\n"),
        ]),
        "ai-sdk-cut" => answer(&app, "text/event-stream", ui, vec![
            Send("data: {\"type\":\"text-delta\",\"id\":\"t\",\"delta\":\"Bon\"}\n\n"),
        ]),
        // "né ✓" with both characters split between chunks.
        "text" => answer(&app, "text/plain; charset=utf-8", None, vec![
            Bytes(b"n\xc3"), Bytes(b"\xa9 \xe2\x9c"), Bytes(b"\x93"),
        ]),
        "broken" => answer(&app, "text/plain", None, vec![Send("partial"), Sleep(20), Break]),
        "ndjson-broken" => answer(&app, "application/x-ndjson", None, vec![Send("{\"event\":\"token\",\"text\":\"partial\"}\n"), Sleep(20), Break]),
        "sse-broken" => answer(&app, "text/event-stream", None, vec![Send("data: \"partial\"\n\n"), Sleep(20), Break]),
        "openai-broken" => answer(&app, "text/event-stream", None, vec![
            Send("data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial\"},\"finish_reason\":null}]}\n\n"),
            Sleep(20),
            Break,
        ]),
        "ai-sdk-broken" => answer(&app, "text/event-stream", ui, vec![
            Send("data: {\"type\":\"text-delta\",\"id\":\"t\",\"delta\":\"partial\"}\n\n"),
            Sleep(20),
            Break,
        ]),
        "idle" => answer(&app, "text/plain", None, vec![Send("first"), Sleep(30_000)]),
        "plain-ndjson" => answer(&app, "text/plain", None, vec![Send("{\"event\":\"token\",\"text\":\"a\"}\n")]),
        "silent" => answer(&app, "text/plain", None, vec![Sleep(30_000)]),
        "slow" => answer(&app, "text/plain", None, (0..600).flat_map(|_| [Send("."), Sleep(50)]).collect()),
        "error500" => Response::builder()
            .status(500)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"error":{"message":"the database is down"}}"#))
            .unwrap(),
        _ => Response::builder().status(404).body(Body::empty()).unwrap(),
    }
}

async fn application() -> (String, Application) {
    let app = Application::default();
    let router = Router::new()
        .route("/{name}", any(route))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), app)
}

/// Sluice with one `http` agent per route of the application.
async fn sluice(base: &str, extra: &str) -> TestApp {
    let mut toml = String::new();
    for name in [
        "ndjson",
        "ndjson-open",
        "ndjson-bad",
        "sse-named",
        "openai",
        "openai-cut",
        "ai-sdk",
        "ai-sdk-cut",
        "text",
        "broken",
        "silent",
        "slow",
        "error500",
        "ndjson-broken",
        "sse-broken",
        "openai-broken",
        "ai-sdk-broken",
        "idle",
    ] {
        toml.push_str(&format!(
            "[agents.{name}]\nkind = \"http\"\nurl = \"{base}/{name}\"\n{extra}\n"
        ));
    }
    toml.push_str(&format!(
        "[agents.seed]\nkind = \"http\"\nmethod = \"GET\"\nurl = \"{base}/seed\"\nparams = {{ style = \"how to answer\" }}\n"
    ));
    spawn_with(&toml).await
}

fn end(events: &[SseEvent]) -> (&str, &Value) {
    let last = events.last().expect("events");
    (last.event.as_str(), &last.data)
}

/// The events of a one-shot run of `agent` through `sluice`.
async fn relayed(sluice: &TestApp, agent: &str) -> Vec<SseEvent> {
    sluice
        .events(&format!("/api/agent/stream?agent={agent}&prompt=hi"))
        .await
}

/// `ndjson`: whole, without a terminal line, and with a bad line.
async fn assert_ndjson_is_relayed(sluice: &TestApp) {
    let events = relayed(sluice, "ndjson").await;
    assert_contiguous(&events, 1);
    assert_eq!(tokens_of(&events), ["Hel", "lo"]);
    assert!(events
        .iter()
        .any(|e| e.event == "tool_call" && e.data == json!({"id": "c1"})));
    assert_eq!(end(&events).1["finish_reason"], "length");
    assert_eq!(end(&events).1["usage"]["output_tokens"], 2);

    let events = relayed(sluice, "ndjson-open").await;
    assert_eq!(end(&events).0, "done");
    assert_eq!(
        end(&events).1["finish_reason"],
        "stop",
        "a clean end without a terminal line"
    );
    let events = relayed(sluice, "ndjson-bad").await;
    assert_eq!(tokens_of(&events), ["a"]);
    assert_eq!(end(&events).1["code"], "upstream_bad_chunk");
}

/// `sse` with named events, `openai` and `ai-sdk`, whole and cut.
async fn assert_sse_openai_and_ai_sdk_are_relayed(sluice: &TestApp) {
    let events = relayed(sluice, "sse-named").await;
    assert_eq!(tokens_of(&events), ["x"]);
    assert_eq!(end(&events).0, "error");
    assert_eq!(
        end(&events).1,
        &json!({"code": "quota_exceeded", "message": "no more"})
    );

    let events = relayed(sluice, "openai").await;
    assert_eq!(tokens_of(&events), ["Hi"]);
    assert_eq!(end(&events).1["finish_reason"], "stop");
    let events = relayed(sluice, "openai-cut").await;
    assert_eq!(
        end(&events).1["code"],
        "upstream_truncated",
        "no finish_reason"
    );

    let events = relayed(sluice, "ai-sdk").await;
    assert_eq!(tokens_of(&events), ["Bon", "jour"]);
    assert_eq!(end(&events).0, "done");
    assert_eq!(end(&events).1["finish_reason"], "stop");
    let events = relayed(sluice, "ai-sdk-cut").await;
    assert_eq!(tokens_of(&events), ["Bon"]);
    assert_eq!(
        end(&events).1["code"],
        "upstream_truncated",
        "no finish chunk"
    );
}

/// `text` (UTF-8 split across chunks), a body cut short, and a 500.
async fn assert_text_a_broken_body_and_a_500_are_relayed(sluice: &TestApp) {
    let events = relayed(sluice, "text").await;
    assert_eq!(text_of(&events), "né ✓");
    assert!(
        tokens_of(&events).iter().all(|t| !t.contains('\u{fffd}')),
        "{:?}",
        tokens_of(&events)
    );
    assert_eq!(end(&events).1["finish_reason"], "stop");

    let events = relayed(sluice, "broken").await;
    assert_eq!(text_of(&events), "partial");
    assert_eq!(
        end(&events).1["code"],
        "upstream_truncated",
        "a body cut short"
    );

    let events = relayed(sluice, "error500").await;
    assert_eq!(end(&events).1["code"], "upstream_http_500");
    assert_eq!(end(&events).1["message"], "the database is down");
}

#[tokio::test]
async fn each_format_is_relayed_and_ends_as_the_table_says() {
    let (base, _app) = application().await;
    let sluice = sluice(&base, "").await;
    assert_ndjson_is_relayed(&sluice).await;
    assert_sse_openai_and_ai_sdk_are_relayed(&sluice).await;
    assert_text_a_broken_body_and_a_500_are_relayed(&sluice).await;
}

#[tokio::test]
async fn the_seeds_get_route_works_unchanged() {
    let (base, app) = application().await;
    let sluice = sluice(&base, "").await;
    let events = sluice
        .events("/api/agent/stream?agent=seed&prompt=tell%20me&style=short")
        .await;
    assert_eq!(tokens_of(&events), ["Once", " upon", " a time"]);
    assert!(events
        .iter()
        .any(|e| e.event == "message" && e.data == json!({"type": "status", "step": 2})));
    assert_eq!(end(&events).1["finish_reason"], "stop");
    let seen = app.last();
    assert_eq!(seen.method, Method::GET);
    let query: Vec<(String, String)> = form_urlencoded::parse(seen.uri.query().unwrap().as_bytes())
        .into_owned()
        .collect();
    let run_id = events[0].data["run_id"].as_str().unwrap();
    assert_eq!(
        query,
        [
            ("run_id".to_owned(), run_id.to_owned()),
            ("prompt".to_owned(), "tell me".to_owned()),
            ("style".to_owned(), "short".to_owned())
        ]
    );
    assert_eq!(seen.headers["x-run-id"], run_id);
    assert_eq!(
        seen.headers["accept"],
        "text/event-stream, application/x-ndjson, text/plain"
    );
    // A parameter the agent does not list is refused before any request.
    let response = sluice.get("/api/agent/stream?agent=seed&tone=dry").await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_post_carries_the_run_and_is_signed() {
    let (base, app) = application().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::env::set_var("SLUICE_TEST_SIGNING_SECRET", secret);
    std::env::set_var("SLUICE_TEST_APP_KEY", "k-123");
    let sluice = sluice(
        &base,
        "signing_secret_env = \"SLUICE_TEST_SIGNING_SECRET\"\napi_key_env = \"SLUICE_TEST_APP_KEY\"\nheaders = { \"X-Team\" = \"search\" }\n",
    )
    .await;
    let id = sluice
        .create_run(json!({"agent": "ndjson", "messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}))
        .await;
    sluice
        .wait_for_status(&id, "done", Duration::from_secs(10))
        .await;
    let seen = app.last();
    assert_eq!(seen.method, Method::POST);
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        json!({"run_id": id, "prompt": "c", "params": {}, "request": null, "messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]})
    );
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["x-team"], "search");
    assert_eq!(seen.headers["authorization"], "Bearer k-123");
    assert_eq!(seen.headers["webhook-id"], id.as_str());
    let timestamp: u64 = seen.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(timestamp) < 60, "a current timestamp");
    // Checked by an implementation Sluice did not write: Python's hmac.
    let expected = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64, hashlib, hmac, sys\n\
             key = base64.b64decode(sys.argv[1].removeprefix('whsec_'))\n\
             signed = f'{sys.argv[2]}.{sys.argv[3]}.'.encode() + sys.stdin.buffer.read()\n\
             print('v1,' + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode())",
            secret,
            &id,
            &timestamp.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&seen.body)?;
            child.wait_with_output()
        })
        .expect("python3");
    let expected = String::from_utf8(expected.stdout).unwrap();
    assert_eq!(seen.headers["webhook-signature"], expected.trim());
}

#[tokio::test]
async fn timeouts_and_an_unreachable_application_are_reported() {
    let (base, _app) = application().await;
    let sluice = sluice(&base, "first_token_timeout_secs = 1\nmax_run_secs = 2\n").await;
    let started = Instant::now();
    let events = sluice.events("/api/agent/stream?agent=silent").await;
    assert_eq!(end(&events).1["code"], "upstream_first_token_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let events = sluice.events("/api/agent/stream?agent=slow").await;
    assert_eq!(end(&events).1["code"], "upstream_run_timeout");
    assert!(text_of(&events).len() > 5, "it streamed until the limit");

    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let gone = spawn_with(&format!(
        "[agents.gone]\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/agent\"\n"
    ))
    .await;
    let events = gone.events("/api/agent/stream?agent=gone").await;
    assert_eq!(end(&events).1["code"], "upstream_unreachable");
}

#[tokio::test]
async fn a_cancel_aborts_the_applications_request_within_a_second() {
    let (base, app) = application().await;
    let sluice = sluice(&base, "").await;
    let id = sluice.create_run(json!({"agent": "slow"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, snapshot) = sluice.get_json(&format!("/api/runs/{id}")).await;
        if snapshot["events"].as_u64().unwrap_or(0) >= 3 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.aborted_at.lock().unwrap().is_none(), "still streaming");
    let cancelled_at = Instant::now();
    assert_eq!(
        sluice.delete(&format!("/api/runs/{id}")).await.status(),
        202
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let aborted = loop {
        if let Some(at) = *app.aborted_at.lock().unwrap() {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "the application's request was never aborted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let after = aborted.saturating_duration_since(cancelled_at);
    eprintln!("http agent: the application's request aborted {after:?} after DELETE");
    assert!(
        after < Duration::from_secs(1),
        "aborted {after:?} after the cancel"
    );
}

/// A connection that breaks mid-body is `upstream_truncated` in every
/// format, with what arrived before it kept.
#[tokio::test]
async fn a_broken_connection_is_truncation_in_every_format() {
    let (base, _app) = application().await;
    let sluice = sluice(&base, "").await;
    for agent in [
        "broken",
        "ndjson-broken",
        "sse-broken",
        "openai-broken",
        "ai-sdk-broken",
    ] {
        let events = sluice
            .events(&format!("/api/agent/stream?agent={agent}"))
            .await;
        assert_eq!(text_of(&events), "partial", "{agent}");
        assert_eq!(end(&events).0, "error", "{agent}");
        assert_eq!(end(&events).1["code"], "upstream_truncated", "{agent}");
    }

    // A reset (RST) after the headers and one chunk, and a body shorter
    // than its Content-Length: both are truncation too.
    for (name, head, reset) in [
        (
            "reset",
            "transfer-encoding: chunked\r\n\r\n7\r\npartial\r\n",
            true,
        ),
        ("short", "content-length: 100\r\n\r\npartial", false),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16 * 1024];
            let _ = socket.read(&mut buf).await;
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n{head}");
            socket.write_all(answer.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if reset {
                socket.set_zero_linger().unwrap();
            }
            drop(socket);
        });
        let cut = spawn_with(&format!(
            "[agents.cut]\nkind = \"http\"\nurl = \"http://{addr}/agent\"\n"
        ))
        .await;
        let events = cut.events("/api/agent/stream?agent=cut").await;
        assert_eq!(text_of(&events), "partial", "{name}");
        assert_eq!(end(&events).1["code"], "upstream_truncated", "{name}");
    }
}

#[tokio::test]
async fn a_quiet_application_hits_the_idle_timeout() {
    let (base, _app) = application().await;
    let sluice = sluice(&base, "idle_timeout_secs = 1\n").await;
    let started = Instant::now();
    let events = sluice.events("/api/agent/stream?agent=idle").await;
    assert_eq!(tokens_of(&events), ["first"]);
    assert_eq!(end(&events).1["code"], "upstream_idle_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// The disconnect grace and max_run_secs drop the request too.
#[tokio::test]
async fn the_grace_and_the_run_limit_abort_the_applications_request() {
    let (base, app) = application().await;
    let sluice = spawn_with(&format!(
        "[runs]\ndisconnect_grace_secs = 1\n[agents.slow]\nkind = \"http\"\nurl = \"{base}/slow\"\n"
    ))
    .await;
    let response = sluice.get("/api/agent/stream?agent=slow").await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    futures::StreamExt::next(&mut body).await;
    drop(body);
    let left = Instant::now();
    let deadline = left + Duration::from_secs(5);
    let aborted = loop {
        if let Some(at) = *app.aborted_at.lock().unwrap() {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "the grace never aborted the request"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let after = aborted.saturating_duration_since(left);
    eprintln!("http agent: aborted {after:?} after the client left (1 s grace)");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "aborted {after:?} after the client left, with a 1 s grace"
    );

    let (base, app) = application().await;
    let limited = spawn_with(&format!(
        "[agents.slow]\nkind = \"http\"\nurl = \"{base}/slow\"\nmax_run_secs = 1\n"
    ))
    .await;
    let started = Instant::now();
    let events = limited.events("/api/agent/stream?agent=slow").await;
    assert_eq!(end(&events).1["code"], "upstream_run_timeout");
    let ended = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let aborted = app
        .aborted_at
        .lock()
        .unwrap()
        .expect("the request was aborted");
    let after = aborted.saturating_duration_since(started);
    eprintln!("http agent: aborted at {after:?}, the 1 s run ended at {ended:?}");
    assert!(
        after < ended + Duration::from_secs(1),
        "aborted at {after:?}, the run ended at {ended:?}"
    );
}

/// `format` set in the config wins over what the headers say; only `auto`
/// looks at them (and at the first SSE event).
#[tokio::test]
async fn a_configured_format_wins_over_the_headers() {
    let (base, _app) = application().await;
    let sluice = spawn_with(&format!(
        "[agents.lines]\nkind = \"http\"\nurl = \"{base}/plain-ndjson\"\nformat = \"ndjson\"\n\
         [agents.plain]\nkind = \"http\"\nurl = \"{base}/plain-ndjson\"\n\
         [agents.as-sse]\nkind = \"http\"\nurl = \"{base}/openai\"\nformat = \"sse\"\n"
    ))
    .await;
    let events = sluice.events("/api/agent/stream?agent=lines").await;
    assert_eq!(tokens_of(&events), ["a"]);
    let events = sluice.events("/api/agent/stream?agent=plain").await;
    assert_eq!(
        text_of(&events),
        "{\"event\":\"token\",\"text\":\"a\"}\n",
        "auto: text/plain is text"
    );
    // Read as plain SSE, OpenAI chunks are `message` events, not tokens.
    let events = sluice.events("/api/agent/stream?agent=as-sse").await;
    assert!(tokens_of(&events).is_empty(), "{events:?}");
    let messages = events.iter().filter(|e| e.event == "message").count();
    assert_eq!(messages, 3, "two chunks and [DONE]: {events:?}");
    assert_eq!(end(&events).1["finish_reason"], "stop");
}
