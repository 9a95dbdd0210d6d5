//! SPEC 11.1, `format` on every SSE route: `format=openai` and
//! `format=ai-sdk`, exact resume through a cut connection, the endings of
//! cancelled and failed runs, and the 204/404/410/400 rules in every format.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

/// One event of a stream in another format: its id as the parser keeps it
/// (the last one seen) and its data.
#[derive(Debug, Clone)]
struct Frame {
    id: String,
    data: String,
}

impl Frame {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// Every event of a response, as an SSE parser Sluice did not write reads it.
async fn frames(response: reqwest::Response) -> Vec<Frame> {
    let mut stream = response.bytes_stream().eventsource();
    let mut frames = Vec::new();
    while let Some(Ok(event)) = stream.next().await {
        frames.push(Frame {
            id: event.id,
            data: event.data,
        });
    }
    frames
}

/// Reads `first_url`, and on a dropped connection resumes at the run's
/// `/events?format=` route with the last id seen, until `[DONE]` or an
/// error object. Returns the frames of all connections and how many there were.
async fn read_resuming(
    app: &TestApp,
    first_url: &str,
    format: &str,
) -> (Vec<Frame>, usize, String) {
    let mut seen: Vec<Frame> = Vec::new();
    let mut run_id = String::new();
    let mut connections = 0;
    while connections < 5 {
        connections += 1;
        let request = match seen.last() {
            None => app.client.get(first_url),
            Some(last) => app
                .client
                .get(app.url(&format!("/api/runs/{run_id}/events?format={format}")))
                .header("Last-Event-ID", &last.id),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        run_id = response.headers()["x-run-id"].to_str().unwrap().to_owned();
        let mut stream = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = stream.next().await {
            let frame = Frame {
                id: event.id,
                data: event.data,
            };
            let end = frame.data == "[DONE]" || frame.json().get("error").is_some();
            seen.push(frame);
            if end {
                return (seen, connections, run_id);
            }
        }
    }
    (seen, connections, run_id)
}

#[tokio::test]
async fn an_openai_stream_cut_mid_run_resumes_with_last_event_id_to_the_snapshot_text() {
    let app = spawn_app().await;
    // OpenAI chunks are about 230 bytes: the cut falls inside the 8th or so.
    let proxy = cutting_proxy(app.addr, 1800).await;
    let url = format!(
        "http://{proxy}/api/agent/stream?prompt=cut&tokens=40&interval_ms=10&format=openai"
    );
    let (frames, connections, run_id) = read_resuming(&app, &url, "openai").await;
    assert_eq!(connections, 2, "the cut forced exactly one resume");
    assert_eq!(frames.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1].iter().map(Frame::json).collect();
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"] == "assistant")
        .count();
    assert_eq!(roles, 1, "one opening chunk, none on the resume");
    for chunk in &chunks {
        assert_eq!(chunk["id"], format!("chatcmpl-{run_id}"));
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "sim");
    }
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (_, list) = app.get_json("/api/runs").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 1, "no second run");
    let (_, snapshot) = app.get_json(&format!("/api/runs/{run_id}")).await;
    assert_eq!(text, snapshot["text"].as_str().unwrap());
    assert_eq!(
        text,
        text_of(
            &app.events("/api/agent/stream?prompt=cut&tokens=40&interval_ms=0")
                .await
        )
    );
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 40);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
}

#[tokio::test]
async fn an_ai_sdk_stream_resumed_mid_run_continues_the_same_parts() {
    let app = spawn_app().await;
    let proxy = cutting_proxy(app.addr, 700).await;
    let url = format!(
        "http://{proxy}/api/agent/stream?prompt=cut&tokens=30&interval_ms=10&format=ai-sdk"
    );
    let (frames, connections, run_id) = read_resuming(&app, &url, "ai-sdk").await;
    assert_eq!(connections, 2);
    assert_eq!(frames.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1].iter().map(Frame::json).collect();
    let types: Vec<&str> = chunks.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types[..3], ["start", "start-step", "text-start"]);
    assert_eq!(
        types[types.len() - 3..],
        ["text-end", "finish-step", "finish"]
    );
    assert_eq!(types.iter().filter(|t| **t == "start").count(), 1);
    assert_eq!(types.iter().filter(|t| **t == "text-start").count(), 1);
    assert_eq!(chunks[0]["messageId"], run_id.as_str());
    let part = chunks[2]["id"].as_str().unwrap();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["type"] == "text-delta")
        .collect();
    assert_eq!(deltas.len(), 30);
    assert!(
        deltas.iter().all(|c| c["id"] == part),
        "the open part stays open under its id"
    );
    let text: String = deltas.iter().filter_map(|c| c["delta"].as_str()).collect();
    let (_, snapshot) = app.get_json(&format!("/api/runs/{run_id}")).await;
    assert_eq!(text, snapshot["text"].as_str().unwrap());
}

#[tokio::test]
async fn the_same_run_reads_alike_in_every_format_and_ids_name_run_events() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"prompt": "p", "params": {"tokens": 12, "interval_ms": 0}}))
        .await;
    app.wait_for_status(&id, "done", Duration::from_secs(10))
        .await;
    let sluice = app.events(&format!("/api/runs/{id}/events")).await;
    for format in ["openai", "ai-sdk"] {
        let response = app
            .get(&format!("/api/runs/{id}/events?format={format}"))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["x-run-id"], id.as_str());
        assert_eq!(
            response
                .headers()
                .get("x-vercel-ai-ui-message-stream")
                .is_some(),
            format == "ai-sdk"
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains("event:"), "{format}: no event names");
        // One id line per run event, in order: the same ids as Sluice's own.
        let ids: Vec<&str> = body
            .lines()
            .filter_map(|line| line.strip_prefix("id: "))
            .collect();
        let expected: Vec<&str> = sluice.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, expected, "{format}");
        // Resuming after any of them gives the rest of the same body.
        for (n, event) in sluice.iter().enumerate().step_by(5) {
            let rest = app
                .client
                .get(app.url(&format!("/api/runs/{id}/events?format={format}")))
                .header("Last-Event-ID", &event.id)
                .send()
                .await
                .unwrap();
            if n + 1 == sluice.len() {
                assert_eq!(rest.status(), 204);
                continue;
            }
            let rest = rest.text().await.unwrap();
            assert!(body.ends_with(&rest), "{format} after {}: {rest}", event.id);
            let line = format!("id: {}\n", event.id);
            let cut = body.find(&line).unwrap() + line.len();
            let cut = cut + body[cut..].find("\n\n").unwrap() + 2;
            assert_eq!(&body[cut..], rest, "{format} after {}", event.id);
        }
    }
}

#[tokio::test]
async fn every_format_ends_a_failed_run_in_its_own_words() {
    let app = spawn_app().await;
    let path = "/api/agent/stream?prompt=f&tokens=10&interval_ms=0&fail_after=3";
    let sluice = app.events(path).await;
    assert_eq!(sluice.last().unwrap().event, "error");
    assert_eq!(sluice.last().unwrap().data["code"], "simulated_failure");
    let message = sluice.last().unwrap().data["message"].clone();

    let openai = frames(app.get(&format!("{path}&format=openai")).await).await;
    let last = openai.last().unwrap().json();
    assert_eq!(
        last,
        json!({"error": {"message": message, "type": "sluice_error", "code": "simulated_failure"}})
    );
    assert!(openai.iter().all(|f| f.data != "[DONE]"));

    let ai = frames(app.get(&format!("{path}&format=ai-sdk")).await).await;
    let n = ai.len();
    assert_eq!(ai[n - 1].data, "[DONE]");
    assert_eq!(
        ai[n - 2].json(),
        json!({"type": "error", "errorText": message})
    );
    assert_eq!(ai[n - 3].json()["type"], "text-end");
}

#[tokio::test]
async fn every_format_ends_a_cancelled_run_in_its_own_words() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"prompt": "c", "params": {"tokens": 500, "interval_ms": 20}}))
        .await;
    let mut readers = Vec::new();
    for format in ["sluice", "openai", "ai-sdk"] {
        let response = app
            .get(&format!("/api/runs/{id}/events?format={format}"))
            .await;
        assert_eq!(response.status(), 200);
        readers.push(tokio::spawn(frames(response)));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.delete(&format!("/api/runs/{id}")).await.status(), 202);
    let mut read = Vec::new();
    for reader in readers {
        read.push(
            tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .expect("every stream ends after the cancel")
                .unwrap(),
        );
    }
    let sluice = read[0].last().unwrap().json();
    assert_eq!(sluice["finish_reason"], "cancelled");

    let openai = &read[1];
    let n = openai.len();
    assert_eq!(openai[n - 1].data, "[DONE]");
    assert_eq!(
        openai[n - 3].json()["choices"][0]["finish_reason"],
        "cancelled"
    );

    let ai = &read[2];
    let n = ai.len();
    assert_eq!(ai[n - 1].data, "[DONE]");
    assert_eq!(ai[n - 2].json(), json!({"type": "abort"}));
    assert_eq!(ai[n - 3].json(), json!({"type": "finish-step"}));
}

#[tokio::test]
async fn resume_rules_hold_in_every_format() {
    let app = spawn_with("[runs]\nretention_secs = 1\n").await;
    let events = app
        .events("/api/agent/stream?prompt=r&tokens=3&interval_ms=0")
        .await;
    let last = &events.last().unwrap().id;
    let run = last.rsplit_once(':').unwrap().0.to_owned();
    for format in ["sluice", "openai", "ai-sdk"] {
        let after_end = app
            .client
            .get(app.url(&format!("/api/runs/{run}/events?format={format}")))
            .header("Last-Event-ID", last)
            .send()
            .await
            .unwrap();
        assert_eq!(after_end.status(), 204, "{format}");
        let one_shot = app
            .client
            .get(app.url(&format!("/api/agent/stream?format={format}")))
            .header("Last-Event-ID", last)
            .send()
            .await
            .unwrap();
        assert_eq!(one_shot.status(), 204, "{format}");
        let unknown = app
            .get(&format!("/api/runs/nosuchrun/events?format={format}"))
            .await;
        assert_eq!(unknown.status(), 404, "{format}");
    }
    for path in [
        format!("/api/runs/{run}/events?format=OpenAI"),
        "/api/agent/stream?prompt=x&format=xml".to_owned(),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body["error"]["code"], "invalid_param");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("format"));
    }
    assert_eq!(
        app.get_json("/api/runs").await.1["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Evicted: 410 in every format.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.get(&format!("/api/runs/{run}")).await.status() != 410 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run was never evicted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for format in ["sluice", "openai", "ai-sdk"] {
        let (status, body) = app
            .get_json(&format!("/api/runs/{run}/events?format={format}"))
            .await;
        assert_eq!(status, 410, "{format}");
        assert_eq!(body["error"]["code"], "run_evicted");
    }
}

#[tokio::test]
async fn format_is_no_agent_parameter_on_the_one_shot_route() {
    let app = spawn_app().await;
    // The sim refuses parameters it does not know: a 200 shows `format`
    // never reached it.
    let response = app
        .get("/api/agent/stream?prompt=x&tokens=2&interval_ms=0&format=sluice")
        .await;
    assert_eq!(response.status(), 200);
    let (status, body) = app.get_json("/api/agent/stream?prompt=x&colour=red").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_param");
}

#[tokio::test]
async fn openai_keep_alives_are_one_comment_line_with_no_blank_line_after_it() {
    let app = spawn_with("[server]\nkeep_alive_secs = 1\n").await;
    for (format, blank_line_after) in [("openai", false), ("ai-sdk", true), ("sluice", true)] {
        let body = app
            .get(&format!(
                "/api/agent/stream?prompt=k&tokens=2&interval_ms=1600&format={format}"
            ))
            .await
            .text()
            .await
            .unwrap();
        assert!(body.contains(": keep-alive\n"), "{format}: {body}");
        assert_eq!(
            body.contains(": keep-alive\n\n"),
            blank_line_after,
            "{format}: {body}"
        );
    }
}
