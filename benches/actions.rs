//! Action round trips: `Ping` through AMQP → bridge → AMI → bridge → AMQP
//! reply, against `ami2amqp replay` as the AMI server, beside a plain lapin
//! echo service (consume the request, publish the reply, ack; no AMI) on
//! the same broker: the ceiling RabbitMQ itself sets on this machine.
//!
//! All are driven by the same client: one connection, direct reply-to,
//! a fixed number of requests in flight (1 and 64). Latency is from
//! publishing a request to receiving its reply. The echo service runs in
//! its own process, as the bridge does; a second echo inside the client's
//! process (sharing its runtime, how this bench measured the echo first)
//! is kept as an extra line.
//!
//! At 64 in flight the sides take turns: `BENCH_ACTIONS_ROUNDS` rounds
//! (default 20) of bridge, echo, in-process echo, each with its share of
//! `BENCH_ACTIONS_REQUESTS` (default 20,000), so that a quiet or a busy
//! moment of the machine falls on all of them; each side's rate is its
//! requests over its time in all rounds. Rounds are short (about 70 ms a
//! side) because this machine's busy moments are: with 4 rounds one side
//! often caught most of one, and the ratio swung 0.67–1.24 between runs.
//! The summary also gives the spread of the ratio round by round. Every line also has the CPU time
//! and context switches per request of each process (`/proc`).
//!
//! Run with `cargo bench --bench actions` (RabbitMQ on AMQP_URL or
//! 127.0.0.1:5672; `make bench` makes sure one runs).
//! `BENCH_ACTIONS_THREADS=2` adds a bridge with `--worker-threads 2`,
//! `BENCH_ACTIONS_OTHER_BIN=<path>` one from another build: they take
//! turns with the default bridge, an A/B inside one run (separate runs on
//! a shared machine differ more than most changes do).
//! `BENCH_ACTIONS_ECHO_LIKE_BRIDGE=1` adds the echo on the bridge's queue
//! set-up (durable, single active consumer, dead-letter and alternate
//! exchanges): what that costs the broker.
//! `BENCH_ACTIONS_ONLY=<text>` runs the sides whose name contains it.
//! `BENCH_ACTIONS_SHOW_ROUNDS=1` prints every round's rate, median and
//! slowest round trip (on stderr).
//!
//! The processes (the replay, the bridge) are started with the integration
//! tests' helpers (`tests/common`, included as a module as the tests do).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[path = "../tests/common/mod.rs"]
mod common;

use common::cleanup::BrokerCleanup;
use common::cpu::{CpuMeter, listener_pid};
use common::procs::{
    ActionNames, Proc, bin, connect, consume_auto_ack, correlation_id, free_port, replay_as_bridge,
    repo, trace,
};

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One side's round trips (summed over rounds).
#[derive(Default)]
struct Result {
    requests: usize,
    secs: f64,
    /// Every round trip's latency.
    lat: Vec<Duration>,
    /// CPU seconds and context switches of the side's processes.
    cpu: Vec<(&'static str, f64, u64)>,
    /// The rate of each round added.
    round_rates: Vec<f64>,
}

impl Result {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs.max(1e-9)
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut l = self.lat.clone();
        l.sort();
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    fn add(&mut self, r: Result) {
        self.round_rates.push(r.rate());
        self.requests += r.requests;
        self.secs += r.secs;
        self.lat.extend(r.lat);
        if self.cpu.is_empty() {
            self.cpu = r.cpu;
        } else {
            for (a, b) in self.cpu.iter_mut().zip(r.cpu) {
                a.1 += b.1;
                a.2 += b.2;
            }
        }
    }

    /// "name µs (context switches)" per request of each process.
    fn cpu_per_request(&self) -> String {
        let n = self.requests.max(1) as f64;
        let v: Vec<String> = self
            .cpu
            .iter()
            .map(|(name, s, c)| format!("{name} {:.1} ({:.2})", s * 1e6 / n, *c as f64 / n))
            .collect();
        v.join(", ")
    }

    /// CPU µs per request of all the side's processes but the client and
    /// the broker (the bridge and its replay, or the echo).
    fn service_us(&self) -> f64 {
        let n = self.requests.max(1) as f64;
        self.cpu
            .iter()
            .filter(|(name, _, _)| !matches!(*name, "client" | "broker"))
            .map(|(_, s, _)| s * 1e6 / n)
            .sum()
    }
}

/// Sends `n` requests keeping `window` in flight; returns rate and latency.
async fn drive(url: &str, exchange: &str, key: &str, n: usize, window: usize) -> Result {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut replies = consume_auto_ack(&ch, "amq.rabbitmq.reply-to").await;
    let body = br#"{"Action":"Ping"}"#;
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut lat = Vec::with_capacity(n);
    let mut next = 0usize;
    let start = Instant::now();
    while lat.len() < n {
        while next < n && sent_at.len() < window {
            let corr = format!("r{next}");
            let p = BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id(corr.as_str().into())
                .with_user_id("guest".into());
            sent_at.insert(corr, Instant::now());
            ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                p,
            )
            .await
            .expect("publish");
            next += 1;
        }
        let d = tokio::time::timeout(Duration::from_secs(30), replies.next())
            .await
            .expect("a reply within 30 s")
            .expect("stream open")
            .expect("delivery");
        let corr = correlation_id(&d);
        if let Some(t) = sent_at.remove(&corr) {
            lat.push(t.elapsed());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = conn.close(200, "bye".into()).await;
    Result {
        requests: n,
        secs,
        lat,
        cpu: Vec::new(),
        round_rates: Vec::new(),
    }
}

/// Measures a phase: the CPU time and context switches of `procs` (the
/// side's own processes, this bench as the client, the broker).
async fn measure(
    procs: &[(&'static str, u32)],
    phase: impl std::future::Future<Output = Result>,
) -> Result {
    let pids: Vec<u32> = procs.iter().map(|p| p.1).collect();
    let meter = CpuMeter::start(&pids);
    let mut r = phase.await;
    r.cpu = procs
        .iter()
        .zip(meter.used())
        .map(|((name, _), (s, c))| (*name, s, c))
        .collect();
    r
}

/// This bench (the client) and the broker (when its process is found).
fn common_procs(url: &str) -> Vec<(&'static str, u32)> {
    let mut v = vec![("client", std::process::id())];
    let port = lapin::uri::AMQPUri::from_str(url).map_or(5672, |u| u.authority.port);
    if let Some(p) = listener_pid(port) {
        v.push(("broker", p));
    }
    v
}

/// The plain lapin echo service: consume, reply, ack. It runs in its own
/// process (this bench's binary with `--echo-service <queue>`), as the
/// bridge does, so that neither shares a runtime with the client driving
/// it; it prints `ready` once it consumes.
async fn echo_service(url: String, queue: String) {
    let (_conn, consumer, out) = echo_consume(&url, &queue).await;
    println!("ready");
    echo_serve(consumer, out).await;
}

/// The echo service inside this process, on the client's runtime.
async fn echo_service_in_client(
    url: String,
    queue: String,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let (_conn, consumer, out) = echo_consume(&url, &queue).await;
    let _ = ready.send(());
    echo_serve(consumer, out).await;
}

/// Declares the echo's queue and consumes it (prefetch 64, as the bridge);
/// returns the connection, the consumer and the channel for replies.
async fn echo_consume(url: &str, queue: &str) -> (Connection, lapin::Consumer, lapin::Channel) {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    let out = conn.create_channel().await.expect("channel");
    if queue.ends_with(LIKE_BRIDGE) {
        declare_like_bridge(&ch, queue).await;
    } else {
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    }
    ch.basic_qos(64, BasicQosOptions::default())
        .await
        .expect("qos");
    let c = ch
        .basic_consume(
            queue.into(),
            "echo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (conn, c, out)
}

/// An echo queue whose name ends with this is declared as the bridge
/// declares its request queues.
const LIKE_BRIDGE: &str = ".like-bridge";

/// The bridge's request topology for the echo (`rpc::declare`): a direct
/// exchange with an alternate exchange, a durable queue with single active
/// consumer and a dead-letter exchange, bound by key; both named `queue`,
/// and deleted with the echo's connection (auto-delete).
async fn declare_like_bridge(ch: &lapin::Channel, queue: &str) {
    use lapin::types::AMQPValue;
    let mut ex_args = FieldTable::default();
    ex_args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(format!("{queue}.unrouted").as_str().into()),
    );
    let auto_delete = lapin::options::ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.exchange_declare(
        queue.into(),
        lapin::ExchangeKind::Direct,
        auto_delete,
        ex_args,
    )
    .await
    .expect("exchange");
    let mut q_args = FieldTable::default();
    q_args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    q_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{queue}.expired").as_str().into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, q_args)
        .await
        .expect("queue");
    ch.queue_bind(
        queue.into(),
        queue.into(),
        queue.into(),
        lapin::options::QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
}

async fn echo_serve(mut c: lapin::Consumer, out: lapin::Channel) {
    // Each request is answered in its own task, as the bridge does, so the
    // echo is a ceiling and not a sequential strawman.
    while let Some(Ok(d)) = c.next().await {
        let out = out.clone();
        tokio::spawn(async move {
            if let Some(rt) = d.properties.reply_to() {
                let mut p = BasicProperties::default().with_content_type("application/json".into());
                if let Some(cid) = d.properties.correlation_id() {
                    p = p.with_correlation_id(cid.clone());
                }
                let _ = out
                    .basic_publish(
                        "".into(),
                        rt.clone(),
                        BasicPublishOptions::default(),
                        br#"{"response":"Success"}"#,
                        p,
                    )
                    .await;
            }
            let _ = d.ack(BasicAckOptions::default()).await;
        });
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Starts the echo service (this binary, `--echo-service <queue>`) and
/// waits until it consumes.
fn start_echo(url: &str, queue: &str) -> Proc {
    let exe = std::env::current_exe().expect("the bench's own path");
    // As many runtime threads as the bridge has by default: on this
    // machine's two CPUs one thread makes the echo both faster and cheaper.
    let workers =
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
    let mut child = Command::new(exe)
        .args(["--echo-service", queue])
        .env("AMQP_URL", url)
        .env("TOKIO_WORKER_THREADS", workers.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo service");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("the echo service starts");
    assert_eq!(line.trim(), "ready", "echo service: {line:?}");
    Proc {
        child,
        name: "echo".into(),
    }
}

/// The bridge under test, with its fake Asterisk and its temp dir (dropped
/// in this order: the bridge is killed first).
struct Bridge {
    bridge: Proc,
    /// Deletes the action path's queues and exchanges once the bridge is
    /// gone (fields drop in order).
    _cleanup: BrokerCleanup,
    _dir: tempfile::TempDir,
    replay: Proc,
    /// The action exchange (unique to this run).
    exchange: String,
}

/// Starts `ami2amqp replay` as the AMI server and the bridge with `Ping`
/// allowed for `guest`; `threads`: its `--worker-threads` (None: the
/// default); `n` numbers the bridges of a run.
fn start_bridge(url: &str, threads: Option<u16>, n: usize) -> Bridge {
    start_bridge_from(std::path::Path::new(bin()), url, threads, n)
}

/// [`start_bridge`] with the bridge's binary at `exe` (another build, for
/// an A/B inside one run).
fn start_bridge_from(exe: &std::path::Path, url: &str, threads: Option<u16>, n: usize) -> Bridge {
    let (replay, addr) = replay_as_bridge(&[&trace("login_plain.ami").display().to_string()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = format!("ami.actions.bench{}-{n}", std::process::id());
    let cfg = format!(
        "[amqp]\nurl = \"{url}\"\n[[server]]\nname = \"pbx1\"\naddress = \"{addr}\"\nusername = \"bridge\"\nsecret = \"bridgepass\"\naction_connections = 2\n[mappings]\ndir = \"{}/mappings\"\n[spool]\ndir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[actions]\nexchange = \"{ex}\"\nqueue_prefix = \"{ex}.\"\nunrouted = \"{ex}.unrouted\"\nexpired = \"{ex}.expired\"\nmax_in_flight_per_user = 64\n[[actions.allow]]\nuser = \"guest\"\nactions = [\"Ping\"]\n",
        repo().display(),
        dir.path().join("spool").display(),
        free_port()
    );
    let cleanup = BrokerCleanup::on(url);
    ActionNames {
        exchange: ex.clone(),
        queue_prefix: format!("{ex}."),
        unrouted: format!("{ex}.unrouted"),
        expired: format!("{ex}.expired"),
    }
    .record(&cleanup, &["pbx1"]);
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(&cfg_path, cfg).expect("config");
    let mut cmd = Command::new(exe);
    if let Some(t) = threads {
        cmd.arg(format!("--worker-threads={t}"));
    }
    let child = cmd
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bridge");
    Bridge {
        bridge: Proc {
            child,
            name: "bridge".into(),
        },
        _cleanup: cleanup,
        _dir: dir,
        replay,
        exchange: ex,
    }
}

/// Waits until the bridge answers a `Ping` (its action exchange declared).
async fn wait_answering(url: &str, ex: &str) -> bool {
    for _ in 0..100 {
        let r = tokio::time::timeout(Duration::from_millis(800), async {
            let conn = Connection::connect(url, ConnectionProperties::default())
                .await
                .ok()?;
            let ch = conn.create_channel().await.ok()?;
            let passive = lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            ch.exchange_declare(
                ex.into(),
                lapin::ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await
            .ok()?;
            Some(drive(url, ex, "pbx1", 1, 1).await)
        })
        .await;
        if matches!(r, Ok(Some(_))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A number from the environment, or `default`.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// True when the variable `name` is `1`.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// A side of the comparison: where its requests go, and its processes.
struct Side {
    name: String,
    exchange: String,
    key: String,
    procs: Vec<(&'static str, u32)>,
}

/// The allocator the bridge uses (Cargo.toml, feature `jemalloc`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    let url = url();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--echo-service") {
        let queue = args.get(i + 1).expect("--echo-service <queue>").clone();
        echo_service(url, queue).await;
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n1, n64) = if quick { (50, 500) } else { (2000, 20000) };
    let n64 = env_or("BENCH_ACTIONS_REQUESTS", n64);
    let rounds = env_or("BENCH_ACTIONS_ROUNDS", 20).max(1);
    let show_rounds = env_flag("BENCH_ACTIONS_SHOW_ROUNDS");
    // `bridge` or `echo`: run the sides whose name contains it (for a
    // profile of one).
    let only = std::env::var("BENCH_ACTIONS_ONLY").unwrap_or_default();
    // More bridges, with these `--worker-threads` (e.g. `2`), taking turns
    // with the default one.
    let variants: Vec<u16> = std::env::var("BENCH_ACTIONS_THREADS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();

    let mut bridges = vec![(BRIDGE.to_string(), start_bridge(&url, None, 0))];
    for (i, t) in variants.iter().enumerate() {
        let name = format!("bridge, {t} worker thread(s)");
        bridges.push((name, start_bridge(&url, Some(*t), i + 1)));
    }
    // Another build of the bridge (e.g. the previous commit's), taking
    // turns with this one: an A/B of a change inside one run.
    if let Ok(other) = std::env::var("BENCH_ACTIONS_OTHER_BIN") {
        let n = bridges.len();
        let b = start_bridge_from(std::path::Path::new(&other), &url, None, n);
        bridges.push(("bridge, other build".to_string(), b));
    }
    for (_, b) in &bridges {
        assert!(
            wait_answering(&url, &b.exchange).await,
            "bridge did not answer"
        );
    }
    let q = format!("bench.echo.{}", std::process::id());
    let echo = start_echo(&url, &q);
    // The echo again, on the bridge's queue set-up: what the topology
    // costs the broker (BENCH_ACTIONS_ECHO_LIKE_BRIDGE=1).
    let like = env_flag("BENCH_ACTIONS_ECHO_LIKE_BRIDGE");
    let q_like = format!("bench.echo.{}{LIKE_BRIDGE}", std::process::id());
    let echo_like = like.then(|| start_echo(&url, &q_like));
    let q_in = format!("bench.echo-in-client.{}", std::process::id());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let echo_in = tokio::spawn(echo_service_in_client(url.clone(), q_in.clone(), tx));
    rx.await.expect("in-process echo ready");

    let common = common_procs(&url);
    let with = |own: Vec<(&'static str, u32)>| [own, common.clone()].concat();
    let mut sides: Vec<Side> = bridges
        .iter()
        .map(|(name, b)| Side {
            name: name.clone(),
            exchange: b.exchange.clone(),
            key: "pbx1".into(),
            procs: with(vec![("bridge", b.bridge.pid()), ("replay", b.replay.pid())]),
        })
        .collect();
    sides.push(Side {
        name: ECHO.into(),
        exchange: String::new(),
        key: q.clone(),
        procs: with(vec![("echo", echo.pid())]),
    });
    if let Some(e) = &echo_like {
        sides.push(Side {
            name: "lapin echo, bridge's queues".into(),
            exchange: q_like.clone(),
            key: q_like.clone(),
            procs: with(vec![("echo", e.pid())]),
        });
    }
    sides.push(Side {
        name: ECHO_IN_CLIENT.into(),
        exchange: String::new(),
        key: q_in.clone(),
        procs: with(Vec::new()),
    });
    sides.retain(|s| only.is_empty() || s.name.contains(only.as_str()));

    println!(
        "action round trips (Ping): {n1} requests at 1 in flight; {n64} at 64, in {rounds} rounds taking turns"
    );
    println!(
        "{:<30} {:>8} {:>9} {:>9}  CPU µs (context switches) per request",
        "", "req/s", "p50", "p99",
    );
    let mut at1 = Vec::new();
    for side in &sides {
        let r = run_phase(&url, side, n1, 1).await;
        print_row(&side.name, 1, &r);
        at1.push((side.name.as_str(), r));
    }
    let mut at64: Vec<(&str, Result)> = sides
        .iter()
        .map(|s| (s.name.as_str(), Result::default()))
        .collect();
    for _ in 0..rounds {
        for (side, (_, total)) in sides.iter().zip(at64.iter_mut()) {
            let r = run_phase(&url, side, n64 / rounds, 64).await;
            if show_rounds {
                eprintln!(
                    "  round: {:<30} {:>8.0} req/s, p50 {}, max {}",
                    side.name,
                    r.rate(),
                    ms(r.quantile(0.5)),
                    ms(r.quantile(1.0))
                );
            }
            total.add(r);
        }
    }
    for (name, r) in &at64 {
        print_row(name, 64, r);
    }
    summary(&at1, &at64);
    echo_in.abort();
    drop(echo_like);
    drop(echo);
    drop(bridges);
}

const BRIDGE: &str = "bridge (AMQP→AMI→AMQP)";
const ECHO: &str = "lapin echo (no AMI)";
const ECHO_IN_CLIENT: &str = "lapin echo in client process";

/// A warm-up, then `n` requests with `window` in flight, measured.
async fn run_phase(url: &str, side: &Side, n: usize, window: usize) -> Result {
    let _ = drive(url, &side.exchange, &side.key, 20.min(n), window).await;
    measure(
        &side.procs,
        drive(url, &side.exchange, &side.key, n, window),
    )
    .await
}

fn print_row(name: &str, window: usize, r: &Result) {
    println!(
        "{:<30} {:>8.0} {:>9} {:>9}  {}   ({} in flight)",
        name,
        r.rate(),
        ms(r.quantile(0.5)),
        ms(r.quantile(0.99)),
        r.cpu_per_request(),
        window
    );
}

/// The targets line: bridge/echo throughput at 64 in flight (and against
/// the in-process echo, for comparison with earlier runs), bridge p99 at 1;
/// then the CPU of the bridge and its replay against the echo's, and the
/// other bridges' ratios.
fn summary(at1: &[(&str, Result)], at64: &[(&str, Result)]) {
    let find = |name: &str| at64.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
    let rate = |name: &str| find(name).map_or(f64::NAN, Result::rate);
    let bridge1 = at1
        .iter()
        .find(|(n, _)| *n == BRIDGE)
        .map(|(_, r)| r.quantile(0.99))
        .unwrap_or_default();
    println!(
        "bridge/echo at 64 in flight: {:.2} (target >= 0.90, median of 7 runs; against the in-process echo: {:.2}); bridge p99 at 1 in flight: {} (target < 2 ms)",
        rate(BRIDGE) / rate(ECHO),
        rate(BRIDGE) / rate(ECHO_IN_CLIENT),
        ms(bridge1)
    );
    if let (Some(b), Some(e)) = (find(BRIDGE), find(ECHO)) {
        let mut r: Vec<f64> = b
            .round_rates
            .iter()
            .zip(&e.round_rates)
            .map(|(b, e)| b / e)
            .collect();
        r.sort_by(f64::total_cmp);
        if let (Some(lo), Some(hi)) = (r.first(), r.last()) {
            println!(
                "bridge/echo round by round: min {lo:.2}, median {:.2}, max {hi:.2} over {} rounds",
                r[r.len() / 2],
                r.len()
            );
        }
        println!(
            "CPU per request at 64 in flight: bridge + replay {:.1} µs, echo {:.1} µs",
            b.service_us(),
            e.service_us()
        );
    }
    for (name, r) in at64.iter().filter(|(n, _)| n.starts_with("bridge, ")) {
        println!(
            "{name}: {:.2} of the echo, {:.2} of the default bridge, bridge + replay {:.1} µs per request",
            r.rate() / rate(ECHO),
            r.rate() / rate(BRIDGE),
            r.service_us()
        );
    }
}
