//! End-to-end tests of the HTTP API on real sockets, read with an SSE parser
//! Sluice did not write (eventsource-stream).
//!
//! One module per section of the SPEC; each file's first line names its
//! section. Shared launch and reading helpers live in `helpers/` only.
//!
//! | SPEC section                                          | module                          |
//! |-------------------------------------------------------|---------------------------------|
//! | 1 Process and CLI (also TLS, JSON logs)               | `cli`                           |
//! | 2 Runs and events                                     | `runs`                          |
//! | 3 HTTP API (also CORS)                                | `http_api::{routes, errors, metrics, cors}` |
//! | 4 The built-in `sim` agent                            | `sim`                           |
//! | 5 Resume, sharing and disconnects                     | `resume`                        |
//! | 6 Configuration: startup                              | `config::startup`               |
//! | 6 Configuration: `kind = "openai"`                    | `config::{openai_agent, real_model}` |
//! | 6 Configuration: `kind = "command"`                   | `config::command_agent`         |
//! | 6 Configuration: `[hub] backend = "redis"`            | `config::hub::{runs, push, webhooks}` |
//! | 7 The dashboard                                       | `dashboard`                     |
//! | 8 Auth (also `--allow-anonymous`)                     | `auth`                          |
//! | 9 Conversations: `messages`                           | `conversations`                 |
//! | 10 Your own agent over HTTP: `kind = "http"`          | `http_agent`                    |
//! | 11.1 `format` on every SSE route                      | `clients::formats`              |
//! | 11.2 An OpenAI-compatible front door                  | `clients::{openai, openai_sdk}` |
//! | 11.3 The AI SDK chat transport                        | `clients::ai_sdk`               |
//! | 12 Push runs                                          | `push::{api, workers}`          |
//! | 13 Run webhooks                                       | `webhooks::{delivery, receivers, load}` |
//! | 14 `sluice bench`                                     | `bench`                         |
//!
//! The shared-hub clauses of sections 5, 12 and 13 (several nodes on one
//! Redis) are tested in `config::hub::{runs, push, webhooks}`, with the
//! `[hub]` setting of section 6.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod bench;
mod cli;
mod clients;
mod config;
mod conversations;
mod dashboard;
mod helpers;
mod http_agent;
mod http_api;
mod push;
mod resume;
mod runs;
mod sim;
mod webhooks;
