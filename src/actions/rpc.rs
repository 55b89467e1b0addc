//! The action path: AMQP request in, AMI action out, AMQP reply back.
//!
//! Topology (declared at every connect, all durable):
//!
//! ```text
//! ami.actions (direct, alternate-exchange = ami.actions.unrouted)
//!   ├─ key "pbx1" → queue ami.actions.pbx1   (single active consumer,
//!   ├─ key "pbx2" → queue ami.actions.pbx2    dead-letter → ami.actions.expired)
//!   └─ other keys → ami.actions.unrouted (fanout) → queue ami.actions.unrouted
//! ami.actions.expired (fanout) → queue ami.actions.expired
//! ```
//!
//! Every request gets an answer, even the ones that cannot run: a request
//! for a server nobody configured lands in `ami.actions.unrouted` and is
//! answered `unknown_server`; a request whose AMQP `expiration` ran out
//! while it waited in the queue is dead-lettered to `ami.actions.expired`
//! and answered `expired` — never executed late. `x-single-active-consumer`
//! lets several bridges share the queues: one consumes, the others take over
//! when it goes away. In a fleet (`[fleet] enabled`, docs/scaling.md) an
//! instance consumes the queue of a server only while it holds that
//! server's lease ([`crate::fleet`]), so the requests of the fleet's servers
//! are spread like their events; the unrouted and expired queues are
//! consumed by every instance (one at a time).
//!
//! Deliveries are handled concurrently inside the session's task (at most
//! `prefetch` per queue at once, the broker enforces that; no task per
//! request, whose spawn and cross-thread wake-ups cost more than the
//! handling): parse, check the allow-list, run on the pool, publish the
//! reply to `reply_to` with the request's `correlation_id`, and only once
//! the reply is written ack the request. The acks of the requests that
//! finished together go out as few frames ([`super::acks::AckBook`]: one
//! `multiple` ack for a run, single acks around a slow request). A bridge
//! that dies before the ack has its requests redelivered to the next
//! consumer: at-least-once, like the event path. On shutdown the requests
//! running get up to [`DRAIN_LIMIT`] to finish; the others are redelivered.
//!
//! Bounds against hostile or careless callers: a reply goes only to direct
//! reply-to or a queue the allow-list permits for the user (others are
//! dropped unexecuted); a user has at most `max_in_flight_per_user` requests
//! running (more are answered `busy`); timeouts are capped at
//! `max_timeout_ms`; a reply over `max_reply_bytes` is answered `too_large`
//! (event lists are capped while they are collected, in `ami::client`); a
//! reply channel the broker closed is reopened; metric labels come from
//! bounded sets ([`super::limits::Labels`]); warnings are throttled and
//! values clipped ([`crate::logs`]). `/healthz` shows the path's state
//! ([`PathHealth`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::acks::{Ack, AckBook, Tag};
use super::allow::{ANONYMOUS, AllowEntry, AllowList, Decision};
use super::limits::{Labels, PerUser};
use super::request::{self, ErrorKind, Reply, Request};
use crate::ami::client::ActionError;
use crate::ami::{Pool, PoolError};
use crate::amqp::connect::{AmqpError, AmqpTls, Reconnect, close_bounded, connect};
use crate::amqp::publisher::short;
use crate::config::doc::documented;
use crate::config::redact_url;
use crate::logs::{Throttle, clip};

documented! {
    /// The action path (AMQP -> AMI): docs/actions.md. The allow-list is
    /// deny-by-default: with no [[actions.allow]] entry every request is
    /// answered `forbidden`.
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ActionsConfig {
        /// Consume action requests at all.
        pub enabled: bool,
        /// The exchange applications send action requests to.
        pub exchange: String,
        /// Per-server queues are <queue_prefix><server>.
        pub queue_prefix: String,
        /// Alternate exchange + queue for requests naming an unknown server.
        pub unrouted: String,
        /// Dead-letter exchange + queue for requests that expired unread.
        pub expired: String,
        /// Timeout of an action when the request sets none, in milliseconds.
        pub default_timeout_ms: u64,
        /// The longest timeout a request may ask for (`_timeout_ms` or
        /// `expiration`); longer ones are cut to this.
        pub max_timeout_ms: u64,
        /// Requests handled at once per queue.
        pub prefetch: u16,
        /// Requests one user may have running at once (all servers together);
        /// more are answered `busy` at once.
        pub max_in_flight_per_user: usize,
        /// The largest reply body; a larger one (a long event list) is answered
        /// `too_large`. Keep it below the broker's `max_message_size`.
        pub max_reply_bytes: usize,
        /// The type of the request queues: "classic" or "quorum" (replicated
        /// over a RabbitMQ cluster, so requests survive the loss of a node).
        /// A queue's type cannot change: delete the queues to switch.
        pub queue_type: QueueType,
        /// Who may run which action where: [[actions.allow]] entries
        /// (docs/actions.md); none by default.
        pub allow: Vec<AllowEntry>,
    }
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            enabled: true,
            exchange: "ami.actions".into(),
            queue_prefix: "ami.actions.".into(),
            unrouted: "ami.actions.unrouted".into(),
            expired: "ami.actions.expired".into(),
            default_timeout_ms: 10_000,
            max_timeout_ms: 60_000,
            prefetch: 64,
            max_in_flight_per_user: 16,
            max_reply_bytes: 16 * 1024 * 1024,
            queue_type: QueueType::Classic,
            allow: Vec::new(),
        }
    }
}

/// The type of the action path's queues (`x-queue-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A classic queue: on one node; the default, as it always was, so an
    /// upgrade never meets queues of another type.
    #[default]
    Classic,
    /// A quorum queue (Raft-replicated over the cluster's nodes).
    Quorum,
}

impl QueueType {
    fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// The action path as `/healthz` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathHealth {
    /// Not connected yet, or reconnecting.
    Connecting,
    /// Consuming, replies can be published.
    Ready,
    /// Broken (the last error).
    Down(String),
}

impl PathHealth {
    pub fn is_ok(&self) -> bool {
        *self == PathHealth::Ready
    }
}

impl std::fmt::Display for PathHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathHealth::Connecting => f.write_str("connecting"),
            PathHealth::Ready => f.write_str("ready"),
            PathHealth::Down(r) => write!(f, "down: {r}"),
        }
    }
}

/// Where a delivery came from.
#[derive(Clone, Debug)]
enum Source {
    Server(Arc<str>),
    Unrouted,
    Expired,
}

/// How long the action path waits for a connection to open, and for one
/// to close (lapin may never finish closing a connection that died).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
const CLOSE_LIMIT: Duration = Duration::from_secs(2);
/// How long the requests running at shutdown get to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Why a session of the action path ended; the texts are the log and
/// `/healthz` texts.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// Connecting, declaring, consuming or publishing failed.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// A channel operation failed (the text is lapin's).
    #[error(transparent)]
    Lapin(#[from] lapin::Error),
    /// The reply channel could not be reopened, or a reply could not be
    /// published on a fresh one.
    #[error("replies cannot be published (reply channel broken)")]
    ReplyChannelBroken,
    /// The broker cancelled the consumers.
    #[error("consumers cancelled")]
    ConsumersCancelled,
}

struct Ctx {
    cfg: ActionsConfig,
    allow: AllowList,
    pool: Arc<Pool>,
    instance: String,
    per_user: Arc<PerUser>,
    labels: Labels,
    health: watch::Sender<PathHealth>,
    /// For `amqps://` URLs.
    tls: AmqpTls,
    /// In a fleet: the servers whose lease this instance holds, whose
    /// queues alone it consumes. `None`: every server's.
    leases: Option<crate::fleet::HeldLeases>,
}

/// Runs the action path until `cancel` fires; its state goes to `health`.
pub async fn run(
    cfg: ActionsConfig,
    mut urls: Reconnect,
    pool: Arc<Pool>,
    (instance, leases): (String, Option<crate::fleet::HeldLeases>),
    health: watch::Sender<PathHealth>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let allow = AllowList::new(&cfg.allow)?;
    let labels = Labels::new(
        pool.server_names().iter().map(|s| s.as_ref()),
        allow.named_actions(),
    );
    let ctx = Arc::new(Ctx {
        per_user: PerUser::new(cfg.max_in_flight_per_user),
        cfg,
        allow,
        pool,
        instance,
        labels,
        health,
        tls: urls.tls().clone(),
        leases,
    });
    loop {
        let url = urls.url().to_string();
        // The session watches `cancel` itself: racing it here as well
        // dropped the session in the middle of closing its connection
        // (lapin then logged `invalid channel state: Closing` at shutdown).
        let r = session(&ctx, &url, &cancel).await;
        if cancel.is_cancelled() {
            return Ok(());
        }
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                // A session that got going starts the backoff over.
                if ctx.health.borrow().is_ok() {
                    urls.succeeded();
                }
                urls.failed();
                ctx.health.send_replace(PathHealth::Down(e.to_string()));
                tracing::warn!(url = %redact_url(&url), error = %e, "action path: AMQP unavailable; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(urls.delay()) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

fn durable_queue_args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(short(k), v.clone());
    }
    t
}

async fn declare(ctx: &Ctx, ch: &Channel) -> Result<Vec<(String, Source)>, AmqpError> {
    let c = &ctx.cfg;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let qdurable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let sac = ("x-single-active-consumer", AMQPValue::Boolean(true));
    // Classic queues are declared without the argument, as they always
    // were: queues declared by earlier versions stay equivalent.
    let qtype: Vec<(&str, AMQPValue)> = match c.queue_type {
        QueueType::Classic => Vec::new(),
        QueueType::Quorum => vec![(
            "x-queue-type",
            AMQPValue::LongString(c.queue_type.name().as_bytes().into()),
        )],
    };
    let e = |what: &str, err: lapin::Error| AmqpError::op(format!("declare {what}"))(err);
    for fanout in [&c.unrouted, &c.expired] {
        ch.exchange_declare(
            short(fanout),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|x| e(fanout, x))?;
        ch.queue_declare(
            short(fanout),
            qdurable,
            durable_queue_args(&[vec![sac.clone()], qtype.clone()].concat()),
        )
        .await
        .map_err(|x| e(fanout, x))?;
        ch.queue_bind(
            short(fanout),
            short(fanout),
            short(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|x| e(fanout, x))?;
    }
    let ae = durable_queue_args(&[(
        "alternate-exchange",
        AMQPValue::LongString(c.unrouted.as_bytes().into()),
    )]);
    ch.exchange_declare(short(&c.exchange), ExchangeKind::Direct, durable, ae)
        .await
        .map_err(|x| e(&c.exchange, x))?;
    let mut queues = vec![
        (c.unrouted.clone(), Source::Unrouted),
        (c.expired.clone(), Source::Expired),
    ];
    for server in ctx.pool.server_names() {
        let q = format!("{}{}", c.queue_prefix, server);
        let args = durable_queue_args(
            &[
                vec![
                    sac.clone(),
                    (
                        "x-dead-letter-exchange",
                        AMQPValue::LongString(c.expired.as_bytes().into()),
                    ),
                ],
                qtype.clone(),
            ]
            .concat(),
        );
        ch.queue_declare(short(&q), qdurable, args)
            .await
            .map_err(|x| e(&q, x))?;
        ch.queue_bind(
            short(&q),
            short(&c.exchange),
            short(server),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|x| e(&q, x))?;
        queues.push((q, Source::Server(server.clone())));
    }
    Ok(queues)
}

/// The requests of every per-server queue, merged.
type Requests = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (Source, Result<Delivery, lapin::Error>)>,
>;

/// The connection and the channel replies go out on. A channel the broker
/// closed (a reply it refused, e.g. over its `max_message_size`) is
/// reopened; when that fails, `broken` fires and the session reconnects,
/// so unacked requests are redelivered instead of waiting forever.
struct Replies {
    conn: Connection,
    ch: tokio::sync::Mutex<Channel>,
    broken: CancellationToken,
}

impl Replies {
    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), SessionError> {
        let ch = self.channel().await?;
        let first = ch
            .basic_publish(
                short(""),
                short(queue),
                BasicPublishOptions::default(),
                body,
                props.clone(),
            )
            .await;
        if first.is_ok() {
            return Ok(());
        }
        // The channel may have been closed under us: reopen and retry once.
        // A second failure reconnects the whole path, so that the request,
        // left unacked, is redelivered rather than held for ever.
        let ch = self.channel().await?;
        ch.basic_publish(
            short(""),
            short(queue),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            self.broken.cancel();
            SessionError::Lapin(e)
        })
    }

    /// The reply channel, reopened first if the broker closed it.
    async fn channel(&self) -> Result<Channel, AmqpError> {
        let mut ch = self.ch.lock().await;
        if !ch.status().connected() {
            crate::internal_events::actions::ReplyChannelReopened.emit();
            match self.conn.create_channel().await {
                Ok(c) => *ch = c,
                Err(e) => {
                    self.broken.cancel();
                    return Err(AmqpError::op("cannot reopen the reply channel")(e));
                }
            }
        }
        Ok(ch.clone())
    }
}

async fn session(
    ctx: &Arc<Ctx>,
    url: &str,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    ctx.health.send_replace(PathHealth::Connecting);
    let (replies, mut consumers) = tokio::select! {
        r = set_up(ctx, url) => r?,
        _ = cancel.cancelled() => return Ok(()),
    };
    let replies = Arc::new(replies);
    ctx.health.send_replace(PathHealth::Ready);
    let mut leases = ctx.leases.clone();
    let mut running = FuturesUnordered::new();
    let ack_ch = consumers.ch.clone();
    let mut book = AckBook::new();
    let mut acking = FuturesUnordered::new();
    loop {
        let next = tokio::select! {
            Some(done) = running.next() => {
                finished(done, &mut running, &mut book);
                acking.extend(book.take().into_iter().map(|a| ack(&ack_ch, a)));
                continue;
            }
            Some(()) = acking.next() => continue,
            n = consumers.all.next() => n,
            Some(held) = lease_change(&mut leases) => {
                consumers.follow(ctx, &held).await?;
                continue;
            }
            _ = replies.broken.cancelled() => {
                close_bounded(&replies.conn, "ami2amqp: reply channel broken", CLOSE_LIMIT).await;
                return Err(SessionError::ReplyChannelBroken);
            }
            _ = cancel.cancelled() => {
                drain(&mut running, &mut book, &mut acking, &ack_ch).await;
                // Bounded: lapin may never finish closing a connection that
                // died under it (see src/amqp/publisher.rs).
                close_bounded(&replies.conn, "ami2amqp stopping", CLOSE_LIMIT).await;
                return Ok(());
            }
        };
        let Some((src, d)) = next else {
            return Err(SessionError::ConsumersCancelled);
        };
        let d = d.map_err(AmqpError::op("consume"))?;
        running.push(handle(ctx.clone(), replies.clone(), src, d));
    }
}

/// Books a finished request, and every other one that finished already.
fn finished<F>(first: Option<Tag>, running: &mut FuturesUnordered<F>, book: &mut AckBook)
where
    F: std::future::Future<Output = Option<Tag>>,
{
    let mut done = first;
    loop {
        if let Some(tag) = done {
            book.finish(tag);
        }
        match running.next().now_or_never() {
            Some(Some(d)) => done = d,
            _ => return,
        }
    }
}

/// Lets the requests running finish (replies published, acks sent), for
/// at most [`DRAIN_LIMIT`]; new deliveries are not taken.
async fn drain<F, A>(
    running: &mut FuturesUnordered<F>,
    book: &mut AckBook,
    acking: &mut FuturesUnordered<A>,
    ch: &Channel,
) where
    F: std::future::Future<Output = Option<Tag>>,
    A: std::future::Future<Output = ()>,
{
    let left = running.len();
    let deadline = tokio::time::sleep(DRAIN_LIMIT);
    tokio::pin!(deadline);
    let mut late: FuturesUnordered<_> = FuturesUnordered::new();
    while !(running.is_empty() && acking.is_empty() && late.is_empty()) {
        tokio::select! {
            Some(done) = running.next() => {
                finished(done, running, book);
                late.extend(book.take().into_iter().map(|a| ack(ch, a)));
            }
            Some(()) = acking.next() => {}
            Some(()) = late.next() => {}
            _ = &mut deadline => {
                tracing::info!(running = running.len(), "action path: stopping with requests still running; they are redelivered");
                return;
            }
        }
    }
    if left > 0 {
        tracing::info!(
            requests = left,
            "action path: the requests running at shutdown finished"
        );
    }
}

/// The next set of held leases, when it changed (never resolves without
/// a fleet, or once the lease task is gone).
async fn lease_change(leases: &mut Option<crate::fleet::HeldLeases>) -> Option<Vec<String>> {
    match leases {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().held.clone()),
            Err(_) => {
                *leases = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// The request consumers of a session: the merged deliveries, and the
/// per-server queues consumed now (by server, with their consumer tags).
struct Consumers {
    ch: Channel,
    all: Requests,
    servers: HashMap<Arc<str>, String>,
}

impl Consumers {
    /// Starts consuming queue `q` for `src`.
    async fn consume(&mut self, ctx: &Ctx, q: &str, src: Source) -> Result<String, AmqpError> {
        let tag = format!("ami2amqp-{}-{q}", ctx.instance);
        let consumer = self
            .ch
            .basic_consume(
                short(q),
                short(&tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::op(format!("consume {q}")))?;
        self.all
            .push(consumer.map(move |d| (src.clone(), d)).boxed());
        Ok(tag)
    }

    /// In a fleet: consumes the queues of the servers in `held` and no
    /// others (requests being run finish and are acked as usual).
    async fn follow(&mut self, ctx: &Ctx, held: &[String]) -> Result<(), SessionError> {
        let gone: Vec<Arc<str>> = self
            .servers
            .keys()
            .filter(|s| !held.iter().any(|h| h.as_str() == &***s))
            .cloned()
            .collect();
        for s in gone {
            if let Some(tag) = self.servers.remove(&s) {
                self.ch
                    .basic_cancel(short(&tag), BasicCancelOptions::default())
                    .await?;
                tracing::info!(server = %s, "action path: lease gone, no longer consuming this server's requests");
            }
        }
        for name in held {
            let Some(server) = ctx.pool.server_names().iter().find(|s| ***s == *name) else {
                continue;
            };
            if self.servers.contains_key(server) {
                continue;
            }
            let q = format!("{}{}", ctx.cfg.queue_prefix, server);
            let tag = self
                .consume(ctx, &q, Source::Server(server.clone()))
                .await?;
            self.servers.insert(server.clone(), tag);
            tracing::info!(server = %server, "action path: lease held, consuming this server's requests");
        }
        Ok(())
    }
}

/// Connects, declares the topology and starts the consumers (in a fleet,
/// of the servers held now); returns the connection with the channel for
/// replies, and the consumers.
async fn set_up(ctx: &Arc<Ctx>, url: &str) -> Result<(Replies, Consumers), SessionError> {
    let conn = connect(url, &ctx.tls, CONNECT_LIMIT).await?;
    let ch = conn.create_channel().await?;
    let queues = declare(ctx, &ch).await?;
    ch.basic_qos(ctx.cfg.prefetch.max(1), BasicQosOptions::default())
        .await?;
    // Replies go out on a channel without confirms: a reply is published
    // when its frames are written (the contract: the request is acked once
    // its reply is published). Waiting for the broker's confirm of every
    // reply cost about a third of the round-trip rate.
    let reply_ch = conn.create_channel().await?;
    let mut consumers = Consumers {
        ch,
        all: futures::stream::select_all(Vec::new()),
        servers: HashMap::new(),
    };
    let held: Option<Vec<String>> = ctx.leases.as_ref().map(|rx| rx.borrow().held.clone());
    for (q, src) in queues {
        match (&src, &held) {
            (Source::Server(s), Some(h)) if !h.iter().any(|x| x.as_str() == &**s) => continue,
            (Source::Server(s), _) => {
                let s = s.clone();
                let tag = consumers.consume(ctx, &q, src).await?;
                consumers.servers.insert(s, tag);
            }
            _ => {
                consumers.consume(ctx, &q, src).await?;
            }
        }
    }
    tracing::info!(url = %redact_url(url), servers = ctx.pool.server_names().len(),
        consuming = consumers.servers.len(), "action path ready");
    let replies = Replies {
        conn,
        ch: tokio::sync::Mutex::new(reply_ch),
        broken: CancellationToken::new(),
    };
    Ok((replies, consumers))
}

fn result_label(r: &Reply) -> &'static str {
    match &r.error {
        None => "ok",
        Some(e) => e.kind.as_str(),
    }
}

/// Acks a request whose reply cannot go anywhere safe (its `reply_to` is
/// not allowed for the user): not executed, not answered, not redelivered.
fn refuse_reply_to(user: Option<&str>, reply_to: &str) {
    crate::internal_events::actions::ReplyToRefused {
        user: user.unwrap_or(super::allow::ANONYMOUS),
        reply_to,
    }
    .emit();
}

/// Sends one ack of the [`AckBook`]'s.
async fn ack(ch: &Channel, a: Ack) {
    let opts = BasicAckOptions {
        multiple: a.multiple,
    };
    if let Err(e) = ch.basic_ack(a.tag, opts).await {
        static T: Throttle = Throttle::new(Duration::from_secs(10));
        if let Some(suppressed) = T.allow() {
            tracing::warn!(error = %e, suppressed, "could not ack action requests");
        }
    }
}

/// Answers one request; returns its delivery tag when it may be acked
/// (its reply is published, or it has none to publish).
async fn handle(ctx: Arc<Ctx>, replies: Arc<Replies>, src: Source, d: Delivery) -> Option<Tag> {
    let props = &d.properties;
    let user = props.user_id().as_ref().map(|u| u.to_string());
    let reply_to = props.reply_to().as_ref().map(|s| s.to_string());
    if let Some(rt) = &reply_to
        && !ctx.allow.reply_to_ok(user.as_deref(), rt)
    {
        refuse_reply_to(user.as_deref(), rt);
        return Some(d.delivery_tag);
    }
    let (server, reply, action_label) = answer(&ctx, &src, &d, user.as_deref()).await;
    let (reply, body) = reply.bounded(ctx.cfg.max_reply_bytes);
    if reply
        .error
        .as_ref()
        .is_some_and(|e| e.kind == ErrorKind::TooLarge)
    {
        crate::internal_events::actions::ReplyTooLarge.emit();
    }
    let server_label = ctx.labels.server(&server);
    crate::internal_events::actions::ActionAnswered {
        server: &server_label,
        action: action_label,
        result: result_label(&reply),
        error: reply.error.as_ref().map(|e| e.message.as_str()),
    }
    .emit();
    if let Some(rt) = reply_to {
        let mut p = BasicProperties::default()
            .with_content_type(short("application/json"))
            .with_type(short("ami.action.reply"));
        if let Some(c) = props.correlation_id() {
            p = p.with_correlation_id(c.clone());
        }
        if let Err(e) = replies
            .publish(&rt, &body, p)
            .await
            .map_err(|e| e.to_string())
        {
            // Not acked: the request is redelivered (to us or another
            // bridge) when this channel or connection goes away.
            crate::internal_events::actions::ReplyFailed {
                server: &server_label,
                reply_to: &rt,
                error: &e,
            }
            .emit();
            return None;
        }
    }
    Some(d.delivery_tag)
}

/// What to answer, with the server it concerns and the action label.
async fn answer(
    ctx: &Ctx,
    src: &Source,
    d: &Delivery,
    user: Option<&str>,
) -> (String, Reply, String) {
    let key = d.routing_key.to_string();
    let inst = ctx.instance.as_str();
    let none = "-".to_string();
    match src {
        Source::Unrouted => {
            let msg = format!(
                "no server named \"{}\" is configured in this bridge",
                clip(&key)
            );
            let r = Reply::error(&key, None, ErrorKind::UnknownServer, msg, inst);
            (key, r, none)
        }
        Source::Expired => {
            let req = request::parse(&d.data).ok();
            let msg = "the request expired in the queue before the bridge could run it; it was not sent to Asterisk".into();
            let r = Reply::error(&key, req.as_ref(), ErrorKind::Expired, msg, inst);
            let label = req.map_or(none, |r| ctx.labels.action(&r.action));
            (key, r, label)
        }
        Source::Server(s) => {
            let s = s.to_string();
            match request::parse(&d.data) {
                Err(m) => {
                    let r = Reply::error(&s, None, ErrorKind::BadRequest, m, inst);
                    (s, r, none)
                }
                Ok(req) => {
                    let expiration_ms = d
                        .properties
                        .expiration()
                        .as_ref()
                        .and_then(|e| e.as_str().parse::<u64>().ok());
                    let r = run_allowed(ctx, user, &s, &req, expiration_ms).await;
                    let label = ctx.labels.action(&req.action);
                    (s, r, label)
                }
            }
        }
    }
}

/// Checks the allow-list and the user's requests in flight, and runs the
/// action.
async fn run_allowed(
    ctx: &Ctx,
    user: Option<&str>,
    server: &str,
    req: &Request,
    expiration_ms: Option<u64>,
) -> Reply {
    let inst = ctx.instance.as_str();
    let who = user.filter(|u| !u.is_empty()).unwrap_or(ANONYMOUS);
    match ctx.allow.check(user, server, &req.message) {
        Decision::Deny(why) => {
            crate::internal_events::actions::ActionDenied {
                user: who,
                server,
                action: &req.action,
                reason: &why,
            }
            .emit();
            return Reply::error(server, Some(req), ErrorKind::Forbidden, why, inst);
        }
        Decision::Allow => {
            crate::internal_events::actions::ActionAllowed.emit();
        }
    }
    let Some(_slot) = ctx.per_user.try_acquire(who) else {
        crate::internal_events::actions::ActionBusy.emit();
        let msg = format!(
            "user \"{}\" already has {} requests running ([actions] max_in_flight_per_user); not sent to Asterisk, retry later",
            clip(who),
            ctx.cfg.max_in_flight_per_user
        );
        return Reply::error(server, Some(req), ErrorKind::Busy, msg, inst);
    };
    let timeout = req
        .timeout
        .or(expiration_ms.map(Duration::from_millis))
        .unwrap_or(Duration::from_millis(ctx.cfg.default_timeout_ms))
        .min(Duration::from_millis(ctx.cfg.max_timeout_ms));
    match ctx
        .pool
        .send_action(server, req.message.clone(), Some(timeout))
        .await
    {
        Ok(r) => Reply::from_result(server, req, &r, inst),
        Err(PoolError::UnknownServer(s)) => Reply::error(
            server,
            Some(req),
            ErrorKind::UnknownServer,
            format!("unknown server \"{}\"", clip(&s)),
            inst,
        ),
        Err(PoolError::Action(e)) => action_error(server, req, e, inst),
    }
}

fn action_error(server: &str, req: &Request, e: ActionError, inst: &str) -> Reply {
    let (kind, ran) = match &e {
        ActionError::Timeout(_) => (ErrorKind::Timeout, true),
        ActionError::Invalid(_) => (ErrorKind::BadRequest, false),
        ActionError::Unavailable(_) => (ErrorKind::Unavailable, false),
        // Written to the socket (maybe) before the connection went away.
        ActionError::ConnectionLost(_) | ActionError::Stopped => (ErrorKind::Unavailable, true),
    };
    Reply::error(server, Some(req), kind, e.to_string(), inst).ran(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_errors_are_typed_and_keep_the_health_texts() {
        let e = SessionError::from(AmqpError::ConnectTimeout);
        assert_eq!(e.to_string(), "connect timed out");
        let io: lapin::Error = std::io::Error::other("reset").into();
        let e = SessionError::from(AmqpError::op("declare q")(io));
        assert!(
            matches!(&e, SessionError::Amqp(AmqpError::Op { .. })),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("declare q: "), "{e}");
        assert_eq!(
            SessionError::ReplyChannelBroken.to_string(),
            "replies cannot be published (reply channel broken)"
        );
        assert_eq!(
            SessionError::ConsumersCancelled.to_string(),
            "consumers cancelled"
        );
    }
}
