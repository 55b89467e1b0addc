//! Actions in: AMQP messages become AMI actions, and replies come back.
//!
//! [`request`] is the JSON contract (docs/actions.md), [`allow`] the
//! allow-list that decides who may do what, [`rpc`] the consumer that ties
//! them to the AMI pool.

pub(crate) mod acks;
pub(crate) mod allow;
pub mod client;
pub(crate) mod limits;
pub(crate) mod request;
pub(crate) mod rpc;

pub(crate) use rpc::PathHealth;
pub use rpc::{ActionsConfig, QueueType};
