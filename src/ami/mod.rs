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

pub(crate) mod config;
pub(crate) mod documented;

/// The framing, from `ami-proto`.
pub(crate) mod codec {
    pub use ami_proto::{
        AmiCodec, BANNER_PREFIX, Frame, Limits, Malformed, MalformedKind, decode_all,
    };
}

/// The message model, from `ami-proto`.
pub(crate) mod message {
    pub use ami_proto::{Kind, Message, MessageBuilder, bytes_to_text};
}

pub use codec::{AmiCodec, Frame, Limits, Malformed, MalformedKind, decode_all};
pub use message::{Kind, Message, MessageBuilder, bytes_to_text};
pub(crate) mod login;
pub use login::{AuthType, Credentials, EventMask, EventRequest, LoginError, login};
pub(crate) mod client;
pub use client::{
    ActionError, ActionResult, Backoff, Client, ClientConfig, ConnState, Incoming, ServerEvent,
};
pub(crate) mod pool;
pub(crate) mod snapshot;
pub use snapshot::{SnapshotEnd, SnapshotKind, SnapshotMark};
pub(crate) mod stream;
pub use crate::support::tls::{ClientFiles, host_of};
pub use config::{EventsCfg, ServerConfig};
pub use pool::{Pool, PoolError, ServerSpec};
pub use stream::{AmiStream, AmiTls};
