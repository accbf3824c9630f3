//! The workflow filter shared by the list, the counts and bulk operations: status, type, flow,
//! creation range and a key/id search, checked at the edge so bad values answer 400.

use crate::ApiError;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use engine::{ListQuery, Status};
use serde::Deserialize;
use utoipa::ToSchema;

/// Longest accepted `q`, `type` and `flow`, in bytes.
pub const MAX_FILTER_LEN: usize = 256;

/// Which workflows: every given field must match.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `running`, `paused`, `completed`, `failed` or `cancelled`.
    #[schema(example = "running")]
    pub status: Option<String>,
    /// The workflow type, e.g. `paid_job`.
    #[serde(rename = "type")]
    pub workflow_type: Option<String>,
    /// A paid job's flow uid (the workflow's tag).
    pub flow: Option<String>,
    /// Created at or after this time (RFC 3339).
    #[schema(example = "2026-11-23T10:00:00Z")]
    pub created_after: Option<String>,
    /// Created before this time (RFC 3339).
    pub created_before: Option<String>,
    /// Key contains it (ASCII letters case-insensitive) or id starts with it.
    pub q: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

fn text(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.contains('\0') => {
            Err(invalid(format!("{name} must not contain NUL characters")))
        }
        Some(v) if v.len() > MAX_FILTER_LEN => Err(invalid(format!(
            "{name} must be at most {MAX_FILTER_LEN} bytes"
        ))),
        Some(v) if v.is_empty() => Err(invalid(format!("{name} must not be empty"))),
        other => Ok(other),
    }
}

fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(&v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    invalid(format!(
                        "{name} must be an RFC 3339 time like 2026-11-23T10:00:00Z, got `{v}`: {e}"
                    ))
                })
        })
        .transpose()
}

/// Parses a status name.
///
/// # Errors
/// 400 `invalid_query` for an unknown name.
pub fn status(s: &str) -> Result<Status, ApiError> {
    Status::parse(s).ok_or_else(|| {
        invalid(format!(
            "unknown status `{s}`; use running, paused, completed, failed or cancelled"
        ))
    })
}

impl Filter {
    /// The engine query of this filter (page size and cursor unset).
    ///
    /// # Errors
    /// 400 `invalid_query` for an unknown status, a time that is not RFC 3339, an empty range,
    /// or a text field that is empty, too long or holds NUL.
    pub fn query(self) -> Result<ListQuery, ApiError> {
        let status = self.status.as_deref().map(status).transpose()?;
        let created_after = time("created_after", self.created_after)?;
        let created_before = time("created_before", self.created_before)?;
        if let (Some(a), Some(b)) = (created_after, created_before)
            && a >= b
        {
            return Err(invalid("created_after must be before created_before"));
        }
        Ok(ListQuery {
            status,
            workflow_type: text("type", self.workflow_type)?,
            tag: text("flow", self.flow)?,
            created_after,
            created_before,
            search: text("q", self.q)?,
            limit: None,
            cursor: None,
        })
    }
}
