//! A small client of the admin API for the operators' commands: one `reqwest::Client` with
//! timeouts, the base URL, the token as a bearer header, and the server's `{code, message}`
//! errors surfaced as they are.

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// An admin API token. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The secret itself, for the `Authorization` header only.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Token {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Why an operators' command failed. None of the variants holds the token.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server URL cannot be used.
    #[error("invalid server URL `{url}`: {reason}")]
    InvalidServer { url: String, reason: String },
    /// Nothing answered at the server URL.
    #[error(
        "cannot reach the kodomasu server at {server}: {detail}\n  (is it running? set --server or KODOMASU_SERVER)"
    )]
    Unreachable { server: String, detail: String },
    /// The server answered with an error in its `{code, message}` shape.
    #[error("the server answered {status} {code}: {message}{hint}")]
    Api {
        status: u16,
        code: String,
        message: String,
        hint: &'static str,
    },
    /// The server answered something that is not the admin API's JSON.
    #[error("unexpected answer from {url}: HTTP {status}: {body}")]
    Unexpected {
        url: String,
        status: u16,
        body: String,
    },
    /// A bad argument, found before anything was sent.
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The admin API at one server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Token>,
}

impl ApiClient {
    /// A client of the server at `server` (e.g. `http://127.0.0.1:8080`, a path prefix allowed;
    /// `host:port` alone means `http://host:port`).
    ///
    /// # Errors
    /// When the URL does not parse or is not `http://` (this build has no TLS).
    pub fn new(server: &str, token: Option<Token>) -> Result<Self, CliError> {
        let invalid = |reason: &str| CliError::InvalidServer {
            url: server.to_owned(),
            reason: reason.to_owned(),
        };
        let with_scheme = if server.contains("://") {
            server.to_owned()
        } else {
            format!("http://{server}")
        };
        let base = Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
        match base.scheme() {
            "http" => {}
            "https" => {
                return Err(invalid(
                    "this build speaks plain http only; reach the server through http:// (e.g. an SSH tunnel)",
                ));
            }
            _ => return Err(invalid("use http://host:port")),
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid("use http://host:port"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| invalid(&e.to_string()))?;
        Ok(Self {
            http,
            base,
            token: token.filter(|t| !t.0.is_empty()),
        })
    }

    /// The server's base URL, for messages.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `/api/v1/<segments…>` with each segment percent-encoded and the non-empty query pairs.
    fn url(&self, segments: &[&str], query: &[(&str, Option<String>)]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        let pairs: Vec<_> = query
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url
    }

    /// `GET /api/v1/<segments>?<query>` as JSON.
    ///
    /// # Errors
    /// See [`CliError`].
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, Option<String>)],
    ) -> Result<Value, CliError> {
        self.send(Method::GET, self.url(segments, query), None)
            .await
    }

    /// `POST /api/v1/<segments>` with a JSON body.
    ///
    /// # Errors
    /// See [`CliError`].
    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Value, CliError> {
        self.send(Method::POST, self.url(segments, &[]), Some(body))
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let mut request = self
            .http
            .request(method, url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return match json {
                Some(v) => Ok(v),
                None if text.trim().is_empty() => Ok(Value::Null),
                None => Err(CliError::Unexpected {
                    url: url.to_string(),
                    status: status.as_u16(),
                    body: shorten(&text, 200),
                }),
            };
        }
        match json.as_ref().and_then(|v| {
            Some((
                v.get("code")?.as_str()?.to_owned(),
                v.get("message")?.as_str()?.to_owned(),
            ))
        }) {
            Some((code, message)) => Err(CliError::Api {
                status: status.as_u16(),
                code,
                message,
                hint: hint(status, self.token.is_some()),
            }),
            None => Err(CliError::Unexpected {
                url: url.to_string(),
                status: status.as_u16(),
                body: shorten(&text, 200),
            }),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let detail = if e.is_timeout() {
            "no answer within the timeout".to_owned()
        } else {
            // The innermost cause says what happened ("Connection refused", "dns error").
            let mut source: &dyn std::error::Error = e;
            while let Some(next) = source.source() {
                source = next;
            }
            source.to_string()
        };
        CliError::Unreachable {
            server: self.server().to_owned(),
            detail,
        }
    }
}

fn hint(status: StatusCode, has_token: bool) -> &'static str {
    match (status, has_token) {
        (StatusCode::UNAUTHORIZED, false) => {
            "\n  (the admin API needs a token: pass --token or set KODOMASU_TOKEN)"
        }
        (StatusCode::UNAUTHORIZED, true) => {
            "\n  (the token was refused: check it with `kodomasu token list` on the server)"
        }
        _ => "",
    }
}

/// At most `max` characters of `s` on one line, with `…` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let one_line = one_line.trim();
    if one_line.chars().count() <= max {
        return one_line.to_owned();
    }
    let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_never_formatted() {
        let t = Token::from("kdm_secret".to_owned());
        assert_eq!(format!("{t:?}"), "Token(***)");
        let client = ApiClient::new("http://127.0.0.1:1", Some(t)).expect("client");
        assert!(!format!("{client:?}").contains("kdm_secret"));
    }

    #[test]
    fn urls_encode_segments_and_keep_a_prefix() {
        let client = ApiClient::new("http://h:1/prefix/", None).expect("client");
        let url = client.url(
            &["workflows", "a b/c"],
            &[("status", Some("running".into())), ("type", None)],
        );
        assert_eq!(
            url.as_str(),
            "http://h:1/prefix/api/v1/workflows/a%20b%2Fc?status=running"
        );
        let client = ApiClient::new("http://h:1", None).expect("client");
        assert_eq!(
            client.url(&["workflows"], &[]).as_str(),
            "http://h:1/api/v1/workflows"
        );
    }

    #[test]
    fn bad_server_urls_are_refused() {
        assert!(ApiClient::new("127.0.0.1:8080", None).is_ok());
        for url in ["https://h", "ftp://h", "http://", "http://[::1", "a b"] {
            assert!(
                matches!(
                    ApiClient::new(url, None),
                    Err(CliError::InvalidServer { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn shorten_cuts_and_flattens() {
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }
}
