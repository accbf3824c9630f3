//! `demo.chain`: `steps` activities one after another, each sleeping `sleep_ms` and failing
//! retryably with probability `fail_prob`. Output `{"steps": n}`.
//!
//! ```text
//! curl -X POST localhost:8080/api/v1/workflows \
//!   -H 'content-type: application/json' \
//!   -d '{"type":"demo.chain","input":{"steps":3,"sleep_ms":100,"fail_prob":0.2}}'
//! ```

use engine::{
    Activity, ActivityCall, ActivityContext, ActivityError, ActivityOptions, ActivityOutcome, Next,
    NoSignal, Registry, RetryPolicy, Transition, Workflow,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Registers `demo.chain` and its step activity.
pub fn register(registry: Registry) -> Registry {
    registry.workflow(DemoChain).activity(DemoStep)
}

/// Input of `demo.chain`; validated when deserialized, so bad values are refused before the
/// workflow is written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct ChainInput {
    /// Number of steps, 1 to 10 000.
    pub steps: u32,
    /// Sleep per step in milliseconds, at most 600 000.
    pub sleep_ms: u64,
    /// Chance in [0, 1) that an attempt fails retryably.
    pub fail_prob: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChainInput {
    steps: u32,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    fail_prob: f64,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for ChainInput {
    type Error = String;

    /// Only a JSON object is accepted (serde would otherwise take an array by position).
    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let raw: RawChainInput =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        if !(1..=10_000).contains(&raw.steps) {
            return Err(format!(
                "steps must be between 1 and 10000, got {}",
                raw.steps
            ));
        }
        if raw.sleep_ms > 600_000 {
            return Err(format!(
                "sleep_ms must be at most 600000, got {}",
                raw.sleep_ms
            ));
        }
        if !(0.0..1.0).contains(&raw.fail_prob) {
            return Err(format!(
                "fail_prob must be in [0, 1), got {}",
                raw.fail_prob
            ));
        }
        Ok(Self {
            steps: raw.steps,
            sleep_ms: raw.sleep_ms,
            fail_prob: raw.fail_prob,
        })
    }
}

/// Output of `demo.chain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainOutput {
    pub steps: u32,
}

/// States of `demo.chain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChainState {
    /// Step `step` (from 1) of `input.steps` is running; its result moves to the next step or `Done`.
    Running { step: u32, input: ChainInput },
    /// All steps ran.
    Done { steps: u32 },
    /// A step failed for good.
    Failed { step: u32 },
}

/// The `demo.chain` workflow.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoChain;

fn step_call(step: u32, input: &ChainInput) -> ActivityCall {
    ActivityCall::new::<DemoStep>(&StepInput {
        step,
        sleep_ms: input.sleep_ms,
        fail_prob: input.fail_prob,
    })
}

impl Workflow for DemoChain {
    const NAME: &'static str = "demo.chain";
    type Input = ChainInput;
    type State = ChainState;
    type Output = ChainOutput;
    type Signal = NoSignal;

    fn start(&self, input: ChainInput) -> Transition<ChainState, ChainOutput> {
        Transition::run(ChainState::Running { step: 1, input }, step_call(1, &input))
    }

    fn on_activity(
        &self,
        state: ChainState,
        outcome: ActivityOutcome,
    ) -> Transition<ChainState, ChainOutput> {
        let ChainState::Running { step, input } = state else {
            return Transition::new(
                state,
                Next::Fail(engine::WorkflowError::new(
                    "demo.unexpected",
                    "no step running",
                )),
            );
        };
        match outcome.decode::<DemoStep>() {
            Ok(_) if step >= input.steps => Transition::complete(
                ChainState::Done { steps: input.steps },
                ChainOutput { steps: input.steps },
            ),
            Ok(_) => Transition::run(
                ChainState::Running {
                    step: step + 1,
                    input,
                },
                step_call(step + 1, &input),
            ),
            Err(e) => Transition::fail(ChainState::Failed { step }, e.into()),
        }
    }
}

/// Input of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepInput {
    pub step: u32,
    pub sleep_ms: u64,
    pub fail_prob: f64,
}

/// One step of `demo.chain`: sleeps, then fails retryably with probability `fail_prob`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoStep;

impl Activity for DemoStep {
    const NAME: &'static str = "demo.step";
    type Input = StepInput;
    type Output = u32;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            retry: RetryPolicy {
                initial_interval: Duration::from_millis(50),
                backoff_coefficient: 2.0,
                maximum_interval: Duration::from_secs(2),
                maximum_attempts: 50,
                non_retryable_error_codes: Vec::new(),
            },
            start_to_close_timeout: Duration::from_secs(900),
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }

    async fn run(&self, ctx: ActivityContext, input: StepInput) -> Result<u32, ActivityError> {
        if input.sleep_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(input.sleep_ms)) => {}
                _ = ctx.cancelled() => return Err(ActivityError::retryable(ActivityError::CANCELLED, "step cancelled")),
            }
        }
        if input.fail_prob > 0.0 && fastrand::f64() < input.fail_prob {
            return Err(ActivityError::retryable(
                "demo.injected",
                format!("step {} failed on purpose", input.step),
            ));
        }
        Ok(input.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_validated_when_decoded() {
        let ok: Result<ChainInput, _> = serde_json::from_value(
            serde_json::json!({"steps": 3, "sleep_ms": 5, "fail_prob": 0.1}),
        );
        assert!(ok.is_ok());
        for bad in [
            serde_json::json!({"steps": 0}),
            serde_json::json!({"steps": 3, "fail_prob": 1.0}),
            serde_json::json!({"steps": "3"}),
            serde_json::json!({"steps": 3, "extra": true}),
            serde_json::json!([3, 0, 0.0]),
        ] {
            assert!(
                serde_json::from_value::<ChainInput>(bad.clone()).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn chain_runs_each_step_then_completes() {
        let input = ChainInput {
            steps: 2,
            sleep_ms: 0,
            fail_prob: 0.0,
        };
        let t = DemoChain.start(input);
        assert!(matches!(t.next, Next::Activity(_)));
        let ok = |step: u32| ActivityOutcome {
            name: DemoStep::NAME.into(),
            result: Ok(serde_json::json!(step)),
        };
        let t = DemoChain.on_activity(t.state, ok(1));
        assert_eq!(t.state, ChainState::Running { step: 2, input });
        let t = DemoChain.on_activity(t.state, ok(2));
        assert!(matches!(t.next, Next::Complete(ChainOutput { steps: 2 })));
    }
}
