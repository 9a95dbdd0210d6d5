//! The `sluice` binary: parse the command line, load the config, bind, print
//! the listen line, serve until SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{BenchArgs, Cli, Command, ServeArgs};
use sluice::config::Config;
use sluice::http::dashboard::WebAssets;
use sluice::http::{serve_with_tls, AppState};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match run_serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                tracing::error!("{message}");
                eprintln!("sluice: {message}");
                ExitCode::from(2)
            }
        },
        Command::Bench(args) => match run_bench(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(message) => {
                eprintln!("sluice bench: {message}");
                ExitCode::from(2)
            }
        },
    }
}

/// `sluice bench`: a live progress line on stderr, the report on stdout.
/// `Ok(false)` when a stream failed.
fn run_bench(args: BenchArgs) -> Result<bool, String> {
    use std::io::IsTerminal;
    let headers = args
        .headers
        .iter()
        .map(|h| sluice::bench::header(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let seconds = |s: f64, name: &str| {
        std::time::Duration::try_from_secs_f64(s)
            .map_err(|_| format!("--{name} {s} is not a number of seconds"))
    };
    if args.streams == 0 {
        return Err("--streams must be at least 1".into());
    }
    let plan = sluice::bench::Plan {
        url: args.url,
        streams: args.streams,
        ramp: seconds(args.ramp_secs, "ramp-secs")?,
        duration: args
            .duration_secs
            .map(|s| seconds(s, "duration-secs"))
            .transpose()?,
        headers,
    };
    let runtime = runtime()?;
    let terminal = std::io::stderr().is_terminal();
    let report = runtime
        .block_on(sluice::bench::run(&plan, move |secs, line| {
            // Rewritten in place on a terminal; one line every 5 s in a log.
            if terminal {
                eprint!("\r{line}");
            } else if secs % 5 == 0 {
                eprintln!("{line}");
            }
        }))
        .map_err(|e| e.to_string())?;
    if terminal {
        eprintln!();
    }
    if args.json {
        announce(&report.json().to_string());
    } else {
        announce(report.table().trim_end_matches('\n'));
    }
    Ok(report.failed == 0)
}

fn run_serve(args: ServeArgs) -> Result<(), String> {
    sluice::telemetry::init(args.log_format);
    raise_open_files_limit();
    // Variables that are not Unicode cannot be ours; skip rather than panic.
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let mut config = Config::load(args.config.as_deref(), env).map_err(|e| e.to_string())?;
    if let Some(bind) = args.bind {
        config.server.bind = bind;
    }
    let addr = config.bind_addr().map_err(|e| e.to_string())?;
    if !addr.ip().is_loopback() && !config.auth.has_keys() && !args.allow_anonymous {
        return Err(format!(
            "refusing to serve {addr} without API keys: anyone who can reach it could start \
             runs. Bind a loopback address, configure keys, or pass --allow-anonymous"
        ));
    }
    let web_dir = args.web_dir;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(sluice::tls::acceptor(cert, key).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    runtime()?.block_on(async move {
        let listener =
            sluice::http::listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot read the listen address: {e}"))?;
        let mut state = AppState::connect(config).await.map_err(|e| e.to_string())?;
        let hub = state.hub.clone();
        if let Some(dir) = web_dir {
            if !dir.join("index.html").is_file() {
                return Err(format!("--web-dir {}: no index.html there", dir.display()));
            }
            state = state.with_web(WebAssets::Dir(dir));
        }
        announce(&format!("sluice listening on {scheme}://{local}"));
        let served = serve_with_tls(listener, state, tls, shutdown_signal())
            .await
            .map_err(|e| format!("server error: {e}"));
        hub.shutdown().await;
        served
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Every open stream is a file descriptor, and a soft limit of 1,024 (a
/// common default) would refuse the 1,025th connection; the soft limit is
/// raised to the hard one, which any process may do.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= hard {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-files limit"),
        Err(e) => tracing::debug!(soft, hard, "cannot raise the open-files limit: {e}"),
    }
}

/// One worker per core; on a single core (a pinned process, a one-CPU
/// container) a single-threaded runtime, which spends nothing on handing
/// tasks between threads.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut runtime = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// A line of stdout, flushed at once: `serve`'s listen line (so that a
/// supervisor reading the pipe sees it before the first request is
/// served), `bench`'s report.
#[allow(clippy::print_stdout)]
fn announce(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
