//! Several instances sharing servers (docs/scaling.md): one reader per
//! server anywhere in the fleet, coordinated through RabbitMQ itself.
//!
//! - [`plan`]: which leases to try for or give back — pure, with a model
//!   test of a whole fleet against a simulated broker.
//! - [`lease`]: the task that holds the leases (exclusive queues) on one
//!   AMQP connection and starts and stops the pool's event connections
//!   with them.
//! - [`config`]: the `[fleet]` section.

pub(crate) mod config;
pub(crate) mod lease;
pub(crate) mod plan;

pub use config::FleetConfig;
pub(crate) use lease::{FleetState, HeldLeases, LeaseTask};
