//! The built-in simulator: deterministic word tokens, no network, no model.
//!
//! Token `i` of a run depends only on `(seed, i)`, so the same prompt and
//! seed give the same text in every process, at any pace, and a run of `n`
//! tokens is the first `n` tokens of any longer run. That makes runs that
//! were replayed, resumed or watched from two places comparable byte for byte.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value};

use super::{
    reject_unknown, Agent, AgentEvent, AgentStream, ParamError, ParamSpec, Params, RunInput,
};
use crate::config::AgentKind;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::fixed("tokens", "number of token events, 1..=100000 (default 48)"),
    ParamSpec::fixed(
        "interval_ms",
        "pause before each token in milliseconds, 0..=60000 (default 40)",
    ),
    ParamSpec::fixed(
        "seed",
        "u64 seed of the text (default: derived from the prompt)",
    ),
    ParamSpec::fixed(
        "fail_after",
        "end with error simulated_failure right after token N (N < tokens)",
    ),
];

/// The `sim` agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sim;

/// A sim run's checked parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SimParams {
    pub tokens: u64,
    pub interval: Duration,
    pub seed: u64,
    pub fail_after: Option<u64>,
}

impl SimParams {
    /// Parse and range-check `params`; the default seed comes from `prompt`.
    pub fn parse(prompt: &str, params: &Params) -> Result<Self, ParamError> {
        reject_unknown(params, PARAMS)?;
        let tokens = uint(params, "tokens")?.unwrap_or(48);
        if !(1..=100_000).contains(&tokens) {
            return Err(ParamError::new("tokens", "must be between 1 and 100000"));
        }
        let interval_ms = uint(params, "interval_ms")?.unwrap_or(40);
        if interval_ms > 60_000 {
            return Err(ParamError::new(
                "interval_ms",
                "must be between 0 and 60000",
            ));
        }
        let seed = uint(params, "seed")?.unwrap_or_else(|| prompt_seed(prompt));
        let fail_after = uint(params, "fail_after")?;
        if let Some(n) = fail_after {
            if n >= tokens {
                return Err(ParamError::new(
                    "fail_after",
                    format!("must be less than tokens ({tokens})"),
                ));
            }
        }
        Ok(Self {
            tokens,
            interval: Duration::from_millis(interval_ms),
            seed,
            fail_after,
        })
    }
}

/// An unsigned integer parameter given as a JSON number or a decimal string.
fn uint(params: &Params, name: &str) -> Result<Option<u64>, ParamError> {
    let parsed = match params.get(name) {
        None => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| ParamError::new(name, "must be a non-negative integer"))
}

/// The default seed: FNV-1a of the prompt, stable across processes and builds
/// (std's hashers promise neither).
pub fn prompt_seed(prompt: &str) -> u64 {
    prompt.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: a well-mixed, stable function of its input.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Token `index` (0-based) of the text for `seed`: a word with its leading
/// space, sometimes followed by punctuation.
pub fn token(seed: u64, index: u64) -> String {
    let h = mix(seed ^ mix(index));
    let word = WORDS[(h % WORDS.len() as u64) as usize];
    let punctuation = match (h >> 32) % 16 {
        0 => ",",
        1 => ".",
        _ => "",
    };
    let mut text = String::with_capacity(word.len() + 2);
    text.push(' ');
    text.push_str(word);
    text.push_str(punctuation);
    text
}

impl Agent for Sim {
    fn kind(&self) -> AgentKind {
        AgentKind::Sim
    }

    fn params(&self) -> &[ParamSpec] {
        PARAMS
    }

    fn start(&self, input: RunInput) -> Result<AgentStream, ParamError> {
        let p = SimParams::parse(&input.prompt, &input.params)?;
        Ok(simulate(p).boxed())
    }
}

/// The event stream of one sim run. Pauses are measured from one deadline to
/// the next, so the pace does not drift with scheduling delays, and one timer
/// is reused for the whole run.
fn simulate(p: SimParams) -> impl futures::Stream<Item = AgentEvent> + Send + 'static {
    async_stream::stream! {
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut deadline = tokio::time::Instant::now();
        for index in 0..p.tokens {
            if p.fail_after == Some(index) {
                yield failure(index);
                return;
            }
            if !p.interval.is_zero() {
                deadline += p.interval;
                sleep.as_mut().reset(deadline);
                (&mut sleep).await;
            }
            yield AgentEvent::Token(token(p.seed, index));
        }
        let mut usage = Map::new();
        usage.insert("output_tokens".to_owned(), Value::from(p.tokens));
        yield AgentEvent::Done { finish_reason: "stop".to_owned(), usage };
    }
}

fn failure(after: u64) -> AgentEvent {
    AgentEvent::Error {
        code: "simulated_failure".to_owned(),
        message: format!("the simulator failed after token {after}, as asked by fail_after"),
    }
}

/// The embedded word list.
const WORDS: &[&str] = &[
    "the",
    "agent",
    "streams",
    "tokens",
    "over",
    "a",
    "wire",
    "that",
    "never",
    "drops",
    "river",
    "stone",
    "light",
    "quiet",
    "signal",
    "model",
    "answer",
    "question",
    "reason",
    "careful",
    "bright",
    "small",
    "large",
    "open",
    "closed",
    "north",
    "south",
    "east",
    "west",
    "morning",
    "evening",
    "window",
    "garden",
    "engine",
    "harbor",
    "valley",
    "mountain",
    "forest",
    "ocean",
    "cloud",
    "thunder",
    "silver",
    "golden",
    "paper",
    "ink",
    "letter",
    "word",
    "sentence",
    "story",
    "memory",
    "future",
    "past",
    "present",
    "simple",
    "complex",
    "gentle",
    "rapid",
    "steady",
    "patient",
    "curious",
    "honest",
    "clever",
    "humble",
    "brave",
    "calm",
    "eager",
    "distant",
    "nearby",
    "ancient",
    "modern",
    "hidden",
    "visible",
    "random",
    "certain",
    "maybe",
    "always",
    "often",
    "rarely",
    "today",
    "tomorrow",
    "yesterday",
    "and",
    "but",
    "or",
    "so",
    "because",
    "while",
    "when",
    "where",
    "how",
    "why",
    "what",
    "which",
    "who",
    "this",
    "these",
    "those",
    "it",
    "they",
    "we",
    "you",
    "is",
    "was",
    "will",
    "can",
    "should",
    "might",
    "must",
    "could",
    "runs",
    "flows",
    "waits",
    "listens",
    "speaks",
    "writes",
    "reads",
    "builds",
    "breaks",
    "mends",
    "learns",
    "teaches",
    "finds",
    "keeps",
    "gives",
    "takes",
    "moves",
    "rests",
    "turns",
    "grows",
    "fades",
    "shines",
    "falls",
    "rises",
    "opens",
    "closes",
    "sends",
    "receives",
    "server",
    "client",
    "stream",
    "event",
    "buffer",
    "socket",
    "packet",
    "channel",
    "queue",
    "cursor",
    "log",
    "index",
    "record",
    "batch",
    "frame",
    "byte",
    "line",
    "field",
    "value",
    "key",
    "node",
    "cluster",
    "proxy",
    "browser",
    "request",
    "response",
    "header",
    "body",
    "token",
    "prompt",
    "context",
    "output",
    "input",
    "result",
    "error",
    "retry",
    "resume",
    "cancel",
    "finish",
    "begin",
    "middle",
    "end",
    "first",
    "second",
    "third",
    "last",
    "next",
    "every",
    "each",
    "some",
    "many",
    "few",
    "none",
    "all",
    "more",
    "less",
    "enough",
    "again",
    "still",
    "already",
    "soon",
    "later",
    "here",
    "there",
    "within",
    "without",
    "between",
    "across",
    "through",
    "under",
    "above",
    "around",
    "toward",
    "beyond",
    "along",
    "against",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(value: Value) -> Params {
        match value {
            Value::Object(map) => map,
            _ => Params::new(),
        }
    }

    #[test]
    fn same_seed_same_tokens_and_prefix_property() {
        let long: Vec<String> = (0..200).map(|i| token(7, i)).collect();
        let short: Vec<String> = (0..50).map(|i| token(7, i)).collect();
        assert_eq!(&long[..50], &short[..]);
        let other: Vec<String> = (0..50).map(|i| token(8, i)).collect();
        assert_ne!(short, other);
    }

    #[test]
    fn tokens_are_words_with_a_leading_space() {
        for i in 0..500 {
            let t = token(1, i);
            assert!(t.starts_with(' '), "{t:?}");
            let word = t[1..].trim_end_matches([',', '.']);
            assert!(WORDS.contains(&word), "{t:?}");
        }
    }

    #[test]
    fn defaults_and_prompt_seed() {
        let p = SimParams::parse("hello", &Params::new()).ok();
        assert_eq!(
            p,
            Some(SimParams {
                tokens: 48,
                interval: Duration::from_millis(40),
                seed: prompt_seed("hello"),
                fail_after: None
            })
        );
        assert_ne!(prompt_seed("hello"), prompt_seed("hello!"));
    }

    #[test]
    fn numbers_and_strings_parse_alike() {
        let a = SimParams::parse("", &params(json!({"tokens": 5, "seed": 9})));
        let b = SimParams::parse("", &params(json!({"tokens": "5", "seed": "9"})));
        assert_eq!(a, b);
        assert!(a.is_ok());
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let cases = [
            (json!({"tokens": 0}), "tokens"),
            (json!({"tokens": 100001}), "tokens"),
            (json!({"tokens": "ten"}), "tokens"),
            (json!({"tokens": -1}), "tokens"),
            (json!({"tokens": 1.5}), "tokens"),
            (json!({"interval_ms": 60001}), "interval_ms"),
            (json!({"seed": "x"}), "seed"),
            (json!({"tokens": 3, "fail_after": 3}), "fail_after"),
            (json!({"colour": "red"}), "colour"),
        ];
        for (value, param) in cases {
            let err = SimParams::parse("", &params(value.clone())).err();
            assert_eq!(err.map(|e| e.param), Some(param.to_owned()), "{value}");
        }
    }
}
