//! Helpers shared by the integration tests (`mod common;` in a test file).
//!
//! Each test file is its own crate and uses only part of this module, hence
//! the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod broker;
pub mod procs;
