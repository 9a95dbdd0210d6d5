//! SPEC 6, Configuration, as the binary reads it at startup: a config file
//! and `SLUICE_<SECTION>_<KEY>` variables set the server; a bad file, an
//! agent that cannot work and an unreachable shared hub stop the start with
//! a message.

use std::process::Command;

use crate::helpers::*;

#[tokio::test]
async fn sluice_bind_and_section_variables_configure_the_server() {
    let served = serve_binary(
        &[],
        &[
            ("SLUICE_BIND", "127.0.0.1:0"),
            ("SLUICE_SERVER_MAX_STREAMS", "1"),
        ],
    );
    let first = reqwest::get(format!(
        "{}/api/agent/stream?tokens=50&interval_ms=20",
        served.base
    ))
    .await
    .unwrap();
    assert_eq!(first.status(), 200);
    let second = reqwest::get(format!("{}/api/agent/stream", served.base))
        .await
        .unwrap();
    assert_eq!(
        second.status(),
        503,
        "SLUICE_SERVER_MAX_STREAMS=1 took effect"
    );
}

#[test]
fn a_bad_config_is_refused_with_a_message() {
    let config = write_config("[server]\nkeep_alive_secs = \"often\"\n");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        output.stdout.is_empty(),
        "nothing but the listen line goes to stdout"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("keep_alive_secs"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_shared_hub_that_cannot_be_reached_stops_the_start_with_a_message() {
    // Nothing listens on port 1.
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("SLUICE_HUB_BACKEND", "redis")
        .env("SLUICE_HUB_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "no listen line");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("hub.url `redis://127.0.0.1:1`") && stderr.contains("unreachable"),
        "{stderr}"
    );
    // An unknown backend is refused too.
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("SLUICE_HUB_BACKEND", "etcd")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("etcd"));
}

#[test]
fn agents_are_checked_at_startup_with_clear_messages() {
    for (text, needles) in [
        (
            "[agents.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
            ["agents.up", "model"],
        ),
        (
            "[agents.up]\nkind = \"openai\"\nbase_url = \"nowhere\"\nmodel = \"m\"\n",
            ["agents.up", "base_url"],
        ),
        (
            "[agents.x]\nkind = \"telepathy\"\n",
            ["agents.x", "telepathy"],
        ),
        (
            "[agents.cmd]\nkind = \"command\"\ncommand = [\"no-such-program-here\"]\n",
            ["agents.cmd", "no-such-program-here"],
        ),
    ] {
        let config = write_config(text);
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--bind", "127.0.0.1:0", "--config"])
            .arg(config.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for needle in needles {
            assert!(stderr.contains(needle), "{text}: {stderr}");
        }
    }
}
