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
//! and answered `timeout` — never executed late. `x-single-active-consumer`
//! lets several bridges share the queues: one consumes, the others take over
//! when it goes away.
//!
//! Each delivery is handled in its own task (at most `prefetch` at once, the
//! broker enforces that): parse, check the allow-list, run on the pool,
//! publish the reply to `reply_to` with the request's `correlation_id`,
//! and only then ack the request. A
//! bridge that dies before the ack has its requests redelivered to the next
//! consumer: at-least-once, like the event path.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::allow::{AllowEntry, AllowList, Decision};
use super::request::{self, ErrorKind, Reply, Request};
use crate::ami::client::{ActionError, Backoff};
use crate::ami::{Pool, PoolError};
use crate::amqp::publisher::short;
use crate::config::redact_url;

/// `[actions]` in the config file (docs/actions.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    /// Consume action requests at all.
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default = "d_exchange")]
    pub exchange: String,
    /// Per-server queues are `<queue_prefix><server>`.
    #[serde(default = "d_prefix")]
    pub queue_prefix: String,
    #[serde(default = "d_unrouted")]
    pub unrouted: String,
    #[serde(default = "d_expired")]
    pub expired: String,
    /// Timeout of an action when the request sets none.
    #[serde(default = "d_timeout")]
    pub default_timeout_ms: u64,
    /// Requests handled at once per queue.
    #[serde(default = "d_prefetch")]
    pub prefetch: u16,
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
}

fn d_true() -> bool {
    true
}
fn d_exchange() -> String {
    "ami.actions".into()
}
fn d_prefix() -> String {
    "ami.actions.".into()
}
fn d_unrouted() -> String {
    "ami.actions.unrouted".into()
}
fn d_expired() -> String {
    "ami.actions.expired".into()
}
fn d_timeout() -> u64 {
    10_000
}
fn d_prefetch() -> u16 {
    64
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            enabled: true,
            exchange: d_exchange(),
            queue_prefix: d_prefix(),
            unrouted: d_unrouted(),
            expired: d_expired(),
            default_timeout_ms: d_timeout(),
            prefetch: d_prefetch(),
            allow: Vec::new(),
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

struct Ctx {
    cfg: ActionsConfig,
    allow: AllowList,
    pool: Arc<Pool>,
    instance: String,
}

/// Runs the action path until `cancel` fires.
pub async fn run(
    cfg: ActionsConfig,
    urls: Vec<String>,
    backoff: Backoff,
    pool: Arc<Pool>,
    instance: String,
    cancel: CancellationToken,
) -> Result<(), String> {
    let allow = AllowList::new(&cfg.allow)?;
    let ctx = Arc::new(Ctx {
        cfg,
        allow,
        pool,
        instance,
    });
    let mut attempt = 0u32;
    let mut url_index = 0usize;
    loop {
        let url = urls[url_index % urls.len()].clone();
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
                attempt = attempt.saturating_add(1);
                url_index = url_index.wrapping_add(1);
                tracing::warn!(url = %redact_url(&url), error = %e, "action path: AMQP unavailable; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay(attempt.saturating_sub(1))) => {}
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

async fn declare(ctx: &Ctx, ch: &Channel) -> Result<Vec<(String, Source)>, String> {
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
    let e = |what: &str, err: lapin::Error| format!("declare {what}: {err}");
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
            durable_queue_args(std::slice::from_ref(&sac)),
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
        let args = durable_queue_args(&[
            sac.clone(),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(c.expired.as_bytes().into()),
            ),
        ]);
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

async fn session(ctx: &Arc<Ctx>, url: &str, cancel: &CancellationToken) -> Result<(), String> {
    let (conn, reply_ch, mut all) = tokio::select! {
        r = set_up(ctx, url) => r?,
        _ = cancel.cancelled() => return Ok(()),
    };
    loop {
        let next = tokio::select! {
            n = all.next() => n,
            _ = cancel.cancelled() => {
                // Bounded: lapin may never finish closing a connection that
                // died under it (see src/amqp/publisher.rs).
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    conn.close(200, short("ami2amqp stopping")),
                )
                .await;
                return Ok(());
            }
        };
        let Some((src, d)) = next else {
            return Err("consumers cancelled".into());
        };
        let d = d.map_err(|e| format!("consume: {e}"))?;
        let ctx = ctx.clone();
        let reply_ch = reply_ch.clone();
        tokio::spawn(async move {
            handle(ctx, reply_ch, src, d).await;
        });
    }
}

/// Connects, declares the topology and starts the consumers; returns the
/// connection, the channel for replies and the merged requests.
async fn set_up(ctx: &Arc<Ctx>, url: &str) -> Result<(Connection, Channel, Requests), String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let queues = declare(ctx, &ch).await?;
    ch.basic_qos(ctx.cfg.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    // Replies go out on a channel without confirms: a reply is published
    // when its frames are written (the contract: the request is acked once
    // its reply is published). Waiting for the broker's confirm of every
    // reply cost about a third of the round-trip rate.
    let reply_ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for (q, src) in queues {
        let consumer = ch
            .basic_consume(
                short(&q),
                short(&format!("ami2amqp-{}-{q}", ctx.instance)),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consume {q}: {e}"))?;
        streams.push(consumer.map(move |d| (src.clone(), d)).boxed());
    }
    tracing::info!(url = %redact_url(url), servers = ctx.pool.server_names().len(), "action path ready");
    Ok((conn, reply_ch, futures::stream::select_all(streams)))
}

fn result_label(r: &Reply) -> &'static str {
    match &r.error {
        None => "ok",
        Some(e) => e.kind.as_str(),
    }
}

async fn handle(ctx: Arc<Ctx>, reply_ch: Channel, src: Source, d: Delivery) {
    let props = &d.properties;
    let user = props.user_id().as_ref().map(|u| u.to_string());
    let key = d.routing_key.to_string();
    let expiration_ms = props
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().parse::<u64>().ok());
    let inst = ctx.instance.as_str();
    let (server, reply, action_label) = match &src {
        Source::Unrouted => (
            key.clone(),
            Reply::error(
                &key,
                None,
                ErrorKind::UnknownServer,
                format!("no server named {key:?} is configured in this bridge"),
                inst,
            ),
            "-".to_string(),
        ),
        Source::Expired => {
            let req = request::parse(&d.data).ok();
            (
                key.clone(),
                Reply::error(&key, req.as_ref(), ErrorKind::Timeout, "the request expired in the queue before the bridge could run it; it was not executed".into(), inst),
                "-".to_string(),
            )
        }
        Source::Server(s) => {
            let s = s.to_string();
            match request::parse(&d.data) {
                Err(m) => (
                    s.clone(),
                    Reply::error(&s, None, ErrorKind::BadRequest, m, inst),
                    "-".into(),
                ),
                Ok(req) => {
                    let r = run_allowed(&ctx, user.as_deref(), &s, &req, expiration_ms).await;
                    (s, r, req.action.to_ascii_lowercase())
                }
            }
        }
    };
    metrics::counter!("actions_total", "server" => server.clone(), "result" => result_label(&reply)).increment(1);
    if let Some(e) = &reply.error {
        tracing::debug!(%server, action = %action_label, kind = e.kind.as_str(), message = %e.message, "action answered with an error");
    }
    let reply_to = props.reply_to().as_ref().map(|s| s.to_string());
    if let Some(rt) = reply_to {
        let mut p = BasicProperties::default()
            .with_content_type(short("application/json"))
            .with_type(short("ami.action.reply"));
        if let Some(c) = props.correlation_id() {
            p = p.with_correlation_id(c.clone());
        }
        let body = reply.to_vec();
        let published = reply_ch
            .basic_publish(
                short(""),
                short(&rt),
                BasicPublishOptions::default(),
                &body,
                p,
            )
            .await
            .is_ok();
        if !published {
            // Not acked: the request is redelivered (to us or another
            // bridge) when this channel or connection goes away.
            tracing::warn!(%server, reply_to = %rt, "reply could not be published; the request stays unacked");
            metrics::counter!("actions_reply_failures_total").increment(1);
            return;
        }
    }
    if let Err(e) = d.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "could not ack an action request");
    }
}

/// Checks the allow-list and runs the action.
async fn run_allowed(
    ctx: &Ctx,
    user: Option<&str>,
    server: &str,
    req: &Request,
    expiration_ms: Option<u64>,
) -> Reply {
    let inst = ctx.instance.as_str();
    match ctx.allow.check(user, server, &req.message) {
        Decision::Deny(why) => {
            metrics::counter!("actions_authz_total", "decision" => "deny").increment(1);
            tracing::warn!(user = user.unwrap_or(super::allow::ANONYMOUS), %server, action = %req.action, reason = %why, "action denied");
            return Reply::error(server, Some(req), ErrorKind::Forbidden, why, inst);
        }
        Decision::Allow => {
            metrics::counter!("actions_authz_total", "decision" => "allow").increment(1);
        }
    }
    let timeout = req
        .timeout
        .or(expiration_ms.map(Duration::from_millis))
        .unwrap_or(Duration::from_millis(ctx.cfg.default_timeout_ms));
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
            format!("unknown server {s:?}"),
            inst,
        ),
        Err(PoolError::Action(e)) => {
            let kind = match &e {
                ActionError::Timeout(_) => ErrorKind::Timeout,
                ActionError::Invalid(_) => ErrorKind::BadRequest,
                ActionError::Unavailable(_)
                | ActionError::ConnectionLost(_)
                | ActionError::Stopped => ErrorKind::Unavailable,
            };
            Reply::error(server, Some(req), kind, e.to_string(), inst)
        }
    }
}
