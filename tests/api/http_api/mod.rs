//! SPEC 3, HTTP API: the routes (`routes.rs`), JSON errors and status codes
//! (`errors.rs`), `/metrics` and `/readyz` (`metrics.rs`), and CORS
//! (`cors.rs`, not in SPEC: an HTTP-level option of the server).

mod cors;
mod errors;
mod metrics;
mod routes;
