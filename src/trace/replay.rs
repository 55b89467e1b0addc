//! `replay`: a fake Asterisk that serves recorded traces over TCP.
//!
//! The bridge, its tests and its demos need an AMI server that behaves like
//! Asterisk without running one. The replay listens on a TCP port and, for
//! every client, plays the part of Asterisk's manager:
//!
//! 1. It sends the banner (the trace's own, or
//!    `Asterisk Call Manager/11.0.0`).
//! 2. It answers the login exchange: plain `Login` with `Secret`, or
//!    `Challenge` (`AuthType: MD5`) followed by `Login` with `Key` =
//!    md5(challenge + secret). A wrong secret gets `Response: Error` /
//!    `Message: Authentication failed`, after a short delay, and the socket is
//!    closed — what Asterisk does. Other actions before login get
//!    `Permission denied`.
//! 3. Once logged in, the client receives the trace's events, filtered by
//!    its `Events:` mask and its `Filter`s, at the chosen pace, while its
//!    actions are answered in between: `Ping`, `Logoff`, `Events`, `Filter`
//!    (see "Filters" below), canned answers recorded from a
//!    real server (see [`super::responses`]), and Asterisk's
//!    `Invalid/unknown command` for the rest. Every answer echoes the
//!    client's `ActionID`. The texts are those of real captures
//!    (`tests/traces/prelogin.ami`, `actions.ami`).
//! 4. When the stream is over the connection stays open, as a real
//!    Asterisk's would, answering actions until the client leaves.
//!
//! With `tls` (`--tls-cert`, `--tls-key`) every client must first complete
//! a TLS handshake, as with Asterisk's manager TLS listener (`tlsenable`);
//! a client that fails it is logged with the cause and dropped.
//!
//! ## What is streamed
//!
//! The trace's *events*, byte for byte. The recorded responses are not
//! streamed (they answered the capturing client's actions, not this
//! client's), and neither are the items of event lists (`CoreShowChannel`,
//! `Status`, … between a response with `EventList: start` and the event with
//! `EventList: Complete`): Asterisk sends those only to the session that
//! asked. `include_list_events` streams them anyway.
//!
//! ## Event masks
//!
//! An event's classes are its `Privilege:` header (`call,all` → `call`).
//! A client's mask comes from `Events:` on `Login` (default: all) or the
//! `Events` action: `on`, `off`, a class list or a decimal bitmask, parsed as
//! Asterisk's `strings_to_mask` does (`ami_proto::EventMask`, the same
//! reading the bridge's client uses). An event is sent when all its classes
//! are in the mask — Asterisk's rule `(send_events & category) == category`;
//! for the single-class events real servers send this is the same as "the
//! classes intersect".
//!
//! ## Filters
//!
//! `Filter` is answered as Asterisk's `action_filter` answers it: `Permission
//! denied` unless the account has the `system` write class
//! ([`ReplayConfig::write_classes`], `--write-classes`), `Unknown operation`
//! unless `Operation: Add`, Asterisk's error texts for a filter that does
//! not parse or compile, else `Message: Success`. The filter
//! (`ami_proto::EventFilter`, legacy or `MatchCriteria`) then applies to
//! every event streamed after it, as `should_send_event` decides.
//!
//! For measurements, each client's stream is logged (`client stream
//! stats`, at the end of the stream and when the client leaves): events and
//! event bytes sent, events the mask and the filters kept back, the number
//! of filters and the seconds since login.
//!
//! ## Pacing
//!
//! - Default: as fast as the client reads. Events are copied into a buffer
//!   and written in batches of [`BATCH_BYTES`], so a loopback client gets
//!   hundreds of MB/s.
//! - `Rate(n)`: the k-th event sent to a client is due k/n seconds after its
//!   login (events its mask filters out take no time).
//! - `Timing`: the real pace. A timing file lists, for each socket read of
//!   the recording, the seconds since connect and the cumulative bytes
//!   received. An event was on the wire once the bytes up to its end had
//!   arrived, so its time is that of the first read whose cumulative count
//!   reaches the event's end offset in the trace. Times are played relative
//!   to the first streamed event, starting when the client logs in.
//!
//! Each client has its own stream state (position, mask, clock), so clients
//! that connect at different times each get the whole trace from the start.
//! With `loops` the stream starts over (0 = forever); with timing, each loop
//! starts where the previous one ended.
//!
//! ## Structure of a session
//!
//! Each connection runs two halves concurrently. The *reader* decodes the
//! client's actions and owns the login state; it turns each action into
//! bytes to send and control messages (`Out`) on a bounded channel. The
//! *writer* owns the socket's write half and the event stream: it waits for
//! whichever comes first, a message from the reader or the next event's due
//! time. Messages from the reader are always taken before more events are
//! added, so an action is answered between two event batches, never held
//! back by pacing. If the client stops reading, the writer blocks, the
//! channel fills and the reader stops reading too: backpressure, no
//! unbounded buffers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::TraceError;
use super::file::{Frames, TimingPoint, TraceFrame, load, read_timing};
use super::responses::CannedResponses;
use crate::ami::{AmiCodec, Frame, Kind, Limits, Malformed, MalformedKind, Message};
use crate::support::time::{ami_timestamp, sleep_until_opt};
use ami_proto::{
    ALL_CLASSES, EventFilter, EventLists, EventMask, FilterSet, ListStep, mask_allows, md5_key,
    privilege_bits,
};

/// The class bit of `system`: the `Filter` action needs it as a write class.
const SYSTEM: u32 = 1;

/// The banner sent when the trace has none.
pub const DEFAULT_BANNER: &[u8] = b"Asterisk Call Manager/11.0.0\r\n";

/// Events are written in batches of about this many bytes.
pub const BATCH_BYTES: usize = 256 * 1024;

/// How fast events are sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Pace {
    /// As fast as the client reads.
    Max,
    /// This many events per second.
    Rate(f64),
    /// The recorded pace, from one timing file per trace, in order.
    Timing(Vec<PathBuf>),
}

/// Username and secret the replay accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Everything `replay` needs.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// Address to listen on, e.g. `127.0.0.1:5038` (port 0: any free port).
    pub listen: String,
    /// Traces to stream, one after the other.
    pub traces: Vec<PathBuf>,
    /// The only account accepted; `None` accepts any login.
    pub account: Option<Account>,
    pub pace: Pace,
    /// How many times the stream is played; 0 = forever.
    pub loops: u64,
    /// A recorded `NAME.sent` whose answers (from `NAME.ami`) are replayed.
    pub responses: Option<PathBuf>,
    /// Delay before the answer to a failed login (Asterisk waits ~1 s).
    pub auth_fail_delay: Duration,
    /// Stream the items of recorded event lists too (see the module docs).
    pub include_list_events: bool,
    /// Stop after this many clients have come and gone.
    pub exit_after_clients: Option<u64>,
    /// Serve TLS (as Asterisk's `tlsenable` listener does) with this
    /// certificate (chain) and key, both PEM; `None`: plain TCP.
    pub tls: Option<ReplayTls>,
    /// The write classes of the account (`manager.conf`'s `write =`), as
    /// class bits: `Filter` needs `system` (default: every class).
    pub write_classes: u32,
}

/// The replay's TLS certificate and key files (`--tls-cert`, `--tls-key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Require a client certificate signed by a CA of this file.
    pub client_ca: Option<PathBuf>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            listen: "127.0.0.1:5038".into(),
            traces: Vec::new(),
            account: None,
            pace: Pace::Max,
            loops: 1,
            responses: None,
            auth_fail_delay: Duration::from_millis(100),
            include_list_events: false,
            exit_after_clients: None,
            tls: None,
            write_classes: ALL_CLASSES,
        }
    }
}

/// One event of the stream.
#[derive(Clone, Debug)]
pub struct StreamEvent {
    /// Exact bytes, blank line included.
    pub bytes: Bytes,
    /// Class bits from `Privilege:`.
    pub category: u32,
    /// The `Event:` value (for filters that name an event).
    pub name: Bytes,
    /// When it is due relative to the first event (only with timing).
    pub at: Duration,
}

/// What every client is served: the banner and the events of all traces.
#[derive(Clone, Debug)]
pub struct EventStream {
    pub banner: Bytes,
    pub events: Vec<StreamEvent>,
    /// With timing: how long one pass lasts (the next loop starts then).
    pub period: Duration,
    /// The distinct categories present, to know when a mask lets nothing
    /// through.
    pub categories: Vec<u32>,
    /// Bytes of all events.
    pub event_bytes: u64,
}

impl EventStream {
    /// Loads `traces` (and one timing file per trace, if given).
    pub fn load(
        traces: &[PathBuf],
        timings: Option<&[PathBuf]>,
        include_list_events: bool,
    ) -> Result<Self, TraceError> {
        if let Some(t) = timings
            && t.len() != traces.len()
        {
            return Err(TraceError::Config(format!(
                "give one --timing file per trace ({} traces, {} timing files)",
                traces.len(),
                t.len()
            )));
        }
        let mut banner = None;
        let mut events = Vec::new();
        let mut offset = Duration::ZERO;
        for (k, path) in traces.iter().enumerate() {
            let data = load(path)?;
            let timing = match timings {
                Some(t) => Some(read_timing(&t[k])?),
                None => None,
            };
            let (b, mut evs, ends) = split_events(data, include_list_events);
            if banner.is_none() {
                banner = b;
            }
            if let Some(points) = timing {
                let times = event_times(&points, &ends);
                if ends
                    .last()
                    .is_some_and(|&e| points.last().is_none_or(|p| p.bytes < e as u64))
                {
                    tracing::warn!(
                        trace = %path.display(),
                        "the timing file ends before the trace; late events use its last time"
                    );
                }
                for (ev, t) in evs.iter_mut().zip(times) {
                    ev.at = offset + t;
                }
                if let Some(last) = evs.last() {
                    offset = last.at;
                }
            }
            tracing::info!(trace = %path.display(), events = evs.len(), "trace loaded");
            events.extend(evs);
        }
        let period = match (events.first(), events.last()) {
            (Some(_), Some(last)) if events.len() > 1 => {
                // One average gap after the last event, so a loop does not
                // send the last and the first event at the same instant.
                last.at + last.at / (events.len() as u32 - 1)
            }
            _ => Duration::ZERO,
        };
        let categories: HashSet<u32> = events.iter().map(|e| e.category).collect();
        let event_bytes = events.iter().map(|e| e.bytes.len() as u64).sum();
        Ok(EventStream {
            banner: banner.unwrap_or_else(|| Bytes::from_static(DEFAULT_BANNER)),
            events,
            period,
            categories: categories.into_iter().collect(),
            event_bytes,
        })
    }

    /// True when some event can pass `mask`.
    fn any_allowed(&self, mask: u32) -> bool {
        self.categories.iter().any(|&c| mask_allows(mask, c))
    }
}

/// The banner, the streamable events and each event's end offset.
fn split_events(
    data: Bytes,
    include_list_events: bool,
) -> (Option<Bytes>, Vec<StreamEvent>, Vec<usize>) {
    let mut banner = None;
    let mut events = Vec::new();
    let mut ends = Vec::new();
    // Event lists opened by a recorded response and not yet completed:
    // their items were for the capturing client only.
    let mut lists = EventLists::new();
    for frame in Frames::new(data) {
        match frame {
            TraceFrame::Banner { bytes } => {
                if banner.is_none() {
                    banner = Some(bytes);
                }
            }
            TraceFrame::Malformed { malformed, end } => {
                tracing::warn!(offset = end, error = %malformed, "malformed input in trace, skipped");
            }
            TraceFrame::Message {
                message,
                bytes,
                end,
            } => {
                let list_item = matches!(lists.observe(&message), ListStep::Item { .. });
                if message.kind() != Kind::Event || (list_item && !include_list_events) {
                    continue;
                }
                let category = message.get_bytes("Privilege").map_or(0, privilege_bits);
                let name = Bytes::copy_from_slice(message.get_bytes("Event").unwrap_or_default());
                events.push(StreamEvent {
                    bytes,
                    category,
                    name,
                    at: Duration::ZERO,
                });
                ends.push(end);
            }
        }
    }
    (banner, events, ends)
}

/// Each event's time relative to the first (see "Pacing" in the module
/// docs). `ends` are the events' end offsets, in increasing order.
pub fn event_times(points: &[TimingPoint], ends: &[usize]) -> Vec<Duration> {
    let last_secs = points.last().map_or(0.0, |p| p.secs);
    let mut i = 0;
    let abs: Vec<f64> = ends
        .iter()
        .map(|&e| {
            while i < points.len() && points[i].bytes < e as u64 {
                i += 1;
            }
            points.get(i).map_or(last_secs, |p| p.secs)
        })
        .collect();
    let first = abs.first().copied().unwrap_or(0.0);
    // Timing files are monotonic; if one is not, never go back in time.
    let mut prev = 0.0f64;
    abs.into_iter()
        .map(|t| {
            prev = prev.max(t - first);
            Duration::from_secs_f64(prev)
        })
        .collect()
}

/// State shared by all sessions.
#[derive(Debug)]
struct Shared {
    stream: EventStream,
    canned: Option<CannedResponses>,
    account: Option<Account>,
    rate: Option<f64>,
    timed: bool,
    loops: u64,
    auth_fail_delay: Duration,
    write_classes: u32,
}

/// A bound replay server, ready to [`run`](ReplayServer::run).
pub struct ReplayServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    exit_after_clients: Option<u64>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ReplayServer {
    /// Loads the traces (and timing files, and canned responses) and binds
    /// the listening socket. Loading happens first so that a missing file
    /// is reported before anything listens.
    pub async fn bind(config: ReplayConfig) -> Result<Self, TraceError> {
        if config.traces.is_empty() {
            return Err(TraceError::Config("no trace given".into()));
        }
        if let Pace::Rate(r) = config.pace
            && !(r.is_finite() && r > 0.0)
        {
            return Err(TraceError::Config(format!("--rate must be > 0, got {r}")));
        }
        let acceptor = match &config.tls {
            Some(t) => {
                let c = crate::support::tls::server_config(
                    &t.cert_file,
                    &t.key_file,
                    t.client_ca.as_deref(),
                )
                .map_err(TraceError::Config)?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(c)))
            }
            None => None,
        };
        let cfg = config.clone();
        let (stream, canned) = tokio::task::spawn_blocking(move || {
            let timings = match &cfg.pace {
                Pace::Timing(t) => Some(t.as_slice()),
                _ => None,
            };
            let stream = EventStream::load(&cfg.traces, timings, cfg.include_list_events)?;
            let canned = match &cfg.responses {
                Some(p) => {
                    let c = CannedResponses::load(p)?;
                    tracing::info!(file = %p.display(), answers = c.len(), actions = ?c.actions(), "canned responses loaded");
                    Some(c)
                }
                None => None,
            };
            Ok::<_, TraceError>((stream, canned))
        })
        .await
        .map_err(|e| TraceError::Config(format!("loading failed: {e}")))??;

        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| TraceError::Listen {
                    addr: config.listen.clone(),
                    source,
                })?;
        let shared = Arc::new(Shared {
            stream,
            canned,
            account: config.account,
            rate: match config.pace {
                Pace::Rate(r) => Some(r),
                _ => None,
            },
            timed: matches!(config.pace, Pace::Timing(_)),
            loops: config.loops,
            auth_fail_delay: config.auth_fail_delay,
            write_classes: config.write_classes,
        });
        Ok(ReplayServer {
            listener,
            shared,
            exit_after_clients: config.exit_after_clients,
            tls: acceptor,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Number of events each client is streamed per pass.
    pub fn event_count(&self) -> usize {
        self.shared.stream.events.len()
    }

    /// Serves clients until `shutdown` completes, or until
    /// `exit_after_clients` clients have come and gone.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), TraceError> {
        tokio::pin!(shutdown);
        let mut sessions = JoinSet::new();
        let mut finished = 0u64;
        let mut accepted = 0u64;
        let limit = self.exit_after_clients;
        loop {
            if limit.is_some_and(|n| finished >= n) {
                tracing::info!(clients = finished, "client limit reached, stopping");
                break;
            }
            let may_accept = limit.is_none_or(|n| accepted < n);
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    break;
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {
                    finished += 1;
                }
                r = self.listener.accept(), if may_accept => match r {
                    Ok((socket, peer)) => {
                        accepted += 1;
                        let shared = self.shared.clone();
                        sessions.spawn(serve_client(socket, peer, shared, self.tls.clone()));
                    }
                    Err(e) => {
                        // Usually "too many open files": back off a little.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        sessions.shutdown().await;
        Ok(())
    }
}

/// From the reader to the writer of one session.
#[derive(Debug)]
enum Out {
    /// Bytes to send (a response), before any further event.
    Send(Vec<u8>),
    /// Login done: start the stream with this mask.
    Start(u32),
    /// The `Events` action changed the mask.
    Mask(u32),
    /// The `Filter` action added a filter.
    Filter(EventFilter),
    /// Send what is pending, then close the connection.
    Close,
}

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_client(
    socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    tracing::info!(%peer, tls = tls.is_some(), "client connected");
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set_nodelay failed");
    }
    let Some(acceptor) = tls else {
        let (rd, wr) = socket.into_split();
        return serve_halves(rd, wr, peer, shared).await;
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(s)) => {
            let (rd, wr) = tokio::io::split(s);
            serve_halves(rd, wr, peer, shared).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %crate::support::tls::describe_io(&e), "TLS handshake failed");
        }
        Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_halves<R, W>(rd: R, wr: W, peer: SocketAddr, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(64);
    let writer = write_loop(wr, rx, shared.clone(), peer);
    let reader = read_loop(rd, tx, shared, peer);
    tokio::pin!(writer);
    tokio::select! {
        () = reader => {
            // The reader asked to close (or the client went away): let the
            // writer send what is pending, but not forever.
            if tokio::time::timeout(Duration::from_secs(5), &mut writer).await.is_err() {
                tracing::debug!(%peer, "client did not take the last bytes in time");
            }
        }
        () = &mut writer => {}
    }
    tracing::info!(%peer, "client disconnected");
}

/// Builds `Response: <kind>`, the `ActionID` (if any) and `fields`, in the
/// order Asterisk writes them.
fn response(kind: &str, id: Option<&[u8]>, fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"Response: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(id) = id {
        out.extend_from_slice(b"ActionID: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The login state of one session, as the reader sees it.
struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    authenticated: bool,
    challenge: Option<String>,
}

/// What the reader does after an action.
enum Next {
    Continue,
    Close,
}

impl Session {
    fn login_ok(&self, m: &Message) -> bool {
        let Some(acct) = &self.shared.account else {
            return true;
        };
        let user_ok = m
            .get("Username")
            .is_some_and(|u| u.eq_ignore_ascii_case(&acct.username));
        let md5 = m
            .get("AuthType")
            .is_some_and(|a| a.trim().eq_ignore_ascii_case("md5"));
        let secret_ok = if md5 {
            match (&self.challenge, m.get("Key")) {
                (Some(ch), Some(key)) => {
                    key.trim().eq_ignore_ascii_case(&md5_key(ch, &acct.secret))
                }
                _ => false,
            }
        } else {
            m.get_bytes("Secret") == Some(acct.secret.as_bytes())
        };
        user_ok && secret_ok
    }

    /// Answers one action; the answer and control messages go to `tx`.
    async fn handle(&mut self, m: &Message, tx: &mpsc::Sender<Out>) -> Result<Next, ()> {
        let id = m.get_bytes("ActionID").filter(|v| !v.is_empty());
        let Some(action) = m.get("Action").map(|a| a.trim().to_string()) else {
            let r = response("Error", id, &[("Message", b"Missing action in request")]);
            send(tx, Out::Send(r)).await?;
            return Ok(Next::Continue);
        };
        let lower = action.to_ascii_lowercase();
        tracing::debug!(peer = %self.peer, action = %action, "action");
        let mut out = Vec::new();
        let next = match lower.as_str() {
            "login" => self.login(m, id, &mut out).await,
            "challenge" => {
                out.push(Out::Send(self.challenge(m, id)));
                Next::Continue
            }
            "logoff" => {
                let bye: &[u8] = b"Thanks for all the fish.";
                out.push(Out::Send(response("Goodbye", id, &[("Message", bye)])));
                out.push(Out::Close);
                Next::Close
            }
            _ if !self.authenticated => {
                let denied: &[u8] = b"Permission denied";
                out.push(Out::Send(response("Error", id, &[("Message", denied)])));
                Next::Continue
            }
            "ping" => {
                out.push(Out::Send(pong(id)));
                Next::Continue
            }
            "events" => {
                events(m, id, &mut out);
                Next::Continue
            }
            "filter" => {
                self.filter(m, id, &mut out);
                Next::Continue
            }
            _ => {
                out.push(Out::Send(self.other(m, id, &action)));
                Next::Continue
            }
        };
        for o in out {
            send(tx, o).await?;
        }
        Ok(next)
    }

    /// `Login`: accepted (starts the events), refused after the configured
    /// delay (closes the session), or a no-op when already logged in.
    async fn login(&mut self, m: &Message, id: Option<&[u8]>, out: &mut Vec<Out>) -> Next {
        if self.authenticated {
            let msg: &[u8] = b"Already authenticated";
            out.push(Out::Send(response("Success", id, &[("Message", msg)])));
            return Next::Continue;
        }
        if self.login_ok(m) {
            self.authenticated = true;
            let mask = m
                .get("Events")
                .and_then(|e| EventMask::from_header(&e))
                .map(|m| m.bits())
                .unwrap_or(ALL_CLASSES);
            tracing::info!(peer = %self.peer, user = %m.get("Username").unwrap_or_default(), mask = format_args!("{mask:#x}"), "logged in");
            let msg: &[u8] = b"Authentication accepted";
            out.push(Out::Send(response("Success", id, &[("Message", msg)])));
            out.push(Out::Start(mask));
            Next::Continue
        } else {
            tracing::info!(peer = %self.peer, user = %m.get("Username").unwrap_or_default(), "authentication failed");
            tokio::time::sleep(self.shared.auth_fail_delay).await;
            let msg: &[u8] = b"Authentication failed";
            out.push(Out::Send(response("Error", id, &[("Message", msg)])));
            out.push(Out::Close);
            Next::Close
        }
    }

    /// `Challenge` (MD5 only): one challenge per session, kept for the
    /// `Login` that follows.
    fn challenge(&mut self, m: &Message, id: Option<&[u8]>) -> Vec<u8> {
        if m.get("AuthType")
            .is_some_and(|a| a.trim().eq_ignore_ascii_case("md5"))
        {
            let ch = self
                .challenge
                .get_or_insert_with(|| rand::random_range(0..i32::MAX as u32).to_string());
            response("Success", id, &[("Challenge", ch.as_bytes())])
        } else {
            let msg: &[u8] = b"Must specify AuthType";
            response("Error", id, &[("Message", msg)])
        }
    }

    /// `Filter` as Asterisk answers it (`action_filter`): `system` write
    /// class, `Operation: Add`, a filter that compiles; the filter then
    /// applies to the events streamed after it.
    fn filter(&self, m: &Message, id: Option<&[u8]>, out: &mut Vec<Out>) {
        let err = |msg: &str| Out::Send(response("Error", id, &[("Message", msg.as_bytes())]));
        if self.shared.write_classes & SYSTEM == 0 {
            out.push(err("Permission denied"));
            return;
        }
        if !m
            .get("Operation")
            .is_some_and(|o| o.eq_ignore_ascii_case("Add"))
        {
            out.push(err("Unknown operation"));
            return;
        }
        let criteria = m.get("MatchCriteria").unwrap_or_default();
        match EventFilter::new(Some(&criteria), &m.get("Filter").unwrap_or_default()) {
            Ok(f) => {
                tracing::info!(peer = %self.peer, filter = %crate::logs::clip(&m.get("Filter").unwrap_or_default()), "filter added");
                let ok: &[u8] = b"Success";
                out.push(Out::Send(response("Success", id, &[("Message", ok)])));
                out.push(Out::Filter(f));
            }
            Err(e) => out.push(err(e.asterisk_message())),
        }
    }

    /// Any other action: the canned answer, else Asterisk's error.
    fn other(&self, m: &Message, id: Option<&[u8]>, action: &str) -> Vec<u8> {
        match self.shared.canned.as_ref().and_then(|c| c.answer(m)) {
            Some(answer) => answer,
            None => {
                let msg = format!(
                    "Invalid/unknown command: {action}. Use Action: ListCommands to show available commands."
                );
                response("Error", id, &[("Message", msg.as_bytes())])
            }
        }
    }
}

/// `Ping`: `Pong` with the current time, as Asterisk answers.
fn pong(id: Option<&[u8]>) -> Vec<u8> {
    let ts = ami_timestamp(SystemTime::now());
    response(
        "Success",
        id,
        &[("Ping", b"Pong"), ("Timestamp", ts.as_bytes())],
    )
}

/// `Events`: a new event mask (`Out::Mask`), or an error for a bad one.
fn events(m: &Message, id: Option<&[u8]>, out: &mut Vec<Out>) {
    match m
        .get("EventMask")
        .and_then(|v| EventMask::from_header(&v))
        .map(|m| m.bits())
    {
        Some(mask) => {
            let state: &[u8] = if mask > 0 { b"On" } else { b"Off" };
            out.push(Out::Send(response("Success", id, &[("Events", state)])));
            out.push(Out::Mask(mask));
        }
        None => {
            let msg: &[u8] = b"Invalid event mask";
            out.push(Out::Send(response("Error", id, &[("Message", msg)])));
        }
    }
}

async fn send(tx: &mpsc::Sender<Out>, o: Out) -> Result<(), ()> {
    tx.send(o).await.map_err(|_| ())
}

fn malformed_answer(m: &Malformed) -> Vec<u8> {
    let what = match m.kind {
        MalformedKind::LineTooLong { .. } => "line too long".to_string(),
        ref k => k.to_string(),
    };
    response(
        "Error",
        None,
        &[(
            "Message",
            format!("Failed to parse message: {what}").as_bytes(),
        )],
    )
}

/// Reads and answers the client's actions until it logs off, fails to log
/// in or goes away.
async fn read_loop<R: AsyncRead + Unpin>(
    rd: R,
    tx: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    peer: SocketAddr,
) {
    let mut frames = FramedRead::new(rd, AmiCodec::new(Limits::asterisk_request()));
    let mut session = Session {
        shared,
        peer,
        authenticated: false,
        challenge: None,
    };
    while let Some(item) = frames.next().await {
        let r = match item {
            Err(e) => {
                tracing::debug!(%peer, error = %e, "read failed");
                break;
            }
            Ok(Frame::Banner(_)) => continue,
            Ok(Frame::Malformed(m)) => {
                tracing::warn!(%peer, error = %m, "malformed request");
                send(&tx, Out::Send(malformed_answer(&m)))
                    .await
                    .map(|_| Next::Continue)
            }
            Ok(Frame::Message(m)) => session.handle(&m, &tx).await,
        };
        match r {
            Ok(Next::Continue) => {}
            Ok(Next::Close) | Err(()) => return,
        }
    }
    // The client closed its side: flush what is pending, then close.
    let _ = tx.send(Out::Close).await;
}

/// The event stream of one client.
struct StreamState {
    mask: u32,
    /// The session's `Filter`s.
    filters: FilterSet,
    /// Bytes of events sent.
    bytes_sent: u64,
    /// Events the mask kept back.
    masked: u64,
    /// Events the filters kept back.
    filtered: u64,
    /// Next event to look at.
    idx: usize,
    /// Passes completed.
    loops_done: u64,
    /// Events sent (for `Rate`).
    sent: u64,
    /// When the clock started (login), for `Rate` and `Timing`.
    base: Instant,
    /// With timing: the start of the current pass relative to `base`.
    loop_offset: Duration,
    finished: bool,
}

impl StreamState {
    fn new(mask: u32, now: Instant) -> Self {
        StreamState {
            mask,
            filters: FilterSet::default(),
            bytes_sent: 0,
            masked: 0,
            filtered: 0,
            idx: 0,
            loops_done: 0,
            sent: 0,
            base: now,
            loop_offset: Duration::ZERO,
            finished: false,
        }
    }

    fn due(&self, shared: &Shared) -> Option<Instant> {
        if let Some(rate) = shared.rate {
            Some(self.base + Duration::from_secs_f64(self.sent as f64 / rate))
        } else if shared.timed {
            let ev = shared.stream.events.get(self.idx)?;
            Some(self.base + self.loop_offset + ev.at)
        } else {
            None
        }
    }

    /// The stream pauses while nothing can pass the mask.
    fn paused(&self, shared: &Shared) -> bool {
        !shared.stream.any_allowed(self.mask)
    }

    fn set_mask(&mut self, mask: u32, shared: &Shared, now: Instant) {
        let was_paused = self.paused(shared);
        self.mask = mask;
        if was_paused && !self.paused(shared) {
            // Resume where we stopped, with the clock moved so the events
            // not sent while paused do not come as one burst.
            if let Some(due) = self.due(shared)
                && due < now
            {
                self.base += now - due;
            }
        }
    }

    /// Starts the next pass, if any.
    fn wrap(&mut self, shared: &Shared) -> bool {
        self.loops_done += 1;
        if shared.loops == 0 || self.loops_done < shared.loops {
            self.idx = 0;
            self.loop_offset += shared.stream.period;
            true
        } else {
            self.finished = true;
            false
        }
    }

    /// Appends the events due at `now` to `buf` (up to about
    /// [`BATCH_BYTES`]). Returns when to look again: `Some(now)` if more is
    /// due right away, `Some(t)` for the next due time, `None` if nothing
    /// will be due without a new mask.
    fn fill(&mut self, shared: &Shared, now: Instant, buf: &mut Vec<u8>) -> Option<Instant> {
        let events = &shared.stream.events;
        if self.finished || events.is_empty() || self.paused(shared) {
            return None;
        }
        let mut skipped = 0usize;
        loop {
            if buf.len() >= BATCH_BYTES || skipped >= 65536 {
                return Some(now);
            }
            if self.idx >= events.len() {
                if !self.wrap(shared) {
                    tracing::info!(events = self.sent, "stream finished");
                    self.log_stats("stream finished");
                    return None;
                }
                continue;
            }
            let ev = &events[self.idx];
            if !mask_allows(self.mask, ev.category) {
                self.idx += 1;
                self.masked += 1;
                skipped += 1;
                continue;
            }
            if !self.filters.is_empty() && !self.filters.should_send(&ev.name, &ev.bytes) {
                self.idx += 1;
                self.filtered += 1;
                skipped += 1;
                continue;
            }
            if let Some(due) = self.due(shared)
                && due > now
            {
                return Some(due);
            }
            buf.extend_from_slice(&ev.bytes);
            self.bytes_sent += ev.bytes.len() as u64;
            self.idx += 1;
            self.sent += 1;
        }
    }

    /// What this client was sent and spared, since its login: the line
    /// measurements read (BENCHMARKS.md, push-down).
    fn log_stats(&self, when: &str) {
        let secs = self.base.elapsed().as_secs_f64();
        tracing::info!(
            when,
            events_sent = self.sent,
            event_bytes_sent = self.bytes_sent,
            masked = self.masked,
            filtered = self.filtered,
            filters = self.filters.len(),
            seconds = format_args!("{secs:.3}"),
            "client stream stats"
        );
    }
}

/// Owns the write half: sends the banner, responses and events (see
/// "Structure of a session" in the module docs).
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
    peer: SocketAddr,
) {
    if let Err(e) = write_session(&mut wr, &mut rx, &shared).await {
        tracing::debug!(%peer, error = %e, "write failed");
    }
}

async fn write_session<W: AsyncWrite + Unpin>(
    wr: &mut W,
    rx: &mut mpsc::Receiver<Out>,
    shared: &Shared,
) -> std::io::Result<()> {
    wr.write_all(&shared.stream.banner).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + 64 * 1024);
    let mut stream: Option<StreamState> = None;
    let mut wake: Option<Instant> = None;
    loop {
        // Answers first: whatever the reader has queued goes out before
        // more events.
        loop {
            match rx.try_recv() {
                Ok(Out::Send(b)) => buf.extend_from_slice(&b),
                Ok(Out::Start(mask)) => stream = Some(StreamState::new(mask, Instant::now())),
                Ok(Out::Mask(mask)) => {
                    if let Some(s) = &mut stream {
                        s.set_mask(mask, shared, Instant::now());
                    }
                }
                Ok(Out::Filter(f)) => {
                    if let Some(s) = &mut stream {
                        s.filters.add(f);
                    }
                }
                Ok(Out::Close) | Err(mpsc::error::TryRecvError::Disconnected) => {
                    if let Some(s) = &stream {
                        s.log_stats("client left");
                    }
                    wr.write_all(&buf).await?;
                    wr.shutdown().await?;
                    return Ok(());
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        if let Some(s) = &mut stream {
            wake = s.fill(shared, Instant::now(), &mut buf);
        }
        if !buf.is_empty() {
            wr.write_all(&buf).await?;
            buf.clear();
            continue;
        }
        // Nothing to send now: wait for an action or the next event.
        tokio::select! {
            biased;
            msg = rx.recv() => match msg {
                Some(Out::Send(b)) => buf.extend_from_slice(&b),
                Some(Out::Start(mask)) => stream = Some(StreamState::new(mask, Instant::now())),
                Some(Out::Mask(mask)) => {
                    if let Some(s) = &mut stream {
                        s.set_mask(mask, shared, Instant::now());
                    }
                }
                Some(Out::Filter(f)) => {
                    if let Some(s) = &mut stream {
                        s.filters.add(f);
                    }
                }
                Some(Out::Close) | None => {
                    if let Some(s) = &stream {
                        s.log_stats("client left");
                    }
                    wr.shutdown().await?;
                    return Ok(());
                }
            },
            () = sleep_until_opt(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::file::parse_timing;

    /// The mask the replay applies for an `Events:` / `EventMask:` value.
    fn parse_event_mask(value: &str) -> Option<u32> {
        EventMask::from_header(value).map(|m| m.bits())
    }

    #[test]
    fn masks_like_asterisk() {
        assert_eq!(parse_event_mask("on"), Some(ALL_CLASSES));
        assert_eq!(parse_event_mask("off"), Some(0));
        assert_eq!(parse_event_mask(""), None);
        assert_eq!(parse_event_mask("1"), Some(1));
        assert_eq!(parse_event_mask("call, user"), Some(2 | 64));
        assert_eq!(parse_event_mask("nonsense"), Some(0));
        assert_eq!(parse_event_mask("call,all"), Some(ALL_CLASSES));
        assert_eq!(privilege_bits(b"call,all"), 2);
        assert_eq!(privilege_bits(b"Call"), 2);
        assert!(mask_allows(2 | 64, 2));
        assert!(!mask_allows(64, 2));
        assert!(!mask_allows(0, 0));
        assert!(mask_allows(ALL_CLASSES, 0));
    }

    #[test]
    fn timing_maps_end_offsets() {
        let pts = parse_timing(b"0.5 100\n0.7 250\n1.5 400\n").expect("timing");
        let t = event_times(&pts, &[90, 100, 101, 250, 300, 500]);
        let ms: Vec<u128> = t.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 0, 200, 200, 1000, 1000]);
    }

    #[test]
    fn calls_small_timing_spans_the_capture() {
        let s = EventStream::load(
            &[PathBuf::from("tests/traces/calls_small.ami")],
            Some(&[PathBuf::from("tests/traces/calls_small.timing")]),
            false,
        )
        .expect("load");
        assert_eq!(s.events.len(), 749);
        let last = s.events.last().expect("events").at.as_secs_f64();
        assert!((3.6..3.9).contains(&last), "{last}");
        assert!(s.events.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn list_items_are_not_streamed() {
        let all = EventStream::load(&[PathBuf::from("tests/traces/actions.ami")], None, true)
            .expect("load");
        let some = EventStream::load(&[PathBuf::from("tests/traces/actions.ami")], None, false)
            .expect("load");
        assert_eq!(all.events.len(), 424);
        // CoreShowChannel 8+1, Status 9+2, QueueStatus 2+2+1+1,
        // QueueSummary 2+1, hangup lists 3+2.
        let list_items = all.events.len() - some.events.len();
        assert_eq!(list_items, 34, "{list_items}");
        assert!(
            some.events
                .iter()
                .all(|e| !String::from_utf8_lossy(&e.bytes).contains("EventList: Complete"))
        );
    }

    fn shared_with(events: Vec<StreamEvent>, rate: Option<f64>, loops: u64) -> Shared {
        let categories = events.iter().map(|e| e.category).collect::<HashSet<_>>();
        Shared {
            stream: EventStream {
                banner: Bytes::from_static(DEFAULT_BANNER),
                period: Duration::from_secs(1),
                categories: categories.into_iter().collect(),
                event_bytes: 0,
                events,
            },
            canned: None,
            account: None,
            rate,
            timed: false,
            loops,
            auth_fail_delay: Duration::ZERO,
            write_classes: ALL_CLASSES,
        }
    }

    fn ev(name: &str, category: u32) -> StreamEvent {
        StreamEvent {
            bytes: Bytes::from(format!("Event: {name}\r\n\r\n")),
            category,
            name: Bytes::from(name.to_string()),
            at: Duration::ZERO,
        }
    }

    /// A session's filters keep events back as Asterisk's do, and are
    /// counted apart from the mask's.
    #[test]
    fn fill_applies_filters() {
        let shared = shared_with(
            vec![ev("VarSet", 2), ev("Hangup", 2), ev("User", 64)],
            None,
            1,
        );
        let now = Instant::now();
        let mut s = StreamState::new(2, now);
        s.filters
            .add(EventFilter::new(None, "!^Event: [Vv]ar[Ss]et[[:space:]]").unwrap());
        let mut buf = Vec::new();
        assert_eq!(s.fill(&shared, now, &mut buf), None);
        assert_eq!(String::from_utf8(buf).unwrap(), "Event: Hangup\r\n\r\n");
        assert_eq!((s.sent, s.filtered, s.masked), (1, 1, 1));
        assert_eq!(s.bytes_sent, "Event: Hangup\r\n\r\n".len() as u64);
    }

    #[test]
    fn fill_filters_and_loops() {
        let shared = shared_with(vec![ev("A", 2), ev("B", 64), ev("C", 2)], None, 2);
        let now = Instant::now();
        let mut s = StreamState::new(2, now);
        let mut buf = Vec::new();
        assert_eq!(s.fill(&shared, now, &mut buf), None);
        let text = String::from_utf8(buf).expect("utf8");
        assert_eq!(text.matches("Event: A").count(), 2);
        assert_eq!(text.matches("Event: B").count(), 0);
        assert!(s.finished);
        // A mask nothing passes pauses instead of spinning.
        let shared = shared_with(vec![ev("A", 2)], None, 0);
        let mut s = StreamState::new(64, now);
        let mut buf = Vec::new();
        assert_eq!(s.fill(&shared, now, &mut buf), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn fill_respects_rate() {
        let shared = shared_with((0..10).map(|_| ev("A", 2)).collect(), Some(10.0), 1);
        let now = Instant::now();
        let mut s = StreamState::new(ALL_CLASSES, now);
        let mut buf = Vec::new();
        let next = s.fill(&shared, now, &mut buf).expect("more to come");
        assert_eq!(s.sent, 1);
        assert_eq!(next - now, Duration::from_millis(100));
        let later = now + Duration::from_millis(450);
        s.fill(&shared, later, &mut buf);
        assert_eq!(s.sent, 5);
    }
}
