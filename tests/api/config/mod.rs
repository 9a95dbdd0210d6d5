//! SPEC 6, Configuration: the config file and its variables at startup
//! (`startup.rs`); the agent kinds it configures besides `sim` and `http`:
//! `kind = "openai"` against a mock upstream (`openai_agent.rs`) and against
//! a real model (`real_model.rs`), `kind = "command"` (`command_agent.rs`);
//! and `[hub] backend = "redis"`, several nodes sharing one Redis
//! (`hub/`, also the shared-hub clauses of SPEC 5, 12 and 13).

mod command_agent;
mod hub;
mod openai_agent;
mod real_model;
mod startup;
