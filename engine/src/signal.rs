//! Signal names: the built-ins every workflow understands, and custom ones.

use serde::{Deserialize, Serialize};

/// Signals the engine handles for every workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinSignal {
    /// Dispatch nothing new; a running activity finishes and its result is journaled.
    Pause,
    /// Continue where the workflow stopped.
    Resume,
    /// Fire the running activity's token, then run the workflow's cancel path.
    Cancel,
}

/// A parsed signal name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalName {
    Builtin(BuiltinSignal),
    Custom(String),
}

impl SignalName {
    /// Classifies a signal name.
    pub fn parse(name: &str) -> Self {
        match name {
            "pause" => Self::Builtin(BuiltinSignal::Pause),
            "resume" => Self::Builtin(BuiltinSignal::Resume),
            "cancel" => Self::Builtin(BuiltinSignal::Cancel),
            other => Self::Custom(other.to_owned()),
        }
    }
}
