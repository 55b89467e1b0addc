//! Events of the snapshots after (re)connect: refusals, items, ends.

use metrics::counter;

use super::catalog::{SNAPSHOT_ITEMS_TOTAL, SNAPSHOT_REFUSED_TOTAL, SNAPSHOTS_TOTAL};
use crate::ami::SnapshotKind;
use crate::logs::clip;

/// Asterisk refused a snapshot action (`Response: Error`): counted every
/// time, logged the first time per server and kind (`first` carries
/// Asterisk's message then), never fatal.
pub struct SnapshotRefused<'a> {
    /// Label: a configured server name.
    pub server: &'a str,
    pub kind: SnapshotKind,
    pub first: Option<&'a str>,
}

impl SnapshotRefused<'_> {
    pub fn emit(self) {
        counter!(SNAPSHOT_REFUSED_TOTAL, "server" => self.server.to_string(), "kind" => self.kind.name())
            .increment(1);
        if let Some(text) = self.first {
            tracing::warn!(target: "ami2amqp::ami::client", server = %self.server, kind = %self.kind,
                action = self.kind.action(), answer = %clip(text),
                "Asterisk refused a snapshot action: this kind is left out of the snapshots (logged once per server)");
        }
    }
}

/// One snapshot item was routed.
pub struct SnapshotItem<'a> {
    pub server: &'a str,
    pub kind: SnapshotKind,
}

impl SnapshotItem<'_> {
    pub fn emit(self) {
        counter!(SNAPSHOT_ITEMS_TOTAL, "server" => self.server.to_string(), "kind" => self.kind.name())
            .increment(1);
    }
}

/// A snapshot ended, complete or not.
pub struct SnapshotDone<'a> {
    pub server: &'a str,
    pub id: &'a str,
    pub complete: bool,
    pub items: u64,
    pub reason: &'a str,
}

impl SnapshotDone<'_> {
    pub fn emit(self) {
        let result = if self.complete {
            "complete"
        } else {
            "incomplete"
        };
        counter!(SNAPSHOTS_TOTAL, "server" => self.server.to_string(), "result" => result)
            .increment(1);
        if self.complete {
            tracing::info!(target: "ami2amqp::bridge", server = %self.server, snapshot_id = %self.id,
                items = self.items, "snapshot complete");
        } else {
            tracing::warn!(target: "ami2amqp::bridge", server = %self.server, snapshot_id = %self.id,
                items = self.items, reason = %clip(self.reason), "snapshot incomplete");
        }
    }
}
