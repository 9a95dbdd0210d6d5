//! A mock OpenAI-compatible upstream: the `model` of a request picks its
//! behaviour. It records every request and when a streaming response's
//! connection was closed by the client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
pub struct Recorded {
    pub bodies: Vec<Value>,
    pub authorization: Vec<Option<String>>,
    pub closed_at: Option<Instant>,
    pub chunks_sent: usize,
}

#[derive(Clone, Default)]
pub struct Mock(pub Arc<Mutex<Recorded>>);

impl Mock {
    pub fn last_body(&self) -> Value {
        self.0
            .lock()
            .unwrap()
            .bodies
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }
    pub fn closed_at(&self) -> Option<Instant> {
        self.0.lock().unwrap().closed_at
    }
    pub fn chunks_sent(&self) -> usize {
        self.0.lock().unwrap().chunks_sent
    }
}

/// Starts the mock; returns its `/v1` base URL and its recordings.
pub async fn start() -> (String, Mock) {
    let mock = Mock::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), mock)
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn frame(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

enum Step {
    Send(Bytes),
    Sleep(Duration),
}

fn sse(steps: Vec<Step>, mock: Mock) -> Response {
    let stream = async_stream::stream! {
        for step in steps {
            match step {
                Step::Send(bytes) => {
                    mock.0.lock().unwrap().chunks_sent += 1;
                    yield Ok::<Bytes, Infallible>(bytes);
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
            }
        }
    };
    stream_response(stream)
}

fn stream_response(
    stream: impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Records the moment the client dropped the response.
struct CloseWatch(Mock);

impl Drop for CloseWatch {
    fn drop(&mut self) {
        self.0 .0.lock().unwrap().closed_at = Some(Instant::now());
    }
}

async fn completions(
    State(mock): State<Mock>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    {
        let mut recorded = mock.0.lock().unwrap();
        recorded.bodies.push(body.clone());
        recorded.authorization.push(
            headers
                .get("authorization")
                .map(|v| v.to_str().unwrap_or_default().to_owned()),
        );
    }
    let content = |text: &str| Step::Send(frame(&chunk(json!({"content": text}), None)));
    let finish = |reason: &str| Step::Send(frame(&chunk(json!({}), Some(reason))));
    let done = || Step::Send(Bytes::from_static(b"data: [DONE]\n\n"));
    let role = || Step::Send(frame(&chunk(json!({"role": "assistant"}), None)));
    match body["model"].as_str().unwrap_or_default() {
        "normal" => sse(vec![role(), content("Hello"), content(" world"), finish("stop"), done()], mock),
        "usage" => sse(
            vec![
                content("Hi"),
                content("!"),
                finish("length"),
                Step::Send(frame(&json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}))),
                done(),
            ],
            mock,
        ),
        "usage-null-choices" => sse(
            vec![
                content("Hi"),
                finish("stop"),
                Step::Send(frame(&json!({"choices": null, "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}))),
                done(),
            ],
            mock,
        ),
        "tools" => sse(
            vec![
                Step::Send(frame(&chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}), None))),
                Step::Send(frame(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), None))),
                Step::Send(frame(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}), None))),
                finish("tool_calls"),
                done(),
            ],
            mock,
        ),
        "reasoning" => sse(
            vec![
                Step::Send(frame(&chunk(json!({"reasoning_content": "Let me think."}), None))),
                Step::Send(frame(&chunk(json!({"reasoning_content": " Done thinking."}), None))),
                content("Answer"),
                finish("stop"),
                done(),
            ],
            mock,
        ),
        "error-object" => sse(
            vec![content("partial"), Step::Send(frame(&json!({"error": {"message": "the model fell over", "type": "server_error"}})))],
            mock,
        ),
        "http-429" => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": {"message": "rate limited, slow down", "type": "rate_limit_error"}})),
        )
            .into_response(),
        "http-500" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "internal upstream failure"}})),
        )
            .into_response(),
        "hang-first" => sse(vec![Step::Sleep(Duration::from_secs(30))], mock),
        "slow-first" => sse(vec![Step::Sleep(Duration::from_millis(2500)), content("late"), finish("stop"), done()], mock),
        "hang-idle" => sse(vec![content("one"), Step::Sleep(Duration::from_secs(30))], mock),
        "eof" => sse(vec![content("cut"), content(" off")], mock),
        "slow" => {
            let watch = CloseWatch(mock.clone());
            let stream = async_stream::stream! {
                let _watch = watch;
                for i in 0..100_000 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    mock.0.lock().unwrap().chunks_sent += 1;
                    yield Ok::<Bytes, Infallible>(frame(&chunk(json!({"content": format!(" t{i}")}), None)));
                }
            };
            stream_response(stream)
        }
        other => (StatusCode::NOT_FOUND, Json(json!({"error": {"message": format!("model {other} not found")}}))).into_response(),
    }
}
