//! Starting a run: the checks every route that starts one makes, in one
//! order, so that a refused request starts nothing.

use super::error::ApiError;
use super::limits;
use super::AppState;
use crate::agent::{conversation, reject_unknown, Message, Params, RunInput, MAX_MESSAGES};
use crate::hub::{RunId, RunMeta};

/// What starting a run needs, from either route.
pub struct StartRun {
    /// The agent's name, as the route got it (a `/v1` model is one too).
    pub agent: String,
    /// The prompt; when absent, the last user message's content.
    pub prompt: Option<String>,
    /// The conversation; when empty, the prompt as the one user message.
    pub messages: Vec<Message>,
    /// The agent's parameters, checked by the agent before the run exists.
    pub params: Params,
    /// Whether the run stops once nobody has watched it for `disconnect_grace_secs`.
    pub cancel_on_disconnect: bool,
    /// The caller's key: only it will see the run.
    pub owner: Option<String>,
    /// The body of the `/api/chat` or `/v1/chat/completions` call that
    /// starts the run, for agents that forward it.
    pub request: Option<serde_json::Value>,
    /// The AI SDK chat the run answers.
    pub chat: Option<String>,
    /// Whether this route may create a push run (only `POST /api/runs`).
    pub push: bool,
    /// Where the run's webhook goes when it ends, checked against
    /// `webhooks.allowed_urls` (only `POST /api/runs` takes one).
    pub webhook: Option<String>,
}

/// Checks the request and starts the run: the number of messages, agent,
/// prompt size, capacity, parameters, in that order. Nothing is started when any check fails.
pub async fn start_run(state: &AppState, start: StartRun) -> Result<RunId, ApiError> {
    check_messages(&start.messages)?;
    let agent = state.agents.get(&start.agent).ok_or_else(|| {
        ApiError::UnknownAgent(format!(
            "no agent named `{}` (available: {})",
            start.agent,
            state.agents.names().join(", ")
        ))
    })?;
    let (prompt, messages) = conversation(start.prompt, start.messages);
    check_prompt(state, &prompt)?;
    check_capacity(state, &start.owner)?;
    let id = RunId::generate()?;
    // A push agent's runs wait for published events; only POST /api/runs
    // makes them (anywhere else, the agent's own start refuses).
    let push = agent.push_idle_timeout().filter(|_| start.push);
    let events = match push {
        Some(_) => {
            reject_unknown(&start.params, agent.params())?;
            None
        }
        None => Some(agent.start(RunInput {
            run_id: id.to_string(),
            prompt: prompt.clone(),
            params: start.params,
            messages,
            request: start.request,
        })?),
    };
    let meta = RunMeta {
        id: id.clone(),
        model: agent.model().unwrap_or(&start.agent).to_owned(),
        agent: start.agent,
        prompt,
        created_at: std::time::SystemTime::now(),
        chat: start.chat,
        cancel_on_disconnect: start.cancel_on_disconnect,
        owner: start.owner,
    };
    let agent = meta.agent.clone();
    let owner = meta.owner.clone();
    // Recorded before the run exists, so that a node that dies at any
    // point afterwards still leaves the webhook to the others.
    if let Some(url) = &start.webhook {
        expect_webhook(state, &id, &owner, url).await?;
    }
    match events {
        Some(events) => state.hub.start(meta, events).await?,
        None => {
            let idle_timeout = push.unwrap_or(crate::agent::push::DEFAULT_IDLE_TIMEOUT);
            state.hub.start_push(meta, idle_timeout).await?;
        }
    }
    if let Some(url) = start.webhook {
        state.webhooks.watch(id.clone(), owner, url);
    }
    tracing::Span::current().record("run_id", id.as_str());
    tracing::info!(run_id = id.as_str(), agent, "run started");
    Ok(id)
}

fn check_messages(messages: &[Message]) -> Result<(), ApiError> {
    if messages.len() > MAX_MESSAGES {
        return Err(ApiError::InvalidJson(format!(
            "`messages` has {} messages; at most {MAX_MESSAGES} are allowed",
            messages.len()
        )));
    }
    Ok(())
}

fn check_prompt(state: &AppState, prompt: &str) -> Result<(), ApiError> {
    let max_prompt = state.config.runs.max_prompt_bytes;
    if prompt.len() > max_prompt {
        return Err(ApiError::TooLarge {
            code: "prompt_too_large",
            message: format!(
                "the prompt is {} bytes; the limit is {max_prompt}",
                prompt.len()
            ),
        });
    }
    Ok(())
}

/// The caller's key's limits (running runs, runs per minute), then the
/// gateway's.
fn check_capacity(state: &AppState, owner: &Option<String>) -> Result<(), ApiError> {
    if let Some(key) = owner {
        limits::check_running(
            state.hub.running_for(owner),
            state.config.auth.max_running_per_key,
        )?;
        state.run_rate.take(key)?;
    }
    let max_running = state.config.server.max_running;
    if state.hub.running() >= max_running {
        return Err(ApiError::Unavailable {
            code: "too_many_runs",
            message: format!("the gateway is at its limit of {max_running} running runs"),
            retry_after_secs: 5,
        });
    }
    Ok(())
}

async fn expect_webhook(
    state: &AppState,
    id: &RunId,
    owner: &Option<String>,
    url: &str,
) -> Result<(), ApiError> {
    state
        .webhooks
        .expect(id, owner, url)
        .await
        .map_err(|e| ApiError::Unavailable {
            code: "hub_unavailable",
            message: e.to_string(),
            retry_after_secs: 5,
        })
}
