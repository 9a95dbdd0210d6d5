//! SPEC 14, `sluice bench`, as a user runs it: the binary, pointed at a
//! running Sluice, at the plainest axum SSE server, and at a server that
//! refuses and resets connections.

use std::process::Output;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::*;

#[path = "../../benches/compare/axum_minimal.rs"]
#[allow(dead_code)]
mod axum_minimal;

/// `sluice bench ARGS`, run to its end.
async fn bench(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .args(args)
        .output()
        .await
        .unwrap()
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn bench_reads_every_stream_of_a_running_sluice() {
    let app = spawn_app().await;
    let url = app.url("/api/agent/stream?tokens=10&interval_ms=10");
    let output = bench(&[&url, "--streams", "40", "--ramp-secs", "0.5", "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = json_of(&output);
    assert_eq!(report["streams"], 40);
    assert_eq!(report["ok"], 40);
    assert_eq!(report["failed"], 0);
    // run, 10 tokens, done: 12 events per stream.
    assert_eq!(report["events"], 40 * 12);
    assert_eq!(report["statuses"]["200"], 40);
    let gap = &report["gap_ms"];
    assert!(gap["p50"].as_f64().unwrap() >= 5.0, "{gap}");
    assert!(gap["max"].as_f64().unwrap() >= gap["p99"].as_f64().unwrap());
    assert!(report["first_event_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(report["events_per_sec"].as_f64().unwrap() > 0.0);
    let (_, runs) = app.get_json("/api/runs?limit=1000").await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        40,
        "one run per stream"
    );

    // The table for people, the same figures.
    let output = bench(&[&url, "--streams", "5"]).await;
    assert_eq!(output.status.code(), Some(0));
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("5 ok, 0 failed (of 5)"), "{table}");
    assert!(table.contains("200: 5"), "{table}");
}

#[tokio::test]
async fn bench_reads_the_plainest_axum_server_and_sends_headers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum_minimal::app()).await });
    let url = format!("http://{addr}/api/agent/stream?tokens=5&interval_ms=5");
    let output = bench(&[&url, "--streams", "20", "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = json_of(&output);
    assert_eq!(
        (report["ok"].as_u64(), report["events"].as_u64()),
        (Some(20), Some(20 * 7))
    );

    // Headers reach the server: a key-protected Sluice lets the bench in.
    let app = spawn_with("[[auth.keys]]\nname = \"bench\"\nkey = \"k-bench\"\n").await;
    let url = app.url("/api/agent/stream?tokens=3&interval_ms=0");
    let refused = json_of(&bench(&[&url, "--streams", "3", "--json"]).await);
    assert_eq!(refused["statuses"]["401"], 3);
    let output = bench(&[
        &url,
        "--streams",
        "3",
        "--json",
        "--header",
        "Authorization: Bearer k-bench",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(json_of(&output)["ok"], 3);
    let bad = bench(&[&url, "--header", "no colon"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--header"));
}

#[tokio::test]
async fn streams_refused_or_reset_are_failures_with_their_statuses() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Every other connection gets 503; the rest an event, then a reset.
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((mut socket, _)) = listener.accept().await {
            n += 1;
            let refuse = n.is_multiple_of(2);
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = socket.read(&mut head).await;
                if refuse {
                    let _ = socket
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n10\r\ndata: {\"a\": 1}\n\n\r\n")
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let _ = socket.set_zero_linger();
                drop(socket);
            });
        }
    });
    let url = format!("http://{addr}/stream");
    let output = bench(&[&url, "--streams", "10", "--json"]).await;
    assert_eq!(output.status.code(), Some(1), "failures exit 1: {output:?}");
    let report = json_of(&output);
    assert_eq!(report["ok"], 0);
    assert_eq!(report["failed"], 10);
    assert_eq!(report["statuses"]["503"], 5);
    assert_eq!(report["statuses"]["200"], 5);
    assert_eq!(report["errors"]["status"], 5);
    assert_eq!(report["errors"]["reset"], 5);
    assert_eq!(
        report["events"], 5,
        "the event before each reset still counts"
    );

    // Nobody listening: every stream fails to connect.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let output = bench(&[&url, "--streams", "2", "--json"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(json_of(&output)["errors"]["connect"], 2);
}

#[tokio::test]
async fn duration_closes_streams_still_going_and_counts_them_ok() {
    let app = spawn_app().await;
    let url = app.url("/api/agent/stream?tokens=1000&interval_ms=20");
    let started = std::time::Instant::now();
    let output = bench(&[
        &url,
        "--streams",
        "4",
        "--ramp-secs",
        "0.2",
        "--duration-secs",
        "1",
        "--json",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = json_of(&output);
    assert_eq!(
        (report["ok"].as_u64(), report["failed"].as_u64()),
        (Some(4), Some(0))
    );
    let events = report["events"].as_u64().unwrap();
    assert!(
        events > 4 * 10 && events < 4 * 1002,
        "cut short after about 1 s: {events}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

/// SPEC 14: a stream is ok only when it got `200 text/event-stream`; a
/// `200` of anything else fails as `content_type`, and the table (stdout,
/// without `--json`) says so.
#[tokio::test]
async fn a_200_that_is_not_an_event_stream_is_a_failure() {
    let app = spawn_app().await;
    let url = app.url("/api/runs");
    let output = bench(&[&url, "--streams", "2", "--json"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = json_of(&output);
    assert_eq!(report["statuses"]["200"], 2);
    assert_eq!(report["errors"]["content_type"], 2);
    assert_eq!(report["ok"], 0);

    let output = bench(&[&url, "--streams", "2"]).await;
    assert_eq!(output.status.code(), Some(1));
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("content_type: 2"), "{table}");
    assert!(
        table.ends_with('\n') && !table.ends_with("\n\n"),
        "one line per row: {table:?}"
    );
}
