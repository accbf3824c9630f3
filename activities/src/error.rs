//! Errors of the HTTP clients, classified where they are born: connection errors, timeouts,
//! 408, 429 and 5xx may succeed on retry; other 4xx will not.

use engine::ActivityError;
use std::time::Duration;

/// An error of a call to an external service.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The request never got an answer (connect error, reset, timeout).
    #[error("{service}: transport error: {message}")]
    Transport {
        service: &'static str,
        message: String,
        timed_out: bool,
    },
    /// The service answered with an error status.
    #[error("{service}: HTTP {status}: {message}")]
    Status {
        service: &'static str,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The answer did not have the documented shape.
    #[error("{service}: unexpected response: {message}")]
    Decode {
        service: &'static str,
        message: String,
    },
    /// The circuit breaker is open: the service failed repeatedly, calls back off.
    #[error("{service}: circuit open after repeated failures; retry in {retry_in:?}")]
    CircuitOpen {
        service: &'static str,
        retry_in: Duration,
    },
    /// The request was refused by our own validation before it was sent.
    #[error("{service}: invalid request: {message}")]
    Invalid {
        service: &'static str,
        message: String,
    },
}

impl ClientError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::CircuitOpen { .. } => true,
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Decode { .. } | Self::Invalid { .. } => false,
        }
    }

    /// Whether this failure counts against the service's health (breaker): the service did
    /// not answer properly. A 4xx is our or the caller's problem, not the service's.
    pub fn is_service_failure(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status, if the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Builds the error of a reqwest failure.
    pub fn transport(service: &'static str, e: &reqwest::Error) -> Self {
        // Never include the URL's query or credentials: reqwest's Display may carry the URL.
        let e_no_url = e.without_url_ref();
        Self::Transport {
            service,
            message: e_no_url.to_string(),
            timed_out: e.is_timeout(),
        }
    }

    /// The stable code journaled with the error.
    pub fn code(&self) -> String {
        match self {
            Self::Transport {
                service,
                timed_out: true,
                ..
            } => format!("{service}.timeout"),
            Self::Transport { service, .. } => format!("{service}.unreachable"),
            Self::Status {
                service, status, ..
            } => format!("{service}.http_{status}"),
            Self::Decode { service, .. } => format!("{service}.bad_response"),
            Self::CircuitOpen { service, .. } => format!("{service}.circuit_open"),
            Self::Invalid { service, .. } => format!("{service}.invalid_request"),
        }
    }
}

/// `reqwest::Error` without the URL, by reference.
trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut msg = self.to_string();
        if let Some(url) = self.url() {
            msg = msg.replace(url.as_str(), "<url>");
        }
        msg
    }
}

impl From<ClientError> for ActivityError {
    fn from(e: ClientError) -> Self {
        let details = match &e {
            ClientError::Status {
                status,
                retry_after,
                ..
            } => Some(
                serde_json::json!({ "status": status, "retry_after_ms": retry_after.map(|d| d.as_millis() as u64) }),
            ),
            _ => None,
        };
        let mut out = if e.is_retryable() {
            ActivityError::retryable(e.code(), e.to_string())
        } else {
            ActivityError::non_retryable(e.code(), e.to_string())
        };
        out.details = details;
        out
    }
}

/// Parses a `Retry-After` header given in seconds.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> ClientError {
        ClientError::Status {
            service: "svc",
            status,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn classification_follows_the_status() {
        for s in [408, 429, 500, 502, 503] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        let e: ActivityError = status(503).into();
        assert!(e.retryable);
        assert_eq!(e.code, "svc.http_503");
    }
}
