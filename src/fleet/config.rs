//! `[fleet]`: several instances sharing servers, one reader per server
//! (docs/scaling.md, docs/config.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::plan::Timing;
use crate::config::doc::documented;

documented! {
    /// Several bridge instances sharing servers: each server's event
    /// connection is run by the one instance holding its lease, an
    /// exclusive queue on RabbitMQ (docs/scaling.md). Off: this instance
    /// reads every configured server.
    #[derive(Debug, Clone, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct FleetConfig {
        /// Take part in a fleet: read only the servers whose lease this
        /// instance holds.
        pub enabled: bool,
        /// The fanout exchange the instances announce themselves on.
        pub exchange: String,
        /// A server's lease is the exclusive queue <lease_prefix><server>.
        pub lease_prefix: String,
        /// How often an instance announces itself and revisits its leases,
        /// in milliseconds.
        pub announce_interval_ms: u64,
        /// An instance not heard from for this long is taken for dead and
        /// its servers are shared out, in milliseconds (at least twice
        /// announce_interval_ms).
        pub peer_timeout_ms: u64,
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            enabled: false,
            exchange: "ami2amqp.fleet".into(),
            lease_prefix: "ami2amqp.lease.".into(),
            announce_interval_ms: 1000,
            peer_timeout_ms: 3000,
        }
    }
}

impl FleetConfig {
    pub fn announce_interval(&self) -> Duration {
        Duration::from_millis(self.announce_interval_ms)
    }

    /// The planner's timing: discovery lasts two announcements, a lease
    /// given back is left to the others for two peer timeouts.
    pub fn timing(&self) -> Timing {
        Timing {
            peer_timeout: Duration::from_millis(self.peer_timeout_ms),
            discovery: self.announce_interval() * 2,
            cooldown: Duration::from_millis(self.peer_timeout_ms) * 2,
        }
    }

    /// The lease queue of `server`.
    pub fn lease_queue(&self, server: &str) -> String {
        format!("{}{}", self.lease_prefix, server)
    }
}
