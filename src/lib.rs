//! Sluice: an SSE gateway for AI agents.
//!
//! Sluice turns an agent's token generator into a `text/event-stream` that
//! `curl -N` and a browser's `EventSource` read as they are, and keeps every
//! run resumable (`Last-Event-ID`), shareable (any number of viewers) and
//! cancellable.
//!
//! # Layout
//!
//! - [`config`]: the TOML file and `SLUICE_*` overrides, validated into one [`Config`].
//! - [`agent`]: the token sources. An [`Agent`] turns a prompt and parameters
//!   into a stream of [`AgentEvent`]s; [`agent::sim`] is the built-in simulator,
//!   and [`agent::push`] the inbox of runs whose events a worker publishes.
//! - [`hub`]: runs and their event logs. Each event is encoded once into shared
//!   bytes and appended to its run's log; every subscriber walks the log from
//!   its own cursor. Each node's runs live in one engine (the registry,
//!   retention, the drivers, the subscribers); [`hub::memory`] is that
//!   engine alone, and the shared hub (`[hub] backend = "redis"`) adds
//!   Redis around it.
//! - [`wire`]: run events as bytes, one module per client format: Sluice's own
//!   frames ([`wire::sse`], built once and shared by all subscribers), OpenAI
//!   chunks and the AI SDK's UI message stream (rendered once per event per
//!   format in use).
//! - [`http`]: the axum router, handlers, errors and the serve loop; the
//!   OpenAI-compatible `/v1` and the AI SDK's `/api/chat` among them.
//! - [`auth`]: API keys, session cookies and signed access tokens.
//! - [`metrics`]: the Prometheus metrics of `/metrics`.
//! - [`tls`]: HTTPS with HTTP/2.
//! - [`webhooks`]: run webhooks (SPEC 13): the allowed URLs, the deliveries in memory or Redis, the
//!   sender; and the Standard Webhooks signatures of every request to the user's servers.
//! - [`mod@bench`]: `sluice bench`, a load test of any SSE endpoint.
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
