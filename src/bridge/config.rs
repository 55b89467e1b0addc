//! `[bridge]` (the memory and input limits in front of the spool) and
//! `[status]` (the bridge status messages), docs/config.md.

use serde::{Deserialize, Serialize};

use crate::ami::Limits;
use crate::config::doc::documented;

documented! {
    /// Memory and input limits, per AMI connection.
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct BridgeConfig {
        /// Events read but not yet written to the spool, per AMI connection,
        /// in bytes (the in-memory budget in front of the disk).
        pub max_buffered_bytes: usize,
        /// Longest AMI line accepted, in bytes (a longer one is skipped and counted).
        pub max_line_bytes: usize,
        /// Largest AMI message accepted, in bytes (same treatment).
        pub max_message_bytes: usize,
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        let l = Limits::default();
        BridgeConfig {
            max_buffered_bytes: 16 << 20,
            max_line_bytes: l.max_line,
            max_message_bytes: l.max_message,
        }
    }
}

impl BridgeConfig {
    /// The AMI reader's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_line: self.max_line_bytes,
            max_message: self.max_message_bytes,
            ..Limits::default()
        }
    }
}

documented! {
    /// Where the bridge announces that a server connected or disconnected.
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct StatusConfig {
        /// The exchange of status messages (declared as a topic exchange if
        /// the mappings do not name it).
        pub exchange: String,
        /// The routing key; {server} is replaced by the server name.
        pub routing_key: String,
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            exchange: "ami.events".into(),
            routing_key: "{server}.bridge.status".into(),
        }
    }
}
