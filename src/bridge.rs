//! `ami2amqp run`: the bridge itself, wiring the pieces together.
//!
//! ```text
//! Asterisk ─AMI─> ami::Pool ─Incoming─> router task ─records─> Spool ─> publisher ─> RabbitMQ
//! ```
//!
//! Data flows one way through bounded channels, and each piece of state has
//! one owner: the pool owns the AMI sockets, the router task owns the
//! per-server sequence numbers and the spool's writing end, the publisher
//! owns the broker connection and the spool's reading end. The router task
//! is the only place where an event becomes a message, so the order in which
//! a server's events are read is the order in which their messages enter
//! the spool, and so the order in which they reach the broker.
//!
//! Snapshots (docs/snapshots.md) arrive as [`Incoming::Snapshot`] marks
//! in stream order: each item takes the next `seq` of its server like an
//! event and is routed by the `snapshot = true` routes only, with the
//! fields `SnapshotId` and `SnapshotKind` added (its `ActionID`, ours,
//! removed); the start and end become the synthetic events
//! `SnapshotStart` and `SnapshotEnd`, routed the same way, whose `seq` is
//! that of the last event read before them. Items and markers are not
//! handed to the AMI facade (its clients never asked for them).
//!
//! Shutdown (SIGTERM/SIGINT) runs front to back: the AMI connections log off
//! and stop reading; the router task writes what it still holds into the
//! spool and fsyncs it; the publisher waits (bounded) for the confirms in
//! flight; whatever is not confirmed stays in the spool for the next start.

pub(crate) mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ami::{ConnState, Incoming, Message, MessageBuilder, Pool, ServerEvent, SnapshotMark};
use crate::amqp::publisher::{self, BrokerState, ExchangeSource};
use crate::amqp::record::Record;
use crate::amqp::spool::{Recovered, Spool, SpoolWriter};
use crate::config::Config;
use crate::mapping::reload::Mappings;
use crate::mapping::router::{EventCtx, MessageProps, Outgoing, json_str};
use crate::support::time::{rfc3339_millis, unix_micros};

/// A fatal start-up error, printed as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BridgeError(pub String);

/// A random id for this process, part of every default `message_id` so that
/// ids never repeat across restarts.
pub fn instance_id() -> String {
    let r: u64 = rand::random();
    format!("{:012x}", r & 0xffff_ffff_ffff)
}

/// Counts of what the router task did (also exported as metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct RouterStats {
    pub events: u64,
    pub messages: u64,
    pub unmatched: u64,
    pub mapping_errors: u64,
    pub refused: u64,
    /// Messages the disk refused that were still in memory at shutdown.
    pub lost_at_shutdown: u64,
}

/// The router task: turns incoming events into spool records, in order.
pub struct RouterTask {
    mappings: Mappings,
    writer: SpoolWriter,
    /// This process's random id (part of default message ids).
    instance: String,
    /// The instance's name (the `instance` key), in status bodies.
    name: String,
    status_exchange: Arc<str>,
    status_key: String,
    seq: HashMap<Arc<str>, u64>,
    was_connected: HashMap<Arc<str>, bool>,
    event_counters: HashMap<Arc<str>, crate::metrics::EventCounters>,
    /// The mapping set the event labels were last chosen under, and a
    /// number that changes with it (the labels depend on the names it maps).
    labels_router: Option<Arc<crate::mapping::router::Router>>,
    labels_generation: usize,
    stats: RouterStats,
    scratch: Vec<Outgoing>,
    /// The AMI facade's share of the stream, when the facade is on.
    tap: Option<crate::facade::Tap>,
}

impl RouterTask {
    pub fn new(
        mappings: Mappings,
        writer: SpoolWriter,
        (instance, name): (String, String),
        status_exchange: &str,
        status_key: &str,
    ) -> Self {
        RouterTask {
            mappings,
            writer,
            instance,
            name,
            status_exchange: Arc::from(status_exchange),
            status_key: status_key.to_string(),
            seq: HashMap::new(),
            was_connected: HashMap::new(),
            event_counters: HashMap::new(),
            labels_router: None,
            labels_generation: 0,
            stats: RouterStats::default(),
            scratch: Vec::new(),
            tap: None,
        }
    }

    /// Also hands every event and connection change to the AMI facade.
    pub fn with_tap(mut self, tap: Option<crate::facade::Tap>) -> Self {
        self.tap = tap;
        self
    }

    /// A number that changes whenever the mapping set does (the event
    /// labels depend on the names it maps).
    fn labels_generation(&mut self, router: &Arc<crate::mapping::router::Router>) -> usize {
        if !self
            .labels_router
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, router))
        {
            self.labels_router = Some(router.clone());
            self.labels_generation += 1;
        }
        self.labels_generation
    }

    /// `ami_events_total`, with the `event` label from a bounded set (see
    /// `metrics::EventLabels`): documented or mapped names, else `other`.
    fn count_event(
        &mut self,
        server: &Arc<str>,
        name: &str,
        generation: usize,
        router: &crate::mapping::router::Router,
    ) {
        self.event_counters
            .entry(server.clone())
            .or_insert_with(|| crate::metrics::EventCounters::new(server.clone()))
            .increment(name, generation, |n| router.names_event(n));
    }

    /// Routes one event and stages its messages; returns how many.
    fn route_event(
        &mut self,
        ev: &ServerEvent,
        router: &crate::mapping::router::Router,
        generation: usize,
    ) -> usize {
        let mut records = 0usize;
        let seq = {
            let s = self.seq.entry(ev.server.clone()).or_insert(0);
            *s += 1;
            *s
        };
        self.stats.events += 1;
        let name = ev.message.event_name().unwrap_or_default();
        self.count_event(&ev.server, &name, generation, router);
        let ctx = EventCtx {
            server: &ev.server,
            seq,
            received_at: ev.received_at,
            message: &ev.message,
            instance: &self.instance,
        };
        self.scratch.clear();
        let outcome = router.route(&ctx, &mut self.scratch);
        if outcome.matched == 0 {
            self.stats.unmatched += 1;
            metrics::counter!(crate::internal_events::catalog::EVENTS_UNMATCHED_TOTAL).increment(1);
        }
        for e in &outcome.errors {
            self.stats.mapping_errors += 1;
            crate::internal_events::mapping::MappingError {
                server: &ev.server,
                event: &name,
                seq,
                route: &e.route,
                error: e,
                total: self.stats.mapping_errors,
            }
            .emit();
        }
        let at = unix_micros(ev.received_at);
        for msg in self.scratch.drain(..) {
            let rec = Record {
                received_at_us: at,
                server: ev.server.clone(),
                seq,
                msg,
            };
            self.writer.stage_with(|b| rec.encode(b));
            records += 1;
        }
        records
    }

    /// Routes one snapshot mark (an item, the start or the end) with the
    /// snapshot routes and stages its messages; returns how many.
    fn route_snapshot(
        &mut self,
        server: &Arc<str>,
        mark: SnapshotMark<ServerEvent>,
        router: &crate::mapping::router::Router,
    ) -> usize {
        let now = SystemTime::now();
        let (message, received_at, seq) = match mark {
            SnapshotMark::Start { id, kinds } => {
                let seq = self.seq.get(server).copied().unwrap_or(0);
                let kinds = crate::ami::snapshot::kind_list(&kinds);
                let m = Message::from_pairs([
                    ("Event", "SnapshotStart"),
                    ("SnapshotId", id.as_str()),
                    ("Kinds", kinds.as_str()),
                ]);
                (m, now, seq)
            }
            SnapshotMark::Item { id, kind, event } => {
                let s = self.seq.entry(server.clone()).or_insert(0);
                *s += 1;
                crate::internal_events::snapshot::SnapshotItem { server, kind }.emit();
                let mut b = MessageBuilder::default();
                for (k, v) in event.message.iter_bytes() {
                    if !k.eq_ignore_ascii_case(b"ActionID") {
                        b.push(k, v);
                    }
                }
                b.push(b"SnapshotId", id.as_bytes());
                b.push(b"SnapshotKind", kind.name().as_bytes());
                (b.build(), event.received_at, *s)
            }
            SnapshotMark::End(end) => {
                let seq = self.seq.get(server).copied().unwrap_or(0);
                crate::internal_events::snapshot::SnapshotDone {
                    server,
                    id: &end.id,
                    complete: end.complete,
                    items: end.items,
                    reason: &end.reason,
                }
                .emit();
                let items = end.items.to_string();
                let refused = crate::ami::snapshot::kind_list(&end.refused);
                let m = Message::from_pairs([
                    ("Event", "SnapshotEnd"),
                    ("SnapshotId", end.id.as_str()),
                    ("Complete", if end.complete { "true" } else { "false" }),
                    ("Items", items.as_str()),
                    ("Refused", refused.as_str()),
                    ("Reason", end.reason.as_str()),
                ]);
                (m, now, seq)
            }
        };
        let ctx = EventCtx {
            server,
            seq,
            received_at,
            message: &message,
            instance: &self.instance,
        };
        self.scratch.clear();
        let outcome = router.route_snapshot(&ctx, &mut self.scratch);
        for e in &outcome.errors {
            self.stats.mapping_errors += 1;
            let name = message.event_name().unwrap_or_default();
            crate::internal_events::mapping::MappingError {
                server,
                event: &name,
                seq,
                route: &e.route,
                error: e,
                total: self.stats.mapping_errors,
            }
            .emit();
        }
        let at = unix_micros(received_at);
        let mut records = 0;
        for msg in self.scratch.drain(..) {
            let rec = Record {
                received_at_us: at,
                server: server.clone(),
                seq,
                msg,
            };
            self.writer.stage_with(|b| rec.encode(b));
            records += 1;
        }
        records
    }

    /// Routes a batch of incoming items and writes the result to the spool
    /// with one `write`.
    pub fn handle_batch(&mut self, items: &mut Vec<Incoming>) -> std::io::Result<()> {
        let router = self.mappings.current();
        let generation = self.labels_generation(&router);
        let mut records = 0usize;
        for item in items.drain(..) {
            match item {
                Incoming::Event(ev) => {
                    records += self.route_event(&ev, &router, generation);
                    if let Some(tap) = &self.tap {
                        tap.event(&ev);
                    }
                }
                Incoming::State { server, state } => {
                    if let Some(tap) = &self.tap {
                        tap.state(&server, &state);
                    }
                    if let Some(rec) = self.status_record(&server, &state) {
                        self.writer.stage_with(|b| rec.encode(b));
                        records += 1;
                    }
                }
                Incoming::Malformed { .. } => {
                    // Logged and counted by the client; nothing to publish.
                }
                Incoming::Snapshot { server, mark } => {
                    records += self.route_snapshot(&server, mark, &router);
                }
            }
        }
        self.stats.messages += records as u64;
        let refused = self.writer.commit()?;
        self.stats.refused += refused as u64;
        Ok(())
    }

    /// The bridge status message for a connection state change, or `None`
    /// for states that are not worth announcing (reconnect attempts).
    fn status_record(&mut self, server: &Arc<str>, state: &ConnState) -> Option<Record> {
        let was = self.was_connected.get(server).copied().unwrap_or(false);
        let (status, detail) = match state {
            ConnState::Connected { banner } => ("connected", banner.as_str()),
            ConnState::Disconnected { reason } if was => ("disconnected", reason.as_str()),
            ConnState::Stopped if was => ("stopped", ""),
            _ => return None,
        };
        self.was_connected
            .insert(server.clone(), status == "connected");
        let now = SystemTime::now();
        let seq = self.seq.get(server).copied().unwrap_or(0);
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(b"{\"server\":");
        json_str(server, &mut body);
        body.extend_from_slice(b",\"event\":\"BridgeStatus\",\"status\":");
        json_str(status, &mut body);
        body.extend_from_slice(b",\"detail\":");
        json_str(detail, &mut body);
        body.extend_from_slice(b",\"instance\":");
        json_str(&self.name, &mut body);
        body.extend_from_slice(format!(",\"last_seq\":{seq},\"at\":\"").as_bytes());
        rfc3339_millis(now, &mut body);
        body.extend_from_slice(b"\"}");
        let key = self.status_key.replace("{server}", server);
        Some(Record {
            received_at_us: unix_micros(now),
            server: server.clone(),
            seq,
            msg: Outgoing {
                exchange: self.status_exchange.clone(),
                routing_key: key,
                props: MessageProps {
                    persistent: true,
                    priority: None,
                    expiration_ms: None,
                    content_type: Arc::from("application/json"),
                    kind: "BridgeStatus".into(),
                    message_id: format!(
                        "{}:{}:status:{}:{}",
                        self.instance,
                        server,
                        seq,
                        unix_micros(now)
                    ),
                    headers: Vec::new(),
                },
                body,
                route: Arc::from("bridge status"),
            },
        })
    }

    /// Consumes `rx` until it closes, in batches.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Incoming>) -> RouterStats {
        let mut batch = Vec::with_capacity(1024);
        // Check on a timer too, so a message still unconfirmed after the
        // last write before a quiet period is fsynced within
        // `fsync_interval` (the writer otherwise checks only when it writes).
        let mut sync_timer = tokio::time::interval(Duration::from_millis(100));
        sync_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A batch the disk refused (full, I/O error) is retried on a timer,
        // not when the next event happens to arrive.
        let mut retry_timer = tokio::time::interval(Duration::from_secs(1));
        retry_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, 1024) => n,
                _ = sync_timer.tick() => {
                    // Failures are logged by the syncer thread.
                    self.writer.sync_if_due();
                    continue;
                }
                _ = retry_timer.tick() => {
                    if let Err(e) = self.writer.retry() {
                        tracing::error!(error = %e, "spool: retrying a refused write failed");
                    }
                    continue;
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = self.handle_batch(&mut batch) {
                // Write failures are held and retried by the writer; what
                // is left here is rolling a segment (creating a file).
                crate::internal_events::spool::SpoolRollFailed { error: &e }.emit();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // What the disk still refuses is lost: counted and logged.
        self.stats.lost_at_shutdown = self.writer.finish();
        if let Err(e) = self.writer.sync() {
            tracing::error!(error = %e, "final spool fsync failed");
        }
        self.stats
    }
}

/// The `/healthz` answer: built from the state of each part, serialized
/// as-is (docs/config.md describes every field).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// The same as the status code: 200 when true, 503 when false.
    pub healthy: bool,
    /// This instance's name (the `instance` key, default the host name).
    pub instance: String,
    /// `"connected"`, `"connecting"` or `"down: <reason>"`.
    pub broker: String,
    /// Per server (in configuration order): its event connection.
    pub servers: ServerHealth,
    /// The servers this instance reads (holds the lease of, in a fleet).
    pub held: Vec<String>,
    pub spool: SpoolHealth,
    /// The action path (`PathHealth`'s text), or `"disabled"`.
    pub actions: String,
    /// The fleet's lease task, when `[fleet]` is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetState>,
}

/// A server's event connection on this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Connected,
    Disconnected,
    /// Not read here: another instance of the fleet holds its lease.
    Standby,
}

/// Each server's event connection, `"connected"`, `"disconnected"` or
/// `"standby"`, serialized as a JSON object in configuration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHealth(pub Vec<(String, ServerState)>);

impl serde::Serialize for ServerHealth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(name, st)| {
            (
                name.as_str(),
                match st {
                    ServerState::Connected => "connected",
                    ServerState::Disconnected => "disconnected",
                    ServerState::Standby => "standby",
                },
            )
        }))
    }
}

/// The spool part of `/healthz`: what waits, and whether new messages can
/// be written (`state` is `"ok"`, `"disk_full"` or `"write_error"`; the
/// bridge is unhealthy while it is not `"ok"`). The last three fields are
/// there only while it is not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpoolHealth {
    pub messages: u64,
    pub bytes: u64,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_s: Option<u64>,
    /// Messages the spool held at start, per server (published first,
    /// whether or not this instance reads those servers now); absent when
    /// it was empty.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub recovered: std::collections::BTreeMap<String, u64>,
}

impl SpoolHealth {
    fn of(spool: &Spool, recovered: &std::collections::BTreeMap<String, u64>) -> SpoolHealth {
        let (bytes, messages) = spool.pending();
        let f = spool.write_failure();
        SpoolHealth {
            messages,
            bytes,
            state: f.as_ref().map_or("ok", |f| f.reason),
            error: f.as_ref().map(|f| crate::logs::clip(&f.error).to_string()),
            held: f.as_ref().map(|f| f.held),
            since_s: f.as_ref().map(|f| f.since.elapsed().as_secs()),
            recovered: recovered.clone(),
        }
    }
}

/// What `/healthz` reports besides the broker, servers and spool.
#[derive(Debug, Clone, Default)]
pub struct HealthExtra {
    pub instance: String,
    pub actions: Option<crate::actions::PathHealth>,
    pub fleet: Option<crate::fleet::FleetState>,
}

impl Health {
    /// Healthy when the broker is up, every event connection this
    /// instance runs is logged in, the spool can be written, (when
    /// enabled) the action path is ready and the fleet's lease connection
    /// is up.
    pub fn new(
        broker: &BrokerState,
        servers: ServerHealth,
        spool: SpoolHealth,
        extra: HealthExtra,
    ) -> Health {
        let healthy = matches!(broker, BrokerState::Up { .. })
            && servers
                .0
                .iter()
                .all(|(_, st)| *st != ServerState::Disconnected)
            && spool.state == "ok"
            && extra.actions.as_ref().is_none_or(|a| a.is_ok())
            && extra.fleet.as_ref().is_none_or(|f| f.ready);
        let held = servers
            .0
            .iter()
            .filter(|(_, st)| *st != ServerState::Standby)
            .map(|(n, _)| n.clone())
            .collect();
        Health {
            healthy,
            instance: extra.instance,
            broker: match broker {
                BrokerState::Up { .. } => "connected".to_string(),
                BrokerState::Connecting => "connecting".to_string(),
                BrokerState::Down { reason } => format!("down: {reason}"),
            },
            servers,
            held,
            spool,
            actions: extra
                .actions
                .map_or_else(|| "disabled".to_string(), |a| a.to_string()),
            fleet: extra.fleet,
        }
    }
}

/// A running bridge: [`Bridge::start`] opens the spool and starts every
/// part, [`Bridge::shutdown`] stops them front to back.
pub struct Bridge {
    pool: Arc<Pool>,
    spool: Spool,
    watcher: tokio::task::JoinHandle<()>,
    router_task: tokio::task::JoinHandle<RouterStats>,
    publisher_task: tokio::task::JoinHandle<()>,
    pub_cancel: CancellationToken,
    actions_task: Option<tokio::task::JoinHandle<Result<(), String>>>,
    actions_cancel: CancellationToken,
    facade_cancel: CancellationToken,
    metrics_cancel: CancellationToken,
    /// The fleet's lease task, when `[fleet]` is enabled.
    fleet: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
}

/// Opens the spool (recovering a previous run's messages) and its writing
/// end; what recovery found is logged and, once `record_recovered` is
/// called, counted.
fn open_spool(cfg: &Config) -> Result<(Spool, SpoolWriter, Recovered), BridgeError> {
    let (spool, recovered) =
        Spool::open(cfg.spool.runtime()).map_err(|e| BridgeError(format!("spool: {e}")))?;
    if recovered.records > 0 {
        tracing::info!(
            records = recovered.records,
            bytes = recovered.bytes,
            "spool holds messages from a previous run; they are published first"
        );
        for (server, n) in &recovered.by_server {
            let configured = cfg.servers.iter().any(|s| s.name() == server);
            tracing::info!(server = %crate::logs::clip(server), records = n, configured,
                "spool: recovered messages of this server are published first, in order, whoever reads it now");
        }
    }
    let writer = spool
        .writer()
        .map_err(|e| BridgeError(format!("spool: {e}")))?;
    Ok((spool, writer, recovered))
}

/// Installs the metrics recorder, counts what the spool's recovery found,
/// starts the housekeeping tasks and binds the `/metrics` listener.
async fn start_metrics(
    cfg: &Config,
    recovered: &Recovered,
) -> Result<(Option<PrometheusHandle>, Option<TcpListener>), BridgeError> {
    let handle = crate::metrics::install();
    // What recovery found, now that the counters are recorded.
    metrics::counter!(crate::internal_events::catalog::SPOOL_CORRUPT_RECORDS_TOTAL)
        .increment(recovered.corrupt_records);
    metrics::counter!(crate::internal_events::catalog::SPOOL_CORRUPT_BYTES_TOTAL)
        .increment(recovered.corrupt_bytes);
    metrics::counter!(crate::internal_events::catalog::SPOOL_MISSING_SEGMENTS_TOTAL)
        .increment(recovered.missing_segments);
    for (server, n) in &recovered.by_server {
        let label = if cfg.servers.iter().any(|s| s.name() == server) {
            server.clone()
        } else {
            "other".to_string()
        };
        metrics::counter!(crate::internal_events::catalog::SPOOL_RECOVERED_TOTAL, "server" => label)
            .increment(*n);
    }
    if let Some(h) = handle.clone() {
        // Histograms keep their samples until upkeep folds them in (a
        // scrape does it too): without this, memory grows when nobody
        // scrapes /metrics.
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                t.tick().await;
                h.run_upkeep();
            }
        });
    }
    tokio::spawn(crate::memory::keep_trim());
    let Some(listen) = cfg.metrics.listen() else {
        return Ok((handle, None));
    };
    let l = TcpListener::bind(listen)
        .await
        .map_err(|e| BridgeError(format!("metrics listen {listen}: {e}")))?;
    Ok((handle, Some(l)))
}

/// The exchanges the publisher declares: the live mapping set's, and the
/// status exchange.
fn exchange_source(mappings: &Mappings, status_exchange: &str) -> ExchangeSource {
    let status_exchange: Arc<str> = Arc::from(status_exchange);
    let m2 = mappings.clone();
    Arc::new(move || {
        let mut v = m2.current().exchanges().to_vec();
        if !v.iter().any(|(n, _)| *n == status_exchange) {
            v.push((
                status_exchange.clone(),
                crate::mapping::schema::ExchangeType::Topic,
            ));
        }
        v
    })
}

/// Starts the publisher task, which drains the spool.
fn start_publisher(
    cfg: &Config,
    amqp_tls: crate::amqp::connect::AmqpTls,
    spool: &Spool,
    mappings: &Mappings,
    cancel: CancellationToken,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<BrokerState>) {
    let (broker_tx, broker_rx) = watch::channel(BrokerState::Connecting);
    let task = tokio::spawn(publisher::run(
        cfg.amqp.publisher(amqp_tls),
        spool.clone(),
        exchange_source(mappings, &cfg.status.exchange),
        broker_tx,
        cancel,
    ));
    (task, broker_rx)
}

/// The parts `/healthz` reads when asked.
struct HealthSources {
    instance: String,
    recovered: std::collections::BTreeMap<String, u64>,
    pool: Arc<Pool>,
    spool: Spool,
    broker: watch::Receiver<BrokerState>,
    actions: Option<watch::Receiver<crate::actions::PathHealth>>,
    fleet: Option<crate::fleet::HeldLeases>,
}

/// The `/healthz` function: reads each part's state when asked.
fn health_fn(src: HealthSources) -> crate::metrics::HealthFn {
    Arc::new(move || {
        let pool = &src.pool;
        let servers = pool
            .server_names()
            .iter()
            .map(|name| {
                let st = match pool.event_client(name) {
                    None => ServerState::Standby,
                    Some(c) if c.is_connected() => ServerState::Connected,
                    Some(_) => ServerState::Disconnected,
                };
                (name.to_string(), st)
            })
            .collect();
        let extra = HealthExtra {
            instance: src.instance.clone(),
            actions: src.actions.as_ref().map(|rx| rx.borrow().clone()),
            fleet: src.fleet.as_ref().map(|rx| rx.borrow().clone()),
        };
        let h = Health::new(
            &src.broker.borrow().clone(),
            ServerHealth(servers),
            SpoolHealth::of(&src.spool, &src.recovered),
            extra,
        );
        let json = serde_json::to_value(&h).unwrap_or_default();
        (h.healthy, json)
    })
}

impl Bridge {
    /// Opens the spool and starts the pool, the router task, the
    /// publisher, the mapping watcher, the action path and the metrics
    /// server. An error here is fatal (printed as one line).
    pub async fn start(mut cfg: Config) -> Result<Bridge, BridgeError> {
        let mappings = Mappings::load(&cfg.mappings.dirs()).map_err(|e| {
            BridgeError(format!(
                "invalid mappings in {}:\n{e}",
                crate::mapping::load::show_dirs(&cfg.mappings.dirs())
            ))
        })?;
        let mut specs = cfg.server_specs().map_err(|e| BridgeError(e.to_string()))?;
        let push_down = Arc::new(crate::mapping::PushDownFeed::new(
            &cfg.servers,
            cfg.facade.listen().is_some(),
            &mappings.current(),
        ));
        for spec in &mut specs {
            spec.client.push_down = push_down.receiver(&spec.client.server);
        }
        let amqp_tls = cfg
            .amqp
            .tls()
            .map_err(|e| BridgeError(format!("{}: {e}", cfg.path.display())))?;
        let facade_listener = crate::facade::bind(&cfg.facade)
            .await
            .map_err(BridgeError)?;
        let (spool, writer, recovered) = open_spool(&cfg)?;
        let (handle, metrics_listener) = start_metrics(&cfg, &recovered).await?;

        let instance = instance_id();
        let name = cfg.instance_name();
        metrics::gauge!(crate::internal_events::catalog::INSTANCE_INFO, "instance" => name.clone())
            .set(1.0);
        tracing::info!(instance = %name, process = %instance, servers = specs.len(), fleet = cfg.fleet.enabled, routes = mappings.current().len(),
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            mappings = %crate::mapping::load::show_dirs(mappings.dirs()), spool = %cfg.spool.dir.display(), "ami2amqp starting");

        let (tx, rx) = mpsc::channel::<Incoming>(1024);
        let pool = Arc::new(Pool::start(specs, tx, cfg.fleet.enabled));
        let tap = facade_listener
            .is_some()
            .then(|| crate::facade::Tap::new(cfg.facade.queue_events));
        let facade = match (facade_listener, &tap) {
            (Some(l), Some(t)) => Some(
                crate::facade::prepare(
                    cfg.facade.clone(),
                    l,
                    pool.clone(),
                    t.clone(),
                    &cfg.actions.allow,
                )
                .map_err(BridgeError)?,
            ),
            _ => None,
        };
        let router = RouterTask::new(
            mappings.clone(),
            writer,
            (instance.clone(), name.clone()),
            &cfg.status.exchange,
            &cfg.status.routing_key,
        )
        .with_tap(tap);
        let router_task = tokio::spawn(router.run(rx));
        let (fleet, fleet_rx) = start_fleet(&cfg, amqp_tls.clone(), &pool, &name, &instance);
        let pub_cancel = CancellationToken::new();
        let (publisher_task, broker_rx) = start_publisher(
            &cfg,
            amqp_tls.clone(),
            &spool,
            &mappings,
            pub_cancel.clone(),
        );
        // Every applied reload recomputes push-down's plans.
        let (reloads_tx, mut reloads) = mpsc::channel(4);
        let watcher = mappings
            .spawn_watcher(
                cfg.mappings.watch,
                Duration::from_millis(300),
                Some(reloads_tx),
            )
            .map_err(|e| BridgeError(format!("cannot watch the mappings directory {e}")))?;
        let replan = mappings.clone();
        tokio::spawn(async move {
            while let Some(outcome) = reloads.recv().await {
                if matches!(outcome, crate::mapping::ReloadOutcome::Applied { .. }) {
                    push_down.update(&replan.current());
                }
            }
        });

        let facade_cancel = CancellationToken::new();
        if let Some(f) = facade {
            tokio::spawn(crate::facade::serve(f, facade_cancel.clone()));
        }
        let actions_cancel = CancellationToken::new();
        let (actions_task, actions_rx) = start_actions(
            &mut cfg,
            amqp_tls.clone(),
            &pool,
            (instance, fleet_rx.clone()),
            actions_cancel.clone(),
        );
        let metrics_cancel = CancellationToken::new();
        if let Some(l) = metrics_listener {
            let health = health_fn(HealthSources {
                instance: name,
                recovered: recovered.by_server.clone(),
                pool: pool.clone(),
                spool: spool.clone(),
                broker: broker_rx,
                actions: actions_rx,
                fleet: fleet_rx,
            });
            tokio::spawn(crate::metrics::serve(
                l,
                handle,
                health,
                metrics_cancel.clone(),
            ));
        }
        Ok(Bridge {
            pool,
            spool,
            watcher,
            router_task,
            publisher_task,
            pub_cancel,
            actions_task,
            actions_cancel,
            facade_cancel,
            metrics_cancel,
            fleet,
        })
    }

    /// Stops the bridge front to back: the action path, then the AMI
    /// connections log off, the router task writes and fsyncs what it
    /// holds, the publisher waits (bounded) for the confirms in flight.
    /// What is not confirmed stays in the spool for the next start.
    pub async fn shutdown(self) -> RouterStats {
        if let Some((task, cancel)) = self.fleet {
            tracing::info!("shutting down: handing the leases over to the fleet");
            cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        tracing::info!("shutting down: logging off from Asterisk");
        self.facade_cancel.cancel();
        self.actions_cancel.cancel();
        if let Some(t) = self.actions_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.pool.shutdown();
        drop(self.pool);
        self.watcher.abort();
        let stats = match tokio::time::timeout(Duration::from_secs(10), self.router_task).await {
            Ok(Ok(s)) => s,
            _ => {
                tracing::warn!("router task did not finish in time");
                RouterStats::default()
            }
        };
        self.pub_cancel.cancel();
        let _ = self.publisher_task.await;
        self.metrics_cancel.cancel();
        let (bytes, msgs) = self.spool.pending();
        tracing::info!(
            events = stats.events,
            messages = stats.messages,
            unmatched = stats.unmatched,
            mapping_errors = stats.mapping_errors,
            spooled_messages = msgs,
            spooled_bytes = bytes,
            refused = stats.refused,
            lost_at_shutdown = stats.lost_at_shutdown,
            "ami2amqp stopped"
        );
        stats
    }
}

/// The fleet's lease task, when `[fleet]` is enabled, and the receiver of
/// its state.
#[allow(clippy::type_complexity)]
fn start_fleet(
    cfg: &Config,
    amqp_tls: crate::amqp::connect::AmqpTls,
    pool: &Arc<Pool>,
    name: &str,
    process: &str,
) -> (
    Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
    Option<crate::fleet::HeldLeases>,
) {
    if !cfg.fleet.enabled {
        return (None, None);
    }
    let reconnect = crate::amqp::connect::Reconnect::new(cfg.amqp.urls(), cfg.amqp.backoff())
        .with_tls(amqp_tls);
    let (task, rx) = crate::fleet::LeaseTask::new(
        cfg.fleet.clone(),
        name.to_string(),
        process.to_string(),
        pool.clone(),
        reconnect,
    );
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(task.run(cancel.clone()));
    (Some((handle, cancel)), Some(rx))
}

/// The action path's task, when `[actions]` is enabled, and the receiver
/// of its health.
#[allow(clippy::type_complexity)]
fn start_actions(
    cfg: &mut Config,
    amqp_tls: crate::amqp::connect::AmqpTls,
    pool: &Arc<Pool>,
    instance: (String, Option<crate::fleet::HeldLeases>),
    cancel: CancellationToken,
) -> (
    Option<tokio::task::JoinHandle<Result<(), String>>>,
    Option<watch::Receiver<crate::actions::PathHealth>>,
) {
    if !cfg.actions.enabled {
        return (None, None);
    }
    let (tx, rx) = watch::channel(crate::actions::PathHealth::Connecting);
    let a = std::mem::take(&mut cfg.actions);
    let task = tokio::spawn(crate::actions::rpc::run(
        a,
        crate::amqp::connect::Reconnect::new(cfg.amqp.urls(), cfg.amqp.backoff())
            .with_tls(amqp_tls),
        pool.clone(),
        instance,
        tx,
        cancel,
    ));
    (Some(task), Some(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::PathHealth;

    fn spool_ok(messages: u64, bytes: u64) -> SpoolHealth {
        SpoolHealth {
            messages,
            bytes,
            state: "ok",
            error: None,
            held: None,
            since_s: None,
            recovered: Default::default(),
        }
    }

    fn json(h: &Health) -> String {
        serde_json::to_string(h).unwrap()
    }

    fn extra(actions: Option<PathHealth>) -> HealthExtra {
        HealthExtra {
            instance: "bridge-a".into(),
            actions,
            fleet: None,
        }
    }

    use ServerState::{Connected, Disconnected, Standby};

    #[test]
    fn healthz_json_keeps_its_fields_and_order() {
        let up = BrokerState::Up { url: "x".into() };
        let servers = ServerHealth(vec![("pbx2".into(), Connected), ("pbx1".into(), Connected)]);
        let h = Health::new(&up, servers.clone(), spool_ok(0, 0), extra(None));
        assert!(h.healthy);
        assert_eq!(
            json(&h),
            r#"{"healthy":true,"instance":"bridge-a","broker":"connected","servers":{"pbx2":"connected","pbx1":"connected"},"held":["pbx2","pbx1"],"spool":{"messages":0,"bytes":0,"state":"ok"},"actions":"disabled"}"#
        );
        let down = BrokerState::Down {
            reason: "connect: refused".into(),
        };
        let servers = ServerHealth(vec![
            ("pbx1".into(), Connected),
            ("pbx2".into(), Disconnected),
        ]);
        let failing = SpoolHealth {
            state: "disk_full",
            error: Some("No space left on device".into()),
            held: Some(5),
            since_s: Some(3),
            ..spool_ok(5231, 3932160)
        };
        let h = Health::new(&down, servers, failing, extra(Some(PathHealth::Ready)));
        assert!(!h.healthy);
        assert_eq!(
            json(&h),
            r#"{"healthy":false,"instance":"bridge-a","broker":"down: connect: refused","servers":{"pbx1":"connected","pbx2":"disconnected"},"held":["pbx1","pbx2"],"spool":{"messages":5231,"bytes":3932160,"state":"disk_full","error":"No space left on device","held":5,"since_s":3},"actions":"ready"}"#
        );
    }

    #[test]
    fn a_fleet_member_reports_what_it_holds() {
        let up = BrokerState::Up { url: "x".into() };
        let servers = ServerHealth(vec![("pbx1".into(), Standby), ("pbx2".into(), Connected)]);
        let fleet = crate::fleet::FleetState {
            ready: true,
            instances: 2,
            held: vec!["pbx2".into()],
        };
        let e = HealthExtra {
            fleet: Some(fleet.clone()),
            ..extra(None)
        };
        let h = Health::new(&up, servers.clone(), spool_ok(0, 0), e);
        assert!(h.healthy, "a server in standby is not a fault");
        assert_eq!(
            json(&h),
            r#"{"healthy":true,"instance":"bridge-a","broker":"connected","servers":{"pbx1":"standby","pbx2":"connected"},"held":["pbx2"],"spool":{"messages":0,"bytes":0,"state":"ok"},"actions":"disabled","fleet":{"ready":true,"instances":2,"held":["pbx2"]}}"#
        );
        let e = HealthExtra {
            fleet: Some(crate::fleet::FleetState {
                ready: false,
                ..fleet
            }),
            ..extra(None)
        };
        assert!(!Health::new(&up, servers, spool_ok(0, 0), e).healthy);
    }

    #[test]
    fn healthy_needs_every_part() {
        let up = BrokerState::Up { url: "x".into() };
        let one = || ServerHealth(vec![("a".into(), Connected)]);
        let ok = |b: &BrokerState, s: ServerHealth, sp: SpoolHealth, a: Option<PathHealth>| {
            Health::new(b, s, sp, extra(a)).healthy
        };
        assert!(ok(&up, one(), spool_ok(1, 1), Some(PathHealth::Ready)));
        assert!(ok(&up, ServerHealth::default(), spool_ok(0, 0), None));
        assert!(!ok(&BrokerState::Connecting, one(), spool_ok(0, 0), None));
        assert!(!ok(
            &up,
            ServerHealth(vec![("a".into(), Disconnected)]),
            spool_ok(0, 0),
            None
        ));
        let full = SpoolHealth {
            state: "write_error",
            ..spool_ok(0, 0)
        };
        assert!(!ok(&up, one(), full, None));
        assert!(!ok(
            &up,
            one(),
            spool_ok(0, 0),
            Some(PathHealth::Connecting)
        ));
        let down = PathHealth::Down("x".into());
        let h = Health::new(&up, one(), spool_ok(0, 0), extra(Some(down)));
        assert_eq!((h.healthy, h.actions.as_str()), (false, "down: x"));
    }
}
