//! Kodosumi 1.1.0, the Ray-based runtime the paid jobs run on: its panel API client, the
//! MIP-003 view of its forms, its calls as engine activities and (feature `sim`) a simulator
//! that speaks the same API.
//!
//! The flow of a paid job: [`schema::to_mip003`] turns a flow's form into the `input_schema`
//! buyers see; [`schema::validate`] checks their `input_data`; [`schema::to_launch_inputs`]
//! makes the launch body; then [`Launch`], [`AwaitExecutionChange`] (again until final),
//! [`GetLockForm`]/[`ReleaseLock`] when the run asks for input, [`FetchResult`] and
//! [`result_text`] for what the buyer gets, [`Kill`] to stop a run.

mod activities;
mod client;
mod jwt;
pub mod schema;
#[cfg(feature = "sim")]
pub mod sim;
pub mod types;

pub use activities::{
    AwaitExecutionChange, AwaitExecutionChangeInput, CLOCK_SKEW, ExecutionObservation,
    ExecutionView, FetchResult, FetchResultInput, FetchResultOutput, GetLockForm, GetLockFormInput,
    GetLockFormOutput, Kill, KillInput, LEASE_SETTLE, LOCK_GONE, LOCK_REJECTED, Launch,
    LaunchInput, LaunchOutcome, MAX_CONSECUTIVE_FAILURES, NOT_CREATED_YET, ReleaseLock,
    ReleaseLockInput, ReleaseLockOutput, STARTUP_404_WINDOW, register, result_text,
};
pub use client::{KodosumiClient, KodosumiConfig, LaunchResponse, LockRelease, SERVICE};
pub use types::{ExecState, ExecutionStatus, Flow, FlowForm, FormElement};
