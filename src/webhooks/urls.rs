//! Which URLs a run's webhook may go to: under one of `allowed_urls`,
//! compared as parsed URLs, never as strings, so that
//! `https://app.example.com.evil.net/` or `https://app.example.com@evil.net/`
//! is not taken for `https://app.example.com/`.

use reqwest::Url;

/// Why a URL is refused, for the `400` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not an absolute URL with a host, so there is nowhere to send to.
    #[error("`webhook_url` is not an absolute URL")]
    NotAUrl,
    /// Another scheme (`file:`, `ftp:`, …): only HTTP requests are sent.
    #[error("`webhook_url` must be http or https")]
    Scheme,
    /// Credentials in the URL; `allowed.example@evil.net` would also hide the real host.
    #[error("`webhook_url` may not carry a user name or password")]
    Userinfo,
    /// A fragment, which is never sent: the URL would not be the one requested.
    #[error("`webhook_url` may not carry a #fragment")]
    Fragment,
    /// `%2F`, `%5C` or `%2E` in the path, which a receiver may decode to escape the allowed prefix.
    #[error("`webhook_url` may not carry an encoded slash, backslash or dot in its path")]
    EncodedPath,
    /// Under none of the prefixes the operator allowed.
    #[error("`webhook_url` is not under any of webhooks.allowed_urls")]
    NotAllowed,
}

/// The configured prefixes, parsed.
#[derive(Debug, Clone)]
pub struct AllowedUrls(Vec<Url>);

impl AllowedUrls {
    /// Parses the prefixes; the error names the first bad one.
    pub fn parse(prefixes: &[String]) -> Result<Self, String> {
        prefixes
            .iter()
            .map(|text| match checked(text) {
                Ok(url) if url.query().is_none() => Ok(url),
                _ => Err(format!(
                    "webhooks.allowed_urls: `{text}` is not a URL prefix such as https://app.example.com/hooks/"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// `text` as the URL deliveries will go to, if it is under a prefix.
    pub fn check(&self, text: &str) -> Result<Url, Refused> {
        let url = checked(text)?;
        if self.0.iter().any(|prefix| under(&url, prefix)) {
            Ok(url)
        } else {
            Err(Refused::NotAllowed)
        }
    }
}

/// A parsed http(s) URL with a host, no userinfo and no fragment.
fn checked(text: &str) -> Result<Url, Refused> {
    let url = Url::parse(text.trim()).map_err(|_| Refused::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::Scheme);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Refused::NotAUrl);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused::Userinfo);
    }
    if url.fragment().is_some() {
        return Err(Refused::Fragment);
    }
    // `/hooks/..%2fadmin` is under `/hooks/` as parsed, and may not be once
    // the receiver decodes it.
    let path = url.path().to_ascii_lowercase();
    if ["%2f", "%5c", "%2e"].iter().any(|code| path.contains(code)) {
        return Err(Refused::EncodedPath);
    }
    Ok(url)
}

/// Same scheme, host and port, and a path under the prefix's: at a `/`
/// boundary (`/hooks` allows `/hooks` and `/hooks/…`, never `/hooksevil`).
fn under(url: &Url, prefix: &Url) -> bool {
    if url.scheme() != prefix.scheme()
        || url.host_str() != prefix.host_str()
        || url.port_or_known_default() != prefix.port_or_known_default()
    {
        return false;
    }
    let (path, base) = (url.path(), prefix.path());
    if base.ends_with('/') {
        return path.starts_with(base);
    }
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> AllowedUrls {
        AllowedUrls::parse(&[
            "https://app.example.com/hooks/".to_owned(),
            "http://127.0.0.1:9000/in".to_owned(),
        ])
        .unwrap()
    }

    #[test]
    fn urls_under_a_prefix_pass_in_their_normal_form() {
        let allowed = allowed();
        for ok in [
            "https://app.example.com/hooks/",
            "https://app.example.com/hooks/runs?kind=a",
            "https://APP.example.com:443/hooks/x",
            "http://127.0.0.1:9000/in",
            "http://127.0.0.1:9000/in/deep",
        ] {
            assert!(allowed.check(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            allowed
                .check("https://App.Example.com/hooks/a")
                .unwrap()
                .as_str(),
            "https://app.example.com/hooks/a"
        );
    }

    #[test]
    fn lookalikes_userinfo_and_other_schemes_are_refused() {
        let allowed = allowed();
        let cases = [
            (
                "https://app.example.com.evil.net/hooks/",
                Refused::NotAllowed,
            ),
            ("https://app.example.com@evil.net/hooks/", Refused::Userinfo),
            ("https://user:pw@app.example.com/hooks/", Refused::Userinfo),
            ("http://app.example.com/hooks/", Refused::NotAllowed),
            ("https://app.example.com:8443/hooks/", Refused::NotAllowed),
            ("https://app.example.com/hooks", Refused::NotAllowed),
            (
                "https://app.example.com/hooks/../admin",
                Refused::NotAllowed,
            ),
            ("https://app.example.com/hooks/#x", Refused::Fragment),
            (
                "https://app.example.com/hooks/..%2fadmin",
                Refused::EncodedPath,
            ),
            (
                "https://app.example.com/hooks/..%5Cadmin",
                Refused::EncodedPath,
            ),
            (
                "https://app.example.com/hooks/%2E%2E/admin",
                Refused::NotAllowed,
            ),
            ("http://127.0.0.1:9000/inside", Refused::NotAllowed),
            ("http://127.0.0.2:9000/in", Refused::NotAllowed),
            ("ftp://app.example.com/hooks/", Refused::Scheme),
            ("file:///etc/passwd", Refused::Scheme),
            ("/hooks/relative", Refused::NotAUrl),
            ("", Refused::NotAUrl),
        ];
        for (url, why) in cases {
            assert_eq!(allowed.check(url).err(), Some(why), "{url}");
        }
    }

    #[test]
    fn bad_prefixes_are_reported() {
        for bad in [
            "app.example.com",
            "ftp://x/",
            "https://u@x/",
            "https://x/?a=1",
        ] {
            assert!(AllowedUrls::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
