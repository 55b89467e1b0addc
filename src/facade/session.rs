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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ami_proto::{AmiCodec, Boot, Frame, Limits, MalformedKind, ServerSession, Step};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot};
use tokio_util::codec::FramedRead;

use super::config::User;
use super::forward::{Facade, Outcome, Request, is_action, is_async};
use super::tap::{TapEvent, TapItem};
use super::wire;
use crate::ami::Message;
use crate::internal_events::facade::{
    ActionDone, ActionResultKind, DropReason, SessionCount, SessionDropped,
};

/// Actions a client may queue behind the one running; past this the
/// session stops reading its input until one is done.
const MAX_QUEUED: usize = 64;
/// Events held for a response still on its way (F22); past this they are
/// delivered as they are.
const MAX_HELD: usize = 256;
/// Async Originates / UserEvents whose events are still expected.
const MAX_ORIGINATES: usize = 1024;
/// How long an async Originate's ActionID is remembered after its
/// response, beyond the action timeout.
const ORIGINATE_TTL: Duration = Duration::from_secs(120);
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
struct Running {
    bridge_id: String,
    client_id: Option<Bytes>,
    rx: oneshot::Receiver<Outcome>,
}

pub struct Session {
    facade: Arc<Facade>,
    peer: String,
    proto: ServerSession,
    user: Option<Arc<User>>,
    out: OwnedWriteHalf,
    queue: VecDeque<Message>,
    running: Option<Running>,
    held: Vec<Arc<TapEvent>>,
    /// bridge ActionID → (client ActionID, forget after).
    originated: HashMap<String, (Option<Bytes>, Instant)>,
    /// Counts this session among the unauthenticated until it logs in.
    unauth: Option<super::Slot>,
}

impl Session {
    /// Serves one accepted client until it ends.
    pub async fn serve(facade: Arc<Facade>, stream: TcpStream, peer: String, unauth: super::Slot) {
        let _ = stream.set_nodelay(true);
        let (rd, out) = stream.into_split();
        let mut s = Session {
            facade,
            peer,
            proto: ServerSession::new(),
            user: None,
            out,
            queue: VecDeque::new(),
            running: None,
            held: Vec::new(),
            originated: HashMap::new(),
            unauth: Some(unauth),
        };
        let events = s.facade.tap.subscribe();
        let input = FramedRead::new(rd, AmiCodec::new(Limits::asterisk_request()));
        let end = s.run(input, events).await;
        s.finish(end).await;
    }

    async fn run(
        &mut self,
        mut input: FramedRead<tokio::net::tcp::OwnedReadHalf, AmiCodec>,
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

    async fn on_action(&mut self, m: Message) -> Result<(), End> {
        let boot = self.boot();
        let facade = self.facade.clone();
        let step = self.proto.handle(&m, &facade.users, boot, challenge, now());
        match step {
            Step::Answer(bytes) => {
                self.write(&bytes).await?;
                self.after_login();
                Ok(())
            }
            Step::Close { answer, delay } => {
                if delay {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let _ = self.write(&answer).await;
                Err(if delay {
                    End::Dropped(DropReason::LoginFailed)
                } else {
                    End::Client
                })
            }
            Step::Forward { .. } => {
                self.queue.push_back(m);
                self.start_next();
                Ok(())
            }
        }
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

    /// Starts the next queued action when none is running.
    fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        let (Some(action), Some(user)) = (self.queue.pop_front(), self.user.clone()) else {
            return;
        };
        let bridge_id = self.facade.next_id();
        let client_id = wire::client_id(&action);
        if (is_action(&action, "Originate") && is_async(&action)) || is_action(&action, "UserEvent")
        {
            self.remember(&bridge_id, client_id.clone());
        }
        let (tx, rx) = oneshot::channel();
        let facade = self.facade.clone();
        let req = Request {
            user,
            action,
            client_id: client_id.clone(),
            bridge_id: bridge_id.clone(),
        };
        tokio::spawn(async move {
            let _ = tx.send(facade.run(req).await);
        });
        self.running = Some(Running {
            bridge_id,
            client_id,
            rx,
        });
    }

    fn remember(&mut self, bridge_id: &str, client_id: Option<Bytes>) {
        let now = Instant::now();
        if self.originated.len() >= MAX_ORIGINATES {
            self.originated.retain(|_, (_, until)| *until > now);
        }
        if self.originated.len() < MAX_ORIGINATES {
            let until = now + self.facade.cfg.action_timeout() + ORIGINATE_TTL;
            self.originated
                .insert(bridge_id.to_string(), (client_id, until));
        }
    }

    async fn on_outcome(&mut self, done: Outcome) -> Result<(), End> {
        let bridge_id = self.running.take().map(|r| r.bridge_id);
        if let Some(user) = &self.user {
            ActionDone {
                user: &user.name,
                result: done.result,
            }
            .emit();
        }
        if done.result != ActionResultKind::Answered
            && let Some(id) = &bridge_id
        {
            self.originated.remove(id);
        }
        self.write(&done.bytes).await?;
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        for ev in held {
            self.render(&ev, &mut out);
        }
        if !out.is_empty() {
            self.write(&out).await?;
        }
        self.start_next();
        Ok(())
    }

    /// One item from the ring, then whatever else is ready (one write).
    async fn on_events(
        &mut self,
        first: Result<TapItem, broadcast::error::RecvError>,
        events: &mut broadcast::Receiver<TapItem>,
    ) -> Result<(), End> {
        let mut out = Vec::new();
        let mut item = first;
        for _ in 0..BATCH {
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
        if let (Some(r), Some(id)) = (&self.running, ev.action_id())
            && r.bridge_id.as_bytes() == id
            && self.held.len() < MAX_HELD
        {
            self.held.push(ev);
            return;
        }
        if user.servers.len() > 1 && &*ev.name == b"Shutdown" && self.other_server_up(&ev.server) {
            // Pitfall 18: another server is still up, and clients read
            // Shutdown as "the connection is going away".
            return;
        }
        self.render(&ev, out);
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
    fn render(&mut self, ev: &TapEvent, out: &mut Vec<u8>) {
        let multi = self.user.as_ref().is_some_and(|u| u.servers.len() > 1);
        let tag = multi.then_some(&*ev.server);
        let mine = ev
            .action_id()
            .and_then(|id| std::str::from_utf8(id).ok())
            .and_then(|id| {
                self.originated
                    .get(id)
                    .map(|(c, _)| (id.to_string(), c.clone()))
            });
        match (mine, tag) {
            (Some((bridge_id, client_id)), _) => {
                out.extend(wire::restore(&ev.message, client_id.as_deref(), tag));
                if &*ev.name == b"OriginateResponse" {
                    self.originated.remove(&bridge_id);
                }
            }
            (None, Some(server)) => out.extend(wire::with_server(&ev.wire, server)),
            (None, None) => out.extend_from_slice(&ev.wire),
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
        if let Some(r) = self.running.take() {
            self.write(&wire::error(r.client_id.as_deref(), &msg))
                .await?;
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
        Some(r) => match (&mut r.rx).await {
            Ok(o) => o,
            Err(_) => Outcome {
                bytes: wire::error(None, "Internal error"),
                result: ActionResultKind::Failed,
            },
        },
        None => std::future::pending().await,
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
