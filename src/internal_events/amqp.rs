//! Events of the publisher: the broker unreachable, a spool record it
//! cannot decode.

use metrics::counter;

use super::catalog::{AMQP_RECONNECTS_TOTAL, SPOOL_CORRUPT_RECORDS_TOTAL};

const TARGET: &str = "ami2amqp::amqp::publisher";

/// A broker connection or session failed; the publisher waits and tries
/// the next URL. (Once per attempt, which backs off: not rate-limited.)
pub struct AmqpUnavailable<'a> {
    /// Already redacted.
    pub url: &'a str,
    pub reason: &'a str,
    pub spooled_messages: u64,
    pub spooled_bytes: u64,
}

impl AmqpUnavailable<'_> {
    pub fn emit(self) {
        counter!(AMQP_RECONNECTS_TOTAL).increment(1);
        tracing::warn!(target: TARGET, url = %self.url, reason = %self.reason,
            spooled_messages = self.spooled_messages, spooled_bytes = self.spooled_bytes,
            "AMQP unavailable; events wait in the spool");
    }
}

/// A spool record whose CRC passed but that does not decode (a lying disk,
/// a record of another version): skipped.
pub struct UndecodableRecord<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl UndecodableRecord<'_> {
    pub fn emit(self) {
        tracing::error!(target: TARGET, error = %self.error, "undecodable spool record skipped");
        counter!(SPOOL_CORRUPT_RECORDS_TOTAL).increment(1);
    }
}
