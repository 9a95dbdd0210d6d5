//! Shared by every test module: spawning apps, reading streams, cutting
//! connections (here); the real binary as a child process (`binary.rs`);
//! a mock OpenAI-compatible upstream (`upstream.rs`); nodes sharing one
//! Redis (`cluster.rs`).

mod binary;
pub mod cluster;
pub mod upstream;

pub use binary::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use sluice::config::Config;
use sluice::http::{serve, AppState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A server running inside the test process on a free port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

pub async fn spawn_app() -> TestApp {
    spawn_with("").await
}

/// A server with the given config file text.
pub async fn spawn_with(toml: &str) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        sluice::telemetry::init(sluice::cli::LogFormat::Text);
    }
    let config = Config::from_toml(toml, Vec::new()).expect("test config");
    let state = AppState::new(config).expect("state");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, state, async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        _shutdown: tx,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// `POST /api/runs` with `body`; the new run's id.
    pub async fn create_run(&self, body: Value) -> String {
        let response = self
            .client
            .post(self.url("/api/runs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// Reads a whole SSE response.
    pub async fn events(&self, path: &str) -> Vec<SseEvent> {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        collect(response).await
    }

    /// Polls the snapshot until its text is `text`, for at most 10 s.
    pub async fn wait_for_text(&self, run_id: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, snapshot) = self.get_json(&format!("/api/runs/{run_id}")).await;
            if snapshot["text"] == text {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the text never became {text:?}: {snapshot}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the snapshot until `status` or the deadline.
    pub async fn wait_for_status(&self, run_id: &str, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, snapshot) = self.get_json(&format!("/api/runs/{run_id}")).await;
            if snapshot["status"] == status || Instant::now() > deadline {
                return snapshot;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One parsed event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

/// All events of a response, in order, until the server ends it.
pub async fn collect(response: reqwest::Response) -> Vec<SseEvent> {
    let mut stream = response.bytes_stream().eventsource();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let Ok(event) = event else { break };
        events.push(parse(event));
    }
    events
}

pub fn parse(event: eventsource_stream::Event) -> SseEvent {
    SseEvent {
        data: serde_json::from_str(&event.data).unwrap_or(Value::Null),
        id: event.id,
        event: event.event,
    }
}

/// The concatenated text of the `token` events.
pub fn text_of(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.data["text"].as_str().unwrap_or_default())
        .collect()
}

/// The token texts, one per event.
pub fn tokens_of(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.data["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Asserts ids are `{run}:{first..}` without gap or duplicate; returns the run id.
pub fn assert_contiguous(events: &[SseEvent], first: u64) -> String {
    let run = events[0].id.rsplit_once(':').unwrap().0.to_owned();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.id,
            format!("{run}:{}", first + i as u64),
            "event {i}: {event:?}"
        );
    }
    run
}

/// What a reconnecting client (like `EventSource`) saw.
pub struct Reconnected {
    pub events: Vec<SseEvent>,
    pub connections: usize,
    pub run_ids: Vec<String>,
}

/// Reads `url` like `EventSource`: on a dropped connection, reconnect with
/// `Last-Event-ID` until a terminal event or a `204`.
pub async fn read_reconnecting(client: &reqwest::Client, url: &str) -> Reconnected {
    let mut seen = Reconnected {
        events: Vec::new(),
        connections: 0,
        run_ids: Vec::new(),
    };
    let mut last_id: Option<String> = None;
    while seen.connections < 10 {
        seen.connections += 1;
        let mut request = client.get(url);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let Ok(response) = request.send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if response.status() == 204 {
            break;
        }
        assert_eq!(response.status(), 200);
        if let Some(run) = response.headers().get("x-run-id") {
            seen.run_ids.push(run.to_str().unwrap().to_owned());
        }
        let mut stream = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = stream.next().await {
            let event = parse(event);
            last_id = Some(event.id.clone());
            let terminal = event.event == "done" || event.event == "error";
            seen.events.push(event);
            if terminal {
                return seen;
            }
        }
    }
    seen
}

/// A TCP proxy to `upstream` that cuts its first connection after `cut_after`
/// bytes from the server (mid-event, as a flaky network would) and passes
/// every later connection through whole.
pub async fn cutting_proxy(upstream: SocketAddr, cut_after: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let limit = if first { Some(cut_after) } else { None };
            first = false;
            tokio::spawn(pipe(client, upstream, limit));
        }
    });
    addr
}

async fn pipe(client: TcpStream, upstream: SocketAddr, limit: Option<usize>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let to_server = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut sent = 0usize;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = match limit {
            Some(limit) => n.min(limit - sent),
            None => n,
        };
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n;
        if limit == Some(sent) {
            break;
        }
    }
    to_server.abort();
    let _ = client_write.shutdown().await;
}

/// A small deterministic generator, so that a failure can be replayed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Publishes `words` as token lines to a push run's `url` the way a
/// flaky worker would, then `done`: batches from somewhat before what the
/// run holds to somewhat after, each body cut into random pieces (lines
/// split anywhere), one in four sent twice, always with `Sluice-Offset`.
/// Asserts each answer's offset.
pub async fn publish_randomly(client: &reqwest::Client, url: &str, seed: u64, words: &[String]) {
    let mut rng = XorShift::new(seed);
    let line = |text: &str| format!("{}\n", serde_json::json!({"event": "token", "text": text}));
    let mut offset = 0usize;
    while offset < words.len() {
        let from = offset - rng.below(offset.min(6) as u64 + 1) as usize;
        let to = (from + 1 + rng.below(12) as usize).min(words.len());
        let body: String = words[from..to].iter().map(|w| line(w)).collect();
        let mut chunks = Vec::new();
        let mut rest = body.into_bytes();
        while !rest.is_empty() {
            let at = (1 + rng.below(40) as usize).min(rest.len());
            chunks.push(rest.drain(..at).collect::<Vec<u8>>());
        }
        for _ in 0..1 + usize::from(rng.below(4) == 0) {
            let pieces = chunks.clone().into_iter().map(Ok::<_, std::io::Error>);
            let response = client
                .post(url)
                .header("content-type", "application/x-ndjson")
                .header("sluice-offset", from.to_string())
                .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 200, "seed {seed}, {from}..{to}: {answer}");
            assert_eq!(
                answer["offset"],
                to.max(offset),
                "seed {seed}, {from}..{to}"
            );
        }
        offset = to.max(offset);
    }
    let done = client
        .post(url)
        .header("sluice-offset", offset.to_string())
        .body("{\"event\":\"done\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200, "seed {seed}: the done line");
}

/// The test clients' venv python (`scripts/lib/openai_sdk.sh`: the `openai`
/// package, `httpx` and `standardwebhooks`), or `None` after a loud message when `test` is to
/// skip. Panics under CI=true when there is none.
pub fn clients_python(test: &str) -> Option<String> {
    let cause = if let Ok(error) = std::env::var("SLUICE_E2E_OPENAI_SDK_ERROR") {
        format!("the test clients' venv could not be set up: {error}")
    } else {
        match std::env::var("SLUICE_E2E_OPENAI_PYTHON") {
            Ok(python) if std::path::Path::new(&python).exists() => return Some(python),
            Ok(python) => format!("SLUICE_E2E_OPENAI_PYTHON={python} does not exist"),
            Err(_) => "SLUICE_E2E_OPENAI_PYTHON is not set (scripts/test sets it up with \
                       scripts/lib/openai_sdk.sh)"
                .to_owned(),
        }
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: the {test} test cannot run: {cause}");
    }
    eprintln!("\n!!! SKIPPING the {test} test: {cause} !!!\n");
    None
}

/// `python script`, talking to loopback only (no proxy from the
/// environment), unbuffered, with its output piped and killed when dropped.
pub fn python_command(python: &str, script: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .env("NO_PROXY", "127.0.0.1,localhost,::1")
        .env("no_proxy", "127.0.0.1,localhost,::1")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        command.env_remove(proxy).env_remove(proxy.to_lowercase());
    }
    command
}

/// Counts a request out of a [`Receiver`] when dropped.
struct InFlight(std::sync::Arc<ReceiverState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a test webhook receiver answers to one request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// This status at once.
    Status(u16),
    /// This status after holding the request this long.
    After(Duration, u16),
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Value,
    /// When it arrived, from the receiver's start.
    pub at: Duration,
    /// What it is answered (unless the sender gives up first).
    pub answered: u16,
}

/// A webhook receiver on a free loopback port: answers each request with
/// the next planned [`Answer`], then with `then`; records every request
/// and how many it held at once at most.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: std::sync::Arc<ReceiverState>,
}

struct ReceiverState {
    started: Instant,
    plan: std::sync::Mutex<(std::collections::VecDeque<Answer>, Answer)>,
    hits: std::sync::Mutex<Vec<Hit>>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

impl Receiver {
    pub async fn start(plan: Vec<Answer>, then: Answer) -> Self {
        use std::sync::atomic::Ordering;
        let state = std::sync::Arc::new(ReceiverState {
            started: Instant::now(),
            plan: std::sync::Mutex::new((plan.into(), then)),
            hits: std::sync::Mutex::new(Vec::new()),
            in_flight: 0.into(),
            max_in_flight: 0.into(),
        });
        let app = axum::Router::new().fallback({
            let state = state.clone();
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    // Counted out however the request ends, even when the
                    // sender gives up on it and the handler is dropped.
                    let _leaving = InFlight(state.clone());
                    let answer = {
                        let mut plan = state.plan.lock().unwrap();
                        let then = plan.1;
                        plan.0.pop_front().unwrap_or(then)
                    };
                    let (hold, status) = match answer {
                        Answer::Status(status) => (Duration::ZERO, status),
                        Answer::After(hold, status) => (hold, status),
                    };
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    // Recorded on arrival: a request held past the
                    // sender's timeout still counts.
                    state.hits.lock().unwrap().push(Hit {
                        path: uri.path().to_owned(),
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        at: state.started.elapsed(),
                        answered: status,
                    });
                    tokio::time::sleep(hold).await;
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// From now on, answer `answer` once the plan is used up.
    pub fn then(&self, answer: Answer) {
        self.state.plan.lock().unwrap().1 = answer;
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// The most requests it held at once.
    pub fn max_in_flight(&self) -> usize {
        self.state
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` requests have arrived; panics after `within`.
    pub async fn wait_hits(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} requests, not {n}, within {within:?}: {hits:?}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A request sent for its JSON answer, whatever its status.
pub trait JsonAnswer {
    /// Sends the request and reads the answer's body as JSON.
    fn json_answer(self) -> impl std::future::Future<Output = Value>;
}

impl JsonAnswer for reqwest::RequestBuilder {
    async fn json_answer(self) -> Value {
        self.send().await.unwrap().json().await.unwrap()
    }
}

/// POSTs `body` as JSON to `path`, with `key` as a bearer token if given.
pub async fn post_json(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

/// A config with two keys: `alice-key` (alice) and `bob-key` (bob).
pub const ALICE_AND_BOB: &str = "[[auth.keys]]\nname = \"alice\"\nkey = \"alice-key\"\n\n[[auth.keys]]\nname = \"bob\"\nkey = \"bob-key\"\n";
