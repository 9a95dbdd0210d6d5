//! Several `sluice` nodes sharing one Redis (`[hub] backend = "redis"`): a
//! real `redis-server` of the test's own on a free port, nodes of the real
//! binary on it, a round-robin TCP proxy in front of them, and reading them
//! by URL. Under CI=true a missing `redis-server` fails the test that starts
//! it (`scripts/test` installs it); elsewhere the test skips loudly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A `redis-server` of the test's own, with its data in a temporary folder
/// and every write on disk before it is acknowledged.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// `None` (after a loud message) when redis-server is not installed
    /// and this is not CI.
    pub fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: the cluster tests need redis-server (scripts/test installs it)"
            );
            eprintln!(
                "\n*** SKIPPED: redis-server is not installed; the cluster tests did not run ***\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("sluice-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            child: None,
            port,
            dir,
        };
        redis.run();
        Some(redis)
    }

    pub fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server cleanly (its data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node on `redis`: leases of 2 s, a shutdown grace of 2 s, a
/// disconnect grace of 1 s.
pub fn node(redis: &Redis) -> Served {
    node_with(redis, &[])
}

/// [`node`] with more settings.
pub fn node_with(redis: &Redis, more: &[(&str, &str)]) -> Served {
    let url = redis.url();
    let mut env = vec![
        ("SLUICE_HUB_BACKEND", "redis"),
        ("SLUICE_HUB_URL", url.as_str()),
        ("SLUICE_HUB_LEASE_SECS", "2"),
        ("SLUICE_SERVER_SHUTDOWN_GRACE_SECS", "2"),
        ("SLUICE_RUNS_DISCONNECT_GRACE_SECS", "1"),
    ];
    env.extend_from_slice(more);
    serve_binary(&["--bind", "127.0.0.1:0"], &env)
}

/// [`node`] with the config file `toml` (written to a temporary file).
pub fn node_with_config(redis: &Redis, toml: &str) -> Served {
    let path = redis
        .dir
        .join(format!("config-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let url = redis.url();
    let env = [
        ("SLUICE_HUB_BACKEND", "redis"),
        ("SLUICE_HUB_URL", url.as_str()),
        ("SLUICE_HUB_LEASE_SECS", "2"),
        ("SLUICE_SERVER_SHUTDOWN_GRACE_SECS", "2"),
        ("SLUICE_RUNS_DISCONNECT_GRACE_SECS", "1"),
    ];
    let config = path.to_string_lossy().into_owned();
    serve_binary(&["--bind", "127.0.0.1:0", "--config", &config], &env)
}

pub fn addr_of(served: &Served) -> SocketAddr {
    served.base.trim_start_matches("http://").parse().unwrap()
}

/// A TCP proxy that sends each new connection to the next of `backends`.
pub async fn round_robin(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backend = backends[next.fetch_add(1, Ordering::SeqCst) % backends.len()];
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

pub async fn create_run(base: &str, params: Value) -> String {
    create_run_as(base, json!({"prompt": "cluster", "params": params})).await
}

/// `POST /api/runs` on `base` with `body`, which must answer `201`; the id.
pub async fn create_run_as(base: &str, body: Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/runs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads `url` (with `Last-Event-ID` when given) until it ends, or until
/// `stop_after` events; also says whether a `retry:` field came.
pub async fn read(
    url: &str,
    last_event_id: Option<&str>,
    stop_after: usize,
) -> (Vec<SseEvent>, bool) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    let retry = std::sync::atomic::AtomicBool::new(false);
    let mut stream = response
        .bytes_stream()
        .inspect(|chunk| {
            if let Ok(bytes) = chunk {
                if bytes.windows(6).any(|w| w == b"retry:") {
                    retry.store(true, Ordering::SeqCst);
                }
            }
        })
        .eventsource();
    let mut events = Vec::new();
    while let Some(Ok(event)) = stream.next().await {
        if event.data.is_empty() && event.event == "message" {
            continue;
        }
        events.push(parse(event));
        if events.len() >= stop_after {
            break;
        }
    }
    drop(stream);
    (events, retry.into_inner())
}

/// `before`, then the rest of its run read from `base` with the last id of
/// `before` as `Last-Event-ID`: what a client that reconnected there saw.
pub async fn resumed_on(base: &str, before: &[SseEvent]) -> Vec<SseEvent> {
    let last_id = before.last().unwrap().id.clone();
    let run = last_id.rsplit_once(':').unwrap().0.to_owned();
    let (after, _) = read(
        &format!("{base}/api/runs/{run}/events"),
        Some(&last_id),
        usize::MAX,
    )
    .await;
    let mut all = before.to_vec();
    all.extend(after);
    all
}
