//! SPEC 12, push runs: the publish API (`api.rs`) and the Python push worker
//! example run for real against it (`workers.rs`).

mod api;
mod workers;
