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
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::{lines, utf8, Agent, AgentEvent, AgentStream, ParamError, ParamSpec, RunInput};
use crate::config::{AgentKind, ConfigError};

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
    fn kind(&self) -> AgentKind {
        AgentKind::Command
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

impl Run {
    fn events(mut self) -> impl futures::Stream<Item = AgentEvent> + Send {
        async_stream::stream! {
            let mut child = match self.command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    yield AgentEvent::error("command_failed", format!("cannot start the command: {e}"));
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
                yield AgentEvent::error("command_failed", "the command has no stdout");
                return;
            };
            let output = output(stdout, self.protocol, self.max_line_bytes);
            tokio::pin!(output);
            while let Some(event) = output.next().await {
                if event.is_terminal() {
                    // The program said how the run ended; the guard stops
                    // whatever it left running.
                    yield event;
                    return;
                }
                yield event;
            }
            let status = child.wait().await;
            guard.exited();
            if let Some(task) = stderr_done {
                // A grandchild may hold stderr open; do not wait for it long.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(500), task).await;
            }
            yield match status {
                Ok(status) if status.success() => AgentEvent::stop(),
                Ok(status) => AgentEvent::error("command_failed", failure_message(status, &tail.text())),
                Err(e) => AgentEvent::error("command_failed", format!("cannot wait for the command: {e}")),
            };
        }
    }
}

/// The events the program writes on stdout, in its protocol.
fn output(
    stdout: tokio::process::ChildStdout,
    protocol: Protocol,
    max_line_bytes: usize,
) -> impl futures::Stream<Item = AgentEvent> + Send {
    async_stream::stream! {
        match protocol {
            Protocol::Text => {
                let chunks = utf8::text_chunks(stdout);
                tokio::pin!(chunks);
                while let Some(text) = chunks.next().await {
                    yield AgentEvent::Token(text);
                }
            }
            Protocol::Jsonl => {
                let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(max_line_bytes));
                while let Some(line) = lines.next().await {
                    if let Some(event) = jsonl_event(line, max_line_bytes) {
                        yield event;
                    }
                }
            }
        }
    }
}

/// The event of one line of `jsonl` output; none for a blank line.
fn jsonl_event(line: Result<String, LinesCodecError>, max_line_bytes: usize) -> Option<AgentEvent> {
    Some(match line {
        Ok(line) if line.trim().is_empty() => return None,
        Ok(line) => lines::parse(&line, "command_error")
            .unwrap_or_else(|message| AgentEvent::error("command_bad_output", message)),
        Err(LinesCodecError::MaxLineLengthExceeded) => AgentEvent::error(
            "command_line_too_long",
            format!("the command wrote a line longer than {max_line_bytes} bytes"),
        ),
        Err(LinesCodecError::Io(e)) => {
            AgentEvent::error("command_failed", format!("reading stdout failed: {e}"))
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
