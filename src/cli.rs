//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Sluice: an SSE gateway for AI agents.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// What to do: serve, or load-test an endpoint.
    #[command(subcommand)]
    pub command: Command,
}

/// What the binary can do; each variant's doc is its line in `sluice --help`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and the dashboard.
    Serve(ServeArgs),
    /// Load-test any SSE endpoint (Sluice or not): N concurrent GET
    /// streams, ramped; prints streams ok/failed, events/s, time to first
    /// event, gaps between events and the answers by status. Exits 1 when
    /// any stream failed.
    Bench(BenchArgs),
}

/// `sluice bench`'s options, which `main` turns into a [`crate::bench::Plan`].
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The SSE URL to open (http://).
    pub url: String,
    /// Concurrent streams.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Seconds over which the streams are opened, evenly.
    #[arg(long, default_value_t = 0.0)]
    pub ramp_secs: f64,
    /// Close streams still open this many seconds after the start (they
    /// count as ok); without it, each is read until the server ends it.
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// A request header, `Name: value`; repeatable (e.g. an Authorization).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `sluice serve`'s options: the config file to load, and what only the command line sets.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; overrides SLUICE_BIND and the config file.
    /// `127.0.0.1:0` picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// TOML config file (every key optional).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve the dashboard from this directory (read on every request)
    /// instead of the copy built into the binary: for working on `web/`.
    #[arg(long, value_name = "DIR")]
    pub web_dir: Option<PathBuf>,
    /// Serve a non-loopback address without API keys: anyone who can reach
    /// it may start runs. Refused without this flag.
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate chain.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log lines as text for people or JSON for log collectors (on stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
// No doc comments on the variants: clap would show them as help for each
// possible value and switch `serve --help` to its long layout, while
// `--log-format`'s own help already says what text and json are for.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
