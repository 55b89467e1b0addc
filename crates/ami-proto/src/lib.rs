//! The Asterisk Manager Interface (AMI) wire protocol, with no I/O.
//!
//! What is here: the message model ([`Message`], an ordered multimap of
//! `Key: Value` lines over one shared buffer), the framing ([`AmiCodec`],
//! a `tokio_util` codec that turns bytes into [`Frame`]s and never ends the
//! stream on bad input), the size limits of both ends ([`Limits`] and
//! Asterisk's own request limits, [`check_request`]), the login messages
//! with the MD5 challenge key ([`login_action`], [`md5_key`]), the
//! `Events:` mask and event classes as Asterisk reads them ([`EventMask`]),
//! the event lists that answer list actions ([`EventLists`]), and decoding
//! a whole buffer at once ([`decode_all`], [`DecodeAll`]).
//! For the server end of a session (an AMI-compatible listener, a fake
//! Asterisk): [`ServerSession`] (login, `Events`, `Filter`, `Ping`,
//! `Logoff` answered as Asterisk 22 answers them), the event filters
//! ([`EventFilter`], [`FilterSet`]) and the action → write-class table a
//! server's `ListCommands` gives ([`ActionClasses`]).
//!
//! What is not: sockets, timeouts, reconnects, action correlation, logging
//! and metrics. Those belong to the programs that speak AMI (the bridge's
//! client and pool, the trace replay and recorder, a future AMI facade),
//! which build on this crate.
//!
//! Why a crate of its own: every byte it parses comes from a peer, so it is
//! the code that most needs fuzzing and property tests, and those are
//! cheapest against a small crate with few dependencies (the fuzz target
//! depends on this crate alone: no TLS, no AMQP client, no runtime). The
//! crate boundary also keeps the protocol from learning about the bridge:
//! nothing here knows of RabbitMQ, mappings or configuration files.
//!
//! The modules are private; this list is the API.
//!
//! ```
//! use ami_proto::{EventMask, Frame, Limits, decode_all};
//!
//! let wire = b"Asterisk Call Manager/11.0.0\r\n\
//!     Event: FullyBooted\r\nPrivilege: system,all\r\n\r\n";
//! let frames = decode_all(wire, Limits::default());
//! assert_eq!(frames[0], Frame::Banner("Asterisk Call Manager/11.0.0".into()));
//! let Frame::Message(event) = &frames[1] else { panic!("{frames:?}") };
//! assert_eq!(event.event_name().as_deref(), Some("FullyBooted"));
//! assert_eq!(EventMask::parse("system,call").bits(), 0b11);
//! ```

mod codec;
mod commands;
mod events;
mod filter;
mod limits;
mod lists;
mod login;
mod message;
mod server;
mod whole;

pub use codec::{AmiCodec, BANNER_PREFIX, Frame, Malformed, MalformedKind};
pub use commands::{ActionClasses, Permit};
pub use events::{ALL_CLASSES, CLASSES, EventMask, mask_allows, privilege_bits};
pub use filter::{EventFilter, FilterError, FilterSet};
pub use limits::{Limits, REQUEST_MAX_LINE, REQUEST_MAX_LINES, RequestError, check_request};
pub use lists::{EventLists, ListStep};
pub use login::{LoginProof, challenge_action, login_action, md5_key};
pub use message::{Kind, Message, MessageBuilder, bytes_to_text};
pub use server::{Account, Accounts, Boot, ServerSession, Step};
pub use whole::{DecodeAll, decode_all};
