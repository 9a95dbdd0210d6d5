//! SPEC 13, Run webhooks: the receiver example (examples/webhook_receiver.py,
//! on the official `standardwebhooks` package) run for real against a Sluice in
//! this process: the library verifies Sluice's signatures on the deliveries of
//! a run that is done, one that fails and one that is cancelled; each run is
//! handled exactly once, with its whole text, even when an answer is lost and
//! Sluice sends the delivery again; forged requests get `400` and are never
//! handled.
//!
//! standardwebhooks lives in the venv that scripts/test makes and caches
//! with the openai SDK (scripts/lib/openai_sdk.sh) and passes as
//! SLUICE_E2E_OPENAI_PYTHON, or SLUICE_E2E_OPENAI_SDK_ERROR when it could not
//! be made. Under CI=true a missing venv fails this test; elsewhere it skips
//! loudly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::helpers::*;

/// Made for this test: `whsec_` and 24 random bytes in base64.
const SECRET: &str = "whsec_Dk0Sw3MQieMOcAMbXzZ6hTzM/o73sZV/";
/// Each wait of this test: runs of a second or two and retries a second
/// apart; a slow, busy machine gets far more.
const DEADLINE: Duration = Duration::from_secs(20);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webhook_receiver.py")
}

/// examples/webhook_receiver.py running as a child process, its output
/// collected as it comes.
struct PythonReceiver {
    child: Child,
    addr: SocketAddr,
    /// Its stdout lines after `listening on …`: one per event it handled.
    lines: Arc<Mutex<Vec<String>>>,
    /// Its stderr: the access log and the refusals.
    stderr: Arc<Mutex<String>>,
}

impl PythonReceiver {
    /// Starts it on a free port and waits for its `listening on` line.
    async fn start(python: &str) -> Self {
        let mut command = python_command(python, &script());
        command.arg("0").env("SLUICE_WEBHOOK_SECRET", SECRET);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {}: {e}", script().display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                collected.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let mut out_lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(DEADLINE, out_lines.next_line())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default();
        let Some(addr) = first
            .strip_prefix("listening on http://")
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!(
                "the receiver did not start with `listening on http://ADDR`: {first:?}\n\
                 --- stderr ---\n{}",
                stderr.lock().unwrap()
            );
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        tokio::spawn(async move {
            while let Ok(Some(line)) = out_lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            addr,
            lines,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// What it printed, for a failure's message.
    fn output(&self) -> String {
        format!(
            "--- receiver stdout ---\n{}\n--- receiver stderr ---\n{}",
            self.lines().join("\n"),
            self.stderr.lock().unwrap()
        )
    }
}

/// `v1,<signature>` of one message, made here with `secret`, independently
/// of Sluice's own signing code.
fn sign(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs `body` to the receiver with these webhook headers; its status.
async fn post_to(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> u16 {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.unwrap().status().as_u16()
}

/// The server's deliveries, once there are `n` and all are delivered.
async fn all_delivered(app: &TestApp, n: usize, receiver: &PythonReceiver) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = app.get_json("/api/webhooks/deliveries").await;
        assert_eq!(status, 200, "{body}");
        let deliveries = body["deliveries"].as_array().cloned().unwrap_or_default();
        if deliveries.len() == n && deliveries.iter().all(|d| d["status"] == "delivered") {
            return deliveries;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} delivered deliveries within {DEADLINE:?}: {body:#}\n{}",
            receiver.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Forged requests, straight to the receiver: all refused, none handled.
/// How many there were.
async fn assert_forged_requests_are_refused(
    client: &reqwest::Client,
    hook: &str,
    receiver: &PythonReceiver,
) -> usize {
    let body = serde_json::to_vec(&json!({
        "type": "run.finished",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"id": "forged-run", "status": "done", "text": "forged"},
    }))
    .unwrap();
    let now = now_secs();
    let wrong_secret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let signed = |id: &str, timestamp: u64, signature: String| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ]
    };
    let forged = [
        (
            "signed with another secret",
            signed(
                "msg_forged1",
                now,
                sign(wrong_secret, "msg_forged1", now, &body),
            ),
        ),
        (
            "a body other than the one signed",
            signed("msg_forged2", now, sign(SECRET, "msg_forged2", now, b"{}")),
        ),
        (
            "signed rightly ten minutes ago (a replay)",
            signed(
                "msg_forged3",
                now - 600,
                sign(SECRET, "msg_forged3", now - 600, &body),
            ),
        ),
        ("without the webhook headers", Vec::new()),
    ];
    for (what, headers) in &forged {
        let status = post_to(client, hook, headers, &body).await;
        assert_eq!(status, 400, "a forged POST {what}\n{}", receiver.output());
    }
    forged.len()
}

/// Three runs, each with the webhook: done (through `proxy`), error,
/// cancelled once it has some text.
async fn three_runs_done_failed_and_cancelled(
    app: &TestApp,
    proxy: SocketAddr,
    hook: &str,
) -> (String, String, String) {
    let done = app
        .create_run(json!({
            "agent": "sim", "prompt": "a run that is done",
            "params": {"tokens": 8, "interval_ms": 10},
            "webhook_url": format!("http://{proxy}/hooks/runs"),
        }))
        .await;
    let failed = app
        .create_run(json!({
            "agent": "sim", "prompt": "a run that fails",
            "params": {"tokens": 20, "interval_ms": 10, "fail_after": 4},
            "webhook_url": hook,
        }))
        .await;
    let cancelled = app
        .create_run(json!({
            "agent": "sim", "prompt": "a run that is cancelled",
            "params": {"tokens": 2000, "interval_ms": 20},
            "webhook_url": hook,
        }))
        .await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, snapshot) = app.get_json(&format!("/api/runs/{cancelled}")).await;
        if snapshot["text"]
            .as_str()
            .is_some_and(|text| !text.is_empty())
        {
            break;
        }
        assert!(Instant::now() < deadline, "no tokens: {snapshot}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.delete(&format!("/api/runs/{cancelled}")).await.status(),
        202
    );
    (done, failed, cancelled)
}

/// Each run's snapshot once it has ended with `status`, some text in it.
async fn ended_with_text(app: &TestApp, runs: [(&String, &str); 3]) -> HashMap<String, Value> {
    let mut snapshots = HashMap::new();
    for (id, status) in runs {
        let snapshot = app.wait_for_status(id, status, DEADLINE).await;
        assert_eq!(snapshot["status"], status, "{snapshot}");
        assert!(
            snapshot["text"]
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "{snapshot}"
        );
        snapshots.insert(id.clone(), snapshot);
    }
    snapshots
}

/// Sluice counts each delivery delivered: the done run's on its second
/// attempt, which the receiver answered 200 as one it already had. The
/// deliveries by run.
async fn assert_each_delivery_is_delivered(
    app: &TestApp,
    receiver: &PythonReceiver,
    [done, failed, cancelled]: [&String; 3],
) -> HashMap<String, Value> {
    let deliveries = all_delivered(app, 3, receiver).await;
    let by_run: HashMap<String, Value> = deliveries
        .iter()
        .map(|d| (d["run_id"].as_str().unwrap().to_owned(), d.clone()))
        .collect();
    for (id, attempts, last_status) in [(done, 2, 200), (failed, 1, 204), (cancelled, 1, 204)] {
        let delivery = &by_run[id.as_str()];
        assert_eq!(
            (&delivery["attempts"], &delivery["last_status"]),
            (&json!(attempts), &json!(last_status)),
            "run {id}: {delivery:#}\n{}",
            receiver.output()
        );
    }
    by_run
}

/// The receiver printed exactly one verified line per run, with the run's
/// whole text, and nothing for the forged requests.
async fn assert_one_verified_line_per_run(
    receiver: &PythonReceiver,
    snapshots: &HashMap<String, Value>,
    by_run: &HashMap<String, Value>,
) {
    let deadline = Instant::now() + DEADLINE;
    while receiver.lines().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = receiver.lines();
    assert_eq!(lines.len(), 3, "one line per run\n{}", receiver.output());
    let mut printed = HashMap::new();
    for line in &lines {
        let line: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", receiver.output()));
        let run_id = line["run_id"].as_str().unwrap_or_default().to_owned();
        assert!(
            printed.insert(run_id.clone(), line.clone()).is_none(),
            "run {run_id} handled twice\n{}",
            receiver.output()
        );
    }
    for (id, snapshot) in snapshots {
        let line = printed
            .get(id)
            .unwrap_or_else(|| panic!("no line for run {id}\n{}", receiver.output()));
        let delivery = &by_run[id.as_str()];
        assert!(
            line["id"].as_str().is_some_and(|id| id.starts_with("msg_")),
            "{line}"
        );
        assert_eq!(
            line["id"], delivery["id"],
            "the webhook-id is the delivery's id"
        );
        assert_eq!(line["status"], snapshot["status"], "{line}");
        assert_eq!(line["text"], snapshot["text"], "run {id}: the whole text");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_receiver_verifies_and_handles_each_ended_run_once() {
    let Some(python) = clients_python("Python webhook receiver") else {
        return;
    };
    let mut receiver = PythonReceiver::start(&python).await;
    // The done run's delivery goes through a proxy that loses the
    // receiver's first answer: Sluice sends it again, with the same
    // webhook-id, and the receiver must not handle it twice.
    let proxy = cutting_proxy(receiver.addr, 0).await;
    let app = spawn_with(&format!(
        "[webhooks]\nsecret = \"{SECRET}\"\n\
         allowed_urls = [\"http://{}/hooks/\", \"http://{proxy}/hooks/\"]\n\
         timeout_secs = 10\nretry_secs = [1, 1]\n",
        receiver.addr
    ))
    .await;
    let client = &app.client;
    let hook = receiver.url("/hooks/runs");

    let forged = assert_forged_requests_are_refused(client, &hook, &receiver).await;
    let (done, failed, cancelled) = three_runs_done_failed_and_cancelled(&app, proxy, &hook).await;
    let snapshots = ended_with_text(
        &app,
        [
            (&done, "done"),
            (&failed, "error"),
            (&cancelled, "cancelled"),
        ],
    )
    .await;
    let by_run =
        assert_each_delivery_is_delivered(&app, &receiver, [&done, &failed, &cancelled]).await;
    assert_one_verified_line_per_run(&receiver, &snapshots, &by_run).await;
    let stderr = receiver.stderr.lock().unwrap().clone();
    assert_eq!(
        stderr.matches("refused:").count(),
        forged,
        "{}",
        receiver.output()
    );
    eprintln!("{}", receiver.output());
    let _ = receiver.child.kill().await;
}

/// The README embeds every example (receivers and push workers) as the
/// file is, so the code a reader copies is the code the tests run.
#[test]
fn the_readme_embeds_every_example_as_it_is() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            readme.contains(text.trim_end()),
            "README.md does not embed {} as it is",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 4, "the examples folder has {checked} files");
}
