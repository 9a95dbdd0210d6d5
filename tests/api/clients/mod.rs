//! SPEC 11, your clients' protocols: `format` on every SSE route (11.1,
//! `formats.rs`), the OpenAI-compatible front door (11.2, `openai.rs`, and
//! the official `openai` Python package against it, `openai_sdk.rs`), the
//! AI SDK chat transport (11.3, `ai_sdk.rs`).

mod ai_sdk;
mod formats;
mod openai;
mod openai_sdk;
