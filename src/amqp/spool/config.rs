//! `[spool]` as written in the config file (docs/config.md);
//! [`SpoolSettings::runtime`] turns it into the spool's [`SpoolConfig`]
//! and owns the rule that keeps segments small enough for `drop_oldest`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SpoolConfig;
use crate::config::doc::documented;

/// What to do when the spool is full.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// New events are dropped (and counted); the oldest are kept.
    #[default]
    RefuseNew,
    /// The oldest spooled events are dropped (and counted) to make room.
    DropOldest,
}

/// The smallest segment the runtime uses, whatever `max_bytes` says.
const MIN_SEGMENT: u64 = 64 << 10;

documented! {
    /// The on-disk spool: every message waits here until the broker confirms it.
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct SpoolSettings {
        /// The spool directory (created if missing; one bridge per directory).
        pub dir: PathBuf,
        /// The most unconfirmed data the spool may hold, in bytes (at least 1 MiB).
        pub max_bytes: u64,
        /// Size at which a segment file is closed and a new one started, in
        /// bytes (at least 64 KiB; at most a quarter of max_bytes is used).
        pub segment_bytes: u64,
        /// When the spool is full: "refuse_new" drops new messages,
        /// "drop_oldest" deletes the oldest segment. Either way it is counted.
        pub on_full: OnFull,
        /// How often written spool data is fsync'ed (bounds what a power loss
        /// can take; a `kill -9` loses nothing that was written).
        pub fsync_interval_ms: u64,
    }
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: PathBuf::from("/var/lib/ami2amqp/spool"),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            on_full: OnFull::default(),
            fsync_interval_ms: 200,
        }
    }
}

impl SpoolSettings {
    /// The spool's runtime settings.
    pub fn runtime(&self) -> SpoolConfig {
        SpoolConfig {
            dir: self.dir.clone(),
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes(),
            on_full: self.on_full,
            fsync_interval: Duration::from_millis(self.fsync_interval_ms),
        }
    }

    /// drop_oldest frees whole segments: keep them a quarter of the limit
    /// at most so it never throws away most of the spool at once.
    fn segment_bytes(&self) -> u64 {
        self.segment_bytes
            .min((self.max_bytes / 4).max(MIN_SEGMENT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_at_most_a_quarter_of_the_spool() {
        let s = |max_bytes, segment_bytes| {
            SpoolSettings {
                max_bytes,
                segment_bytes,
                ..SpoolSettings::default()
            }
            .runtime()
            .segment_bytes
        };
        assert_eq!(s(1 << 30, 64 << 20), 64 << 20);
        assert_eq!(s(100 << 20, 64 << 20), 25 << 20);
        assert_eq!(s(1 << 20, 64 << 20), 256 << 10);
        // Never below 64 KiB, even for a tiny limit.
        assert_eq!(s(1 << 10, 64 << 20), 64 << 10);
        let r = SpoolSettings::default().runtime();
        assert_eq!(r.fsync_interval, Duration::from_millis(200));
        assert_eq!(r.on_full, OnFull::RefuseNew);
    }
}
