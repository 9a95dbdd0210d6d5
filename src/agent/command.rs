//! A local program as an agent: one process per run.
//!
//! The run goes to the program's stdin as one JSON object
//! `{"run_id", "prompt", "params", "messages"}`, and stdin is then closed. With
//! `protocol = "text"` every chunk of stdout is a token; with `"jsonl"` every
//! line is one event (`{"event": "token", "text": …}`, `{"event": "done", …}`,
//! …). stderr goes to the log, and its last lines into the error of a failed
//! run. The program runs in its own process group with a clean environment;
//! dropping the run's stream (cancel, disconnect grace) kills the whole group,
//! and tokio reaps the child, so nothing is left behind.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::{Agent, AgentEvent, AgentStream, ParamError, ParamSpec, RunInput};
use crate::config::ConfigError;

/// How many of the last stderr lines a failed run's error carries.
const STDERR_TAIL: usize = 10;
/// stderr lines longer than this are cut in the log and the error.
const MAX_STDERR_LINE: usize = 2048;

/// How stdout becomes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Every chunk of stdout is a token.
    #[default]
    Text,
    /// Every line of stdout is one JSON event.
    Jsonl,
}

/// `[agents.NAME]` with `kind = "command"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    command: Vec<String>,
    #[serde(default)]
    protocol: Protocol,
    /// Variables set in the program's otherwise empty environment.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Names of Sluice's own variables passed through (`PATH`, `HOME`, …).
    #[serde(default)]
    pass_env: Vec<String>,
    cwd: Option<PathBuf>,
    /// Parameters a run may pass, with their descriptions.
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default = "default_max_line")]
    max_line_bytes: usize,
}

fn default_max_line() -> usize {
    1024 * 1024
}

/// A local program.
pub struct Command {
    program: PathBuf,
    args: Vec<String>,
    protocol: Protocol,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    params: Vec<ParamSpec>,
    max_line_bytes: usize,
}

impl Command {
    /// Builds the agent `name` from its config table; the program must exist.
    pub fn from_settings(name: &str, settings: toml::Table) -> Result<Self, ConfigError> {
        let invalid = |msg: String| super::invalid(name, msg);
        let s: Settings = super::settings(name, settings)?;
        let Some((program, args)) = s.command.split_first() else {
            return Err(invalid(
                "`command` is empty; give the program and its arguments".into(),
            ));
        };
        let program = resolve(program, s.cwd.as_deref()).ok_or_else(|| {
            invalid(format!(
                "command `{program}` is not an executable file, nor found on PATH"
            ))
        })?;
        if let Some(cwd) = &s.cwd {
            if !cwd.is_dir() {
                return Err(invalid(format!(
                    "cwd `{}` is not a directory",
                    cwd.display()
                )));
            }
        }
        if s.max_line_bytes == 0 {
            return Err(invalid("max_line_bytes must be at least 1".into()));
        }
        let mut env: Vec<(String, String)> = s.env.into_iter().collect();
        for var in &s.pass_env {
            if let Ok(value) = std::env::var(var) {
                env.push((var.clone(), value));
            }
        }
        let params = s
            .params
            .into_iter()
            .map(|(name, description)| ParamSpec {
                name: name.into(),
                description: description.into(),
            })
            .collect();
        Ok(Self {
            program,
            args: args.to_vec(),
            protocol: s.protocol,
            env,
            cwd: s.cwd,
            params,
            max_line_bytes: s.max_line_bytes,
        })
    }
}

/// `program` as an executable path: as given when it has a `/` (relative to
/// `cwd`), else looked up on Sluice's own PATH once, at startup.
fn resolve(program: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let path = match cwd {
            Some(cwd) if !program.starts_with('/') => cwd.join(program),
            _ => PathBuf::from(program),
        };
        return executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}

impl Agent for Command {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    fn start(&self, input: RunInput) -> Result<AgentStream, ParamError> {
        super::reject_unknown(&input.params, &self.params)?;
        let stdin = json!({"run_id": input.run_id, "prompt": input.prompt, "params": input.params, "messages": input.messages});
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let run = Run {
            command,
            stdin: stdin.to_string().into_bytes(),
            protocol: self.protocol,
            max_line_bytes: self.max_line_bytes,
            run_id: input.run_id,
        };
        Ok(run.events().boxed())
    }
}

/// Kills the process group when the run's stream is dropped before the
/// program exited: a cancel reaches every process the program started.
struct GroupGuard {
    pgid: Option<nix::unistd::Pid>,
}

impl GroupGuard {
    fn exited(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (already gone) is fine: there is nothing left to stop.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The last lines of stderr, for the error of a failed run.
#[derive(Clone, Default)]
struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == STDERR_TAIL {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

struct Run {
    command: tokio::process::Command,
    stdin: Vec<u8>,
    protocol: Protocol,
    max_line_bytes: usize,
    run_id: String,
}

fn error(code: &str, message: impl Into<String>) -> AgentEvent {
    AgentEvent::Error {
        code: code.to_owned(),
        message: message.into(),
    }
}

impl Run {
    fn events(mut self) -> impl futures::Stream<Item = AgentEvent> + Send {
        async_stream::stream! {
            let mut child = match self.command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    yield error("command_failed", format!("cannot start the command: {e}"));
                    return;
                }
            };
            let mut guard = GroupGuard {
                pgid: child.id().and_then(|id| i32::try_from(id).ok()).map(nix::unistd::Pid::from_raw),
            };
            if let Some(mut stdin) = child.stdin.take() {
                let payload = std::mem::take(&mut self.stdin);
                // A program that never reads stdin must not block the run.
                tokio::spawn(async move {
                    let _ = stdin.write_all(&payload).await;
                    let _ = stdin.shutdown().await;
                });
            }
            let tail = StderrTail::default();
            let stderr_done = child.stderr.take().map(|stderr| {
                tokio::spawn(log_stderr(stderr, tail.clone(), self.run_id.clone()))
            });
            let Some(stdout) = child.stdout.take() else {
                yield error("command_failed", "the command has no stdout");
                return;
            };
            let mut terminal = None;
            match self.protocol {
                Protocol::Text => {
                    let chunks = text_chunks(stdout);
                    tokio::pin!(chunks);
                    while let Some(text) = chunks.next().await {
                        yield AgentEvent::Token(text);
                    }
                }
                Protocol::Jsonl => {
                    let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(self.max_line_bytes));
                    while let Some(line) = lines.next().await {
                        let event = match line {
                            Ok(line) if line.trim().is_empty() => continue,
                            Ok(line) => parse_line(&line),
                            Err(LinesCodecError::MaxLineLengthExceeded) => error(
                                "command_line_too_long",
                                format!("the command wrote a line longer than {} bytes", self.max_line_bytes),
                            ),
                            Err(LinesCodecError::Io(e)) => error("command_failed", format!("reading stdout failed: {e}")),
                        };
                        if matches!(event, AgentEvent::Done { .. } | AgentEvent::Error { .. }) {
                            terminal = Some(event);
                            break;
                        }
                        yield event;
                    }
                }
            }
            if let Some(event) = terminal {
                // The program said how the run ended; the guard stops whatever it left running.
                yield event;
                return;
            }
            let status = child.wait().await;
            guard.exited();
            if let Some(task) = stderr_done {
                // A grandchild may hold stderr open; do not wait for it long.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(500), task).await;
            }
            yield match status {
                Ok(status) if status.success() => AgentEvent::Done { finish_reason: "stop".into(), usage: Map::new() },
                Ok(status) => error("command_failed", failure_message(status, &tail.text())),
                Err(e) => error("command_failed", format!("cannot wait for the command: {e}")),
            };
        }
    }
}

fn failure_message(status: ExitStatus, stderr: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("the command exited with status {code}"),
        (None, Some(signal)) => format!("the command was killed by signal {signal}"),
        _ => "the command failed".to_owned(),
    };
    if stderr.is_empty() {
        how
    } else {
        format!("{how}: {stderr}")
    }
}

async fn log_stderr(stderr: impl AsyncRead + Unpin, tail: StderrTail, run_id: String) {
    let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(MAX_STDERR_LINE));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(line) => line,
            Err(LinesCodecError::MaxLineLengthExceeded) => "[a line too long to keep]".to_owned(),
            Err(LinesCodecError::Io(_)) => break,
        };
        tracing::info!(run_id = %run_id, "agent stderr: {line}");
        tail.push(line);
    }
}

/// One jsonl line as an event: `{"event": NAME, …fields}`.
fn parse_line(line: &str) -> AgentEvent {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(line) else {
        return error(
            "command_bad_output",
            format!("not a JSON object: {}", excerpt(line)),
        );
    };
    let Some(Value::String(name)) = fields.remove("event") else {
        return error(
            "command_bad_output",
            format!("no \"event\" name: {}", excerpt(line)),
        );
    };
    let text = |fields: &Map<String, Value>, key: &str| {
        fields.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    match name.as_str() {
        "token" => match text(&fields, "text") {
            Some(t) => AgentEvent::Token(t),
            None => error("command_bad_output", "a token event needs \"text\""),
        },
        "done" => AgentEvent::Done {
            finish_reason: text(&fields, "finish_reason").unwrap_or_else(|| "stop".into()),
            usage: fields
                .get("usage")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        },
        "error" => {
            let code = text(&fields, "code")
                .filter(|c| {
                    !c.is_empty()
                        && c.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
                .unwrap_or_else(|| "command_error".into());
            AgentEvent::Error {
                code,
                message: text(&fields, "message").unwrap_or_default(),
            }
        }
        _ => AgentEvent::Other {
            name,
            data: Value::Object(fields),
        },
    }
}

fn excerpt(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// stdout as text chunks, never splitting a UTF-8 character between two
/// tokens (invalid bytes become U+FFFD).
fn text_chunks(
    mut stdout: impl AsyncRead + Unpin + Send + 'static,
) -> impl futures::Stream<Item = String> + Send {
    async_stream::stream! {
        let mut buf = vec![0u8; 8192];
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let n = match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            carry.extend_from_slice(&buf[..n]);
            let (text, rest) = split_utf8(&carry);
            carry = rest;
            if !text.is_empty() {
                yield text;
            }
        }
        if !carry.is_empty() {
            yield String::from_utf8_lossy(&carry).into_owned();
        }
    }
}

/// The longest decodable prefix of `bytes` and the incomplete character after it.
fn split_utf8(bytes: &[u8]) -> (String, Vec<u8>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), Vec::new()),
        Err(e) if e.error_len().is_none() => {
            let (done, rest) = bytes.split_at(e.valid_up_to());
            (String::from_utf8_lossy(done).into_owned(), rest.to_vec())
        }
        Err(_) => {
            // Invalid in the middle: decode what is complete, keep a trailing partial character.
            let keep = trailing_partial(bytes);
            let (done, rest) = bytes.split_at(bytes.len() - keep);
            (String::from_utf8_lossy(done).into_owned(), rest.to_vec())
        }
    }
}

/// How many bytes at the end of `bytes` start a character not yet complete.
fn trailing_partial(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 != 0x80 {
            let needed = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if needed > back { back } else { 0 };
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_never_split_between_tokens() {
        let text = "héllo ✓ 𝄞";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let (first, carry) = split_utf8(&bytes[..cut]);
            let mut rest = carry;
            rest.extend_from_slice(&bytes[cut..]);
            let (second, left) = split_utf8(&rest);
            assert!(left.is_empty());
            assert_eq!(format!("{first}{second}"), text, "cut at {cut}");
        }
        let (text, rest) = split_utf8(b"a\xffb\xe2\x9c");
        assert_eq!(text, "a\u{fffd}b");
        assert_eq!(rest, b"\xe2\x9c");
    }

    #[test]
    fn jsonl_lines_map_to_events() {
        assert_eq!(
            parse_line(r#"{"event":"token","text":"hi"}"#),
            AgentEvent::Token("hi".into())
        );
        assert_eq!(
            parse_line(r#"{"event":"tool_result","id":"c1","content":"42"}"#),
            AgentEvent::Other {
                name: "tool_result".into(),
                data: json!({"id": "c1", "content": "42"})
            }
        );
        assert_eq!(
            parse_line(r#"{"event":"done","finish_reason":"length","usage":{"output_tokens":3}}"#),
            AgentEvent::Done {
                finish_reason: "length".into(),
                usage: json!({"output_tokens": 3})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            }
        );
        assert_eq!(
            parse_line(r#"{"event":"error","code":"Bad Code","message":"m"}"#),
            AgentEvent::Error {
                code: "command_error".into(),
                message: "m".into()
            }
        );
        for bad in [
            "not json",
            "[1]",
            r#"{"text":"no event"}"#,
            r#"{"event":"token"}"#,
        ] {
            assert!(
                matches!(parse_line(bad), AgentEvent::Error { code, .. } if code == "command_bad_output"),
                "{bad}"
            );
        }
    }

    #[test]
    fn configuration_mistakes_are_reported() {
        let cases = [
            ("command = []", "empty"),
            (
                "command = [\"surely-not-a-program-anywhere\"]",
                "surely-not-a-program-anywhere",
            ),
            ("command = [\"/bin/sh\"]\nprotocol = \"xml\"", "xml"),
            ("command = [\"/bin/sh\"]\ncwd = \"/surely/not/here\"", "cwd"),
        ];
        for (text, needle) in cases {
            let table: toml::Table = text.parse().unwrap_or_default();
            let err = Command::from_settings("cmd", table)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("agents.cmd") && err.contains(needle),
                "{text}: {err}"
            );
        }
        let ok: toml::Table = "command = [\"sh\", \"-c\", \"echo hi\"]"
            .parse()
            .unwrap_or_default();
        assert!(
            Command::from_settings("cmd", ok).is_ok(),
            "sh is found on PATH"
        );
    }
}
