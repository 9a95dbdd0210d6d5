//! The real `sluice` binary as a child process: start it with arguments, an
//! environment or a config file, signal it, wait for its exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `sluice serve` child process and the URL from its listen line.
pub struct Served {
    pub child: Child,
    pub base: String,
    _config: Option<tempfile_path::TempPath>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sluice serve ARGS` with `env`, up and listening.
pub fn serve_binary(args: &[&str], env: &[(&str, &str)]) -> Served {
    serve_wrapped(&[], args, env)
}

/// [`serve_binary`], started through `wrapper` (such as `taskset -c 0`).
pub fn serve_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Served {
    let binary = env!("CARGO_BIN_EXE_sluice");
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start sluice");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|word| word.starts_with("http://") || word.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in the listen line {line:?}"))
        .to_owned();
    Served {
        child,
        base,
        _config: None,
    }
}

/// `sluice serve --bind 127.0.0.1:0 --config FILE` with `toml` in FILE.
pub fn serve_with_config(toml: &str) -> Served {
    let config = write_config(toml);
    let path = config.path().to_str().unwrap().to_owned();
    let mut served = serve_binary(&["--bind", "127.0.0.1:0", "--config", &path], &[]);
    served._config = Some(config);
    served
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the child to exit; its exit code and how long that took.
pub fn wait_exit(child: &mut Child, limit: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (None, start.elapsed())
}

pub fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with_text(text)
}

/// A temporary file removed on drop, without another dependency.
pub mod tempfile_path {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    pub struct TempPath(PathBuf);

    impl TempPath {
        pub fn with_text(text: &str) -> Self {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("sluice-test-{}-{n}.toml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
