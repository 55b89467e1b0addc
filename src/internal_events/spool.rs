//! Events of the on-disk spool: messages dropped or refused, writes and
//! syncs that failed, damaged or missing segments.

use std::io;
use std::path::Path;
use std::time::Duration;

use metrics::counter;

use super::catalog::{
    SPOOL_DROPPED_TOTAL, SPOOL_MISSING_SEGMENTS_TOTAL, SPOOL_SYNC_ERRORS_TOTAL,
    SPOOL_WRITE_ERRORS_TOTAL,
};
use crate::logs::Throttle;

const TARGET: &str = "ami2amqp::amqp::spool";

/// The spool is full and `on_full = refuse_new`: a batch is refused.
/// Logged once per 10 s while it lasts, with the records refused since the
/// last line (`since_logged` carries them between calls).
pub struct SpoolFullRefused<'a> {
    pub records: u64,
    pub max_bytes: u64,
    /// Records refused since the last line; reset when a line is written.
    pub since_logged: &'a mut u64,
}

impl SpoolFullRefused<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(SPOOL_DROPPED_TOTAL, "reason" => "full_refuse_new").increment(self.records);
        *self.since_logged += self.records;
        if LOG.allow().is_some() {
            tracing::error!(
                target: TARGET,
                records = *self.since_logged,
                max_bytes = self.max_bytes,
                "spool full: new messages refused (on_full = refuse_new); is the broker reachable?"
            );
            *self.since_logged = 0;
        }
    }
}

/// Messages staged while an earlier batch the disk refused is held:
/// refused.
pub struct SpoolRefusedWhileHeld {
    pub records: u64,
    pub reason: &'static str,
    pub held: usize,
}

impl SpoolRefusedWhileHeld {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(SPOOL_DROPPED_TOTAL, "reason" => self.reason).increment(self.records);
        if let Some(suppressed) = LOG.allow() {
            tracing::error!(
                target: TARGET,
                records = self.records,
                reason = self.reason,
                held = self.held,
                suppressed,
                "spool cannot be written: new messages refused while the earlier batch waits for the disk"
            );
        }
    }
}

/// A batch could not be written; it is held and retried every second.
/// The first failure of a run is always logged, later ones once per 10 s.
pub struct SpoolWriteFailed<'a> {
    pub error: &'a io::Error,
    pub reason: &'static str,
    pub held: usize,
    /// Whether nothing was held before (a new failure).
    pub first: bool,
}

impl SpoolWriteFailed<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(SPOOL_WRITE_ERRORS_TOTAL).increment(1);
        let suppressed = LOG.allow();
        if self.first || suppressed.is_some() {
            tracing::error!(target: TARGET, error = %self.error, reason = self.reason, held = self.held,
                suppressed = suppressed.unwrap_or(0),
                "cannot write to the spool; the batch is kept in memory and retried every second, new messages are refused meanwhile");
        }
    }
}

/// At shutdown, a held batch still could not be written: lost.
pub struct SpoolLostAtShutdown {
    pub records: u64,
    pub reason: &'static str,
}

impl SpoolLostAtShutdown {
    pub fn emit(self) {
        counter!(SPOOL_DROPPED_TOTAL, "reason" => "shutdown").increment(self.records);
        tracing::error!(
            target: TARGET,
            records = self.records,
            reason = self.reason,
            "messages that could not be written to the spool are lost at shutdown"
        );
    }
}

/// The oldest segment was dropped to make room (once per segment, not per
/// message: not rate-limited).
pub struct SpoolDroppedOldest {
    /// Unconfirmed records the segment held.
    pub records: u64,
    pub bytes: u64,
    pub reason: &'static str,
}

impl SpoolDroppedOldest {
    pub fn emit(self) {
        counter!(SPOOL_DROPPED_TOTAL, "reason" => self.reason).increment(self.records);
        tracing::error!(
            target: TARGET,
            records = self.records,
            bytes = self.bytes,
            reason = self.reason,
            "spool full: oldest messages dropped (on_full = drop_oldest)"
        );
    }
}

/// A segment file cannot be opened (deleted under the bridge): what it
/// held is lost.
pub struct SpoolSegmentMissing<'a> {
    pub segment: &'a Path,
    pub error: &'a io::Error,
}

impl SpoolSegmentMissing<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(SPOOL_MISSING_SEGMENTS_TOTAL).increment(1);
        if let Some(suppressed) = LOG.allow() {
            tracing::error!(target: TARGET, segment = %self.segment.display(), error = %self.error, suppressed,
                "spool segment cannot be read: the messages it held are lost");
        }
    }
}

/// Rolling a segment (creating a file) failed in the router task; it
/// retries in a second (so at most one line a second).
pub struct SpoolRollFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl SpoolRollFailed<'_> {
    pub fn emit(self) {
        counter!(SPOOL_WRITE_ERRORS_TOTAL).increment(1);
        tracing::error!(target: "ami2amqp::bridge", error = %self.error,
            "cannot write to the spool; retrying in 1 s");
    }
}

/// An fsync, a cursor write or a deletion of the spool's disk work
/// failed.
pub struct SpoolSyncFailed<'a> {
    /// What failed, e.g. `fdatasync of a spool segment`.
    pub what: &'a str,
    pub error: &'a io::Error,
}

impl SpoolSyncFailed<'_> {
    pub fn emit(self) {
        counter!(SPOOL_SYNC_ERRORS_TOTAL).increment(1);
        tracing::error!(target: "ami2amqp::amqp::syncer", error = %self.error, "spool: {} failed", self.what);
    }
}
