//! SPEC 9, conversations: `messages` on `POST /api/runs` sets the prompt,
//! goes to `openai` upstreams whole and to `command` agents as it is, and a
//! malformed one is refused without starting a run.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::upstream;
use crate::helpers::*;

fn chat() -> Value {
    json!([
        {"role": "system", "content": "answer in French"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ])
}

async fn finished(app: &TestApp, id: &str) -> Value {
    app.wait_for_status(id, "done", Duration::from_secs(20))
        .await
}

#[tokio::test]
async fn the_prompt_is_the_last_user_message_unless_given() {
    let app = spawn_app().await;
    let id = app
        .create_run(json!({"messages": chat(), "params": {"tokens": 5, "interval_ms": 0}}))
        .await;
    let snapshot = finished(&app, &id).await;
    assert_eq!(snapshot["prompt"], "second question");
    // The sim's text is a function of the prompt: the same as asking it alone.
    let alone = app
        .create_run(json!({"prompt": "second question", "params": {"tokens": 5, "interval_ms": 0}}))
        .await;
    assert_eq!(snapshot["text"], finished(&app, &alone).await["text"]);

    let given = app
        .create_run(json!({"prompt": "my own", "messages": chat(), "params": {"tokens": 1, "interval_ms": 0}}))
        .await;
    assert_eq!(finished(&app, &given).await["prompt"], "my own");

    let no_user = app
        .create_run(json!({"messages": [{"role": "system", "content": "s"}], "params": {"tokens": 1, "interval_ms": 0}}))
        .await;
    assert_eq!(finished(&app, &no_user).await["prompt"], "");
}

#[tokio::test]
async fn an_openai_agent_sends_the_conversation_after_its_system_prompt() {
    let (base, mock) = upstream::start().await;
    let app = spawn_with(&format!(
        "[agents.up]\nkind = \"openai\"\nbase_url = \"{base}\"\nmodel = \"normal\"\nsystem_prompt = \"be brief\"\n"
    ))
    .await;
    let talk = json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    ]);
    let id = app
        .create_run(json!({"agent": "up", "messages": talk}))
        .await;
    finished(&app, &id).await;
    let mut expected = vec![json!({"role": "system", "content": "be brief"})];
    expected.extend(talk.as_array().unwrap().iter().cloned());
    assert_eq!(mock.last_body()["messages"], Value::Array(expected));

    // A conversation with its own system message keeps it, alone.
    let id = app
        .create_run(json!({"agent": "up", "messages": chat()}))
        .await;
    finished(&app, &id).await;
    assert_eq!(mock.last_body()["messages"], chat());

    // A prompt alone is one user message, as before.
    let id = app
        .create_run(json!({"agent": "up", "prompt": "solo"}))
        .await;
    finished(&app, &id).await;
    assert_eq!(
        mock.last_body()["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "solo"}])
    );
}

#[tokio::test]
async fn a_command_agent_receives_the_messages() {
    let script = format!(
        "{}/tests/api/scripts/conversation.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8(python.stdout).unwrap().trim().to_owned();
    let app = spawn_with(&format!(
        "[agents.echo]\nkind = \"command\"\ncommand = [\"{python}\", \"{script}\"]\n"
    ))
    .await;
    let id = app
        .create_run(json!({"agent": "echo", "messages": chat()}))
        .await;
    let received: Value =
        serde_json::from_str(finished(&app, &id).await["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        received,
        json!({"prompt": "second question", "messages": chat()})
    );

    // Started with a prompt alone, the agent still gets `messages`.
    let events = app
        .events("/api/agent/stream?agent=echo&prompt=alone")
        .await;
    let received: Value = serde_json::from_str(&text_of(&events)).unwrap();
    assert_eq!(
        received,
        json!({"prompt": "alone", "messages": [{"role": "user", "content": "alone"}]})
    );
}

#[tokio::test]
async fn malformed_messages_are_refused_and_start_no_run() {
    let app = spawn_app().await;
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    let bad = [
        json!({"messages": [{"role": "tool", "content": "x"}]}),
        json!({"messages": [{"role": "user", "content": 5}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
        json!({"messages": [{"role": "user"}]}),
        json!({"messages": [{"content": "x"}]}),
        json!({"messages": {"role": "user", "content": "x"}}),
        json!({"messages": "hello"}),
        json!({"messages": too_many}),
    ];
    for body in bad {
        let response = app
            .client
            .post(app.url("/api/runs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_json", "{body}");
        assert!(
            error["error"]["message"].as_str().unwrap().len() > 10,
            "{error}"
        );
    }
    let (_, list) = app.get_json("/api/runs").await;
    assert_eq!(list["runs"], json!([]), "no run was started");

    // Exactly 1,000 messages are fine.
    let thousand: Vec<Value> = (0..1000)
        .map(|i| json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    let id = app
        .create_run(json!({"messages": thousand, "params": {"tokens": 1, "interval_ms": 0}}))
        .await;
    assert_eq!(finished(&app, &id).await["prompt"], "m999");
}
