//! The registry of workflow and activity types a process knows.

use crate::activity::{Activity, ActivityAdapter, ErasedActivity};
use crate::workflow::{ErasedWorkflow, Workflow, WorkflowAdapter};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Workflow and activity types by their stable names. Type erasure happens here and only here.
#[derive(Clone, Default)]
pub struct Registry {
    workflows: BTreeMap<&'static str, Arc<dyn ErasedWorkflow>>,
    activities: BTreeMap<&'static str, Arc<dyn ErasedActivity>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("workflows", &self.workflows.keys().collect::<Vec<_>>())
            .field("activities", &self.activities.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a workflow type under `W::NAME` (replacing one of the same name).
    pub fn workflow<W: Workflow>(mut self, workflow: W) -> Self {
        self.workflows
            .insert(W::NAME, Arc::new(WorkflowAdapter(workflow)));
        self
    }

    /// Registers an activity under `A::NAME` (replacing one of the same name).
    pub fn activity<A: Activity>(mut self, activity: A) -> Self {
        self.activities
            .insert(A::NAME, Arc::new(ActivityAdapter(activity)));
        self
    }

    /// Names of the registered workflow types.
    pub fn workflow_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.workflows.keys().copied()
    }

    /// Names of the registered activities.
    pub fn activity_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.activities.keys().copied()
    }

    pub(crate) fn get_workflow(&self, name: &str) -> Option<&Arc<dyn ErasedWorkflow>> {
        self.workflows.get(name)
    }

    pub(crate) fn get_activity(&self, name: &str) -> Option<&Arc<dyn ErasedActivity>> {
        self.activities.get(name)
    }
}
