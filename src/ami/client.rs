//! One AMI connection that stays up: login, actions, events, keepalive,
//! reconnect.
//!
//! A [`Client`] is a handle to a background task that owns one TCP
//! connection to one Asterisk server. The task does four things and never
//! blocks on any of them:
//!
//! * **Reads the socket all the time.** Asterisk drops a client whose socket
//!   it cannot write to within `writetimeout` (100 ms by default), and what
//!   it could not write is gone. So the task never stops reading because the
//!   consumer is slow: events go into the bounded channel when it has room
//!   and into a local queue when it does not. Only when that queue passes
//!   its byte budget ([`ClientConfig::max_buffered_bytes`]) does reading
//!   pause, with a loud warning; downstream stages (the publisher's disk
//!   spool) exist so that this does not happen. The budget holds from the
//!   first byte: events a server sends before answering `Login` count
//!   against it too (past it, the login fails and is retried).
//! * **Correlates actions.** Every action gets an `ActionID` of ours, so
//!   callers can run many actions at once on one connection and never see
//!   another caller's answer. An action whose response says
//!   `EventList: start` stays open and collects the events carrying its
//!   `ActionID` until the one with `EventList: Complete`; the caller gets
//!   the response and the list in one [`ActionResult`]. An answer the
//!   decoder gives up on (over the limits) is answered at once with a
//!   `Response: Error` saying so, not left to time out.
//! * **Keeps the connection honest.** A `Ping` every
//!   [`ClientConfig::keepalive`]; no answer within the action timeout means
//!   the connection is dead even if TCP has not noticed yet.
//! * **Reconnects** with exponential backoff and jitter, so that many
//!   bridges (or many servers) do not hammer a restarting Asterisk in step.
//!   Every state change is published on a `watch` channel and, for event
//!   connections, also in order within the event stream
//!   ([`Incoming::State`]) so consumers know exactly where a gap may be.
//!
//! An event connection configured with snapshot kinds runs the state
//! actions of a snapshot right after each login, on the same socket
//! ([`super::snapshot`]): their items go out in stream order as
//! [`Incoming::Snapshot`], framed by a start and an end mark; a session
//! that ends mid-snapshot ends it with an incomplete end mark first.
//!
//! With push-down ([`ClientConfig::push_down`], event connections only) the
//! login asks for the plan's mask and its `Filter` actions are written in
//! the same flush, right behind the `Login` (`login::filter_actions`), so
//! Asterisk reads them before it writes events to the new session; their
//! answers are read before the session starts. A refusal is counted
//! and the session goes on unfiltered. When the bridge publishes another
//! plan (a mapping reload), the session logs off and the connection is
//! made again at once, without the backoff wait.
//!
//! While the connection is down, actions fail at once with
//! [`ActionError::Unavailable`] instead of waiting for a reconnect that may
//! never come; actions in flight when it drops fail with
//! [`ActionError::ConnectionLost`] (they may or may not have run).

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::codec::{AmiCodec, Frame, Limits, Malformed};
use super::login::{
    Credentials, EventMask, EventRequest, FiltersOutcome, LoginError, filter_actions,
    filter_answers, login_within,
};
use super::message::{Kind, Message, MessageBuilder};
use super::snapshot::{Observed, SnapshotKind, SnapshotMark, Snapshotter};
use super::stream::{AmiStream, open};
use crate::logs::clip;
use crate::support::time::sleep_until_opt;
use ami_proto::{EventLists, ListStep};

pub use crate::support::backoff::Backoff;

/// Everything one connection needs to know.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's name in the configuration (used in logs and events).
    pub server: Arc<str>,
    /// `host:port` of the AMI listener.
    pub address: String,
    pub credentials: Credentials,
    /// `Events:` asked for at login.
    pub events: EventMask,
    /// TCP connect plus login must finish within this.
    pub connect_timeout: Duration,
    /// Default time an action may take (overridable per action).
    pub action_timeout: Duration,
    /// Interval between keepalive `Ping`s; zero disables them.
    pub keepalive: Duration,
    pub backoff: Backoff,
    pub limits: Limits,
    /// In-memory budget for events the consumer has not taken yet.
    pub max_buffered_bytes: usize,
    /// Bytes of event list kept per action; past it the events are counted
    /// and dropped ([`ActionResult::list_too_large`]).
    pub max_list_bytes: usize,
    /// A label for this connection in logs (`events`, `action-1`, …).
    pub role: String,
    /// TLS to the manager's TLS listener; `None`: plain TCP.
    pub tls: Option<super::stream::AmiTls>,
    /// State to snapshot after each login (event connections only;
    /// empty: none).
    pub snapshot: Vec<SnapshotKind>,
    /// Push-down (event connections only): log in with this mask instead
    /// of `events` and add these filters; the bridge updates it on a
    /// mapping reload, and a change reconnects (filters cannot be taken
    /// back from an Asterisk session). `None`: off.
    pub push_down: Option<watch::Receiver<EventRequest>>,
}

impl ClientConfig {
    pub fn new(server: &str, address: &str, credentials: Credentials) -> Self {
        ClientConfig {
            server: Arc::from(server),
            address: address.to_string(),
            credentials,
            events: EventMask::On,
            connect_timeout: Duration::from_secs(10),
            action_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(20),
            backoff: Backoff::default(),
            limits: Limits::default(),
            max_buffered_bytes: 64 * 1024 * 1024,
            max_list_bytes: 16 * 1024 * 1024,
            role: "events".into(),
            tls: None,
            snapshot: Vec::new(),
            push_down: None,
        }
    }
}

/// The state of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Trying to connect (attempt number, 0 = first).
    Connecting { attempt: u32 },
    /// Logged in. `banner` is the AMI version line.
    Connected { banner: String },
    /// Lost or failed; a retry follows unless the client was shut down.
    Disconnected { reason: String },
    /// Shut down for good.
    Stopped,
}

impl ConnState {
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnState::Connected { .. })
    }
}

/// What an event connection delivers, in the order it happened.
#[derive(Clone, Debug)]
pub enum Incoming {
    Event(ServerEvent),
    /// The connection changed state: a `Disconnected` followed by
    /// `Connected` marks a possible gap in the event stream.
    State {
        server: Arc<str>,
        state: ConnState,
    },
    /// Input that could not be parsed (already logged).
    Malformed {
        server: Arc<str>,
        error: Malformed,
    },
    /// A snapshot's start, one of its items, or its end, in stream order
    /// with the events ([`super::snapshot`]).
    Snapshot {
        server: Arc<str>,
        mark: SnapshotMark<ServerEvent>,
    },
}

/// An event and where and when it was read.
#[derive(Clone, Debug)]
pub struct ServerEvent {
    pub server: Arc<str>,
    pub message: Message,
    /// When the event's last byte was read (for read→confirm latency).
    pub received: Instant,
    /// Wall-clock time of the read (for bodies and logs).
    pub received_at: SystemTime,
}

/// The answer to an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionResult {
    /// The `Response:` message (its `ActionID` is ours, not the caller's).
    pub response: Message,
    /// The event list of a list action (`EventList: start` … `Complete`),
    /// the completing event included; empty otherwise.
    pub events: Vec<Message>,
    /// `Some(n)` when the list passed `max_list_bytes`: its `n` events were
    /// counted but not kept (`events` is then empty).
    pub list_too_large: Option<usize>,
}

impl ActionResult {
    /// True when Asterisk said `Response: Success` (or `Follows`/`Goodbye`).
    pub fn is_success(&self) -> bool {
        self.response
            .get("Response")
            .is_some_and(|r| !r.eq_ignore_ascii_case("Error"))
    }

    /// The lines of a `Command` action's output (either AMI form).
    pub fn output(&self) -> Vec<String> {
        self.response
            .get_all("Output")
            .map(|s| s.into_owned())
            .collect()
    }
}

/// Why an action did not produce an [`ActionResult`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("server {0} is not connected")]
    Unavailable(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("connection to {0} lost before the response arrived")]
    ConnectionLost(String),
    #[error("invalid action: {0}")]
    Invalid(String),
    #[error("the client is shut down")]
    Stopped,
}

/// Checks an action against what Asterisk's manager accepts
/// ([`ami_proto::check_request`]: an `Action` header, Asterisk's line and
/// line-count limits, no line breaks inside keys or values).
pub fn validate_action(action: &Message) -> Result<(), ActionError> {
    ami_proto::check_request(action).map_err(|e| ActionError::Invalid(e.to_string()))
}

type Reply = oneshot::Sender<Result<ActionResult, ActionError>>;

enum Command {
    /// `id`: the caller's ActionID, unique among this client's actions
    /// (the facade's `a2a-f<n>`), or `None` for one of ours.
    Action {
        message: Message,
        reply: Reply,
        id: Option<String>,
    },
}

/// A handle to one AMI connection task. Cloning is cheap; the task stops
/// when [`Client::shutdown`] is called or every handle is dropped.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnState>,
    in_flight: Arc<AtomicUsize>,
    cancel: CancellationToken,
    stop_reason: Arc<std::sync::Mutex<Option<String>>>,
    done: CancellationToken,
    config: Arc<ClientConfig>,
}

impl Client {
    /// Starts the connection task. Events (and state changes) go to
    /// `events`; pass `None` for an action-only connection (its events, if
    /// any, are dropped — log in with `EventMask::Off`).
    pub fn spawn(config: ClientConfig, events: Option<mpsc::Sender<Incoming>>) -> Client {
        let events_wanted = events.is_some();
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (state_tx, state_rx) = watch::channel(ConnState::Connecting { attempt: 0 });
        let cancel = CancellationToken::new();
        let done = CancellationToken::new();
        let stop_reason = Arc::new(std::sync::Mutex::new(None));
        let config = Arc::new(config);
        let task = Supervisor {
            config: config.clone(),
            commands: cmd_rx,
            state: state_tx,
            events,
            cancel: cancel.clone(),
            stop_reason: stop_reason.clone(),
            done: done.clone(),
            next_id: 0,
            queue: Outbox::default(),
            snapshot: Snapshotter::new(if events_wanted { &config.snapshot } else { &[] }),
            filters_refused: false,
        };
        tokio::spawn(task.run());
        Client {
            commands: cmd_tx,
            state: state_rx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            cancel,
            stop_reason,
            done,
            config,
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The current state, and a receiver to watch it change.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.state.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.state.borrow().is_connected()
    }

    /// Actions sent through this handle (and its clones) not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Waits until the connection is logged in, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.state.clone();
        tokio::time::timeout(timeout, async move {
            loop {
                if rx.borrow_and_update().is_connected() {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Sends an action and waits for its response (and event list). Any
    /// `ActionID` in `action` is replaced by one of ours. `timeout` defaults
    /// to the configured action timeout.
    pub async fn send_action(
        &self,
        action: Message,
        timeout: Option<Duration>,
    ) -> Result<ActionResult, ActionError> {
        self.send_action_as(action, None, timeout).await
    }

    /// [`Client::send_action`] with the ActionID `id` instead of one of
    /// ours when given: the caller knows it before the action is sent (the
    /// facade must recognise an `OriginateResponse` carrying it, which can
    /// arrive on the event connection before the response). `id` must not
    /// start with `a2a-<role>-` (our own ids) and must never be reused.
    pub async fn send_action_as(
        &self,
        action: Message,
        id: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<ActionResult, ActionError> {
        validate_action(&action)?;
        if !self.is_connected() {
            return Err(ActionError::Unavailable(self.config.server.to_string()));
        }
        let timeout = timeout.unwrap_or(self.config.action_timeout);
        let (tx, rx) = oneshot::channel();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(&self.in_flight);
        self.commands
            .send(Command::Action {
                message: action,
                reply: tx,
                id,
            })
            .await
            .map_err(|_| ActionError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ActionError::Stopped),
            Err(_) => Err(ActionError::Timeout(timeout)),
        }
    }

    /// Logs off and stops the task (no reconnect).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// [`Client::shutdown`], saying why: a logged-in event connection
    /// then ends with `Disconnected { reason }` (a `disconnected` status
    /// message) rather than a bare `Stopped`.
    pub fn shutdown_with(&self, reason: &str) {
        *self
            .stop_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.to_string());
        self.cancel.cancel();
    }

    /// Resolves when the task has ended and handed its last event over.
    pub async fn finished(&self) {
        self.done.cancelled().await;
    }
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An action waiting for its response or the end of its event list.
struct Pending {
    reply: Reply,
    response: Option<Message>,
    events: Vec<Message>,
    /// Bytes held in `events`.
    bytes: usize,
    /// Events counted past the byte cap (then `events` is emptied).
    overflow: usize,
}

impl Pending {
    fn new(reply: Reply) -> Pending {
        Pending {
            reply,
            response: None,
            events: Vec::new(),
            bytes: 0,
            overflow: 0,
        }
    }

    /// Keeps a list event while the list stays within `max` bytes; past
    /// it, frees what it held and only counts.
    fn add_event(&mut self, m: Message, max: usize) {
        let size = m.memory_size();
        if self.overflow == 0 && self.bytes.saturating_add(size) <= max {
            self.bytes += size;
            self.events.push(m);
            return;
        }
        if self.overflow == 0 {
            self.overflow = self.events.len();
            self.events = Vec::new();
            self.bytes = 0;
        }
        self.overflow += 1;
    }
}

/// The actions sent and not yet answered, by ActionID, and which of them
/// have an event list open.
#[derive(Default)]
struct Waiting {
    actions: HashMap<String, Pending>,
    lists: EventLists,
}

impl Waiting {
    fn get_mut(&mut self, id: &str) -> Option<&mut Pending> {
        self.actions.get_mut(id)
    }

    /// Forgets the actions whose caller gave up (timed out).
    fn forget_abandoned(&mut self) {
        let lists = &mut self.lists;
        self.actions.retain(|id, p| {
            let keep = !p.reply.is_closed();
            if !keep {
                lists.close(id.as_bytes());
            }
            keep
        });
    }
}

/// Owns the connection across reconnects.
struct Supervisor {
    config: Arc<ClientConfig>,
    commands: mpsc::Receiver<Command>,
    state: watch::Sender<ConnState>,
    events: Option<mpsc::Sender<Incoming>>,
    cancel: CancellationToken,
    /// Why it was shut down, when the caller said ([`Client::shutdown_with`]).
    stop_reason: Arc<std::sync::Mutex<Option<String>>>,
    /// Cancelled when the task has ended, its last event handed over.
    done: CancellationToken,
    next_id: u64,
    /// Events (and state changes) the consumer has not taken yet, in order.
    /// Lives across reconnects so nothing queued is dropped.
    queue: Outbox,
    /// The snapshots after each login (off for action connections).
    snapshot: Snapshotter,
    /// Push-down's filters were refused once (logged once per client).
    filters_refused: bool,
}

/// The local queue in front of the event channel (see the module docs).
#[derive(Default)]
struct Outbox {
    items: VecDeque<Incoming>,
    bytes: usize,
}

impl Outbox {
    /// Sends to the consumer if it has room and nothing is queued before
    /// this item, else queues it.
    fn push(&mut self, tx: &mpsc::Sender<Incoming>, item: Incoming) {
        if self.items.is_empty() {
            match tx.try_send(item) {
                Ok(()) => (),
                Err(mpsc::error::TrySendError::Full(item)) => {
                    self.bytes += incoming_size(&item);
                    self.items.push_back(item);
                }
                // The consumer is gone: nobody to deliver to.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        } else {
            self.bytes += incoming_size(&item);
            self.items.push_back(item);
        }
    }

    /// Moves the oldest queued item into a reserved slot.
    fn send_one(&mut self, permit: mpsc::Permit<'_, Incoming>) {
        if let Some(item) = self.items.pop_front() {
            self.bytes = self.bytes.saturating_sub(incoming_size(&item));
            permit.send(item);
        }
    }
}

/// Waits for room in the event channel (forever when there is none).
async fn reserve(tx: &Option<mpsc::Sender<Incoming>>) -> Option<mpsc::Permit<'_, Incoming>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

type AmiFramed = Framed<AmiStream, AmiCodec>;

/// The state of one logged-in session.
#[derive(Default)]
struct SessionState {
    /// Actions sent and not yet answered.
    pending: Waiting,
    /// The keepalive Ping waiting for its answer: ActionID, when sent.
    ping: Option<(String, Instant)>,
    /// The "budget full" error was logged for the current episode.
    warned_full: bool,
    /// When the running snapshot is given up (ended incomplete).
    snapshot_deadline: Option<tokio::time::Instant>,
}

/// Says goodbye to Asterisk (bounded: the session is ending anyway).
/// The ActionID of our `Logoff`.
const LOGOFF_ID: &str = "a2a-logoff";
/// How long a stopping event connection reads on for the answer to its
/// `Logoff` (see `Supervisor::log_off_draining`).
const LOGOFF_DRAIN: Duration = Duration::from_secs(2);

async fn logoff(framed: &mut AmiFramed) -> SessionEnd {
    let logoff = Message::from_pairs([("Action", "Logoff"), ("ActionID", LOGOFF_ID)]);
    let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(logoff)).await;
    SessionEnd::Cancelled
}

/// How a session ended.
enum SessionEnd {
    Cancelled,
    Lost(String),
    /// Push-down asks for something else now: reconnect at once.
    Replan(String),
}

impl Supervisor {
    fn set_state(&mut self, state: ConnState) {
        self.state.send_replace(state.clone());
        if let Some(tx) = &self.events {
            // State changes travel in order with the events.
            let item = Incoming::State {
                server: self.config.server.clone(),
                state,
            };
            self.queue.push(tx, item);
        }
    }

    async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            let mut replan = false;
            if self.cancel.is_cancelled() {
                break;
            }
            self.set_state(ConnState::Connecting { attempt });
            let cancel = self.cancel.clone();
            let result = tokio::select! {
                r = self.connect() => Some(r),
                _ = cancel.cancelled() => None,
            };
            let Some(result) = result else { break };
            let reason = match result {
                Ok((framed, ok, request)) => {
                    attempt = 0;
                    tracing::info!(server = %self.config.server, role = %self.config.role,
                        address = %self.config.address, banner = %clip(&ok.banner), "AMI connected");
                    self.set_state(ConnState::Connected {
                        banner: ok.banner.clone(),
                    });
                    let now = Instant::now();
                    let wall = SystemTime::now();
                    if let Some(tx) = self.events.clone() {
                        for m in ok.early_events {
                            let item = self.event(m, now, wall);
                            self.queue.push(&tx, item);
                        }
                    }
                    let end = self.session(framed, request).await;
                    self.end_snapshot(match &end {
                        SessionEnd::Cancelled => "the bridge stopped",
                        SessionEnd::Lost(reason) | SessionEnd::Replan(reason) => reason,
                    });
                    match end {
                        SessionEnd::Cancelled => break,
                        SessionEnd::Lost(reason) => reason,
                        SessionEnd::Replan(reason) => {
                            replan = true;
                            reason
                        }
                    }
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    e.to_string()
                }
            };
            crate::internal_events::ami::AmiDisconnected {
                server: &self.config.server,
                role: &self.config.role,
                address: &self.config.address,
                reason: &reason,
            }
            .emit();
            self.set_state(ConnState::Disconnected {
                reason: reason.clone(),
            });
            if !replan {
                let delay = self.config.backoff.delay(attempt.saturating_sub(1));
                self.wait_to_reconnect(delay).await;
            }
        }
        self.stop().await;
        self.done.cancel();
    }

    /// Waits `delay` (or until cancelled) before the next connect, still
    /// handing queued events to the consumer; actions fail fast meanwhile
    /// instead of queueing.
    async fn wait_to_reconnect(&mut self, delay: Duration) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = self.cancel.cancelled() => break,
                Some(permit) = reserve(&self.events), if !self.queue.items.is_empty() => {
                    self.queue.send_one(permit);
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Action { reply, .. }) => {
                        let _ = reply.send(Err(ActionError::Unavailable(self.config.server.to_string())));
                    }
                    None => { self.cancel.cancel(); break; }
                }
            }
        }
    }

    /// The end: delivers what is queued (the consumer may be slow, not
    /// gone) and fails whatever actions are still queued.
    async fn stop(&mut self) {
        let reason = self
            .stop_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(reason) = reason
            && self.state.borrow().is_connected()
        {
            self.set_state(ConnState::Disconnected { reason });
        }
        self.set_state(ConnState::Stopped);
        if let Some(tx) = &self.events {
            for item in self.queue.items.drain(..) {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        }
        self.commands.close();
        while let Ok(Command::Action { reply, .. }) = self.commands.try_recv() {
            let _ = reply.send(Err(ActionError::Stopped));
        }
    }

    fn event(&self, message: Message, received: Instant, received_at: SystemTime) -> Incoming {
        Incoming::Event(ServerEvent {
            server: self.config.server.clone(),
            message,
            received,
            received_at,
        })
    }

    /// Connects and logs in (with push-down's mask and filters when it is
    /// on: the request used comes back with the connection).
    async fn connect(
        &mut self,
    ) -> Result<(AmiFramed, super::login::LoginOk, Option<EventRequest>), String> {
        let request = self.config.push_down.as_ref().map(|rx| rx.borrow().clone());
        let filters = request
            .as_ref()
            .map_or_else(Vec::new, |r| filter_actions(&r.filters));
        let (mut framed, mut ok) = self.connect_login(request.as_ref(), &filters).await?;
        if let Some(r) = request.as_ref().filter(|r| !r.filters.is_empty()) {
            self.filter_outcome(&mut framed, &mut ok, r).await?;
        }
        Ok((framed, ok, request))
    }

    /// The answers to push-down's filters, sent with the login; a refusal
    /// (no `system` write class) is counted, logged once per client, and
    /// the session goes on unfiltered: the mappings drop those events as
    /// they always did.
    async fn filter_outcome(
        &mut self,
        framed: &mut AmiFramed,
        ok: &mut super::login::LoginOk,
        r: &EventRequest,
    ) -> Result<(), String> {
        let c = self.config.clone();
        let budget = c.max_buffered_bytes.saturating_sub(self.queue.bytes);
        match filter_answers(framed, ok, r.filters.len(), c.connect_timeout, budget).await {
            Ok(FiltersOutcome::Added(n)) => {
                tracing::info!(server = %c.server, role = %c.role, filters = n,
                    mask = %r.mask.header_value(), "push-down: event filters added");
                Ok(())
            }
            Ok(FiltersOutcome::Refused(message)) => {
                crate::internal_events::ami::PushDownRefused {
                    server: &c.server,
                    role: &c.role,
                    message: &message,
                    log: !self.filters_refused,
                }
                .emit();
                self.filters_refused = true;
                Ok(())
            }
            Err(e) => Err(format!("push-down filters: {e}")),
        }
    }

    async fn connect_login(
        &self,
        request: Option<&EventRequest>,
        then: &[Message],
    ) -> Result<(AmiFramed, super::login::LoginOk), String> {
        let c = &self.config;
        let timed_out = || {
            format!(
                "connect to {} timed out after {:?}",
                c.address, c.connect_timeout
            )
        };
        // TCP connect and TLS handshake share the connect timeout (the
        // login gets its own).
        let stream = tokio::time::timeout(c.connect_timeout, async {
            let tcp = TcpStream::connect(&c.address)
                .await
                .map_err(|e| format!("connect to {}: {e}", c.address))?;
            open(tcp, c.tls.as_ref()).await.map_err(|e| {
                tracing::error!(server = %c.server, role = %c.role, address = %c.address, error = %e,
                    "AMI TLS handshake failed (no plain-text fallback)");
                format!("TLS to {}: {e}", c.address)
            })
        })
        .await
        .map_err(|_| timed_out())??;
        let mut framed = Framed::new(stream, AmiCodec::new(c.limits));
        // The byte budget holds from the first byte: what the login may
        // keep is what the queue has room for.
        let budget = c.max_buffered_bytes.saturating_sub(self.queue.bytes);
        match login_within(
            &mut framed,
            &c.credentials,
            request.map_or(&c.events, |r| &r.mask),
            c.connect_timeout,
            budget,
            then,
        )
        .await
        {
            Ok(ok) => Ok((framed, ok)),
            Err(e @ LoginError::Rejected { .. }) => {
                tracing::error!(server = %c.server, role = %c.role, error = %e,
                    "AMI login rejected: check username/secret and manager.conf");
                Err(e.to_string())
            }
            // With TLS 1.3 a rejected client certificate shows up here,
            // on the first read after the handshake.
            Err(LoginError::Io(e)) if c.tls.is_some() => {
                Err(format!("login: {}", crate::support::tls::describe_io(&e)))
            }
            Err(e) => Err(format!("login: {e}")),
        }
    }

    /// Sends the actions of a snapshot (when snapshot kinds are set) and
    /// queues its start mark, right after login.
    async fn start_snapshot(
        &mut self,
        framed: &mut AmiFramed,
        st: &mut SessionState,
    ) -> Result<(), std::io::Error> {
        self.snapshot.new_session();
        let Some(tx) = self.events.clone() else {
            return Ok(());
        };
        let prefix = format!(
            "{}-{}",
            self.config.server,
            crate::support::time::now_unix_micros()
        );
        let role = self.config.role.clone();
        let next = &mut self.next_id;
        let Some((id, kinds, actions)) = self.snapshot.begin(&prefix, || {
            *next += 1;
            format!("a2a-{role}-{next}")
        }) else {
            return Ok(());
        };
        let n = actions.len() as u32;
        self.queue.push(
            &tx,
            Incoming::Snapshot {
                server: self.config.server.clone(),
                mark: SnapshotMark::Start { id, kinds },
            },
        );
        for a in actions {
            framed.feed(a).await?;
        }
        SinkExt::<Message>::flush(framed).await?;
        st.snapshot_deadline =
            Some(tokio::time::Instant::now() + self.config.action_timeout * n.max(1));
        Ok(())
    }

    /// Takes the messages of the running snapshot: items and the end mark
    /// go to the queue; returns the message when it is not the snapshot's.
    fn snapshot_observe(
        &mut self,
        m: Message,
        events_tx: &Option<mpsc::Sender<Incoming>>,
        st: &mut SessionState,
    ) -> Option<Message> {
        if !self.snapshot.enabled() {
            return Some(m);
        }
        let server = self.config.server.clone();
        let mark = match self.snapshot.observe(m) {
            Observed::NotOurs(m) => return Some(m),
            Observed::Item { id, kind, message } => {
                let event = ServerEvent {
                    server: server.clone(),
                    message,
                    received: Instant::now(),
                    received_at: SystemTime::now(),
                };
                SnapshotMark::Item { id, kind, event }
            }
            Observed::Consumed {
                end,
                refused,
                log_refusal,
            } => {
                if let Some(kind) = refused {
                    crate::internal_events::snapshot::SnapshotRefused {
                        server: &server,
                        kind,
                        first: log_refusal.as_ref().map(|(_, text)| text.as_str()),
                    }
                    .emit();
                }
                let end = end?;
                st.snapshot_deadline = None;
                SnapshotMark::End(end)
            }
        };
        if let Some(tx) = events_tx {
            self.queue.push(tx, Incoming::Snapshot { server, mark });
        }
        None
    }

    /// Ends a running snapshot as incomplete (the session ended, or its
    /// deadline passed): its end mark goes out before anything else.
    fn end_snapshot(&mut self, reason: &str) {
        let Some(end) = self.snapshot.abort(reason) else {
            return;
        };
        if let Some(tx) = self.events.clone() {
            let server = self.config.server.clone();
            self.queue.push(
                &tx,
                Incoming::Snapshot {
                    server,
                    mark: SnapshotMark::End(end),
                },
            );
        }
    }

    fn next_action_id(&mut self) -> String {
        self.next_id += 1;
        format!("a2a-{}-{}", self.config.role, self.next_id)
    }

    /// Runs one logged-in session until it ends: a `select!` over
    /// cancellation, delivery of queued events, reads, actions to send and
    /// the keepalive timer, each handled by a method of its own.
    async fn session(
        &mut self,
        mut framed: AmiFramed,
        request: Option<EventRequest>,
    ) -> SessionEnd {
        let mut st = SessionState::default();
        let mut plan = self.config.push_down.clone();
        if let (Some(rx), Some(applied)) = (&mut plan, &request)
            && *rx.borrow_and_update() != *applied
        {
            return self.replan(&mut framed).await;
        }
        let keepalive = if self.config.keepalive.is_zero() {
            Duration::from_secs(3600 * 24 * 365)
        } else {
            self.config.keepalive
        };
        let mut ping_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let events_tx = self.events.clone();
        if let Err(e) = self.start_snapshot(&mut framed, &mut st).await {
            return SessionEnd::Lost(format!("write error: {e}"));
        }

        let end = loop {
            let can_read = self.read_budget(&mut st);
            let step = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    ControlFlow::Break(self.log_off_draining(&mut framed, &events_tx, &mut st).await)
                }
                // Hand queued events to the consumer first, in order.
                permit = reserve(&events_tx), if !self.queue.items.is_empty() => {
                    self.deliver(permit, &mut st);
                    ControlFlow::Continue(())
                }
                frame = framed.next(), if can_read => self.on_frame(frame, &events_tx, &mut st),
                cmd = self.commands.recv() => self.on_command(cmd, &mut framed, &mut st).await,
                _ = ping_timer.tick() => self.on_keepalive(&mut framed, &mut st).await,
                _ = sleep_until_opt(st.snapshot_deadline) => {
                    st.snapshot_deadline = None;
                    self.end_snapshot("the snapshot's lists did not end in time");
                    ControlFlow::Continue(())
                }
                changed = plan_changed(&mut plan, request.as_ref()) => {
                    if changed { ControlFlow::Break(self.replan(&mut framed).await) }
                    else { ControlFlow::Continue(()) }
                }
            };
            if let ControlFlow::Break(end) = step {
                break end;
            }
        };

        let server = self.config.server.to_string();
        for (_, p) in st.pending.actions.drain() {
            let _ = p
                .reply
                .send(Err(ActionError::ConnectionLost(server.clone())));
        }
        end
    }

    /// Logs off and reads on until Asterisk's answer to the `Logoff` (or
    /// the end of the connection, at most [`LOGOFF_DRAIN`]): every event
    /// Asterisk wrote to the session before it took the `Logoff` is read
    /// and handed over, so a lease hand-over or a shutdown loses none.
    async fn log_off_draining(
        &mut self,
        framed: &mut AmiFramed,
        events_tx: &Option<mpsc::Sender<Incoming>>,
        st: &mut SessionState,
    ) -> SessionEnd {
        let logoff = Message::from_pairs([("Action", "Logoff"), ("ActionID", LOGOFF_ID)]);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(1), framed.send(logoff)).await,
            Ok(Ok(()))
        ) {
            return SessionEnd::Cancelled;
        }
        let deadline = tokio::time::Instant::now() + LOGOFF_DRAIN;
        while let Ok(frame) = tokio::time::timeout_at(deadline, framed.next()).await {
            if let Some(Ok(Frame::Message(m))) = &frame
                && m.get("ActionID").as_deref() == Some(LOGOFF_ID)
            {
                break;
            }
            if self.on_frame(frame, events_tx, st).is_break() {
                break;
            }
        }
        SessionEnd::Cancelled
    }

    /// Ends a session whose push-down request changed: log off, then
    /// reconnect at once with the new one.
    async fn replan(&self, framed: &mut AmiFramed) -> SessionEnd {
        let _ = logoff(framed).await;
        SessionEnd::Replan(
            "push-down: the mapping reload changed the event mask or filters; reconnecting".into(),
        )
    }

    /// Whether reads may go on: not while the in-memory budget is full.
    /// Warns once per full episode.
    fn read_budget(&self, st: &mut SessionState) -> bool {
        let can_read = self.queue.bytes <= self.config.max_buffered_bytes;
        if !can_read && let Some((_, sent)) = &mut st.ping {
            // The answer to a Ping sits unread behind the events while
            // reading is paused: its clock starts when reading resumes.
            // (Giving up on the connection here would drop everything
            // Asterisk has queued for it.)
            *sent = Instant::now();
        }
        if !can_read && !st.warned_full {
            st.warned_full = true;
            tracing::error!(server = %self.config.server, bytes = self.queue.bytes,
                "event consumer is not keeping up: in-memory budget full, pausing AMI reads");
        }
        can_read
    }

    /// Hands one queued event to the consumer, or drops the queue when the
    /// consumer is gone (nobody to deliver to).
    fn deliver(&mut self, permit: Option<mpsc::Permit<'_, Incoming>>, st: &mut SessionState) {
        match permit {
            Some(permit) => {
                self.queue.send_one(permit);
                if self.queue.items.is_empty() {
                    st.warned_full = false;
                }
            }
            None => self.queue = Outbox::default(),
        }
    }

    /// Handles what the read side produced: a frame, an error or the end.
    fn on_frame(
        &mut self,
        frame: Option<Result<Frame, std::io::Error>>,
        events_tx: &Option<mpsc::Sender<Incoming>>,
        st: &mut SessionState,
    ) -> ControlFlow<SessionEnd> {
        match frame {
            None => {
                return ControlFlow::Break(SessionEnd::Lost("server closed the connection".into()));
            }
            Some(Err(e)) => {
                return ControlFlow::Break(SessionEnd::Lost(format!("read error: {e}")));
            }
            Some(Ok(Frame::Banner(_))) => {}
            Some(Ok(Frame::Malformed(error))) => {
                self.malformed(&error, &mut st.pending);
                if let Some(tx) = events_tx {
                    let server = self.config.server.clone();
                    self.queue.push(tx, Incoming::Malformed { server, error });
                }
            }
            Some(Ok(Frame::Message(m))) => {
                let Some(m) = self.snapshot_observe(m, events_tx, st) else {
                    return ControlFlow::Continue(());
                };
                if let Some(item) = self.dispatch(m, &mut st.pending, &mut st.ping)
                    && let Some(tx) = events_tx
                {
                    self.queue.push(tx, item);
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Handles a command from a [`Client`] handle; when every handle is
    /// gone the session is cancelled.
    async fn on_command(
        &mut self,
        cmd: Option<Command>,
        framed: &mut AmiFramed,
        st: &mut SessionState,
    ) -> ControlFlow<SessionEnd> {
        let Some(Command::Action { message, reply, id }) = cmd else {
            self.cancel.cancel();
            return ControlFlow::Continue(());
        };
        match self.write_actions((message, reply, id), framed, st).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(SessionEnd::Lost(format!("write error: {e}"))),
        }
    }

    /// Queues this action and any others already waiting, then writes them
    /// with one flush (one syscall for a burst of concurrent actions
    /// instead of one each).
    async fn write_actions(
        &mut self,
        first: (Message, Reply, Option<String>),
        framed: &mut AmiFramed,
        st: &mut SessionState,
    ) -> Result<(), std::io::Error> {
        let mut next = Some(first);
        while let Some((message, reply, id)) = next.take() {
            if !reply.is_closed() {
                let id = id.unwrap_or_else(|| self.next_action_id());
                let wire = with_action_id(&message, &id);
                if let Err(e) = framed.feed(wire).await {
                    let server = self.config.server.to_string();
                    let _ = reply.send(Err(ActionError::ConnectionLost(server)));
                    return Err(e);
                }
                st.pending.actions.insert(id, Pending::new(reply));
            }
            if let Ok(Command::Action { message, reply, id }) = self.commands.try_recv() {
                next = Some((message, reply, id));
            }
        }
        SinkExt::<Message>::flush(framed).await
    }

    /// The keepalive timer: gives up on a connection whose Ping went
    /// unanswered, else sends a Ping; and forgets actions whose caller
    /// gave up (timed out).
    async fn on_keepalive(
        &mut self,
        framed: &mut AmiFramed,
        st: &mut SessionState,
    ) -> ControlFlow<SessionEnd> {
        if let Some((_, sent)) = &st.ping {
            if sent.elapsed() > self.config.action_timeout {
                return ControlFlow::Break(SessionEnd::Lost(format!(
                    "no answer to keepalive Ping within {:?}",
                    self.config.action_timeout
                )));
            }
        } else {
            let id = self.next_action_id();
            let ping = Message::from_pairs([("Action", "Ping"), ("ActionID", id.as_str())]);
            if let Err(e) = framed.send(ping).await {
                return ControlFlow::Break(SessionEnd::Lost(format!("write error: {e}")));
            }
            st.ping = Some((id, Instant::now()));
        }
        st.pending.forget_abandoned();
        ControlFlow::Continue(())
    }

    /// Counts and logs (rate-limited) input the decoder gave up on, and
    /// answers the action it was the response to (if any) with an error
    /// rather than letting it wait for its timeout.
    fn malformed(&self, error: &Malformed, pending: &mut Waiting) {
        crate::internal_events::ami::AmiMalformed {
            server: &self.config.server,
            role: &self.config.role,
            error,
        }
        .emit();
        let Some(id) = &error.action_id else { return };
        if let Some(p) = pending.get_mut(id) {
            let text = format!(
                "ami2amqp: the response from Asterisk was dropped: {} \
                 (see max_line_bytes / max_message_bytes)",
                error.kind
            );
            p.response = Some(Message::from_pairs([
                ("Response", "Error"),
                ("ActionID", id.as_str()),
                ("Message", text.as_str()),
            ]));
            // A partial event list is not an answer.
            p.events.clear();
            finish(pending, id);
        }
    }

    /// Counts (and logs, rate-limited) a message that is neither an event
    /// nor the answer to one of our actions.
    fn ignored(&self, m: &Message, kind: Kind) {
        crate::internal_events::ami::AmiIgnored {
            server: &self.config.server,
            role: &self.config.role,
            message: m,
            kind,
        }
        .emit();
    }

    /// Routes one message: a response or list event to its pending action,
    /// anything else out as an event.
    fn dispatch(
        &self,
        m: Message,
        pending: &mut Waiting,
        ping: &mut Option<(String, Instant)>,
    ) -> Option<Incoming> {
        let kind = m.kind();
        let id = match m.action_id() {
            Some(id) if kind == Kind::Response || kind == Kind::Event => id.into_owned(),
            _ => return self.unanswered(m, kind),
        };
        if ping.as_ref().is_some_and(|(p, _)| *p == id) {
            *ping = None;
            return None;
        }
        let m = self.answer(m, kind, &id, pending)?;
        self.unanswered(m, kind)
    }

    /// Gives a response or event carrying a pending action's `ActionID` to
    /// that action (the response, then the events of its list, if it
    /// opened one); returns the message when it is nobody's answer.
    fn answer(&self, m: Message, kind: Kind, id: &str, pending: &mut Waiting) -> Option<Message> {
        let Some(p) = pending.actions.get_mut(id) else {
            return Some(m);
        };
        match kind {
            Kind::Response if p.response.is_none() => {
                let opened = matches!(pending.lists.observe(&m), ListStep::Opened(_));
                p.response = Some(m);
                if !opened {
                    finish(pending, id);
                }
            }
            Kind::Event => {
                let last = matches!(pending.lists.observe(&m), ListStep::Item { last: true, .. });
                p.add_event(m, self.config.max_list_bytes);
                if last {
                    finish(pending, id);
                }
            }
            _ => return Some(m),
        }
        None
    }

    /// A message that answers no pending action: out as an event, or
    /// counted as ignored.
    fn unanswered(&self, m: Message, kind: Kind) -> Option<Incoming> {
        match kind {
            Kind::Event => Some(self.event(m, Instant::now(), SystemTime::now())),
            _ => {
                self.ignored(&m, kind);
                None
            }
        }
    }
}

/// Waits for push-down's request to change; true when it differs from
/// `applied`. Pends forever without push-down (or once its sender is gone).
async fn plan_changed(
    plan: &mut Option<watch::Receiver<EventRequest>>,
    applied: Option<&EventRequest>,
) -> bool {
    let Some(rx) = plan else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *plan = None;
        return false;
    }
    applied.is_some_and(|a| *rx.borrow_and_update() != *a)
}

/// Answers the action `id` (when its response came) and forgets it.
fn finish(pending: &mut Waiting, id: &str) {
    pending.lists.close(id.as_bytes());
    if let Some(p) = pending.actions.remove(id)
        && let Some(response) = p.response
    {
        let _ = p.reply.send(Ok(ActionResult {
            response,
            events: p.events,
            list_too_large: (p.overflow > 0).then_some(p.overflow),
        }));
    }
}

fn incoming_size(i: &Incoming) -> usize {
    match i {
        Incoming::Event(e) => e.message.memory_size() + 32,
        Incoming::Malformed { error, .. } => error.excerpt.len() + 64,
        Incoming::State { .. } => 64,
        Incoming::Snapshot { mark, .. } => match mark {
            SnapshotMark::Item { event, .. } => event.message.memory_size() + 64,
            _ => 128,
        },
    }
}

/// The action with our `ActionID` right after `Action` (any ActionID the
/// caller put in is dropped).
fn with_action_id(action: &Message, id: &str) -> Message {
    let mut b = MessageBuilder::default();
    let mut added = false;
    for (k, v) in action.iter_bytes() {
        if k.eq_ignore_ascii_case(b"ActionID") {
            continue;
        }
        b.push(k, v);
        if !added && k.eq_ignore_ascii_case(b"Action") {
            b.push(b"ActionID", id.as_bytes());
            added = true;
        }
    }
    if !added {
        b.push(b"ActionID", id.as_bytes());
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_what_asterisk_rejects() {
        assert!(validate_action(&Message::from_pairs([("Action", "Ping")])).is_ok());
        assert!(validate_action(&Message::from_pairs([("Channel", "x")])).is_err());
        let long = "x".repeat(1100);
        assert!(
            validate_action(&Message::from_pairs([
                ("Action", "Ping"),
                ("Data", long.as_str())
            ]))
            .is_err()
        );
        assert!(
            validate_action(&Message::from_pairs([
                ("Action", "Ping"),
                ("Data", "a\r\nAction: Hangup")
            ]))
            .is_err()
        );
        let many: Vec<(String, String)> =
            std::iter::once(("Action".to_string(), "Originate".to_string()))
                .chain((0..128).map(|i| ("Variable".to_string(), format!("V{i}=1"))))
                .collect();
        assert!(validate_action(&Message::from_pairs(many)).is_err());
    }

    #[test]
    fn action_id_is_replaced() {
        let m = Message::from_pairs([("Action", "Ping"), ("ActionID", "theirs")]);
        let w = with_action_id(&m, "ours-1");
        assert_eq!(w.get_all("ActionID").collect::<Vec<_>>(), vec!["ours-1"]);
        assert_eq!(
            w.iter().next().map(|(k, _)| k.into_owned()).as_deref(),
            Some("Action")
        );
    }

    #[test]
    fn a_list_past_its_byte_cap_is_counted_not_kept() {
        let (tx, _rx) = oneshot::channel();
        let mut p = Pending::new(tx);
        let ev = Message::from_pairs([
            ("Event", "CoreShowChannel"),
            ("Channel", "x".repeat(100).as_str()),
        ]);
        let size = ev.memory_size();
        for _ in 0..10 {
            p.add_event(ev.clone(), size * 3);
        }
        assert_eq!(
            p.events.len(),
            0,
            "the kept events are freed once past the cap"
        );
        assert_eq!(p.overflow, 10, "every event counted");
        let (tx, _rx) = oneshot::channel();
        let mut q = Pending::new(tx);
        for _ in 0..3 {
            q.add_event(ev.clone(), size * 3);
        }
        assert_eq!((q.events.len(), q.overflow), (3, 0), "within the cap");
    }

    #[test]
    fn a_list_is_forgotten_with_its_abandoned_action() {
        let mut w = Waiting::default();
        let (tx, rx) = oneshot::channel();
        w.actions.insert("a2a-1".into(), Pending::new(tx));
        let start = Message::from_pairs([
            ("Response", "Success"),
            ("ActionID", "a2a-1"),
            ("EventList", "start"),
        ]);
        assert_eq!(w.lists.observe(&start), ListStep::Opened(b"a2a-1"));
        drop(rx); // the caller gave up
        w.forget_abandoned();
        assert!(w.actions.is_empty());
        assert!(w.lists.is_empty(), "no open list left behind");
    }
}
