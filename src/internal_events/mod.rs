//! What the bridge counts and logs, declared in one place.
//!
//! - [`catalog`]: every metric's name (a constant the call sites use), type
//!   and help text; the help texts are registered with the recorder when
//!   it is installed ([`catalog::describe`]).
//! - One type per internal event that both logs and counts (a reconnect, a
//!   malformed AMI message, a refused action, a damaged spool record, …),
//!   grouped by component. Its `emit()` writes the log line — rate-limited
//!   with [`crate::logs::Throttle`] where it can repeat per input — and
//!   increments its counter, with labels from bounded sets. The call site
//!   only builds the event; the log text, the metric and its labels cannot
//!   drift apart from each other.
//!
//! Each event logs under the target of the module that emits it (e.g.
//! `ami2amqp::ami::client`), so log lines and `RUST_LOG` filters read the
//! same as if the component logged it itself.

pub(crate) mod actions;
pub(crate) mod ami;
pub(crate) mod amqp;
pub(crate) mod catalog;
pub(crate) mod facade;
pub(crate) mod fleet;
pub(crate) mod mapping;
pub(crate) mod snapshot;
pub(crate) mod spool;

#[cfg(test)]
mod tests;
