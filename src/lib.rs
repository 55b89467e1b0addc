//! ami2amqp: puts Asterisk's manager interface (AMI) on a RabbitMQ bus.
//!
//! The crate is a library with a thin binary (`src/main.rs`) so that tests
//! and benchmarks drive the same code the bridge runs. See ARCHITECTURE.md
//! for the bird's-eye view.

pub mod actions;
pub mod ami;
pub mod amqp;
pub mod bridge;
pub mod config;
pub mod logs;
pub mod mapping;
pub mod memory;
pub mod metrics;
pub mod support;
pub mod tools;
pub mod trace;
