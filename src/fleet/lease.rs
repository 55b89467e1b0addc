//! The lease task: holds this instance's server leases on RabbitMQ and
//! starts and stops the pool's event connections with them.
//!
//! A lease is the exclusive queue `<lease_prefix><server>`: declaring it
//! succeeds for one connection only (the others get 405 RESOURCE_LOCKED),
//! and the broker deletes it when that connection closes or dies. So the
//! broker guarantees one holder per server, and a dead instance's leases
//! are free as soon as the broker notices (at once for a process that
//! died, within its heartbeat timeout for a silent network).
//!
//! The instances also announce themselves on a fanout exchange, every
//! `announce_interval_ms`, with their servers and leases
//! ([`super::plan::Announce`]); each one's [`Planner`] turns what it heard
//! into leases to try for or give back.
//!
//! **Fencing.** This instance hears its own announcements come back
//! through the broker. When none has come back for a peer timeout, or the
//! connection fails, it stops reading every server *before* the broker can
//! give the leases to another instance: the lease connection asks for a
//! heartbeat of one peer timeout, and the broker waits two heartbeats
//! before it drops a silent connection.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::FleetConfig;
use super::plan::{Announce, Planner};
use crate::ami::Pool;
use crate::amqp::connect::{
    AmqpError, Reconnect, close_bounded, connect_with_heartbeat, is_resource_locked,
};
use crate::amqp::short;
use crate::config::redact_url;
use crate::internal_events::fleet::{
    BadAnnouncement, FleetSize, LeaseAcquired, LeaseEnd, LeaseEnded,
};

const CONNECT_LIMIT: Duration = Duration::from_secs(10);
const CLOSE_LIMIT: Duration = Duration::from_secs(2);
/// How long a hand-over waits for the event connection's last events.
const RELEASE_LIMIT: Duration = Duration::from_secs(10);
/// Announcements larger than this are not read (a thousand servers'
/// names fit many times over).
const MAX_ANNOUNCE_BYTES: usize = 256 * 1024;

/// The fence's clock: since when an announcement of ours has been on its
/// way through the broker without coming back.
#[derive(Debug, Default)]
struct Echo {
    unanswered_since: Option<Instant>,
}

impl Echo {
    fn sent(&mut self, now: Instant) {
        self.unanswered_since.get_or_insert(now);
    }

    fn came_back(&mut self) {
        self.unanswered_since = None;
    }

    /// True when one has been on its way for longer than `fence`.
    fn overdue(&self, now: Instant, fence: Duration) -> bool {
        self.unanswered_since
            .is_some_and(|t| now.saturating_duration_since(t) > fence)
    }
}

/// A broker operation of the lease task, bounded by the fence: a broker
/// that does not answer within `peer_timeout_ms` is treated like a lost
/// lease connection (the loop must not hang on it while the instance
/// reads servers whose leases the broker may be giving away).
async fn within<T>(
    fence: Duration,
    what: &str,
    op: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, AmqpError> {
    match tokio::time::timeout(fence, op).await {
        Ok(r) => r.map_err(AmqpError::op(what.to_string())),
        Err(_) => Err(fenced(what)),
    }
}

/// The error of a lease operation the broker did not answer in time.
fn fenced(what: &str) -> AmqpError {
    AmqpError::op(format!("fencing: {what}"))(lapin::Error::from(std::io::Error::other(
        "the broker did not answer within peer_timeout_ms",
    )))
}

/// One delivery of the announcement consumer; its end is an error.
fn delivery(
    d: Option<Result<lapin::message::Delivery, lapin::Error>>,
) -> Result<lapin::message::Delivery, AmqpError> {
    match d {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(AmqpError::op("fleet consumer")(e)),
        None => Err(AmqpError::op("fleet consumer")(lapin::Error::from(
            std::io::Error::other("cancelled by the broker"),
        ))),
    }
}

/// The lease task's settings and the pool it drives.
pub struct LeaseTask {
    cfg: FleetConfig,
    instance: String,
    /// This process's random id: tells a second instance with our name
    /// from our own announcements.
    process: String,
    pool: Arc<Pool>,
    reconnect: Reconnect,
    planner: Planner,
    state: watch::Sender<FleetState>,
    instances: usize,
}

/// Where the lease task is, for `/healthz`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetState {
    /// The lease connection is up (announcing, able to take leases).
    pub ready: bool,
    /// Live instances sharing servers with this one, itself included.
    pub instances: usize,
    /// The servers whose lease this instance holds, by name.
    pub held: Vec<String>,
}

pub type HeldLeases = watch::Receiver<FleetState>;

/// The wire form of an announcement: the plan's, plus the process id.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    #[serde(flatten)]
    announce: Announce,
    process: String,
}

impl LeaseTask {
    pub fn new(
        cfg: FleetConfig,
        instance: String,
        process: String,
        pool: Arc<Pool>,
        reconnect: Reconnect,
    ) -> (LeaseTask, HeldLeases) {
        let servers = pool.server_names().to_vec();
        let planner = Planner::new(&instance, &servers, cfg.timing(), std::time::Instant::now());
        let (state, rx) = watch::channel(FleetState {
            instances: 1,
            ..FleetState::default()
        });
        let task = LeaseTask {
            cfg,
            instance,
            process,
            pool,
            reconnect,
            planner,
            state,
            instances: 1,
        };
        (task, rx)
    }

    /// Runs until `cancel`, then hands every lease over and returns.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let url = self.reconnect.url().to_string();
            let r = self.session(&url, &cancel).await;
            self.publish_ready(false);
            self.end_all(LeaseEnd::Lost).await;
            match r {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(target: "ami2amqp::fleet", url = %redact_url(&url), error = %e,
                        "fleet: the lease connection failed; reconnecting");
                    self.reconnect.failed();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.reconnect.delay()) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One connection's life: announce, listen, revisit the leases every
    /// tick. `Ok` when cancelled (the leases were handed over).
    async fn session(&mut self, url: &str, cancel: &CancellationToken) -> Result<(), AmqpError> {
        let heartbeat =
            u16::try_from(self.cfg.peer_timeout_ms.div_ceil(1000).max(1)).unwrap_or(u16::MAX);
        let tls = self.reconnect.tls().clone();
        let conn = tokio::select! {
            c = connect_with_heartbeat(url, &tls, CONNECT_LIMIT, heartbeat) => c?,
            _ = cancel.cancelled() => return Ok(()),
        };
        let r = self.connected(&conn, cancel).await;
        if r.is_err() {
            // Stop reading first: closing a connection to a broker that
            // stopped answering takes up to CLOSE_LIMIT.
            self.end_all(LeaseEnd::Lost).await;
        }
        close_bounded(&conn, "ami2amqp: lease connection closing", CLOSE_LIMIT).await;
        r
    }

    async fn connected(
        &mut self,
        conn: &Connection,
        cancel: &CancellationToken,
    ) -> Result<(), AmqpError> {
        let ch = conn
            .create_channel()
            .await
            .map_err(AmqpError::op("channel"))?;
        let mut heard = self.listen(&ch).await?;
        self.reconnect.succeeded();
        self.publish_ready(true);
        tracing::info!(target: "ami2amqp::fleet", instance = %self.instance,
            exchange = %self.cfg.exchange, "fleet: lease connection ready");
        let mut tick = tokio::time::interval(self.cfg.announce_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut echo = Echo::default();
        let fence = Duration::from_millis(self.cfg.peer_timeout_ms);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.leave(&ch).await;
                    return Ok(());
                }
                d = heard.next() => {
                    let d = delivery(d)?;
                    if self.heard(&d.data) {
                        echo.came_back();
                    }
                }
                _ = tick.tick() => {
                    // What arrived while a slow hand-over held this loop
                    // counts before the fence is checked.
                    while let Some(d) = heard.next().now_or_never() {
                        let d = delivery(d)?;
                        if self.heard(&d.data) {
                            echo.came_back();
                        }
                    }
                    if echo.overdue(Instant::now(), fence) {
                        return Err(AmqpError::op("fencing")(lapin::Error::from(std::io::Error::other(
                            "no announcement of ours came back through the broker within peer_timeout_ms"))));
                    }
                    self.step(conn, &ch).await?;
                    self.announce(&ch, false).await?;
                    echo.sent(Instant::now());
                }
            }
        }
    }

    /// Declares the fleet exchange and this instance's queue on it, and
    /// consumes it.
    async fn listen(&self, ch: &Channel) -> Result<lapin::Consumer, AmqpError> {
        let x = &self.cfg.exchange;
        ch.exchange_declare(
            short(x),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(AmqpError::op(format!("declare exchange {x}")))?;
        let q = ch
            .queue_declare(
                short(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::op("declare the announcement queue"))?;
        let qname = q.name().clone();
        ch.queue_bind(
            qname.clone(),
            short(x),
            short(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(AmqpError::op(format!("bind to {x}")))?;
        ch.basic_consume(
            qname,
            short(&format!("ami2amqp-fleet-{}", self.instance)),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(AmqpError::op("consume announcements"))
    }

    /// Reads one announcement; true when it is our own, come back.
    fn heard(&mut self, body: &[u8]) -> bool {
        if body.len() > MAX_ANNOUNCE_BYTES {
            BadAnnouncement {
                error: &format!("{} bytes, over {MAX_ANNOUNCE_BYTES}", body.len()),
            }
            .emit();
            return false;
        }
        let w: Wire = match serde_json::from_slice(body) {
            Ok(w) => w,
            Err(e) => {
                BadAnnouncement {
                    error: &e.to_string(),
                }
                .emit();
                return false;
            }
        };
        if w.announce.instance == self.instance {
            if w.process == self.process {
                return true;
            }
            BadAnnouncement {
                error: &format!(
                    "another instance is also named {:?}: instance names must be unique in a fleet",
                    self.instance
                ),
            }
            .emit();
            return false;
        }
        if !self.planner.heard(w.announce, std::time::Instant::now()) {
            BadAnnouncement {
                error: "too many instances announced: ignoring new names",
            }
            .emit();
        }
        false
    }

    /// Revisits the leases: gives one back or tries for some.
    async fn step(&mut self, conn: &Connection, ch: &Channel) -> Result<(), AmqpError> {
        let now = std::time::Instant::now();
        let instances = self.planner.live_instances(now);
        if instances != self.instances {
            self.instances = instances;
            self.publish_ready(true);
            FleetSize {
                instances,
                share: self.planner.share(now),
            }
            .emit();
        }
        let d = self.planner.decide(now);
        if let Some(s) = d.release {
            self.end(ch, &s, LeaseEnd::Rebalanced).await?;
        }
        for s in d.acquire {
            self.try_acquire(conn, &s).await?;
        }
        Ok(())
    }

    /// Declares the lease queue of `server` on a channel of its own (a
    /// refusal closes the channel); on success starts reading the server.
    async fn try_acquire(&mut self, conn: &Connection, server: &Arc<str>) -> Result<(), AmqpError> {
        let q = self.cfg.lease_queue(server);
        let fence = self.fence();
        let ch = within(fence, "channel", conn.create_channel()).await?;
        let declare = ch.queue_declare(
            short(&q),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        );
        let declared = tokio::time::timeout(fence, declare)
            .await
            .map_err(|_| fenced("declare lease"))?;
        match declared {
            Ok(_) => {
                let _ = within(fence, "close", ch.close(200, short(""))).await;
                self.planner.acquired(server);
                self.pool.hold(server);
                self.publish_held();
                LeaseAcquired {
                    server,
                    instance: &self.instance,
                    held: self.planner.held().count(),
                }
                .emit();
                Ok(())
            }
            Err(e) if is_resource_locked(&e) => Ok(()),
            Err(e) => Err(AmqpError::op(format!("declare lease {q}"))(e)),
        }
    }

    /// Stops reading `server` (its last events handed to the router),
    /// then deletes its lease queue so another instance can take it.
    async fn end(
        &mut self,
        ch: &Channel,
        server: &Arc<str>,
        why: LeaseEnd,
    ) -> Result<(), AmqpError> {
        self.pool.release(server, why.reason(), RELEASE_LIMIT).await;
        self.planner.released(server, std::time::Instant::now());
        self.publish_held();
        LeaseEnded {
            server,
            instance: &self.instance,
            end: why,
            held: self.planner.held().count(),
        }
        .emit();
        let q = self.cfg.lease_queue(server);
        let delete = ch.queue_delete(short(&q), QueueDeleteOptions::default());
        within(self.fence(), &format!("delete lease {q}"), delete)
            .await
            .map(|_| ())
    }

    /// How long the broker may take to answer a lease operation.
    fn fence(&self) -> Duration {
        Duration::from_millis(self.cfg.peer_timeout_ms)
    }

    /// Every lease is gone (the connection ended): stop reading at once.
    async fn end_all(&mut self, why: LeaseEnd) {
        let held: Vec<Arc<str>> = self.planner.held().cloned().collect();
        if held.is_empty() {
            return;
        }
        let pool = &self.pool;
        futures::future::join_all(
            held.iter()
                .map(|s| pool.release(s, why.reason(), RELEASE_LIMIT)),
        )
        .await;
        self.planner.lost_all();
        self.publish_held();
        for s in &held {
            LeaseEnded {
                server: s,
                instance: &self.instance,
                end: why,
                held: 0,
            }
            .emit();
        }
    }

    /// SIGTERM: says it is leaving, hands every lease over, says so again.
    async fn leave(&mut self, ch: &Channel) {
        let _ = self.announce(ch, true).await;
        let held: Vec<Arc<str>> = self.planner.held().cloned().collect();
        for s in &held {
            if let Err(e) = self.end(ch, s, LeaseEnd::Stopping).await {
                tracing::warn!(target: "ami2amqp::fleet", server = %s, error = %e,
                    "fleet: could not delete a lease queue; the broker drops it with the connection");
            }
        }
        let _ = self.announce(ch, true).await;
    }

    async fn announce(&self, ch: &Channel, leaving: bool) -> Result<(), AmqpError> {
        let w = Wire {
            announce: self.planner.announce(leaving),
            process: self.process.clone(),
        };
        let body = serde_json::to_vec(&w).unwrap_or_default();
        let publish = ch.basic_publish(
            short(&self.cfg.exchange),
            short(""),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_content_type(short("application/json")),
        );
        within(self.fence(), "announce", publish).await.map(|_| ())
    }

    fn publish_held(&self) {
        let held = self.planner.held().map(|s| s.to_string()).collect();
        self.state.send_modify(|s| s.held = held);
    }

    fn publish_ready(&self, ready: bool) {
        let instances = self.instances;
        self.state.send_modify(|s| {
            s.ready = ready;
            s.instances = instances;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_counts_from_the_oldest_announcement_not_come_back() {
        let t0 = Instant::now();
        let fence = Duration::from_secs(3);
        let mut e = Echo::default();
        assert!(!e.overdue(t0 + fence * 10, fence), "nothing sent yet");
        e.sent(t0);
        e.sent(t0 + Duration::from_secs(1));
        assert!(!e.overdue(t0 + fence, fence));
        assert!(e.overdue(t0 + fence + Duration::from_millis(1), fence));
        e.came_back();
        assert!(!e.overdue(t0 + fence * 10, fence));
        // A loop held up for longer than the fence (a slow hand-over)
        // does not fence by itself once the echo is read.
        e.sent(t0 + Duration::from_secs(20));
        e.came_back();
        assert!(!e.overdue(t0 + Duration::from_secs(30), fence));
    }
}
