//! The RabbitMQ side: the spool every message passes through, and the
//! publisher that drains it with publisher confirms.

pub(crate) mod config;
mod confirm;
pub(crate) mod connect;
mod in_flight;
pub(crate) mod publisher;
pub(crate) mod record;
mod scan;
pub(crate) mod spool;
mod syncer;

// What the benchmarks use to build the same messages the bridge publishes.
pub use connect::{AmqpError, AmqpTls, Broker, connect};
pub use publisher::{properties, short};
pub use record::Record;
