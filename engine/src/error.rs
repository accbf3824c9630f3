//! The engine's error type.

use crate::store::StoreError;

/// Errors of the engine's public operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No workflow type of that name is registered.
    #[error("unknown workflow type `{0}`")]
    UnknownWorkflowType(String),
    /// The input does not match the workflow's input type; nothing was written.
    #[error("invalid input for `{workflow_type}`: {message}")]
    InvalidInput {
        workflow_type: String,
        message: String,
    },
    /// The signal name or payload is not accepted by the workflow type; nothing was written.
    #[error("invalid signal: {0}")]
    InvalidSignal(String),
    /// No workflow with that id exists.
    #[error("workflow {0} not found")]
    NotFound(crate::WorkflowId),
    /// The workflow has finished; it accepts no more signals.
    #[error("workflow {id} is already {status}")]
    Finished {
        id: crate::WorkflowId,
        status: crate::Status,
    },
    /// The storage backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result alias of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
