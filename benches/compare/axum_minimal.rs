//! The floor of this stack, for side-by-side measurement: the same workload
//! as Sluice's one-shot route (`GET /api/agent/stream?tokens=N&interval_ms=D`,
//! `token` events then `done`) as the plainest axum server: an `Sse` response
//! over an `async_stream` generator. No log, no resume, no fan-out, no metrics.
//!
//! `cargo run --release --example compare-axum -- 127.0.0.1:0`

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Query;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;

async fn stream(
    Query(q): Query<HashMap<String, String>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let tokens: u64 = q.get("tokens").and_then(|v| v.parse().ok()).unwrap_or(48);
    let interval = Duration::from_millis(
        q.get("interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(40),
    );
    Sse::new(async_stream::stream! {
        yield Ok(Event::default().id("r:1").event("run").data("{\"run_id\":\"r\"}"));
        for i in 0..tokens {
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            // One format! for the data, as the plainest handler writes it.
            let data = format!("{{\"text\":\" word{i}\"}}");
            yield Ok(Event::default().id(format!("r:{}", i + 2)).event("token").data(data));
        }
        yield Ok(Event::default().id(format!("r:{}", tokens + 2)).event("done").data("{\"finish_reason\":\"stop\"}"));
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "compare-axum listening on http://{}",
            listener.local_addr()?
        );
    }
    axum::serve(listener, app()).await
}

/// The one route (also served by `tests/api/bench.rs`, which points
/// `sluice bench` at it).
pub fn app() -> Router {
    Router::new().route("/api/agent/stream", get(stream))
}
