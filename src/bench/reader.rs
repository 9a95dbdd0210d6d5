//! One stream of a load test: connect (from a chosen source address), send
//! the `GET`, read the SSE body to its end, and time its events.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// What one stream saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The answer's status, if one came.
    pub status: Option<u16>,
    /// Why the stream failed, if it did: `connect`, `status`,
    /// `content_type`, `reset`, `timeout`.
    pub error: Option<&'static str>,
    /// Events (frames with data) received.
    pub events: u64,
    /// Body bytes received, frames and keep-alives alike.
    pub bytes: u64,
    /// From sending the request to the first event.
    pub first_event: Option<Duration>,
    /// Between consecutive events.
    pub gaps: Vec<Duration>,
    /// Closed by the test's time limit while still going, not by the server.
    pub cut: bool,
}

impl Seen {
    /// Got `200 text/event-stream` and ended cleanly (or was still healthy
    /// when the test's time was up).
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Where and what to request.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect, resolved once for all streams.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// Extra request headers, such as credentials.
    pub headers: Vec<(String, String)>,
}

/// Reads one stream from `source` (an address to bind, if any) until the
/// server ends it or `until` passes (then it counts as ok if healthy).
pub async fn read(target: &Target, source: Option<IpAddr>, until: tokio::time::Instant) -> Seen {
    let mut seen = Seen::default();
    let started = Instant::now();
    let result =
        tokio::time::timeout_at(until, read_into(target, source, started, &mut seen)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => seen.error = Some(error),
        // Time is up: a stream that answered well and is still going is ok;
        // one that never answered is not.
        Err(_) if seen.status.is_none() => seen.error = Some("timeout"),
        Err(_) => seen.cut = true,
    }
    seen
}

async fn read_into(
    target: &Target,
    source: Option<IpAddr>,
    started: Instant,
    seen: &mut Seen,
) -> Result<(), &'static str> {
    let mut sender = connect(target, source).await?;
    let mut request = hyper::Request::get(target.path.as_str())
        .header("host", target.host.as_str())
        .header("accept", "text/event-stream");
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|_| "request")?;
    let response = sender.send_request(request).await.map_err(|_| "reset")?;
    seen.status = Some(response.status().as_u16());
    if response.status() != hyper::StatusCode::OK {
        return Err("status");
    }
    let event_stream = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !event_stream {
        return Err("content_type");
    }
    let mut body = response.into_body();
    let mut scanner = Scanner::default();
    let mut last: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "reset")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        seen.bytes += data.len() as u64;
        for _ in 0..scanner.feed(data) {
            seen.events += 1;
            match last {
                None => seen.first_event = Some(now - started),
                Some(last) => seen.gaps.push(now - last),
            }
            last = Some(now);
        }
    }
    Ok(())
}

/// An HTTP/1 connection to the target, from `source` if given.
async fn connect(
    target: &Target,
    source: Option<IpAddr>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, &'static str> {
    let socket = match target.addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|_| "connect")?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(|_| "connect")?;
    }
    let tcp = socket.connect(target.addr).await.map_err(|_| "connect")?;
    let _ = tcp.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|_| "connect")?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Counts SSE events in a byte stream: a blank line ends an event when
/// one of its lines was a `data` field (comments and lone `id:`/`retry:`
/// lines dispatch nothing, as in `EventSource`).
#[derive(Debug, Default)]
struct Scanner {
    /// Bytes of the current line seen so far (up to 5, enough to tell `data`).
    line: [u8; 5],
    len: usize,
    has_data: bool,
}

impl Scanner {
    /// Feeds bytes; returns how many events they completed.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut events = 0;
        for &byte in bytes {
            match byte {
                b'\n' => {
                    let line = &self.line[..self.len];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.is_empty() {
                        if self.has_data {
                            events += 1;
                        }
                        self.has_data = false;
                    } else if line == b"data" || line.starts_with(b"data:") {
                        self.has_data = true;
                    }
                    self.len = 0;
                }
                _ if self.len < self.line.len() => {
                    self.line[self.len] = byte;
                    self.len += 1;
                }
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_at_blank_lines_after_data_whatever_the_cut() {
        let text = b": keep-alive\n\nid: r:1\nevent: token\ndata: {\"text\":\"a\"}\n\nretry: 10\n\ndata\r\n\r\n: c\n\n";
        for cut in 0..text.len() {
            let mut scanner = Scanner::default();
            let events = scanner.feed(&text[..cut]) + scanner.feed(&text[cut..]);
            assert_eq!(events, 2, "cut at {cut}");
        }
    }
}
