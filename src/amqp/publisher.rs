//! The publisher: drains the spool into RabbitMQ with publisher confirms.
//!
//! One task, one connection, one channel in confirm mode. It reads records
//! from the spool in order, publishes up to `confirm_window` of them without
//! waiting, and acknowledges spool positions as the broker confirms them.
//! Confirms can resolve out of order, but the spool cursor only moves over a
//! contiguous run of confirmed records, so "confirmed" on disk always means
//! "everything before this point is at the broker". That bookkeeping is
//! `ConfirmWindow` (`confirm.rs`, no I/O, property-tested); a session here
//! is a loop that reads, publishes and feeds it the broker's answers.
//!
//! Anything that goes wrong with the broker — connection refused or
//! killed, channel closed, a `nack` — ends the session: the publisher
//! reconnects (trying the configured URLs in turn, with backoff) and
//! re-reads the spool from the oldest unconfirmed record. That keeps the
//! order of messages even across failures, at the price of possibly
//! publishing again a few messages that the broker had taken just before the
//! failure (at-least-once; `message_id` lets consumers dedupe). While the
//! broker is away nothing is published and the spool simply grows; the AMI
//! side never notices.
//!
//! ## Never waiting on a dead connection
//!
//! When a session fails, the connection is closed and the broker reported
//! down. `Connection::close` used to be awaited without a bound, and the
//! state was set to down only after it returned. When the broker went away
//! during its own shutdown (`connection.close` 320 `shutdown`, then a reset
//! socket), the session could end on an error before lapin had marked the
//! connection closed; `close()` then sent `connection.close` on a connection
//! whose I/O loop was gone and waited forever for a `close-ok`. The
//! publisher hung there: `/healthz` kept saying `connected`, the spool grew,
//! and nothing was published again until the process restarted (found by
//! `tests/bridge_failures.rs`, broker restarted mid-stream, roughly one run
//! in four). Now the state goes down first and `close` is bounded by
//! [`CLOSE_TIMEOUT`].
//!
//! The same lapin behaviour — a request made just as the connection dies
//! may never complete — could in principle catch a publish, a confirm or
//! the set-up of a connection, so there are two more backstops: while a
//! session waits for anything it checks every [`WATCHDOG`] that the
//! connection and channel are still connected, and a connection attempt
//! (handshake, declarations, `confirm.select`) is bounded by
//! [`CONNECT_TIMEOUT`]. Neither fires while the broker merely blocks
//! publishers (memory or disk alarm): the connection stays connected, so
//! the publisher waits, as it should.
//!
//! Messages are published `mandatory`. Exchanges are declared with an
//! alternate exchange (`ami.unroutable` by default, with a queue of the same
//! name) so that events no consumer is bound for are kept, not dropped; if
//! the alternate exchange is disabled, returned messages are counted
//! (`amqp_returned_total`) and dropped, which is what an unbound topic
//! exchange means.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::confirm::{Advance, ConfirmWindow, Confirmation, Id, Resolved};
use super::connect::{AmqpError, AmqpTls, Reconnect, close_bounded, connect, is_not_found};
use super::in_flight::InFlight;
use super::record::Record;
use super::spool::{ReadRecord, Spool};
use crate::config::redact_url;
use crate::mapping::schema::ExchangeType;
use crate::support::backoff::Backoff;
use crate::support::time::{now_unix_micros, sleep_until_opt};

/// How often a waiting session checks that its connection is still alive.
pub const WATCHDOG: Duration = Duration::from_millis(250);
/// Longest wait for the broker's `close-ok` when closing a connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a connection attempt (TCP, AMQP handshake, declarations,
/// `confirm.select`) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Publisher settings.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    pub urls: Vec<String>,
    /// For the `amqps://` URLs.
    pub tls: AmqpTls,
    pub confirm_window: usize,
    pub backoff: Backoff,
    pub declare_exchanges: bool,
    /// "" disables the alternate exchange.
    pub alternate_exchange: String,
    pub shutdown_timeout: Duration,
}

/// Where the exchanges to declare come from (the live mapping set, which
/// can change on reload).
pub type ExchangeSource = Arc<dyn Fn() -> Vec<(Arc<str>, ExchangeType)> + Send + Sync>;

/// The broker connection state, for `/healthz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerState {
    Connecting,
    Up { url: String },
    Down { reason: String },
}

/// An AMQP short string from arbitrary text, cut to 255 bytes at a
/// character boundary (lapin panics on longer ones).
pub fn short(s: &str) -> ShortString {
    let mut cut = s.len().min(255);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    ShortString::try_new(&s[..cut]).unwrap_or_else(|_| ShortString::from(""))
}

/// The arguments the bridge declares its exchanges with: the alternate
/// exchange (`[amqp] alternate_exchange`, none when empty). `doctor`
/// declares with the same, so that what it reports is what `run` meets.
pub(crate) fn exchange_args(alternate_exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    if !alternate_exchange.is_empty() {
        args.insert(
            short("alternate-exchange"),
            AMQPValue::LongString(alternate_exchange.as_bytes().into()),
        );
    }
    args
}

pub(crate) fn kind_of(t: ExchangeType) -> ExchangeKind {
    match t {
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

/// Builds the AMQP properties of a record.
pub fn properties(r: &Record) -> BasicProperties {
    let p = &r.msg.props;
    let mut b = BasicProperties::default()
        .with_delivery_mode(if p.persistent { 2 } else { 1 })
        .with_content_type(short(&p.content_type))
        .with_type(short(&p.kind))
        .with_message_id(short(&p.message_id))
        .with_timestamp(r.received_at_us / 1_000_000)
        .with_app_id(short("ami2amqp"));
    if let Some(pr) = p.priority {
        b = b.with_priority(pr);
    }
    if let Some(e) = p.expiration_ms {
        b = b.with_expiration(short(&e.to_string()));
    }
    let mut h = FieldTable::default();
    h.insert(
        short("x-ami-server"),
        AMQPValue::LongString(r.server.as_bytes().into()),
    );
    for (k, v) in &p.headers {
        h.insert(short(k), AMQPValue::LongString(v.as_bytes().into()));
    }
    b.with_headers(h)
}

/// Per-exchange counters, looked up once per exchange rather than per
/// message.
struct Counters {
    published: metrics::Counter,
    confirmed: metrics::Counter,
    nacked: metrics::Counter,
    returned: metrics::Counter,
}

impl Counters {
    fn new(ex: &str) -> Counters {
        let l = ex.to_string();
        Counters {
            published: metrics::counter!(crate::internal_events::catalog::AMQP_PUBLISHED_TOTAL, "exchange" => l.clone()),
            confirmed: metrics::counter!(crate::internal_events::catalog::AMQP_CONFIRMED_TOTAL, "exchange" => l.clone()),
            nacked: metrics::counter!(crate::internal_events::catalog::AMQP_NACKED_TOTAL, "exchange" => l.clone()),
            returned: metrics::counter!(crate::internal_events::catalog::AMQP_RETURNED_TOTAL, "exchange" => l),
        }
    }
}

/// What the window keeps of a published record until it is released.
#[derive(Clone)]
struct Sent {
    received_at_us: u64,
    exchange: Arc<str>,
}

/// One record in flight: its publish, then its confirm, tagged with its
/// id in the window. lapin takes the frames and the delivery tag at the
/// first poll (`publish_batch` polls each at once, in spool order); the
/// rest resolves in any order.
type Publish<'c> =
    Pin<Box<dyn Future<Output = (Id, lapin::Result<lapin::Confirmation>)> + Send + 'c>>;

/// What one session (one connection) holds.
struct Session<'c> {
    conn: &'c Connection,
    ch: &'c Channel,
    window: ConfirmWindow<Sent>,
    confirms: InFlight<Publish<'c>>,
    batch: Vec<ReadRecord>,
    /// Confirmed records whose spool cursor move is not applied yet: the
    /// confirms taken in one step move it once.
    advance: Option<Advance>,
    /// Once `cancel` fired: when to give up on the last confirms.
    stopping: Option<tokio::time::Instant>,
    latency: metrics::Histogram,
    watchdog: tokio::time::Interval,
}

impl<'c> Session<'c> {
    fn new(conn: &'c Connection, ch: &'c Channel, window: usize, cursor: u64) -> Session<'c> {
        let mut watchdog = tokio::time::interval(WATCHDOG);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Session {
            conn,
            ch,
            window: ConfirmWindow::new(window, cursor),
            confirms: InFlight::new(),
            batch: Vec::with_capacity(window.max(1)),
            advance: None,
            stopping: None,
            latency: metrics::histogram!(crate::internal_events::catalog::PUBLISH_LATENCY_SECONDS),
            watchdog,
        }
    }
}

/// A session step: `Err` ends the session.
type Step = Result<(), SessionEnd>;

/// Runs until `cancel` fires and in-flight confirms are in (or the shutdown
/// timeout passes).
pub async fn run(
    cfg: PublisherConfig,
    spool: Spool,
    exchanges: ExchangeSource,
    state: watch::Sender<BrokerState>,
    cancel: CancellationToken,
) {
    let mut p = Publisher {
        cfg,
        spool: spool.clone(),
        reader: spool.reader(),
        exchanges,
        state,
        cancel,
        counters: HashMap::new(),
        declared: HashSet::new(),
    };
    p.run().await;
}

struct Publisher {
    cfg: PublisherConfig,
    spool: Spool,
    reader: super::spool::SpoolReader,
    exchanges: ExchangeSource,
    state: watch::Sender<BrokerState>,
    cancel: CancellationToken,
    counters: HashMap<Arc<str>, Counters>,
    /// Exchanges declared (or found) on the current connection. A record
    /// for any other exchange (a mapping reload added it) has it declared
    /// before it is published, instead of a 404 that closes the channel.
    declared: HashSet<Arc<str>>,
}

enum SessionEnd {
    /// Shut down cleanly.
    Done,
    /// The broker failed; reconnect.
    Failed(String),
}

/// The default exchange and the `amq.*` ones: never declared.
fn always_exists(exchange: &str) -> bool {
    exchange.is_empty() || exchange.starts_with("amq.")
}

/// Why the connection or channel can no longer be used, if it cannot.
fn broken(conn: &Connection, ch: &Channel) -> Option<String> {
    let c = conn.status();
    if !c.connected() {
        let state = if c.errored() {
            "failed"
        } else if c.closing() {
            "closing"
        } else if c.closed() {
            "closed"
        } else {
            "not connected"
        };
        return Some(format!("the AMQP connection is {state}"));
    }
    let s = ch.status();
    if !s.connected() {
        let state = if s.closing() { "closing" } else { "closed" };
        return Some(format!("the AMQP channel is {state}"));
    }
    None
}

impl Publisher {
    fn counters(&mut self, ex: &Arc<str>) -> &Counters {
        self.counters
            .entry(ex.clone())
            .or_insert_with(|| Counters::new(ex))
    }

    async fn run(&mut self) {
        let mut urls = Reconnect::new(self.cfg.urls.clone(), self.cfg.backoff);
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            self.state.send_replace(BrokerState::Connecting);
            let url = urls.url().to_string();
            let cancel = self.cancel.clone();
            let connected = tokio::select! {
                r = tokio::time::timeout(CONNECT_TIMEOUT, self.connect_and_declare(&url)) => Some(match r {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("connecting took more than {CONNECT_TIMEOUT:?}")),
                }),
                _ = cancel.cancelled() => None,
            };
            let Some(connected) = connected else { break };
            let reason = match connected {
                Ok((conn, channel)) => {
                    urls.succeeded();
                    match self.connected(&url, conn, channel).await {
                        SessionEnd::Done => break,
                        SessionEnd::Failed(r) => r,
                    }
                }
                Err(e) => {
                    // Next time, try the next URL (cluster fail-over).
                    urls.failed();
                    e
                }
            };
            let (bytes, msgs) = self.spool.pending();
            crate::internal_events::amqp::AmqpUnavailable {
                url: &redact_url(&url),
                reason: &reason,
                spooled_messages: msgs,
                spooled_bytes: bytes,
            }
            .emit();
            self.state.send_replace(BrokerState::Down {
                reason: reason.clone(),
            });
            tokio::select! {
                _ = tokio::time::sleep(urls.delay()) => {}
                _ = self.cancel.cancelled() => break,
            }
        }
        let _ = self.spool.ack(0, 0, true);
    }

    /// Runs one session on a fresh connection, then closes it (bounded).
    async fn connected(&mut self, url: &str, conn: Connection, channel: Channel) -> SessionEnd {
        tracing::info!(url = %redact_url(url), "AMQP connected");
        self.state.send_replace(BrokerState::Up {
            url: redact_url(url),
        });
        let end = self.session(&conn, &channel).await;
        if let SessionEnd::Failed(reason) = &end {
            // Say so at once: closing a broken connection may
            // take up to CLOSE_TIMEOUT.
            self.state.send_replace(BrokerState::Down {
                reason: reason.clone(),
            });
        }
        // lapin may never complete the close of a connection
        // that died under it (see the module docs).
        if !close_bounded(&conn, "ami2amqp stopping", CLOSE_TIMEOUT).await {
            tracing::warn!(url = %redact_url(url), timeout = ?CLOSE_TIMEOUT,
                "AMQP connection did not close in time; dropped");
        }
        end
    }

    async fn connect_and_declare(&mut self, url: &str) -> Result<(Connection, Channel), AmqpError> {
        let conn = connect(url, &self.cfg.tls, Duration::from_secs(10)).await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(AmqpError::op("channel"))?;
        if self.cfg.declare_exchanges {
            self.declare_all(&conn, &ch).await?;
        }
        let ch = if ch.status().connected() {
            ch
        } else {
            conn.create_channel()
                .await
                .map_err(AmqpError::op("channel"))?
        };
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(AmqpError::op("confirm.select"))?;
        Ok((conn, ch))
    }

    /// Declares the alternate exchange and queue, then every exchange of
    /// the mapping set (durable). An exchange that already exists with other
    /// arguments is left as it is (and logged), so is an alternate queue
    /// whose cluster node is down.
    async fn declare_all(&mut self, conn: &Connection, ch: &Channel) -> Result<(), AmqpError> {
        self.declared.clear();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let ae = self.cfg.alternate_exchange.clone();
        let mut ch = ch.clone();
        if !ae.is_empty() {
            ch.exchange_declare(
                short(&ae),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::op(format!("declare alternate exchange {ae}")))?;
            let declared = ch
                .queue_declare(
                    short(&ae),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(_) => {
                    ch.queue_bind(
                        short(&ae),
                        short(&ae),
                        short(""),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(AmqpError::op(format!("bind queue {ae}")))?;
                }
                // A durable classic queue lives on one node of a cluster;
                // while that node is down, declaring it answers 404 ("home
                // node ... is down") on every other node. The queue and its
                // binding exist: go on without them rather than refuse
                // every node of `urls` until that one is back.
                Err(e) if is_not_found(&e) => {
                    tracing::warn!(queue = %ae, error = %e,
                        "alternate queue unavailable (its node is down?); publishing without it");
                    ch = conn
                        .create_channel()
                        .await
                        .map_err(AmqpError::op("channel"))?;
                }
                Err(e) => return Err(AmqpError::op(format!("declare queue {ae}"))(e)),
            }
        }
        for (name, t) in (self.exchanges)() {
            if always_exists(&name) || !self.declared.insert(name.clone()) {
                continue;
            }
            ch = self.declare_one(conn, ch, &name, t).await?;
        }
        Ok(())
    }

    /// Declares one mapping exchange (durable, with the alternate exchange)
    /// on `ch`; if it exists with other settings, checks it exists on a new
    /// channel (the failed declare closed `ch`) and returns that channel.
    async fn declare_one(
        &self,
        conn: &Connection,
        ch: Channel,
        name: &str,
        t: ExchangeType,
    ) -> Result<Channel, AmqpError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let args = exchange_args(&self.cfg.alternate_exchange);
        let Err(e) = ch
            .exchange_declare(short(name), kind_of(t), durable, args)
            .await
        else {
            return Ok(ch);
        };
        tracing::warn!(exchange = %name, error = %e,
            "exchange exists with other settings; using it as it is");
        let ch = conn
            .create_channel()
            .await
            .map_err(AmqpError::op("channel"))?;
        ch.exchange_declare(
            short(name),
            kind_of(t),
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(AmqpError::op(format!("exchange {name}")))?;
        Ok(ch)
    }

    /// Declares, on a channel of their own, the exchanges of `recs` that
    /// this connection has not declared yet and that the live mapping set
    /// names (a reload added them). Exchanges the mapping set no longer
    /// names are published to as they are.
    async fn declare_new(
        &mut self,
        conn: &Connection,
        recs: &[(u64, Option<Record>)],
    ) -> Result<(), AmqpError> {
        if !self.cfg.declare_exchanges {
            return Ok(());
        }
        let mut missing: Vec<Arc<str>> = Vec::new();
        for (_, r) in recs {
            let Some(r) = r else { continue };
            let ex = &r.msg.exchange;
            if always_exists(ex) || self.declared.contains(ex) || missing.contains(ex) {
                continue;
            }
            missing.push(ex.clone());
        }
        if missing.is_empty() {
            return Ok(());
        }
        let known = (self.exchanges)();
        let mut ch = conn
            .create_channel()
            .await
            .map_err(AmqpError::op("channel"))?;
        for name in missing {
            self.declared.insert(name.clone());
            let Some((_, t)) = known.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            tracing::info!(exchange = %name, "declaring an exchange the mappings added");
            ch = self.declare_one(conn, ch, &name, *t).await?;
        }
        let _ = ch.close(200, short("declared")).await;
        Ok(())
    }

    /// One session on a connected channel: a loop that feeds the confirm
    /// window (the guarantees live in [`ConfirmWindow`]).
    async fn session(&mut self, conn: &Connection, ch: &Channel) -> SessionEnd {
        self.reader.rewind();
        let cursor = self.reader.position();
        let mut s = Session::new(conn, ch, self.cfg.confirm_window, cursor);
        loop {
            // Stopping: publish what the spool still holds (the router has
            // written its last records, e.g. the `stopped` status, before
            // the publisher is told to stop), within the shutdown timeout.
            let drained = self.reader.position() >= self.spool.end();
            if s.stopping.is_some() && s.confirms.is_empty() && drained {
                return SessionEnd::Done;
            }
            let pos = self.reader.position();
            let reading = s.window.wants_refill() && (s.stopping.is_none() || !drained);
            let wait_for = s.window.releases_until_refill();
            let step = tokio::select! {
                biased;
                Some((id, res)) = next_answer(&mut s.confirms, wait_for), if !s.confirms.is_empty() => {
                    self.on_confirms(&mut s, id, res).await
                }
                _ = self.spool.wait_for_data(pos), if reading => self.publish_batch(&mut s).await,
                _ = s.watchdog.tick() => match broken(conn, ch) {
                    Some(why) => Err(SessionEnd::Failed(format!(
                        "{why} with {} confirms outstanding", s.confirms.len()))),
                    None => Ok(()),
                },
                _ = self.cancel.cancelled(), if s.stopping.is_none() => {
                    tracing::info!(in_flight = s.confirms.len(), "stopping: waiting for in-flight confirms");
                    s.stopping = Some(tokio::time::Instant::now() + self.cfg.shutdown_timeout);
                    Ok(())
                }
                _ = sleep_until_opt(s.stopping) => {
                    tracing::warn!(in_flight = s.confirms.len(), "shutdown timeout: unconfirmed messages stay in the spool");
                    Err(SessionEnd::Done)
                }
            };
            self.advance(s.advance.take());
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Takes one broker answer and every other one already in, so that a
    /// run of confirms costs one step of the session loop and one move of
    /// the spool cursor (lapin resolves a `multiple` ack's confirms
    /// together).
    async fn on_confirms(
        &mut self,
        s: &mut Session<'_>,
        id: Id,
        res: lapin::Result<lapin::Confirmation>,
    ) -> Step {
        self.on_confirm(s, id, res)?;
        loop {
            let wait_for = s.window.releases_until_refill();
            let next =
                std::future::poll_fn(|cx| Poll::Ready(s.confirms.poll_oldest(cx, wait_for))).await;
            let Poll::Ready(Some((id, res))) = next else {
                return Ok(());
            };
            self.on_confirm(s, id, res)?;
        }
    }

    /// Feeds one broker answer to the window and notes how far the spool
    /// cursor may move (`s.advance`, applied once the step ends).
    fn on_confirm(
        &mut self,
        s: &mut Session<'_>,
        id: Id,
        res: lapin::Result<lapin::Confirmation>,
    ) -> Step {
        let answer = match res {
            Ok(lapin::Confirmation::Ack(None)) => Confirmation::Ack,
            Ok(lapin::Confirmation::Ack(Some(_))) => Confirmation::Returned,
            Ok(lapin::Confirmation::NotRequested) => Confirmation::NotRequested,
            Ok(lapin::Confirmation::Nack(_)) => Confirmation::Nack,
            Err(e) => return Err(SessionEnd::Failed(format!("publish or confirm: {e}"))),
        };
        let now = now_unix_micros();
        let latency = &s.latency;
        let resolved = s.window.resolve(id, answer, |sent| {
            latency.record(now.saturating_sub(sent.received_at_us) as f64 / 1e6);
        });
        match resolved {
            Resolved::Confirmed { meta, advance } => {
                self.count(&meta.exchange, answer);
                s.advance = Advance::then(s.advance.take(), advance);
                Ok(())
            }
            Resolved::Refused { meta } => {
                self.counters(&meta.exchange).nacked.increment(1);
                tracing::debug!(
                    cursor = s.window.cursor(),
                    "nack: the session ends; the spool is re-read from the cursor"
                );
                Err(SessionEnd::Failed(
                    "broker nacked a message; re-publishing from the oldest unconfirmed".into(),
                ))
            }
            Resolved::Unknown => Err(SessionEnd::Failed(format!(
                "a confirm for delivery {id}, which is not waiting for one"
            ))),
        }
    }

    /// Moves the spool cursor as the window says.
    fn advance(&self, advance: Option<Advance>) {
        if let Some(a) = advance
            && let Err(e) = self.spool.ack(a.upto, a.records, false)
        {
            tracing::error!(error = %e, "cannot persist the spool cursor");
        }
    }

    /// Counts a positive answer.
    fn count(&mut self, ex: &Arc<str>, answer: Confirmation) {
        let c = self.counters(ex);
        match answer {
            Confirmation::Ack => c.confirmed.increment(1),
            Confirmation::Returned => {
                c.confirmed.increment(1);
                c.returned.increment(1);
                tracing::debug!(exchange = %ex, "message returned: no queue bound for its routing key");
            }
            Confirmation::NotRequested | Confirmation::Nack => {}
        }
    }

    /// Reads what fits in the window from the spool and starts its
    /// publishes, in order, each entered into the window as it starts.
    ///
    /// Pipelined, as the best plain lapin publisher is: a publish is not
    /// awaited before the next starts or before confirms are taken; its
    /// completion and its confirm are one future in `s.confirms`. Awaiting
    /// the whole batch's publishes first (`join_all`) held confirms back
    /// behind the slowest write and cost more wake-ups (BENCHMARKS.md,
    /// "Pipelining the publisher and refilling the window").
    async fn publish_batch(&mut self, s: &mut Session<'_>) -> Step {
        s.batch.clear();
        if let Err(e) = self.reader.read_batch(s.window.room(), &mut s.batch) {
            tracing::error!(error = %e, "spool read failed");
            return Err(SessionEnd::Failed(format!("spool read: {e}")));
        }
        let recs = decode_batch(&mut s.batch);
        if let Err(e) = self.declare_new(s.conn, &recs).await {
            return Err(SessionEnd::Failed(format!("declare: {e}")));
        }
        // The first poll of each publish is quiet: `s.confirms` decides
        // which publish wakes the task.
        let mut quiet = Context::from_waker(Waker::noop());
        for (end, rec) in recs {
            let Some(rec) = rec else {
                self.skip(s, end);
                continue;
            };
            let mut fut = self.start(s, end, rec);
            // The first poll queues the frames and takes the delivery tag,
            // so polling here, in the loop, keeps the spool's order.
            match fut.as_mut().poll(&mut quiet) {
                Poll::Ready((id, res)) => self.on_confirm(s, id, res)?,
                Poll::Pending => s.confirms.push(fut),
            }
        }
        Ok(())
    }

    /// Enters a record into the window and returns its publish-then-confirm
    /// future (not yet polled).
    fn start<'c>(&mut self, s: &mut Session<'c>, end: u64, rec: Record) -> Publish<'c> {
        let exchange = rec.msg.exchange.clone();
        self.counters(&exchange).published.increment(1);
        let id = s.window.push(
            end,
            Sent {
                received_at_us: rec.received_at_us,
                exchange,
            },
        );
        let ch = s.ch;
        Box::pin(async move {
            let published = ch
                .basic_publish(
                    short(&rec.msg.exchange),
                    short(&rec.msg.routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &rec.msg.body,
                    properties(&rec),
                )
                .await;
            let answer = match published {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            };
            (id, answer)
        })
    }

    /// A record that could not be decoded: released in its turn, not
    /// published.
    fn skip(&mut self, s: &mut Session<'_>, end: u64) {
        let sent = Sent {
            received_at_us: now_unix_micros(),
            exchange: Arc::from(""),
        };
        let latency = &s.latency;
        let advance = s.window.skip(end, sent, |_| latency.record(0.0));
        s.advance = Advance::then(s.advance.take(), advance);
    }
}

/// Decodes a batch read from the spool; an undecodable record (the CRC
/// passed, so only a lying disk or a record of another version) is kept
/// as `None`, to be skipped rather than read again forever.
fn decode_batch(batch: &mut Vec<ReadRecord>) -> Vec<(u64, Option<Record>)> {
    batch
        .drain(..)
        .map(|rr| match Record::decode(&rr.payload) {
            Ok(r) => (rr.end, Some(r)),
            Err(e) => {
                crate::internal_events::amqp::UndecodableRecord { error: &e }.emit();
                (rr.end, None)
            }
        })
        .collect()
}

/// The next answer from the publishes in flight, waking the task only once
/// `wait_for` of the oldest are in (see [`InFlight`]).
async fn next_answer<'c>(
    q: &mut InFlight<Publish<'c>>,
    wait_for: usize,
) -> Option<(Id, lapin::Result<lapin::Confirmation>)> {
    std::future::poll_fn(|cx| q.poll_oldest(cx, wait_for)).await
}
