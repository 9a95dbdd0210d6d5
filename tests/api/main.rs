//! End-to-end tests of the HTTP API on real sockets, read with an SSE parser
//! Sluice did not write (eventsource-stream).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod bench;
mod cluster;
mod command;
mod conversations;
mod cors;
mod dashboard;
mod errors;
mod formats;
mod front_door;
mod helpers;
mod http_agent;
mod lifecycle;
mod metrics;
mod openai;
mod openai_sdk;
mod push;
mod push_workers;
mod real_model;
mod resume;
mod runs;
mod streaming;
mod upstream;
mod webhook_receivers;
mod webhooks;
mod webhooks_load;
