//! Small helpers several parts of the bridge share, in one place.
//!
//! What belongs here: pure, dependency-light utilities with no knowledge of
//! AMI, AMQP, mappings or configuration: reconnect timing
//! ([`backoff`]), clocks and timestamp formats ([`time`]), and positions in
//! text ([`text`]). What does not: anything a single module uses (keep it
//! there), the logging helpers (`crate::logs`: rate limiting, clipping),
//! and URL parsing and redaction (`crate::config`, next to the AMQP URL
//! rules).

pub mod backoff;
pub mod text;
pub mod time;
pub mod tls;
