//! ami2amqp: puts Asterisk's manager interface (AMI) on a RabbitMQ bus.
//!
//! The crate is a library with a thin binary (`src/main.rs`) so that tests
//! and benchmarks drive the same code the bridge runs. See ARCHITECTURE.md
//! for the bird's-eye view.

//! The public surface is deliberate and small: the modules below that are
//! `pub` are what the binary, the integration tests and the benchmarks
//! call, and each of them lists what it exposes with `pub use`; everything
//! else is private to the crate, so rustc reports code nothing uses.

pub mod actions;
pub mod ami;
pub mod amqp;
mod bridge;
pub mod config;
mod facade;
mod fleet;
mod internal_events;
mod logs;
pub mod mapping;
pub mod memory;
mod metrics;
mod support;
pub mod tools;
pub mod trace;

pub use bridge::{Bridge, BridgeError};
/// Every metric the bridge exports, with its type and help text (what
/// `/metrics` serves; the tests check the docs against it).
pub use internal_events::catalog::{Kind as MetricKind, METRICS, Metric};
