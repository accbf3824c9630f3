//! kodomasu's workflows. Every `kodomasu` process registers them through [`registry`].
//!
//! - [`demo`]: `demo.chain`, a chain of sleeping steps that can fail at random; it exercises and
//!   benchmarks the engine without any external service.

pub mod demo;

/// The registry of every workflow and activity this crate provides.
pub fn registry() -> engine::Registry {
    demo::register(engine::Registry::new())
}
