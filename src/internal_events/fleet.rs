//! Events of the fleet's leases (docs/scaling.md): what this instance
//! took, gave back or lost, and announcements it could not read.

use std::time::Duration;

use metrics::{counter, gauge};

use super::catalog::{
    FLEET_BAD_ANNOUNCEMENTS_TOTAL, FLEET_INSTANCES, FLEET_LEASE_CHANGES_TOTAL, FLEET_LEASES,
};
use crate::logs::{Throttle, clip};

const TARGET: &str = "ami2amqp::fleet";

/// This instance got the lease of a server and starts reading it.
pub struct LeaseAcquired<'a> {
    /// Label: a configured server name.
    pub server: &'a str,
    pub instance: &'a str,
    pub held: usize,
}

impl LeaseAcquired<'_> {
    pub fn emit(self) {
        counter!(FLEET_LEASE_CHANGES_TOTAL, "server" => self.server.to_string(), "change" => "acquired")
            .increment(1);
        gauge!(FLEET_LEASES).set(self.held as f64);
        tracing::info!(target: TARGET, server = %self.server, instance = %self.instance, held = self.held,
            "lease acquired: this instance now reads the server");
    }
}

/// Why a lease ended on this instance (the `change` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Handed to a peer below its share (rebalancing).
    Rebalanced,
    /// Given back because this instance is stopping.
    Stopping,
    /// The broker connection was lost: every lease is gone with it.
    Lost,
}

impl LeaseEnd {
    pub fn label(self) -> &'static str {
        match self {
            LeaseEnd::Rebalanced => "rebalanced",
            LeaseEnd::Stopping => "stopping",
            LeaseEnd::Lost => "lost",
        }
    }

    /// The reason the server's `disconnected` status message carries.
    pub fn reason(self) -> &'static str {
        match self {
            LeaseEnd::Rebalanced => "lease handed over to another instance (rebalancing)",
            LeaseEnd::Stopping => "lease handed over: this instance is stopping",
            LeaseEnd::Lost => "lease lost: the broker connection holding it ended",
        }
    }
}

/// This instance stopped reading a server.
pub struct LeaseEnded<'a> {
    pub server: &'a str,
    pub instance: &'a str,
    pub end: LeaseEnd,
    pub held: usize,
}

impl LeaseEnded<'_> {
    pub fn emit(self) {
        counter!(FLEET_LEASE_CHANGES_TOTAL, "server" => self.server.to_string(), "change" => self.end.label())
            .increment(1);
        gauge!(FLEET_LEASES).set(self.held as f64);
        if self.end == LeaseEnd::Lost {
            tracing::warn!(target: TARGET, server = %self.server, instance = %self.instance, held = self.held,
                "{}: stopped reading the server so that another instance can", self.end.reason());
        } else {
            tracing::info!(target: TARGET, server = %self.server, instance = %self.instance, held = self.held,
                "{}", self.end.reason());
        }
    }
}

/// The number of live instances this one counts (itself included) changed.
pub struct FleetSize {
    pub instances: usize,
    pub share: usize,
}

impl FleetSize {
    pub fn emit(self) {
        gauge!(FLEET_INSTANCES).set(self.instances as f64);
        tracing::info!(target: TARGET, instances = self.instances, share = self.share,
            "fleet membership changed");
    }
}

/// An announcement on the fleet exchange that is not one (not JSON, too
/// large, or from a second instance with this instance's name).
pub struct BadAnnouncement<'a> {
    pub error: &'a str,
}

impl BadAnnouncement<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(FLEET_BAD_ANNOUNCEMENTS_TOTAL).increment(1);
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(target: TARGET, error = %clip(self.error), suppressed,
                "fleet: ignored a message on the fleet exchange");
        }
    }
}
