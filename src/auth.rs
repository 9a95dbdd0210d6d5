//! API keys, session cookies and access tokens.
//!
//! Keys are kept only as SHA-256 digests and compared in constant time,
//! against every configured key, so neither the match nor its position leaks
//! through timing. Session cookies and access tokens are stateless: a payload
//! (kind, key name, scope, expiry) and its HMAC-SHA256 under a secret drawn at
//! startup, or set in the config so that several nodes accept each other's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, ConfigError};
use crate::hub::RunId;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sluice_session";

/// Who is calling: the key's name, and what a token limits it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name; `None` when no keys are configured (everyone is the same caller).
    pub key: Option<String>,
    /// Set when the caller came with an access token scoped to one run.
    pub only_run: Option<RunId>,
    /// Set when that token is a push run's publish token: it may publish to
    /// `only_run` and do nothing else, not even read it.
    pub publish_only: bool,
    /// Set when the caller came with any access token rather than a key or
    /// a session: only a publish token may publish.
    pub via_token: bool,
}

impl Caller {
    /// The caller when auth is off.
    pub fn anyone() -> Self {
        Self {
            key: None,
            only_run: None,
            publish_only: false,
            via_token: false,
        }
    }

    fn with_key(name: &str) -> Self {
        Self {
            key: Some(name.to_owned()),
            only_run: None,
            publish_only: false,
            via_token: false,
        }
    }
}

/// What a signed token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every run of the key.
    Key,
    /// One run.
    Run(RunId),
}

/// Why credentials were refused: the message of the `401`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key, cookie or token came, though keys are configured.
    #[error("this API needs a key: send Authorization: Bearer <key> or X-API-Key: <key>")]
    Missing,
    /// A key that matches none configured.
    #[error("the API key is not valid")]
    BadKey,
    /// A token that is forged, malformed, of the wrong kind or of a removed key.
    #[error("the token is not valid")]
    BadToken,
    /// A genuine token past its expiry: the client should ask for a new one.
    #[error("the token has expired")]
    Expired,
    /// A session cookie that is expired or not genuine: the user signs in again.
    #[error("the session has expired or is not valid; sign in again")]
    BadSession,
}

/// The configured keys and the signing secret.
pub struct Auth {
    keys: Vec<(String, [u8; 32])>,
    secret: Vec<u8>,
}

impl Auth {
    /// Keys from `[[auth.keys]]` and `SLUICE_API_KEYS` (comma-separated,
    /// named `env-1`, `env-2`, …). Every mistake is reported at startup.
    pub fn from_config(config: &AuthConfig, env_keys: Option<&str>) -> Result<Self, ConfigError> {
        let invalid = |msg: String| ConfigError::Invalid(format!("auth: {msg}"));
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let name = if key.name.trim().is_empty() {
                return Err(invalid(format!("keys[{i}] needs a name")));
            } else {
                key.name.trim().to_owned()
            };
            let digest = match (&key.key, &key.key_sha256) {
                (Some(plain), None) if !plain.is_empty() => sha256(plain),
                (None, Some(hex)) => parse_hex32(hex).ok_or_else(|| {
                    invalid(format!("keys `{name}`: key_sha256 must be 64 hex digits"))
                })?,
                _ => {
                    return Err(invalid(format!(
                        "keys `{name}`: give exactly one of key or key_sha256"
                    )))
                }
            };
            keys.push((name, digest));
        }
        for (i, key) in env_keys
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
        {
            keys.push((format!("env-{}", i + 1), sha256(key)));
        }
        for (i, (name, _)) in keys.iter().enumerate() {
            if keys[..i].iter().any(|(other, _)| other == name) {
                return Err(invalid(format!("two keys are named `{name}`")));
            }
        }
        let secret = match &config.token_secret {
            Some(secret) if secret.len() >= 32 => secret.as_bytes().to_vec(),
            Some(_) => {
                return Err(invalid(
                    "token_secret must be at least 32 characters".into(),
                ))
            }
            None => {
                let mut bytes = vec![0u8; 32];
                getrandom::fill(&mut bytes)
                    .map_err(|e| invalid(format!("no randomness for the token secret: {e}")))?;
                bytes
            }
        };
        Ok(Self { keys, secret })
    }

    /// Whether keys are configured: otherwise every request is allowed.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The caller a presented key belongs to. Every configured key is
    /// compared, in constant time, whatever matches.
    pub fn check_key(&self, presented: &str) -> Result<Caller, AuthError> {
        let digest = sha256(presented);
        let mut found: Option<&str> = None;
        for (name, key) in &self.keys {
            if bool::from(key.ct_eq(&digest)) {
                found = Some(name);
            }
        }
        found.map(Caller::with_key).ok_or(AuthError::BadKey)
    }

    /// A session cookie value for `caller`, valid for `ttl`.
    pub fn session(&self, caller: &Caller, ttl: Duration) -> String {
        self.sign("s", caller.key.as_deref().unwrap_or_default(), "", ttl)
    }

    /// The caller of a session cookie.
    pub fn check_session(&self, value: &str) -> Result<Caller, AuthError> {
        let (name, _) = self.verify("s", value).map_err(|_| AuthError::BadSession)?;
        Ok(Caller::with_key(&name))
    }

    /// An access token for SSE routes.
    pub fn token(&self, caller: &Caller, scope: &Scope, ttl: Duration) -> String {
        let scope = match scope {
            Scope::Key => String::new(),
            Scope::Run(id) => id.to_string(),
        };
        self.sign("t", caller.key.as_deref().unwrap_or_default(), &scope, ttl)
    }

    /// A push run's publish token: it lets a worker publish to `run`, and
    /// do nothing else.
    pub fn publish_token(&self, caller: &Caller, run: &RunId, ttl: Duration) -> String {
        self.sign(
            "p",
            caller.key.as_deref().unwrap_or_default(),
            run.as_str(),
            ttl,
        )
    }

    /// The caller an access token (or a publish token) stands for, limited
    /// to its scope.
    pub fn check_token(&self, token: &str) -> Result<Caller, AuthError> {
        let (publish_only, (name, scope)) = match self.verify("t", token) {
            Err(AuthError::BadToken) if self.verify("p", token).is_ok() => {
                (true, self.verify("p", token)?)
            }
            verified => (false, verified?),
        };
        let only_run = if scope.is_empty() {
            None
        } else {
            Some(RunId::parse(&scope).ok_or(AuthError::BadToken)?)
        };
        if publish_only && only_run.is_none() {
            return Err(AuthError::BadToken);
        }
        Ok(Caller {
            key: Some(name),
            only_run,
            publish_only,
            via_token: true,
        })
    }

    /// `base64url(kind|key|scope|expiry) . base64url(hmac)`.
    fn sign(&self, kind: &str, key: &str, scope: &str, ttl: Duration) -> String {
        let expires = unix_now().saturating_add(ttl.as_secs());
        let payload = format!("{kind}|{key}|{scope}|{expires}");
        let mac = self.mac(payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(mac)
        )
    }

    /// The key name and scope of a valid, unexpired token of `kind`.
    fn verify(&self, kind: &str, token: &str) -> Result<(String, String), AuthError> {
        let (payload, mac) = token.split_once('.').ok_or(AuthError::BadToken)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::BadToken)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| AuthError::BadToken)?;
        let mut check =
            HmacSha256::new_from_slice(&self.secret).map_err(|_| AuthError::BadToken)?;
        check.update(&payload);
        check.verify_slice(&mac).map_err(|_| AuthError::BadToken)?;
        let payload = String::from_utf8(payload).map_err(|_| AuthError::BadToken)?;
        let mut parts = payload.split('|');
        let (Some(k), Some(name), Some(scope), Some(expires), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AuthError::BadToken);
        };
        if k != kind {
            return Err(AuthError::BadToken);
        }
        let expires: u64 = expires.parse().map_err(|_| AuthError::BadToken)?;
        if expires <= unix_now() {
            return Err(AuthError::Expired);
        }
        // A token of a key that was removed from the config is worth nothing.
        if !self.keys.iter().any(|(n, _)| n == name) {
            return Err(AuthError::BadToken);
        }
        Ok((name.to_owned(), scope.to_owned()))
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        match HmacSha256::new_from_slice(&self.secret) {
            Ok(mut mac) => {
                mac.update(payload);
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length; this cannot happen.
            Err(_) => Vec::new(),
        }
    }
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;

    fn auth() -> Auth {
        let config = AuthConfig {
            keys: vec![
                KeyConfig {
                    name: "ci".into(),
                    key: Some("secret-one".into()),
                    key_sha256: None,
                },
                KeyConfig {
                    name: "ops".into(),
                    key: None,
                    // sha256("test")
                    key_sha256: Some(
                        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                    ),
                },
            ],
            ..AuthConfig::default()
        };
        Auth::from_config(&config, Some("from-env")).unwrap_or_else(|e| panic!("{e}"))
    }

    proptest::proptest! {
        /// No string is a valid token by chance, and checking one never panics.
        #[test]
        fn arbitrary_tokens_keys_and_cookies_are_refused(text in ".{0,300}") {
            let auth = auth();
            proptest::prop_assert!(auth.check_token(&text).is_err());
            proptest::prop_assert!(auth.check_session(&text).is_err());
            proptest::prop_assert!(text == "secret-one" || text == "test" || text == "from-env" || auth.check_key(&text).is_err());
        }

        /// A valid token with any one byte changed is refused.
        #[test]
        fn tampered_tokens_are_refused(at in 0usize..200, byte in proptest::prelude::any::<u8>()) {
            let auth = auth();
            let token = auth.token(&Caller::with_key("ci"), &Scope::Key, Duration::from_secs(60));
            let mut bytes = token.clone().into_bytes();
            let at = at % bytes.len();
            proptest::prop_assume!(bytes[at] != byte);
            bytes[at] = byte;
            let tampered = String::from_utf8_lossy(&bytes).into_owned();
            proptest::prop_assume!(tampered != token);
            proptest::prop_assert!(auth.check_token(&tampered).is_err());
        }
    }

    #[test]
    fn keys_from_the_config_its_digests_and_the_environment() {
        let auth = auth();
        assert!(auth.enabled());
        assert_eq!(
            auth.check_key("secret-one").map(|c| c.key),
            Ok(Some("ci".into()))
        );
        assert_eq!(
            auth.check_key("test").map(|c| c.key),
            Ok(Some("ops".into()))
        );
        assert_eq!(
            auth.check_key("from-env").map(|c| c.key),
            Ok(Some("env-1".into()))
        );
        assert_eq!(auth.check_key("secret-on"), Err(AuthError::BadKey));
        assert_eq!(auth.check_key(""), Err(AuthError::BadKey));
    }

    #[test]
    fn tokens_carry_key_and_scope() {
        let auth = auth();
        let caller = Caller::with_key("ci");
        let run = RunId::parse("abc").unwrap();
        let token = auth.token(&caller, &Scope::Run(run.clone()), Duration::from_secs(60));
        assert_eq!(
            auth.check_token(&token),
            Ok(Caller {
                key: Some("ci".into()),
                only_run: Some(run.clone()),
                publish_only: false,
                via_token: true,
            })
        );
        let publish = auth.publish_token(&caller, &run, Duration::from_secs(60));
        assert_eq!(
            auth.check_token(&publish),
            Ok(Caller {
                key: Some("ci".into()),
                only_run: Some(run.clone()),
                publish_only: true,
                via_token: true,
            })
        );
        let key_token = auth.token(&caller, &Scope::Key, Duration::from_secs(60));
        assert_eq!(
            auth.check_token(&key_token),
            Ok(Caller {
                via_token: true,
                ..Caller::with_key("ci")
            })
        );
    }

    #[test]
    fn tokens_refuse_tampering_expiry_and_kind() {
        let auth = auth();
        let caller = Caller::with_key("ci");
        let run = RunId::parse("abc").unwrap();
        let token = auth.token(&caller, &Scope::Run(run), Duration::from_secs(60));
        let key_token = auth.token(&caller, &Scope::Key, Duration::from_secs(60));
        let (payload, mac) = token.split_once('.').unwrap_or_default();
        let forged_payload = URL_SAFE_NO_PAD.encode("t|ops||9999999999");
        for bad in [
            format!("{forged_payload}.{mac}"),
            format!("{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 32])),
            format!("{payload}x.{mac}"),
            "garbage".into(),
            String::new(),
        ] {
            assert_eq!(auth.check_token(&bad), Err(AuthError::BadToken), "{bad}");
        }
        let expired = auth.sign("t", "ci", "", Duration::ZERO);
        assert_eq!(auth.check_token(&expired), Err(AuthError::Expired));
        let expired = auth.sign("p", "ci", "abc", Duration::ZERO);
        assert_eq!(auth.check_token(&expired), Err(AuthError::BadToken));
        let session = auth.session(&caller, Duration::from_secs(60));
        assert!(
            auth.check_token(&session).is_err(),
            "a session cookie is not an access token"
        );
        assert_eq!(auth.check_session(&session), Ok(Caller::with_key("ci")));
        assert!(auth.check_session(&key_token).is_err());
        let other = Auth::from_config(
            &AuthConfig {
                keys: auth_keys(),
                ..AuthConfig::default()
            },
            None,
        );
        let other = other.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            other.check_token(&key_token),
            Err(AuthError::BadToken),
            "another secret"
        );
    }

    fn auth_keys() -> Vec<KeyConfig> {
        vec![KeyConfig {
            name: "ci".into(),
            key: Some("secret-one".into()),
            key_sha256: None,
        }]
    }

    #[test]
    fn configuration_mistakes_are_reported() {
        let cases = [
            vec![KeyConfig {
                name: "".into(),
                key: Some("k".into()),
                key_sha256: None,
            }],
            vec![KeyConfig {
                name: "a".into(),
                key: None,
                key_sha256: None,
            }],
            vec![KeyConfig {
                name: "a".into(),
                key: Some("k".into()),
                key_sha256: Some("00".into()),
            }],
            vec![KeyConfig {
                name: "a".into(),
                key: None,
                key_sha256: Some("xyz".into()),
            }],
            vec![
                KeyConfig {
                    name: "a".into(),
                    key: Some("k1".into()),
                    key_sha256: None,
                },
                KeyConfig {
                    name: "a".into(),
                    key: Some("k2".into()),
                    key_sha256: None,
                },
            ],
        ];
        for keys in cases {
            let config = AuthConfig {
                keys: keys.clone(),
                ..AuthConfig::default()
            };
            assert!(Auth::from_config(&config, None).is_err(), "{keys:?}");
        }
        let short = AuthConfig {
            keys: auth_keys(),
            token_secret: Some("short".into()),
            ..AuthConfig::default()
        };
        assert!(Auth::from_config(&short, None).is_err());
        assert!(!Auth::from_config(&AuthConfig::default(), None)
            .map(|a| a.enabled())
            .unwrap_or(true));
    }
}
