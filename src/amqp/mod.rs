//! The RabbitMQ side: the spool every message passes through, and the
//! publisher that drains it with publisher confirms.

pub mod config;
mod confirm;
pub mod connect;
pub mod publisher;
pub mod record;
mod scan;
pub mod spool;
mod syncer;
