//! The Asterisk Manager Interface: client and pool over the `ami-proto` crate.
//!
//! The protocol itself — messages, framing, limits, the login messages and
//! the `Events:` mask — is the `ami-proto` crate (crates/ami-proto), with
//! no I/O. This module is what does I/O with it: [`login`] (the exchange on
//! a fresh socket), [`client`] (one logged-in connection with action
//! correlation, keepalive and reconnect), [`pool`] (every configured server,
//! one event connection and a few action connections each).
//!
//! The protocol's types are re-exported here, and under their old module
//! names [`codec`] and [`message`], so the rest of the crate says
//! `crate::ami::Message` whichever crate defines it.

pub mod config;
pub mod documented;

/// The framing, from `ami-proto`.
pub mod codec {
    pub use ami_proto::{
        AmiCodec, BANNER_PREFIX, DecodeAll, Frame, Limits, Malformed, MalformedKind, decode_all,
    };
}

/// The message model, from `ami-proto`.
pub mod message {
    pub use ami_proto::{Kind, Message, MessageBuilder, bytes_to_text};
}

pub use codec::{AmiCodec, Frame, Limits, Malformed, MalformedKind};
pub use message::{Kind, Message, MessageBuilder, bytes_to_text};
pub mod login;
pub use login::{AuthType, Credentials, EventMask, LoginError};
pub mod client;
pub use client::{
    ActionError, ActionResult, Backoff, Client, ClientConfig, ConnState, Incoming, ServerEvent,
};
pub mod pool;
pub use config::{EventsCfg, ServerConfig};
pub use pool::{Pool, PoolError, ServerSpec};
