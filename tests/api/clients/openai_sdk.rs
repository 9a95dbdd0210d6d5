//! SPEC 11.2, the official `openai` Python package against `/v1`: a client
//! that Sluice did not write, so the front door is checked against what the
//! SDK really parses (its chunk models, its `[DONE]` and in-stream `error`
//! handling, its status-to-exception mapping), not against our reading of
//! OpenAI's protocol. tests/clients/openai_sdk.py holds the assertions
//! (streaming, non-streaming, errors, models, a cancelled stream); this test
//! starts a server with an API key and runs that script against it.
//!
//! The SDK lives in a virtualenv that scripts/test makes and caches
//! (scripts/lib/openai_sdk.sh) and passes as SLUICE_E2E_OPENAI_PYTHON, or
//! SLUICE_E2E_OPENAI_SDK_ERROR when it could not be made. Under CI=true a
//! missing SDK fails the test; elsewhere the test skips loudly.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::helpers::*;

const KEY: &str = "sdk-test-key";
/// The whole script takes about a second; a slow machine gets far more.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Reads a child's pipe to its end, in the background.
fn drain(pipe: Option<impl AsyncRead + Unpin + Send + 'static>) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes).await;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_python_sdk_reads_sluice() {
    let Some(python) = clients_python("openai SDK") else {
        return;
    };
    let app = spawn_with(&format!("[[auth.keys]]\nname = \"sdk\"\nkey = \"{KEY}\"\n")).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_sdk.py");
    let mut command = python_command(&python, &script);
    command.arg(app.url("")).arg(KEY);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {python} {}: {e}", script.display()));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match tokio::time::timeout(TIMEOUT, child.wait()).await {
        Ok(status) => Some(status.expect("waiting for the SDK script")),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let Some(status) = status else {
        panic!(
            "{} did not finish within {TIMEOUT:?} (killed)\n{output}",
            script.display()
        );
    };
    assert!(
        status.success(),
        "{} against {} failed ({status})\n{output}",
        script.display(),
        app.url("/v1")
    );
    // unittest on Python 3.11 exits 0 when it finds no test at all.
    assert!(
        stderr.contains("\nOK") && !stderr.contains("Ran 0 tests"),
        "the SDK script passed without running its tests\n{output}"
    );
    eprintln!("{stderr}");
}
