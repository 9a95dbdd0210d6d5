//! What a request names: its query string, the resume point
//! (`Last-Event-ID`), the wire format and the run of a `{id}` path.

use std::collections::HashSet;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::error::ApiError;
use crate::hub::{RunId, Seq};
use crate::wire::Format;

/// A query string as single-valued parameters, in order of appearance.
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `a=1&b=2`; a parameter given twice is an error, since which
    /// one was meant cannot be known.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut seen = HashSet::new();
        let mut pairs = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if key.is_empty() {
                continue;
            }
            if !seen.insert(key.clone()) {
                return Err(ApiError::InvalidParam(format!(
                    "parameter `{key}` is given more than once"
                )));
            }
            pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(Self(pairs))
    }

    /// No parameters.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// Removes and returns `key`.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let index = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(index).1)
    }

    /// The parameters not taken, in order.
    pub fn into_rest(self) -> impl Iterator<Item = (String, String)> {
        self.0.into_iter()
    }

    /// The first parameter not taken, if any.
    pub fn first_key(&self) -> Option<&str> {
        self.0.first().map(|(k, _)| k.as_str())
    }
}

/// The `format` query parameter: `sluice` when absent.
pub fn format(query: &mut Query) -> Result<Format, ApiError> {
    match query.take("format") {
        None => Ok(Format::Sluice),
        Some(name) => Format::parse(&name).ok_or_else(|| {
            ApiError::InvalidParam(format!(
                "unknown format `{}` (use sluice, openai or ai-sdk)",
                name.chars().take(50).collect::<String>()
            ))
        }),
    }
}

/// The resume cursor: the `Last-Event-ID` header, else the `last_event_id`
/// query parameter; `{run_id}:{seq}`. An empty value means none.
pub fn resume_point(
    headers: &HeaderMap,
    from_query: Option<String>,
) -> Result<Option<(RunId, Seq)>, ApiError> {
    let value = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::InvalidParam("Last-Event-ID is not ASCII".into()))?
                .to_owned(),
        ),
        None => from_query,
    };
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    parse_event_id(value.trim()).map(Some).ok_or_else(|| {
        ApiError::InvalidParam(format!(
            "last_event_id `{}` is not of the form {{run_id}}:{{seq}}",
            value.chars().take(100).collect::<String>()
        ))
    })
}

/// Splits `{run_id}:{seq}`.
pub fn parse_event_id(text: &str) -> Option<(RunId, Seq)> {
    let (run, seq) = text.rsplit_once(':')?;
    let seq = if seq.bytes().all(|b| b.is_ascii_digit()) {
        seq.parse().ok()?
    } else {
        return None;
    };
    Some((RunId::parse(run)?, seq))
}

/// The `{id}` of a run route. An id that cannot name a run is answered like
/// an unknown run: `404`.
pub struct RunIdPath(pub RunId);

impl<S: Send + Sync> FromRequestParts<S> for RunIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::RunNotFound)?;
        RunId::parse(&id).map(Self).ok_or(ApiError::RunNotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    proptest::proptest! {
        /// Outside input never panics the parsers, and a well-formed id
        /// always comes back as it was.
        #[test]
        fn last_event_id_and_query_parsers_take_any_input(text in ".{0,200}", seq in proptest::prelude::any::<u64>()) {
            let _ = parse_event_id(&text);
            let _ = Query::parse(Some(&text));
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert("last-event-id", value);
            }
            let _ = resume_point(&headers, Some(text.clone()));
            let id = format!("run_{}", text.len());
            let parsed = parse_event_id(&format!("{id}:{seq}")).map(|(r, s)| (r.to_string(), s));
            proptest::prop_assert_eq!(parsed, Some((id, seq)));
        }
    }

    #[test]
    fn event_ids_parse_at_the_last_colon() {
        let parsed = parse_event_id("abc_1:42").map(|(id, seq)| (id.to_string(), seq));
        assert_eq!(parsed, Some(("abc_1".to_owned(), 42)));
        for bad in [
            "",
            "abc",
            ":1",
            "abc:",
            "abc:-1",
            "abc:+1",
            "abc:1x",
            "a b:1",
            "abc:99999999999999999999",
        ] {
            assert!(parse_event_id(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn header_wins_over_query_and_empty_means_none() {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static("h:3"));
        let got = resume_point(&headers, Some("q:5".into())).ok().flatten();
        assert_eq!(
            got.map(|(id, seq)| (id.to_string(), seq)),
            Some(("h".into(), 3))
        );
        let got = resume_point(&HeaderMap::new(), Some("q:5".into()))
            .ok()
            .flatten();
        assert_eq!(
            got.map(|(id, seq)| (id.to_string(), seq)),
            Some(("q".into(), 5))
        );
        assert!(matches!(
            resume_point(&HeaderMap::new(), Some(String::new())),
            Ok(None)
        ));
        assert!(resume_point(&HeaderMap::new(), Some("nonsense".into())).is_err());
    }

    #[test]
    fn formats_are_named_or_refused() {
        let mut query = Query::parse(Some("format=ai-sdk")).unwrap_or_else(|_| Query::empty());
        assert_eq!(format(&mut query).ok(), Some(Format::AiSdk));
        assert_eq!(format(&mut Query::empty()).ok(), Some(Format::Sluice));
        let mut bad = Query::parse(Some("format=xml")).unwrap_or_else(|_| Query::empty());
        assert!(format(&mut bad).is_err());
    }

    #[test]
    fn duplicate_query_parameters_are_rejected() {
        assert!(Query::parse(Some("a=1&a=2")).is_err());
        let query = Query::parse(Some("prompt=hi%20there&tokens=3&seed=1"));
        let rest: Vec<(String, String)> =
            query.map(|q| q.into_rest().collect()).unwrap_or_default();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0], ("prompt".into(), "hi there".into()));
    }
}
