//! Helpers shared by the integration tests (`mod common;` in a test file)
//! and the benches (`#[path = ".../tests/common/mod.rs"] mod common;`):
//! starting the binary's processes, temp dirs, brokers, waiting.
//!
//! Each test file is its own crate and uses only part of this module, hence
//! the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod arrivals;
pub mod broker;
pub mod certs;
pub mod cleanup;
pub mod cpu;
pub mod fleet;
pub mod procs;
pub mod tick_ami;
