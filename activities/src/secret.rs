//! A secret value (API key, token) that never prints: `Debug` and `Display` show `***`.
//!
//! ```
//! let token = activities::Secret::new("s3cr3t");
//! assert_eq!(format!("{token:?} {token}"), "*** ***");
//! assert_eq!(token.expose(), "s3cr3t");
//! ```

use serde::Deserialize;
use std::fmt;

/// A string that is never printed or logged. Deserializes from a plain string; it does not
/// implement `Serialize`, so it cannot leak through a config dump either.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, to put into a request header. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (not configured).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
