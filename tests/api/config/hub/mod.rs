//! SPEC 6, Configuration, `[hub] backend = "redis"` (and the shared-hub
//! clauses of SPEC 5, 12 and 13): several `sluice` nodes sharing one Redis,
//! a real `redis-server` on a free port, the real binary twice, and a
//! round-robin TCP proxy in front of them, as a load balancer would be
//! (`helpers::cluster`). Runs, chats and OpenAI streams across nodes
//! (`runs.rs`), push runs (`push.rs`), run webhooks (`webhooks.rs`).
//!
//! Under CI=true these tests fail when `redis-server` is missing
//! (`scripts/test` installs it); elsewhere they skip loudly.

mod push;
mod runs;
mod webhooks;
