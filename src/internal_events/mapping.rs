//! Events of the mapping set: reloads and template errors.

use std::fmt;

use metrics::counter;

use super::catalog::{MAPPING_ERRORS_TOTAL, MAPPING_RELOADS_TOTAL};
use crate::logs::clip;

const RELOAD: &str = "ami2amqp::mapping::reload";

/// A new mapping set was loaded and swapped in.
pub struct MappingReloaded<'a> {
    pub dirs: &'a dyn fmt::Display,
    pub routes: usize,
}

impl MappingReloaded<'_> {
    pub fn emit(self) {
        counter!(MAPPING_RELOADS_TOTAL, "result" => "applied").increment(1);
        tracing::info!(target: RELOAD, dirs = %self.dirs, routes = self.routes, "mapping set reloaded");
    }
}

/// A reload found errors: the previous set stays in force.
pub struct MappingReloadRejected<'a> {
    pub dirs: &'a dyn fmt::Display,
    pub error: &'a dyn fmt::Display,
}

impl MappingReloadRejected<'_> {
    pub fn emit(self) {
        counter!(MAPPING_RELOADS_TOTAL, "result" => "rejected").increment(1);
        tracing::error!(target: RELOAD, dirs = %self.dirs,
            "mapping set NOT reloaded, the previous set stays in force:\n{}", self.error);
    }
}

/// A route's template could not render: that message is not produced.
/// Logged for the first ten errors of a run, then every thousandth
/// (`total` is the run's count so far, this one included).
pub struct MappingError<'a> {
    pub server: &'a str,
    pub event: &'a str,
    pub seq: u64,
    /// Label: the route's name (routes come from the loaded mapping files).
    pub route: &'a str,
    pub error: &'a dyn fmt::Display,
    pub total: u64,
}

impl MappingError<'_> {
    pub fn emit(self) {
        counter!(MAPPING_ERRORS_TOTAL, "route" => self.route.to_string()).increment(1);
        if self.total <= 10 || self.total.is_multiple_of(1000) {
            tracing::warn!(target: "ami2amqp::bridge", server = %self.server, event = %clip(self.event), seq = self.seq,
                error = %clip(&self.error.to_string()), total = self.total, "mapping error: message not produced");
        }
    }
}
