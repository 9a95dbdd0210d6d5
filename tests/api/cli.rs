//! SPEC 1, Process and CLI: the `sluice` binary's listen line, `--bind`,
//! shutdown with open streams, one core; also its JSON logs and TLS.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;

use crate::helpers::*;

#[tokio::test]
async fn the_first_stdout_line_is_the_listen_url_and_the_api_answers_there() {
    let served = serve_binary(&["--bind", "127.0.0.1:0"], &[]);
    assert!(served.base.starts_with("http://127.0.0.1:"));
    let port: u16 = served.base.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let response = reqwest::get(format!("{}/healthz", served.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = collect(
        reqwest::get(format!(
            "{}/api/agent/stream?prompt=hello&tokens=3&interval_ms=0",
            served.base
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(tokens_of(&events).len(), 3);
}

/// Each stream is a file descriptor: started with a soft limit of 256,
/// the server raises it to the hard one and holds 400 streams at once
/// (the ones past the soft limit would otherwise wait for earlier ones to
/// end before they were even accepted).
#[tokio::test(flavor = "multi_thread")]
async fn a_low_soft_open_files_limit_does_not_cap_open_streams() {
    const STREAMS: usize = 400;
    let hard: u64 = String::from_utf8(
        Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    assert!(
        hard > 1_000,
        "the test needs a hard open-files limit over 1,000, not {hard}"
    );
    let served = serve_wrapped(
        &["sh", "-c", "ulimit -Sn 256 && exec \"$0\" \"$@\""],
        &["--bind", "127.0.0.1:0"],
        &[],
    );
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let url = format!(
            "{}/api/agent/stream?prompt=fd{i}&tokens=8&interval_ms=1000",
            served.base
        );
        let client = client.clone();
        streams.push(tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.bytes_stream();
            // The `run` event comes at once; the run lasts 8 seconds.
            let first = body.next().await.unwrap().unwrap();
            let opened = started.elapsed();
            let mut text = String::from_utf8_lossy(&first).into_owned();
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            }
            (opened, text.contains("event: done"))
        }));
    }
    for stream in streams {
        let (opened, done) = stream.await.unwrap();
        assert!(
            opened < Duration::from_secs(5),
            "a stream was first answered after {opened:?}: not all were open at once"
        );
        assert!(done, "every stream ends with done");
    }
}

#[tokio::test]
async fn bind_overrides_sluice_bind() {
    let served = serve_binary(
        &["--bind", "127.0.0.1:0"],
        &[("SLUICE_BIND", "127.0.0.1:9")],
    );
    let port: u16 = served.base.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 9, "--bind wins over SLUICE_BIND");
    let response = reqwest::get(format!("{}/healthz", served.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn sigterm_lets_short_runs_finish_tells_long_ones_to_reconnect_and_exits_zero() {
    let mut served = serve_with_config("[server]\nshutdown_grace_secs = 3\n");
    let long = reqwest::get(format!(
        "{}/api/agent/stream?tokens=10000&interval_ms=50",
        served.base
    ))
    .await
    .unwrap();
    let short = reqwest::get(format!(
        "{}/api/agent/stream?tokens=10&interval_ms=50",
        served.base
    ))
    .await
    .unwrap();
    let mut long = long.bytes_stream();
    let mut long_body = long.next().await.unwrap().unwrap().to_vec();
    assert!(long_body.starts_with(b"id: "), "the run event came at once");

    signal(&served.child, "TERM");
    let short_events = collect(short).await;
    assert_eq!(
        short_events.last().unwrap().data["finish_reason"],
        "stop",
        "a run that fits in the grace ends with its terminal event"
    );

    while let Some(Ok(chunk)) = long.next().await {
        long_body.extend_from_slice(&chunk);
    }
    let long_body = String::from_utf8(long_body).unwrap();
    assert!(long_body.contains("event: token"), "{long_body}");
    assert!(
        !long_body.contains("event: done") && !long_body.contains("event: error"),
        "the long stream ends without a terminal event"
    );
    assert!(
        long_body.ends_with("\n\nretry: 1000\n\n"),
        "and with a retry: field telling the client to reconnect: {:?}",
        &long_body[long_body.len().saturating_sub(200)..]
    );

    let (code, _) = wait_exit(&mut served.child, Duration::from_secs(6));
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn sigint_with_an_open_stream_exits_zero_within_the_grace() {
    let mut served = serve_with_config("[server]\nshutdown_grace_secs = 2\n");
    let response = reqwest::get(format!(
        "{}/api/agent/stream?tokens=10000&interval_ms=100",
        served.base
    ))
    .await
    .unwrap();
    let reader = tokio::spawn(async move { response.bytes().await.map(|b| b.len()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&served.child, "INT");
    let (code, took) = wait_exit(&mut served.child, Duration::from_secs(6));
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_millis(2900),
        "exited within the 2 s grace: {took:?}"
    );
    let read = reader.await.unwrap();
    assert!(read.is_ok(), "the stream ended cleanly: {read:?}");
}

/// Pinned to one core, the binary runs a single-threaded runtime (one
/// thread: no worker to hand tasks to) and still streams, follows and drains.
#[tokio::test]
async fn on_one_core_one_thread_streams_and_drains() {
    let config = write_config("[server]\nshutdown_grace_secs = 2\n");
    let path = config.path().to_str().unwrap().to_owned();
    // The first CPU this process may use: a container's cpuset need not hold 0.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status");
    let first_cpu = allowed.trim().split([',', '-']).next().unwrap().to_owned();
    let mut served = serve_wrapped(
        &["taskset", "-c", &first_cpu],
        &["--bind", "127.0.0.1:0", "--config", &path],
        &[],
    );
    let events = collect(
        reqwest::get(format!(
            "{}/api/agent/stream?tokens=5&interval_ms=10",
            served.base
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(tokens_of(&events).len(), 5);
    assert_eq!(events.last().unwrap().data["finish_reason"], "stop");

    let status = std::fs::read_to_string(format!("/proc/{}/status", served.child.id())).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|n| n.trim().to_owned());
    assert_eq!(threads.as_deref(), Some("1"), "one thread on one core");

    let long = reqwest::get(format!(
        "{}/api/agent/stream?tokens=10000&interval_ms=20",
        served.base
    ))
    .await
    .unwrap();
    let mut long = long.bytes_stream();
    let mut body = long.next().await.unwrap().unwrap().to_vec();
    signal(&served.child, "TERM");
    while let Some(Ok(chunk)) = long.next().await {
        body.extend_from_slice(&chunk);
    }
    assert!(
        body.ends_with(b"\n\nretry: 1000\n\n"),
        "told to reconnect at shutdown"
    );
    let (code, _) = wait_exit(&mut served.child, Duration::from_secs(6));
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn json_logs_carry_each_run_started_with_its_id_and_agent() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let response = reqwest::get(format!(
        "{base}/api/agent/stream?tokens=2&interval_ms=0&prompt=secret-in-query"
    ))
    .await
    .unwrap();
    let run_id = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    response.bytes().await.unwrap();
    signal(&child, "TERM");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let started = logs
        .iter()
        .find(|l| l["fields"]["message"] == "run started")
        .unwrap_or_else(|| panic!("no run started line in {stderr}"));
    assert_eq!(started["fields"]["run_id"], run_id.as_str());
    assert_eq!(started["fields"]["agent"], "sim");
    assert!(
        !stderr.contains("secret-in-query"),
        "query strings (and prompts) stay out of the logs"
    );
}

#[tokio::test]
async fn tls_serves_http2_and_streams_over_it_with_secure_cookies() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = generated.cert.pem();
    let cert = write_config(&cert_pem);
    let key = write_config(&generated.key_pair.serialize_pem());
    let served = serve_binary(
        &[
            "--bind",
            "127.0.0.1:0",
            "--tls-cert",
            cert.path().to_str().unwrap(),
            "--tls-key",
            key.path().to_str().unwrap(),
        ],
        &[("SLUICE_API_KEYS", "tls-key")],
    );
    assert!(
        served.base.starts_with("https://127.0.0.1:"),
        "{}",
        served.base
    );
    let addr: std::net::SocketAddr = served.base.trim_start_matches("https://").parse().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", addr.port());
    let response = client
        .get(format!("{base}/api/agent/stream?tokens=5&interval_ms=10"))
        .header("X-API-Key", "tls-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN picked HTTP/2"
    );
    let events = collect(response).await;
    assert_eq!(tokens_of(&events).len(), 5);
    assert_eq!(events.last().unwrap().event, "done");
    let session = client
        .post(format!("{base}/api/session"))
        .header("X-API-Key", "tls-key")
        .send()
        .await
        .unwrap();
    let cookie = session.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[test]
fn a_bad_certificate_is_refused_at_startup() {
    let cert = write_config("not a certificate");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "127.0.0.1:0", "--tls-cert"])
        .arg(cert.path())
        .arg("--tls-key")
        .arg(cert.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("certificate"));
}
