//! Record and replay of AMI traffic: a fake Asterisk for tests and demos.
//!
//! Everything the bridge does starts with bytes an Asterisk server sent. To
//! test it without a PBX (and to reproduce a customer's problem exactly) we
//! keep those bytes in *trace files* and play them back.
//!
//! ## The trace format
//!
//! A trace is nothing but the raw server→client byte stream of one AMI
//! session, exactly as Asterisk sent it: the `Asterisk Call Manager/X.Y.Z`
//! banner, the login response, events, responses, all of it, byte for byte.
//! No framing of our own and no metadata. That choice has three reasons:
//!
//! - any capture tool (`socat`, `tcpdump` + `tcpflow`, our `record`) can
//!   make one, and any text tool can read one;
//! - the codec under test sees what a real server sends, including its
//!   oddities (repeated keys, values with colons, stray blank lines);
//! - nothing is lost or "normalised" on the way in.
//!
//! A trace may be zstd-compressed (a 77 MB busy-hour capture is 1.6 MB
//! compressed). Every command accepts both forms: [`file::read_trace`]
//! recognises zstd by the `.zst` extension or by the zstd magic bytes.
//!
//! Two optional companions share the trace's base name:
//!
//! - `NAME.timing`: one line per socket read, `<seconds since connect>
//!   <cumulative bytes received>`. It records the real pace, so a replay can
//!   reproduce the bursts of a busy hour (see [`replay`] for how events are
//!   mapped onto it).
//! - `NAME.sent`: the client→server bytes of the same session, i.e. the
//!   actions. Paired with the trace it gives canned answers for actions
//!   (see [`responses`]).
//!
//! ## The pieces
//!
//! - [`file`](mod@file): reading traces (plain or zstd), splitting them into messages
//!   *with their exact bytes*, reading timing files, writing traces.
//! - [`replay`]: a fake Asterisk that serves a trace to any number of AMI
//!   clients over TCP, with logins, built-in actions and pacing.
//! - [`responses`]: canned answers for actions, taken from a recorded
//!   request/response pair of files.
//! - [`record`]: connects to a real Asterisk, logs in and writes the raw
//!   stream (and its timing) to disk.
//! - [`inspect`]: counts what a trace contains.

pub(crate) mod file;
pub mod inspect;
pub mod record;
pub mod replay;
pub(crate) mod responses;

pub use file::read_trace;

use std::path::PathBuf;

/// Errors of the trace commands. Each one reads as one clear line, naming
/// the file or address involved.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("login to {addr} failed: {source}")]
    Login {
        addr: String,
        #[source]
        source: crate::ami::LoginError,
    },
    #[error("{0}")]
    Config(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
