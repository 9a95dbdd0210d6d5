//! Sluice: an SSE gateway for AI agents.
//!
//! Sluice turns an agent's token generator into a `text/event-stream` that
//! `curl -N` and a browser's `EventSource` read as they are, and keeps every
//! run resumable (`Last-Event-ID`), shareable (any number of viewers) and
//! cancellable.
//!
//! # Layout
//!
//! A token's path runs down this list: an agent yields it, the hub records
//! it once, a wire format shapes it, the HTTP layer writes it. The whole
//! path, with a resume and a cancel, is in `docs/architecture.md`.
//!
//! - [`config`]: the TOML file and `SLUICE_*` overrides, validated into one
//!   [`Config`]; `[webhooks]` is read by `webhooks/settings.rs`.
//! - [`agent`]: the token sources, one file per kind. An [`Agent`] turns a
//!   prompt and parameters into a stream of [`AgentEvent`]s: [`agent::sim`]
//!   (the built-in simulator), `openai.rs`, `command.rs`, `http/` (the
//!   user's own endpoint) and [`agent::push`] (runs a worker publishes).
//!   What they share: `lines.rs` (the event-line protocol), `upstream.rs`
//!   (timeouts, errors, endings of HTTP upstreams), `utf8.rs`.
//! - [`hub`]: runs and their event logs. `mod.rs` holds the [`Hub`] handle,
//!   ids and the backend trait; `record.rs` encodes each event once;
//!   `log.rs` is a run's log (`frames.rs` keeps its frames compact,
//!   `changes.rs` wakes its readers); `node/` is the per-node engine every
//!   backend uses (the registry and retention, `run.rs` the driver and the
//!   idle check, `subscriber.rs` the cursors, `gone.rs` evicted ids);
//!   [`hub::memory`] is the engine alone; `redis/` adds Redis around it, one
//!   file per job: `keys`, `conn`, `writer`, `stored`, `stream`,
//!   `replicate` (owner to Redis), `follow` (Redis to a mirror), `lease`
//!   (leases, presence, the reaper), `cancel`, `push`.
//! - [`wire`]: run events as bytes, one module per client format: Sluice's own
//!   frames ([`wire::sse`], built once and shared by all subscribers), OpenAI
//!   chunks ([`wire::openai`]) and the AI SDK's UI message stream
//!   ([`wire::ai_sdk`]), rendered once per event per format in use.
//! - [`http`]: axum. `mod.rs` holds the state, the router and the serve
//!   loop; `stream.rs` the SSE routes; `query.rs` query parsing and the
//!   resume point; `start.rs` the checks that start a run; `runs.rs`,
//!   `publish.rs`, `openai.rs` (`/v1`), `chat.rs` (`/api/chat`),
//!   `webhooks.rs`, `dashboard.rs`, `auth.rs`, `limits.rs`, `error.rs`.
//! - [`auth`]: API keys, session cookies and signed access tokens.
//! - [`metrics`]: the Prometheus metrics of `/metrics`.
//! - [`tls`]: HTTPS with HTTP/2.
//! - [`webhooks`]: run webhooks (SPEC 13): `settings.rs`, `urls.rs` (the
//!   allowed URLs), `store.rs` and `redis.rs` (the deliveries, in memory or
//!   Redis), `send.rs` (the sender), `signing.rs` (Standard Webhooks
//!   signatures of every request to the user's servers).
//! - [`mod@bench`]: `sluice bench`, a load test of any SSE endpoint, also the
//!   load generator of `cargo bench --bench streams`.
//! - [`cli`] and [`telemetry`]: what the `sluice` binary needs around them.

#![warn(missing_docs)]

pub mod agent;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod telemetry;
pub mod tls;
pub mod webhooks;
pub mod wire;

pub use agent::{Agent, AgentEvent, Agents};
pub use config::Config;
pub use hub::{Hub, RunId, Seq};
