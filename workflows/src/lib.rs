//! kodomasu's workflows. Every `kodomasu` process registers them through [`registry`].
//!
//! - [`demo`]: `demo.chain`, a chain of sleeping steps that can fail at random; it exercises and
//!   benchmarks the engine without any external service.
//! - [`paid_job`]: `paid_job`, a MIP-003 job paid through Masumi and run on Kodosumi.

pub mod demo;
pub mod paid_job;

use activities::kodosumi::KodosumiClient;
use activities::masumi::MasumiClient;
use std::sync::Arc;

/// The external services paid jobs call.
#[derive(Debug, Clone)]
pub struct Services {
    pub masumi: Arc<MasumiClient>,
    pub kodosumi: Arc<KodosumiClient>,
}

/// Every workflow and activity this crate provides; `paid_job` only when `services` are given.
pub fn registry(services: Option<&Services>) -> engine::Registry {
    let registry = demo::register(engine::Registry::new());
    match services {
        Some(s) => {
            let registry = activities::masumi::register(registry, s.masumi.clone());
            activities::kodosumi::register(registry, s.kodosumi.clone()).workflow(paid_job::PaidJob)
        }
        None => registry,
    }
}
