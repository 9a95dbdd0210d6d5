//! SPEC 12, Push runs: the Python push worker example (examples/push_worker.py,
//! httpx with a streamed request body) run for real against a Sluice in this
//! process: it publishes a whole run while a subscriber reads it, it survives
//! its streamed publish being cut mid-body by retrying with `Sluice-Offset`
//! (every word exactly once), it takes a `409 run_finished` after a lost answer
//! for the success it was, and it stops, saying so, when the run is cancelled
//! under it.
//!
//! httpx lives in the venv that scripts/test makes and caches with the
//! openai SDK (scripts/lib/openai_sdk.sh) and passes as
//! SLUICE_E2E_OPENAI_PYTHON, or SLUICE_E2E_OPENAI_SDK_ERROR when it could not
//! be made. Under CI=true a missing venv fails these tests; elsewhere they
//! skip loudly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout};

use crate::helpers::*;

const KEY: &str = "worker-test-key";

/// An app whose one key is [`KEY`].
async fn spawn_with_worker_key() -> TestApp {
    spawn_with(&format!("[[auth.keys]]\nname = \"w\"\nkey = \"{KEY}\"\n")).await
}

/// What the application does first: `POST /api/runs` for a push run, whose
/// answer carries the worker's publish URL.
async fn create_push_run(app: &TestApp) -> Value {
    app.client
        .post(app.url("/api/runs"))
        .bearer_auth(KEY)
        .json(&json!({"agent": "push", "prompt": "a job"}))
        .json_answer()
        .await
}
/// A worker publishes for a few seconds; a slow, busy machine gets far more.
const TIMEOUT: Duration = Duration::from_secs(120);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/push_worker.py")
}

/// The text a worker with `--words n` publishes.
fn words(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("{}word{i}", if i == 1 { "" } else { " " }))
        .collect()
}

/// examples/push_worker.py running as a child process.
struct Worker {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
    /// The stdout lines read so far.
    seen: String,
}

impl Worker {
    fn start(python: &str, args: &[&str]) -> Self {
        let mut command = python_command(python, &script());
        command.args(args);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {}: {e}", script().display()));
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes).await;
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Self {
            child,
            stdout,
            stderr,
            seen: String::new(),
        }
    }

    /// The id of the run the worker created: its first line, `run ID`.
    async fn run_id(&mut self) -> String {
        let line = tokio::time::timeout(TIMEOUT, self.stdout.next_line())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default();
        self.seen.push_str(&format!("{line}\n"));
        match line.strip_prefix("run ") {
            Some(id) => id.to_owned(),
            None => panic!("the worker did not start with `run ID`: {line:?}"),
        }
    }

    /// Waits for the worker's exit: its status, its stdout and its
    /// stderr. Panics with its output when it does not exit in time.
    async fn finish(mut self) -> (ExitStatus, String, String) {
        let mut stdout = std::mem::take(&mut self.seen);
        let status = tokio::time::timeout(TIMEOUT, async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                stdout.push_str(&format!("{line}\n"));
            }
            self.child.wait().await
        })
        .await;
        if status.is_err() {
            let _ = self.child.kill().await;
        }
        let stderr = self.stderr.await.unwrap_or_default();
        match status {
            Ok(Ok(status)) => (status, stdout, stderr),
            _ => panic!(
                "the worker did not finish within {TIMEOUT:?} (killed)\n\
                 --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ),
        }
    }
}

/// `GET path` with the key.
async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_worker_publishes_a_run_that_a_subscriber_reads_as_it_comes() {
    let Some(python) = clients_python("Python push worker") else {
        return;
    };
    let app = spawn_with_worker_key().await;
    let base = app.url("");
    let mut worker = Worker::start(
        &python,
        &[&base, "--key", KEY, "--words", "30", "--delay", "0.1"],
    );
    let id = worker.run_id().await;
    let response = app
        .client
        .get(app.url(&format!("/api/runs/{id}/events")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reading = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut first_token = None;
        let mut stream = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = stream.next().await {
            let event = parse(event);
            if event.event == "token" && first_token.is_none() {
                first_token = Some(Instant::now());
            }
            events.push(event);
        }
        (events, first_token)
    });
    let (status, stdout, stderr) = worker.finish().await;
    let exited = Instant::now();
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(status.success(), "the worker failed ({status})\n{output}");
    assert!(
        stdout.ends_with("run done: 31 events published\n"),
        "{output}"
    );
    let (events, first_token) = tokio::time::timeout(TIMEOUT, reading)
        .await
        .expect("the subscriber's stream ends with the run")
        .unwrap();
    assert!(
        first_token.is_some_and(|t| t < exited),
        "the subscriber read tokens while the worker was still publishing\n{output}"
    );
    assert_eq!(assert_contiguous(&events, 1), id);
    assert_eq!(events[0].event, "run");
    assert_eq!(tokens_of(&events), words(30));
    let end = events.last().unwrap();
    assert_eq!(
        (end.event.as_str(), &end.data["finish_reason"]),
        ("done", &json!("stop"))
    );
    assert_eq!(events.len(), 32);
    let snapshot = get_json(&app, &format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["text"], words(30).concat());
    assert_eq!(snapshot["status"], "done");
    assert_eq!(snapshot["agent"], "push");
    eprintln!("{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_mid_body_retries_with_its_offset_and_publishes_each_word_once() {
    let Some(python) = clients_python("Python push worker") else {
        return;
    };
    let app = spawn_with_worker_key().await;
    // The application creates the run and hands the worker its publish URL
    // (a token scoped to publishing to that run): the worker has no key.
    let created = create_push_run(&app).await;
    let id = created["id"].as_str().unwrap();
    let publish_url = created["publish_url"].as_str().unwrap();
    assert!(publish_url.contains("access_token="), "{created}");
    // Each line is a chunk of some 43 bytes: the cut falls inside the fifth.
    let (proxy, forwarded) = request_cutting_proxy(app.addr, 200).await;
    let worker = Worker::start(
        &python,
        &[
            &format!("http://{proxy}"),
            "--publish-url",
            publish_url,
            "--words",
            "20",
            "--delay",
            "0.05",
        ],
    );
    let (status, stdout, stderr) = worker.finish().await;
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(status.success(), "the worker failed ({status})\n{output}");
    // The first publish really was cut mid-line, after whole lines that
    // Sluice kept: the retry from offset 0 had them skipped.
    let cut = forwarded.lock().unwrap().clone();
    let body = &cut[cut.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    let whole_lines = body.windows(2).filter(|w| w == b"}\n").count();
    assert!(
        (1..20).contains(&whole_lines) && !body.ends_with(b"\r\n"),
        "the proxy cut after {whole_lines} whole lines: {:?}",
        String::from_utf8_lossy(body)
    );
    assert!(
        stderr.contains("connection lost") && stderr.contains("retrying from offset 0"),
        "{output}"
    );
    assert!(
        stdout.ends_with("run done: 21 events published\n"),
        "{output}"
    );
    let snapshot = get_json(&app, &format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["status"], "done", "{snapshot}");
    assert_eq!(snapshot["text"], words(20).concat());
    assert_eq!(snapshot["events"], 22);
    let response = app
        .client
        .get(app.url(&format!("/api/runs/{id}/events")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let events = collect(response).await;
    assert_contiguous(&events, 1);
    assert_eq!(tokens_of(&events), words(20), "each word exactly once");
    eprintln!("{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_last_answer_is_lost_retries_and_learns_its_done_made_it() {
    let Some(python) = clients_python("Python push worker") else {
        return;
    };
    let app = spawn_with_worker_key().await;
    let created = create_push_run(&app).await;
    let id = created["id"].as_str().unwrap();
    // The whole body, done included, reaches Sluice; its 200 answer is cut
    // after 20 bytes, so the worker retries a run that has ended.
    let proxy = cutting_proxy(app.addr, 20).await;
    let worker = Worker::start(
        &python,
        &[
            &format!("http://{proxy}"),
            "--publish-url",
            created["publish_url"].as_str().unwrap(),
            "--words",
            "20",
            "--delay",
            "0.02",
        ],
    );
    let (status, stdout, stderr) = worker.finish().await;
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(status.success(), "the worker failed ({status})\n{output}");
    assert!(stderr.contains("connection lost"), "{output}");
    assert!(
        stdout.ends_with("run done: 21 events published (only the answer was lost)\n"),
        "{output}"
    );
    let snapshot = get_json(&app, &format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["status"], "done", "{snapshot}");
    assert_eq!(snapshot["text"], words(20).concat());
    assert_eq!(snapshot["events"], 22);
    eprintln!("{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_run_is_cancelled_stops_and_says_so() {
    let Some(python) = clients_python("Python push worker") else {
        return;
    };
    let app = spawn_app().await;
    // 200 words at 0.1 s: 20 s of work, which the cancel cuts short.
    let mut worker = Worker::start(&python, &[&app.url(""), "--words", "200", "--delay", "0.1"]);
    let id = worker.run_id().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
        if snapshot["text"]
            .as_str()
            .is_some_and(|text| text.starts_with("word1 word2 word3"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no words published: {snapshot}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = Instant::now();
    assert_eq!(app.delete(&format!("/api/runs/{id}")).await.status(), 202);
    let (status, stdout, stderr) = worker.finish().await;
    let waited = cancelled.elapsed();
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert_eq!(
        status.code(),
        Some(3),
        "the documented exit status\n{output}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "the worker stopped {waited:?} after the cancel\n{output}"
    );
    let (_, snapshot) = app.get_json(&format!("/api/runs/{id}")).await;
    assert_eq!(snapshot["status"], "cancelled");
    let published = snapshot["usage"]["output_tokens"].as_u64().unwrap();
    assert!(
        stdout.ends_with(&format!(
            "run cancelled (not by this worker) after {published} events: stopping\n"
        )),
        "{output}"
    );
    assert_eq!(
        snapshot["text"],
        words(usize::try_from(published).unwrap()).concat()
    );
    eprintln!("{output}");
}

/// A TCP proxy to `upstream` that cuts its first connection once the client
/// has sent its request head and `cut_after` bytes of body: a long streamed
/// publish dropped mid-request, as a worker's network would drop it. Later
/// connections pass through whole. Also returns what the cut connection
/// forwarded to the server.
async fn request_cutting_proxy(
    upstream: SocketAddr,
    cut_after: usize,
) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let forwarded = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&forwarded);
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let limit = first.then_some(cut_after);
            first = false;
            tokio::spawn(pipe_request(client, upstream, limit, Arc::clone(&record)));
        }
    });
    (addr, forwarded)
}

async fn pipe_request(
    client: TcpStream,
    upstream: SocketAddr,
    body_limit: Option<usize>,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let to_client = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let Some(body_limit) = body_limit else {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
        let _ = to_client.await;
        return;
    };
    let mut sent = Vec::new();
    let mut limit = None;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = sent.len();
        sent.extend_from_slice(&buf[..n]);
        if limit.is_none() {
            limit = sent
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|head| head + 4 + body_limit);
        }
        let end = limit.map_or(sent.len(), |limit| sent.len().min(limit));
        sent.truncate(end);
        if server_write.write_all(&sent[before..]).await.is_err() {
            break;
        }
        if limit == Some(end) {
            break;
        }
    }
    *record.lock().unwrap() = sent;
    // Both sockets closed at once, mid-request: the server reads a body that
    // breaks off, the client a connection that is gone.
    to_client.abort();
}
