//! The side-by-side report that `--compare` writes into `docs/`: a Markdown
//! table and an SVG bar chart, from the same results as the stdout table.

use std::fmt::Write as _;

use serde_json::Value;

const SERVERS: [(&str, &str); 3] = [
    ("sluice", "#2563eb"),
    ("axum-minimal", "#16a34a"),
    ("nextjs", "#9ca3af"),
];

fn number(r: &Value, key: &str) -> f64 {
    r[key].as_f64().unwrap_or(0.0)
}

fn find<'a>(results: &'a [Value], scenario: &str, server: &str) -> Option<&'a Value> {
    results
        .iter()
        .find(|r| r["scenario"] == scenario && r["server"] == server)
}

/// What machine the figures come from, in one line.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    // Every core of the machine, not the one this process is pinned to.
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {model}, Linux {}", kernel.trim())
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The Markdown table: one row per scenario and server.
pub fn table(results: &[Value]) -> String {
    let mut out = String::from(
        "| scenario | server | streams | events/s | TTFT p50 / p99 | gap p50 / p99 / max | CPU-s per M events | peak RSS | RSS per open stream | failures |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} ms | {:.2} | {:.0} MiB | {:.1} KiB | {} |",
            r["scenario"].as_str().unwrap_or_default(),
            r["server"].as_str().unwrap_or_default(),
            thousands(number(r, "streams")),
            thousands(number(r, "events_per_s")),
            number(r, "ttft_p50_ms"),
            number(r, "ttft_p99_ms"),
            number(r, "gap_p50_ms"),
            number(r, "gap_p99_ms"),
            number(r, "gap_max_ms"),
            number(r, "cpu_s_per_million_events"),
            number(r, "peak_rss_kib") / 1024.0,
            number(r, "rss_per_open_stream_kib"),
            r["failures"],
        );
    }
    out
}

/// One panel of horizontal bars: a row per scenario and server.
fn panel(svg: &mut String, top: f64, title: &str, rows: &[(String, &str, f64, String)]) -> f64 {
    let (label_width, bar_width, row_height) = (230.0, 420.0, 18.0);
    let max = rows
        .iter()
        .map(|r| r.2)
        .fold(0.0, f64::max)
        .max(f64::EPSILON);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-weight="bold">{title}</text>"#,
        top + 14.0
    );
    let mut y = top + 26.0;
    for (label, color, value, text) in rows {
        let width = (value / max * bar_width).max(1.0);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text><rect x="{}" y="{}" width="{width:.1}" height="{}" fill="{color}"/><text x="{}" y="{}">{text}</text>"#,
            label_width - 6.0,
            y + 12.0,
            label_width,
            y + 2.0,
            row_height - 4.0,
            label_width + width + 6.0,
            y + 12.0,
        );
        y += row_height;
    }
    y + 14.0
}

/// The chart: events/s, CPU per million events and memory per stream.
pub fn chart(results: &[Value]) -> String {
    let rows = |scenarios: &[&str], key: &str, format: &dyn Fn(f64) -> String| {
        let mut rows = Vec::new();
        for scenario in scenarios {
            for (server, color) in SERVERS {
                if let Some(r) = find(results, scenario, server) {
                    let value = number(r, key);
                    let mut text = format(value);
                    let failures = number(r, "failures");
                    if failures > 0.0 {
                        text.push_str(&format!(" ({failures} streams failed)"));
                    }
                    rows.push((format!("{scenario} · {server}"), color, value, text));
                }
            }
        }
        rows
    };
    let mut body = String::new();
    let mut y = 40.0;
    y = panel(
        &mut body,
        y,
        "Delivered events per second, throughput scenario (higher is better)",
        &rows(&["throughput"], "events_per_s", &|v| thousands(v)),
    );
    y = panel(
        &mut body,
        y,
        "Server CPU-seconds per million events (lower is better)",
        &rows(
            &["throughput", "concurrency", "idle"],
            "cpu_s_per_million_events",
            &|v| format!("{v:.2}"),
        ),
    );
    y = panel(
        &mut body,
        y,
        "Server RSS per open stream, KiB (lower is better)",
        &rows(&["concurrency", "idle"], "rss_per_open_stream_kib", &|v| {
            format!("{v:.1}")
        }),
    );
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{y:.0}" viewBox="0 0 760 {y:.0}" font-family="system-ui, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="10" y="20" font-size="15" font-weight="bold">Sluice vs a minimal axum SSE server vs a Next.js route handler</text><text x="10" y="34" fill="#555">{}</text>"##,
        machine()
    );
    svg.push_str(&body);
    svg.push_str("</svg>\n");
    svg
}

/// Writes `docs/performance.md`, `.svg` and `.jsonl` (the raw results).
pub fn write_docs(dir: &str, results: &[Value]) {
    let md = format!(
        "# Load benchmark: one run, three servers\n\nMachine: {}. Reproduce with `cargo bench --bench streams -- --compare`; the raw results are in `performance.jsonl`.\n\n![chart](performance.svg)\n\n{}",
        machine(),
        table(results)
    );
    let jsonl: String = results.iter().map(|r| format!("{r}\n")).collect();
    for (name, text) in [
        ("performance.md", md),
        ("performance.svg", chart(results)),
        ("performance.jsonl", jsonl),
    ] {
        let path = format!("{dir}/{name}");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {path}: {e}");
        }
    }
}
