//! One facade client, from accept to close: a `select!` over the client's
//! input, the answer of the action it is running, and the shared event
//! ring. Everything the client receives goes through [`Session::write`],
//! one message (or one batch of whole messages) per write, so responses
//! and events are never interleaved (F4, F17).
//!
//! The protocol decisions are made elsewhere, without I/O: the AMI
//! session rules in `ami_proto::ServerSession`, the forwarding in
//! [`super::forward`], the bytes in [`super::wire`]. This file only feeds
//! them and keeps the per-session bookkeeping: the queue of actions (run
//! one at a time, in order: F21), the events held until the response they
//! follow is out (F22), and the ActionIDs of async `Originate`s and
//! `UserEvent`s whose events must go back with the client's ActionID.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ami_proto::{AmiCodec, Boot, Frame, Limits, MalformedKind, ServerSession, Step};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot};
use tokio_util::codec::FramedRead;

use super::config::User;
use super::forward::{Facade, Outcome, Request, is_action, is_async};
use super::ids::{ActionIds, MAPPING_TTL, Restore, Tagged};
use super::tap::{TapEvent, TapItem};
use super::wire;
use crate::ami::Message;
use crate::internal_events::facade::{
    ActionDone, ActionResultKind, DropReason, SessionCount, SessionDropped,
};

/// Actions a client may queue behind the one running; past this the
/// session stops reading its input until one is done.
const MAX_QUEUED: usize = 64;
/// Events written in one batch at most.
const BATCH: usize = 256;

/// Why a session ended.
enum End {
    /// The client closed, logged off or sent garbage the codec gave up on.
    Client,
    /// The bridge closed it (counted).
    Dropped(DropReason),
}

/// The action being run for this session.
/// The answer of the running action (its ids are in [`ActionIds`]).
type Running = oneshot::Receiver<Outcome>;

pub struct Session {
    facade: Arc<Facade>,
    peer: String,
    proto: ServerSession,
    user: Option<Arc<User>>,
    out: Writer,
    queue: VecDeque<Message>,
    running: Option<Running>,
    /// The running action's ids, events held for its response, and the
    /// async Originates / UserEvents whose events get the client's id.
    ids: ActionIds<Arc<TapEvent>>,
    /// Counts this session among the unauthenticated until it logs in.
    unauth: Option<super::Slot>,
}

/// The client's socket halves (plain TCP or TLS).
type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

impl Session {
    /// Serves one accepted client until it ends; with `tls`, after the
    /// handshake (a failed one is logged and the socket closed).
    pub async fn serve(
        facade: Arc<Facade>,
        stream: TcpStream,
        peer: String,
        unauth: super::Slot,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let _ = stream.set_nodelay(true);
        let (rd, out): (Reader, Writer) = match tls {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(acceptor) => {
                let t = facade.cfg.auth_timeout();
                match tokio::time::timeout(t, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let (r, w) = tokio::io::split(s);
                        (Box::new(r), Box::new(w))
                    }
                    Ok(Err(e)) => {
                        let why = crate::support::tls::describe_io(&e);
                        tracing::warn!(target: "ami2amqp::facade", %peer, error = %why, "AMI facade: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(target: "ami2amqp::facade", %peer, "AMI facade: TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let mut s = Session {
            facade,
            peer,
            proto: ServerSession::new(),
            user: None,
            out,
            queue: VecDeque::new(),
            running: None,
            ids: ActionIds::default(),
            unauth: Some(unauth),
        };
        let events = s.facade.tap.subscribe();
        let input = FramedRead::new(rd, AmiCodec::new(Limits::asterisk_request()));
        let end = s.run(input, events).await;
        s.finish(end).await;
    }

    async fn run(
        &mut self,
        mut input: FramedRead<Reader, AmiCodec>,
        mut events: broadcast::Receiver<TapItem>,
    ) -> End {
        let banner = format!("Asterisk Call Manager/{}\r\n", self.version());
        if let Err(e) = self.write(banner.as_bytes()).await {
            return e;
        }
        let auth_deadline = tokio::time::sleep(self.facade.cfg.auth_timeout());
        tokio::pin!(auth_deadline);
        loop {
            let step = tokio::select! {
                frame = input.next(), if self.queue.len() < MAX_QUEUED => self.on_input(frame).await,
                done = wait_running(&mut self.running) => self.on_outcome(done).await,
                item = events.recv() => self.on_events(item, &mut events).await,
                _ = &mut auth_deadline, if self.user.is_none() => Err(End::Dropped(DropReason::AuthTimeout)),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn version(&self) -> String {
        self.facade
            .tap
            .backends()
            .version(&self.facade.servers)
            .unwrap_or_else(|| self.facade.cfg.version.clone())
    }

    /// Writes whole messages within `writetimeout_ms`, or ends the session.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        let t = self.facade.cfg.write_timeout();
        match tokio::time::timeout(t, self.out.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Client),
            Err(_) => Err(End::Dropped(DropReason::WriteTimeout)),
        }
    }

    async fn on_input(&mut self, frame: Option<std::io::Result<Frame>>) -> Result<(), End> {
        match frame {
            Some(Ok(Frame::Message(m))) => self.on_action(m).await,
            Some(Ok(Frame::Malformed(bad))) => {
                let msg = match bad.kind {
                    MalformedKind::LineTooLong { .. } => "Failed to parse message: line too long",
                    MalformedKind::NotKeyValue { .. } => "Missing action in request",
                    _ => "Too many lines in message or allocation failure",
                };
                self.write(&wire::error(None, msg)).await
            }
            // A client that starts with a banner line: not an action.
            Some(Ok(Frame::Banner(_))) => {
                self.write(&wire::error(None, "Missing action in request"))
                    .await
            }
            Some(Err(_)) | None => Err(End::Client),
        }
    }

    /// Queues a client's action and runs what can run now. Every action,
    /// answered here or forwarded, waits for the ones before it (F21:
    /// order-based clients match answers to requests by position).
    async fn on_action(&mut self, m: Message) -> Result<(), End> {
        self.queue.push_back(m);
        self.pump().await
    }

    /// Handles queued actions in order until one is forwarded (it runs;
    /// the rest wait for its answer) or the queue is empty.
    async fn pump(&mut self) -> Result<(), End> {
        while self.running.is_none() {
            let Some(m) = self.queue.pop_front() else {
                return Ok(());
            };
            let boot = self.boot();
            let facade = self.facade.clone();
            match self.proto.handle(&m, &facade.users, boot, challenge, now()) {
                Step::Answer(bytes) => {
                    self.write(&bytes).await?;
                    self.after_login();
                }
                Step::Close { answer, delay } => {
                    if delay {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let _ = self.write(&answer).await;
                    return Err(if delay {
                        End::Dropped(DropReason::LoginFailed)
                    } else {
                        End::Client
                    });
                }
                Step::Forward { .. } => self.start(m),
            }
        }
        Ok(())
    }

    /// Counts the session as logged in, once.
    fn after_login(&mut self) {
        if self.user.is_some() {
            return;
        }
        let Some(name) = self.proto.username() else {
            return;
        };
        let Some(user) = self.facade.users.get(name).cloned() else {
            return;
        };
        self.unauth = None;
        SessionCount {
            user: &user.name,
            delta: 1.0,
        }
        .emit();
        tracing::info!(target: "ami2amqp::facade", peer = %self.peer, user = %user.name, "AMI facade: logged in");
        self.user = Some(user);
    }

    /// What FullyBooted reports: the user's first connected server.
    fn boot(&self) -> Boot {
        let backends = self.facade.tap.backends();
        let users = &self.facade.users;
        let candidates: Vec<Arc<str>> = match self.proto.username().and_then(|n| users.get(n)) {
            Some(u) => u.servers.clone(),
            None => self.facade.servers.clone(),
        };
        let up = candidates
            .iter()
            .filter_map(|s| backends.get(s))
            .find(|b| b.connected);
        let secs = up.as_ref().map_or(0, |b| b.since.elapsed().as_secs());
        Boot {
            fully_booted: up.is_some(),
            uptime_s: secs,
            last_reload_s: secs,
        }
    }

    /// Starts running a forwarded action.
    fn start(&mut self, action: Message) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let bridge_id = self.facade.next_id();
        let client_id = wire::client_id(&action);
        let maps_events = (is_action(&action, "Originate") && is_async(&action))
            || is_action(&action, "UserEvent");
        let until = Instant::now() + self.facade.cfg.action_timeout() + MAPPING_TTL;
        self.ids
            .start(bridge_id.clone(), client_id.clone(), maps_events, until);
        let (tx, rx) = oneshot::channel();
        let facade = self.facade.clone();
        let req = Request {
            user,
            action,
            client_id,
            bridge_id,
        };
        tokio::spawn(async move {
            let _ = tx.send(facade.run(req).await);
        });
        self.running = Some(rx);
    }

    async fn on_outcome(&mut self, done: Outcome) -> Result<(), End> {
        self.running = None;
        if let Some(user) = &self.user {
            ActionDone {
                user: &user.name,
                result: done.result,
            }
            .emit();
        }
        let held = self.ids.finish(done.result == ActionResultKind::Answered);
        self.write(&done.bytes).await?;
        let mut out = Vec::new();
        for (ev, restore) in held {
            self.render(&ev, restore, &mut out);
        }
        if !out.is_empty() {
            self.write(&out).await?;
        }
        self.pump().await
    }

    /// One item from the ring, then whatever else is ready (one write).
    async fn on_events(
        &mut self,
        first: Result<TapItem, broadcast::error::RecvError>,
        events: &mut broadcast::Receiver<TapItem>,
    ) -> Result<(), End> {
        let mut out = Vec::new();
        let mut item = first;
        for n in 1.. {
            match item {
                Ok(TapItem::Event(ev)) => self.on_event(ev, &mut out),
                Ok(TapItem::Down(server)) => {
                    if !out.is_empty() {
                        self.write(&std::mem::take(&mut out)).await?;
                    }
                    self.on_down(&server).await?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(End::Dropped(DropReason::QueueFull));
                }
                Err(broadcast::error::RecvError::Closed) => return Err(End::Client),
            }
            if n == BATCH {
                // The rest stays in the ring for the next round.
                break;
            }
            item = match events.try_recv() {
                Ok(i) => Ok(i),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(_) => break,
            };
        }
        if out.is_empty() {
            return Ok(());
        }
        self.write(&out).await
    }

    /// Appends `ev` to `out` if this session gets it, or holds it.
    fn on_event(&mut self, ev: Arc<TapEvent>, out: &mut Vec<u8>) {
        let Some(user) = &self.user else { return };
        if !user.servers.contains(&ev.server)
            || !self.proto.wants_event(ev.category, &ev.name, &ev.wire)
        {
            return;
        }
        if user.servers.len() > 1 && &*ev.name == b"Shutdown" && self.other_server_up(&ev.server) {
            // Pitfall 18: another server is still up, and clients read
            // Shutdown as "the connection is going away".
            return;
        }
        if let Some((ev, restore)) = self.ids.route(ev) {
            self.render(&ev, restore, out);
        }
    }

    fn other_server_up(&self, server: &str) -> bool {
        let backends = self.facade.tap.backends();
        self.user.as_ref().is_some_and(|u| {
            u.servers
                .iter()
                .any(|s| &**s != server && backends.connected(s))
        })
    }

    /// The bytes of `ev` for this session: as read, or with the client's
    /// ActionID (its own async Originate / UserEvent), `Server:` appended
    /// for users of several servers.
    fn render(&self, ev: &TapEvent, restore: Restore, out: &mut Vec<u8>) {
        let multi = self.user.as_ref().is_some_and(|u| u.servers.len() > 1);
        let tag = multi.then_some(&*ev.server);
        match (restore, tag) {
            (Restore::Client(id), _) => out.extend(wire::restore(&ev.message, id.as_deref(), tag)),
            (Restore::AsIs, Some(server)) => out.extend(wire::with_server(&ev.wire, server)),
            (Restore::AsIs, None) => out.extend_from_slice(&ev.wire),
        }
    }

    /// F28: a server's event connection is down. Sessions that have no
    /// other server connected are closed (after answering what they
    /// wait for), so that the clients' own reconnect logic runs.
    async fn on_down(&mut self, server: &str) -> Result<(), End> {
        let Some(user) = self.user.clone() else {
            return Ok(());
        };
        if !user.servers.iter().any(|s| &**s == server) || self.other_server_up(server) {
            return Ok(());
        }
        let msg = format!("Server {server} disconnected");
        if let Some(id) = self.ids.running_client_id() {
            self.running = None;
            self.write(&wire::error(id.as_deref(), &msg)).await?;
        }
        for a in std::mem::take(&mut self.queue) {
            let id = wire::client_id(&a);
            self.write(&wire::error(id.as_deref(), &msg)).await?;
        }
        Err(End::Dropped(DropReason::ServerDown))
    }

    async fn finish(mut self, end: End) {
        if let End::Dropped(reason) = end {
            SessionDropped {
                peer: &self.peer,
                user: self.user.as_ref().map(|u| u.name.as_str()),
                reason,
            }
            .emit();
        }
        if let Some(user) = &self.user {
            SessionCount {
                user: &user.name,
                delta: -1.0,
            }
            .emit();
            tracing::info!(target: "ami2amqp::facade", peer = %self.peer, user = %user.name, "AMI facade: session ended");
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), self.out.shutdown()).await;
    }
}

/// The outcome of the running action, or never when there is none.
async fn wait_running(running: &mut Option<Running>) -> Outcome {
    match running {
        Some(rx) => match rx.await {
            Ok(o) => o,
            Err(_) => Outcome {
                bytes: wire::error(None, "Internal error"),
                result: ActionResultKind::Failed,
            },
        },
        None => std::future::pending().await,
    }
}

impl Tagged for Arc<TapEvent> {
    fn action_id(&self) -> Option<&[u8]> {
        TapEvent::action_id(self)
    }

    fn ends_mapping(&self) -> bool {
        &*self.name == b"OriginateResponse"
    }
}

/// An MD5 challenge: 9 random digits, as Asterisk's `ast_random()` gives.
fn challenge() -> String {
    format!("{:09}", rand::random::<u32>() % 1_000_000_000)
}

fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_micros())
}
