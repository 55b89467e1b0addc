//! The Asterisk Manager Interface: message model, framing, client and pool.
//!
//! Read in this order: [`message`] (what an AMI message is), [`codec`] (how
//! bytes become messages), [`client`] (one logged-in connection with action
//! correlation, keepalive and reconnect), [`pool`] (every configured server,
//! one event connection and a few action connections each).

pub mod codec;
pub mod documented;
pub mod message;

pub use codec::{AmiCodec, Frame, Limits, Malformed, MalformedKind};
pub use message::{Kind, Message, MessageBuilder, bytes_to_text};
pub mod login;
pub use login::{AuthType, Credentials, EventMask, LoginError};
pub mod client;
pub use client::{
    ActionError, ActionResult, Backoff, Client, ClientConfig, ConnState, Incoming, ServerEvent,
};
pub mod pool;
pub use pool::{Pool, PoolError, ServerSpec};
