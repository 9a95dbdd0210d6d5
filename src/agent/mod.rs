//! The token sources.
//!
//! An [`Agent`] checks a run's parameters and returns a [`Stream`](futures::Stream) of
//! [`AgentEvent`]s: tokens, any other named events, and one terminal `Done`
//! or `Error`. Nothing here knows about HTTP or the hub, so a new kind of
//! agent plugs in by implementing the trait and registering in [`Agents`].

pub mod command;
pub mod http;
pub mod lines;
pub mod openai;
pub mod push;
pub mod sim;
pub mod upstream;
pub mod utf8;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use serde_json::{Map, Value};

use crate::config::{AgentConfig, AgentKind, ConfigError};

/// A run's parameters: JSON values from `POST /api/runs`, or strings from the
/// one-shot route's query string.
pub type Params = Map<String, Value>;

/// What an agent produces for one run. The stream ends after a terminal event;
/// if it ends without one, the run ends with `error` `agent_ended`.
pub type AgentStream = BoxStream<'static, AgentEvent>;

/// One thing an agent says during a run.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// A piece of generated text: the `token` event.
    Token(String),
    /// Any other named event (`reasoning`, `tool_call`, …) with JSON data.
    /// Names that are not valid SSE event names are replaced by `agent_event`.
    Other {
        /// The SSE `event:` name clients dispatch on.
        name: String,
        /// The event's payload, sent as its `data:` line.
        data: Value,
    },
    /// The run finished; `usage` gets `output_tokens` counted by Sluice when
    /// the agent does not report it.
    Done {
        /// Why it stopped (`stop`, `length`, `tool_calls`, …), shown to clients.
        finish_reason: String,
        /// Token counts as the agent reports them, sent to clients with `done`.
        usage: Map<String, Value>,
    },
    /// The run failed; `code` is snake_case, `message` the agent's own words.
    Error {
        /// A stable snake_case code clients can match on.
        code: String,
        /// What went wrong, for a person.
        message: String,
    },
}

impl AgentEvent {
    /// A terminal `error` event; `code` is snake_case.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        AgentEvent::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// The terminal `done` of a run that ended by itself: `stop`, no usage.
    pub fn stop() -> Self {
        AgentEvent::Done {
            finish_reason: "stop".into(),
            usage: Map::new(),
        }
    }

    /// Whether this event ends the run.
    pub fn is_terminal(&self) -> bool {
        matches!(self, AgentEvent::Done { .. } | AgentEvent::Error { .. })
    }
}

/// A parameter an agent accepts, as listed by `GET /api/agents`.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// The key a run passes it under; any other key is refused.
    pub name: Cow<'static, str>,
    /// What it does, shown to users choosing parameters.
    pub description: Cow<'static, str>,
}

impl ParamSpec {
    /// A parameter known when Sluice is built.
    pub const fn fixed(name: &'static str, description: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            description: Cow::Borrowed(description),
        }
    }
}

/// A parameter that is unknown, unparsable or out of range: `400 invalid_param`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parameter `{param}`: {message}")]
pub struct ParamError {
    /// The parameter at fault, so the client knows which to fix.
    pub param: String,
    /// What is wrong with it and what would be accepted.
    pub message: String,
}

impl ParamError {
    /// The error for parameter `param`.
    pub fn new(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: param.to_owned(),
            message: message.into(),
        }
    }
}

/// The request an agent runs: what the client asked for, and the run's id.
#[derive(Debug, Clone)]
pub struct RunInput {
    /// The run's id, passed on so an agent's logs and calls can name the run.
    pub run_id: String,
    /// The user's prompt: the client's, or the last user message's text.
    pub prompt: String,
    /// The run's parameters, for the agent to check against its [`ParamSpec`]s.
    pub params: Params,
    /// The conversation, never empty: the client's `messages`, or the
    /// prompt as the one user message.
    pub messages: Vec<Message>,
    /// The body of the `/api/chat` or `/v1/chat/completions` call that
    /// started the run, as it came; None for runs started elsewhere.
    pub request: Option<Value>,
}

/// The most messages one run may carry (SPEC 9).
pub const MAX_MESSAGES: usize = 1000;

/// Who said a message of a conversation. Any other role is refused when the
/// request is read (`400 invalid_json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// What the person asked.
    User,
    /// What a model answered earlier.
    Assistant,
}

/// One message of a conversation: a role and its text. Other fields a
/// client sends with it (`name`, …) are ignored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said, as plain text.
    pub content: String,
}

/// A run's prompt and conversation from what the client sent (SPEC 9): the
/// prompt, or else the last user message's content; the messages, or else
/// the prompt as the one user message.
pub fn conversation(prompt: Option<String>, messages: Vec<Message>) -> (String, Vec<Message>) {
    let prompt = prompt.unwrap_or_else(|| {
        messages
            .iter()
            .rev()
            .find(|message| message.role == Role::User)
            .map(|message| message.content.clone())
            .unwrap_or_default()
    });
    let messages = if messages.is_empty() {
        vec![Message {
            role: Role::User,
            content: prompt.clone(),
        }]
    } else {
        messages
    };
    (prompt, messages)
}

/// A source of agent events. `start` checks the parameters synchronously (so
/// a bad one is answered with `400` before any run exists) and returns the
/// lazy stream that the hub drives. Dropping the stream must stop the work.
pub trait Agent: Send + Sync + 'static {
    /// The agent's kind.
    fn kind(&self) -> AgentKind;
    /// The model the agent talks to, if any.
    fn model(&self) -> Option<&str> {
        None
    }
    /// For a push agent, how long its runs wait for a published event;
    /// `None` for every agent that produces its own events.
    fn push_idle_timeout(&self) -> Option<std::time::Duration> {
        None
    }
    /// The parameters this agent accepts.
    fn params(&self) -> &[ParamSpec];
    /// Validate `input.params` and return the run's event stream.
    fn start(&self, input: RunInput) -> Result<AgentStream, ParamError>;
}

/// Rejects parameters the agent does not know, so a typo is an error rather
/// than a silently ignored setting.
pub fn reject_unknown(params: &Params, specs: &[ParamSpec]) -> Result<(), ParamError> {
    match params
        .keys()
        .find(|key| !specs.iter().any(|spec| spec.name == key.as_str()))
    {
        Some(key) => {
            let known: Vec<&str> = specs.iter().map(|spec| spec.name.as_ref()).collect();
            Err(ParamError::new(
                key,
                format!("unknown parameter; this agent accepts {}", known.join(", ")),
            ))
        }
        None => Ok(()),
    }
}

/// A configuration mistake in agent `name`, reported with the agent's name.
pub(crate) fn invalid(name: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("agents.{name}: {message}"))
}

/// Agent `name`'s config table as its kind's typed settings.
pub(crate) fn settings<T: serde::de::DeserializeOwned>(
    name: &str,
    table: toml::Table,
) -> Result<T, ConfigError> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| invalid(name, e.message()))
}

/// The named agents this process serves.
#[derive(Clone)]
pub struct Agents {
    by_name: BTreeMap<String, Arc<dyn Agent>>,
}

impl Agents {
    /// The built-in `sim` and `push` agents plus every agent of the config file.
    pub fn from_config(agents: &BTreeMap<String, AgentConfig>) -> Result<Self, ConfigError> {
        let mut by_name: BTreeMap<String, Arc<dyn Agent>> = BTreeMap::new();
        by_name.insert("sim".to_owned(), Arc::new(sim::Sim));
        by_name.insert("push".to_owned(), Arc::new(push::Push::default()));
        for (name, config) in agents {
            let settings = config.settings.clone();
            let agent: Arc<dyn Agent> = match config.kind(name)? {
                AgentKind::Sim if settings.is_empty() => Arc::new(sim::Sim),
                AgentKind::Sim => {
                    return Err(ConfigError::Invalid(format!(
                        "agents.{name}: the sim agent takes no settings"
                    )))
                }
                AgentKind::OpenAi => Arc::new(openai::OpenAi::from_settings(name, settings)?),
                AgentKind::Command => Arc::new(command::Command::from_settings(name, settings)?),
                AgentKind::Http => Arc::new(http::Http::from_settings(name, settings)?),
                AgentKind::Push => Arc::new(push::Push::from_settings(name, settings)?),
            };
            by_name.insert(name.clone(), agent);
        }
        Ok(Self { by_name })
    }

    /// The agent registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Agent>> {
        self.by_name.get(name)
    }

    /// All agents, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Agent>)> {
        self.by_name
            .iter()
            .map(|(name, agent)| (name.as_str(), agent))
    }

    /// The names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}
