//! The web dashboard: one HTML page, a script and a stylesheet, compiled into the binary
//! (nothing to build or serve beside it; no external URL, so it works offline).
//!
//! `GET /` redirects to `/dashboard`. The shell and its assets are public; the page reads the
//! admin API (`/api/v1/**`) with the session cookie that its login form obtains from
//! `POST /api/v1/session`, and follows `/api/v1/events` for live updates.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// Scripts, styles and requests only from this origin; images also as `data:` URLs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
}

/// An embedded file with its content type and a validator for conditional requests.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: LazyLock<HeaderValue>,
}

fn etag_of(body: &str) -> HeaderValue {
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

static INDEX: Asset = Asset {
    body: INDEX_HTML,
    content_type: "text/html; charset=utf-8",
    etag: LazyLock::new(|| etag_of(INDEX_HTML)),
};
static SCRIPT: Asset = Asset {
    body: APP_JS,
    content_type: "text/javascript; charset=utf-8",
    etag: LazyLock::new(|| etag_of(APP_JS)),
};
static STYLE: Asset = Asset {
    body: APP_CSS,
    content_type: "text/css; charset=utf-8",
    etag: LazyLock::new(|| etag_of(APP_CSS)),
};

impl Asset {
    fn respond(&self, request: &HeaderMap) -> Response {
        let etag = &*self.etag;
        let headers = [
            (header::ETAG, etag.clone()),
            // Revalidate every time: a new binary serves new files at the same URLs.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ];
        if request
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == etag.as_bytes())
        {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        (
            headers,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            )],
            self.body,
        )
            .into_response()
    }
}

async fn index(headers: HeaderMap) -> Response {
    INDEX.respond(&headers)
}

async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

async fn style(headers: HeaderMap) -> Response {
    STYLE.respond(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(needle), "{name} mentions {needle}");
            }
        }
        assert!(INDEX_HTML.contains("/dashboard/app.js"));
        assert!(INDEX_HTML.contains("/dashboard/app.css"));
        // The CSP forbids inline scripts and styles: the page has none.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
    }

    #[tokio::test]
    async fn serves_the_shell_and_redirects_the_root() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move { axum::serve(listener, router::<()>()).await });
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let get = |path: &str| client.get(format!("{base}{path}")).send();

        let root = get("/").await.expect("GET /");
        assert_eq!(root.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(root.headers()[header::LOCATION], "/dashboard");

        for (path, content_type, needle) in [
            ("/dashboard", "text/html", "id=\"login-form\""),
            ("/dashboard/", "text/html", "id=\"login-form\""),
            ("/dashboard/app.js", "text/javascript", "EventSource"),
            ("/dashboard/app.css", "text/css", ".timeline"),
        ] {
            let resp = get(path).await.expect("GET");
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let headers = resp.headers().clone();
            assert!(
                headers[header::CONTENT_TYPE]
                    .to_str()
                    .is_ok_and(|v| v.starts_with(content_type)),
                "{path}"
            );
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert!(resp.text().await.expect("body").contains(needle), "{path}");
            let etag = headers[header::ETAG].clone();
            let again = client
                .get(format!("{base}{path}"))
                .header(header::IF_NONE_MATCH, etag)
                .send()
                .await
                .expect("GET again");
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        }
        server.abort();
    }

    #[test]
    fn etags_differ_per_file() {
        assert_ne!(*INDEX.etag, *SCRIPT.etag);
        assert_ne!(*SCRIPT.etag, *STYLE.etag);
    }
}
