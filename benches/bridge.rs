//! The bridge against a plain lapin publisher on the same broker:
//! `cargo bench --bench bridge` (or `make bench`). BENCHMARKS.md explains
//! the numbers it prints.
//!
//! Both sides send the same messages: the bridge's own mapping (the default
//! set in `mappings/`) of every event of `tests/traces/calls_busy.ami.zst`
//! (179,005 events, one persistent JSON message each, ~560-byte bodies).
//! Each side is a separate process, so CPU time (utime + stime from
//! `/proc/<pid>/stat`), context switches and memory (VmHWM, VmRSS) are read
//! the same way for both:
//!
//! * **raw** — this bench binary re-run as a child process
//!   (`AMI2AMQP_BENCH_ROLE=raw`): it routes the trace with the library
//!   before the clock starts, then publishes the ready messages (same
//!   exchange, key, properties and body bytes as the bridge, `mandatory`)
//!   on one lapin channel in confirm mode with the bridge's default confirm
//!   window: each `basic_publish` awaited in turn, confirms in a bounded
//!   `FuturesUnordered` — the same pattern as the bridge's publisher. This
//!   is the ceiling the targets compare against.
//! * **raw, batched** (scenario a only) — the same, but every confirm
//!   already in is taken before publishing, and the publishes that fit in
//!   the window are started together (`join_all`, first polled in order)
//!   instead of awaited one by one: what lapin can do when it is not woken
//!   once per message.
//! * **bridge** — `ami2amqp run` (default settings: confirm window, fsync
//!   interval, spool sizes) fed by `ami2amqp replay`, with a fresh spool in
//!   a temporary directory and /metrics on a free port. Between the replay
//!   and the bridge sits a small TCP relay in this process: it holds the
//!   AMI connection closed until the bridge is connected to the broker (so
//!   the clock starts when the events do) and stamps the time at which each
//!   event's last byte is handed to the bridge's socket.
//!
//! Scenarios (one run each per side, raw first):
//!
//! * **s, stages** — the bridge's own per-event work (AMI decode, routing
//!   and JSON, spool record encode/decode, AMQP properties) timed
//!   in-process on one thread, without a broker: what the bridge adds to
//!   each lapin publish.
//! * **a, max speed** — every message as fast as the side can; throughput
//!   from the first publish (raw) / the AMI gate opening (bridge) to the
//!   last delivery at the consumer.
//! * **b, fixed rate** — 5,000 messages/s (`replay --rate 5000`; the raw
//!   publisher follows the same schedule); latency percentiles.
//! * **c, real burst** — the recorded pace (`replay --timing`), 25.8k
//!   events in its busiest second; latency, backlog, memory, and whether
//!   the AMI socket ever stalled (the relay's stamps against the trace's
//!   schedule, and `ami_events_total` from /metrics over time).
//!
//! Latency is measured end to end from the consumer side: a durable queue
//! (`x-queue-version` 2 unless `BENCH_QUEUE_VERSION` says otherwise) bound
//! with `#` to the run's exchange is consumed (auto-ack) by this process,
//! which matches each message to its event by the sequence number in its
//! `message_id` and checks its `type`, and counts duplicates and messages
//! out of order. For the bridge, latency is "the relay hands the event's
//! last byte to the bridge's socket → the consumer has the message"; for
//! raw, "the publisher sees the message due → the consumer has it". Raw
//! publish → confirm is measured exactly in the child; the bridge's read →
//! confirm only exists as its `publish_latency_seconds` histogram, whose
//! buckets this bench interpolates. Cross-process times are `SystemTime`
//! on this machine.
//!
//! Environment: `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! `BENCH_SCENARIOS` (default `s,a,b,c`), `BENCH_SIDES` (default
//! `raw,bridge,batched`), `BENCH_RATE` (default 5000),
//! `BENCH_QUEUE_VERSION` (default 2), `BENCH_PERF=PREFIX` (during scenario
//! a, run `perf $BENCH_PERF_ARGS -o PREFIX.<side>.data -p <pid>` on each
//! side; `BENCH_PERF_ARGS` defaults to `record -F 999`, `stat -e …` works
//! too), `BENCH_SPOOL_DIR` (put the bridge's spool under this
//! directory instead of the temporary one, e.g. /dev/shm to take the disk
//! out of the picture), `BENCH_FSYNC_MS` (the bridge's
//! `spool.fsync_interval_ms`), `BENCH_SAMPLES=PREFIX` (write the bridge's /metrics
//! samples to PREFIX.<scenario>.csv), `BENCH_KEEP=1` (keep the temporary
//! directory, with the bridge's and the replay's logs).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ami2amqp::ami::{AmiCodec, Frame, Kind, Limits, Message};
use ami2amqp::amqp::Record;
use ami2amqp::amqp::{properties, short};
use ami2amqp::mapping::EventCtx;
use ami2amqp::trace::replay::EventStream;
use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type Res<T> = Result<T, String>;

const TRACE: &str = "tests/traces/calls_busy.ami.zst";
const TIMING: &str = "tests/traces/calls_busy.timing.zst";
/// Same length as the bridge's instance ids (12 hex digits), so message ids
/// have the same size on both sides.
const RAW_INSTANCE: &str = "000000000raw";
const SERVER: &str = "pbx1";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Decodes one event's exact bytes.
fn decode_event(bytes: &[u8]) -> Res<Message> {
    let mut codec = AmiCodec::new(Limits::default());
    let mut buf = BytesMut::from(bytes);
    let f = match codec.decode_frame(&mut buf)? {
        Some(f) => f,
        None => return Err("event bytes do not decode".into()),
    };
    match f {
        Frame::Message(m) => Ok(m),
        other => Err(format!("not a message: {other:?}")),
    }
}

trait DecodeFrame {
    fn decode_frame(&mut self, buf: &mut BytesMut) -> Res<Option<Frame>>;
}

impl DecodeFrame for AmiCodec {
    fn decode_frame(&mut self, buf: &mut BytesMut) -> Res<Option<Frame>> {
        use tokio_util::codec::Decoder;
        match self.decode(buf) {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => self.decode_eof(buf).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// When each message is due, relative to the start.
#[derive(Clone, Debug, PartialEq)]
enum Pace {
    Max,
    Rate(f64),
    Timing,
}

impl Pace {
    fn env(&self) -> String {
        match self {
            Pace::Max => "max".into(),
            Pace::Rate(r) => format!("rate:{r}"),
            Pace::Timing => "timing".into(),
        }
    }
    fn parse(s: &str) -> Res<Pace> {
        match s {
            "max" => Ok(Pace::Max),
            "timing" => Ok(Pace::Timing),
            _ => s
                .strip_prefix("rate:")
                .and_then(|r| r.parse().ok())
                .map(Pace::Rate)
                .ok_or_else(|| format!("bad pace {s:?}")),
        }
    }
    fn replay_args(&self) -> Vec<String> {
        match self {
            Pace::Max => vec![],
            Pace::Rate(r) => vec!["--rate".into(), format!("{r}")],
            Pace::Timing => vec!["--timing".into(), repo().join(TIMING).display().to_string()],
        }
    }
}

fn load_stream(timed: bool) -> Res<EventStream> {
    let trace = [repo().join(TRACE)];
    let timing = [repo().join(TIMING)];
    EventStream::load(&trace, timed.then_some(&timing[..]), false).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// /proc, percentiles, Prometheus text
// ---------------------------------------------------------------------------

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads, dead ones included), in
/// clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Context switches (voluntary + involuntary) of all live threads.
fn ctx_switches(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .flat_map(|st| {
            st.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// `perf record` attached to `pid` (scenario a only, with BENCH_PERF).
fn start_perf(s: &Setup, scenario: &str, side: &str, pid: u32) -> Option<tokio::process::Child> {
    let prefix = s.perf.as_ref().filter(|_| scenario == "a")?;
    tokio::process::Command::new("perf")
        .args(env_or("BENCH_PERF_ARGS", "record -F 999").split_whitespace())
        .args([
            "-o",
            &format!("{prefix}.{side}.data"),
            "-p",
            &pid.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

async fn stop_perf(p: Option<tokio::process::Child>) {
    if let Some(mut p) = p {
        if let Some(ppid) = p.id() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &ppid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), p.wait()).await;
    }
}

/// A `kB` line of /proc/<pid>/status (VmHWM, VmRSS), in bytes.
fn vm_bytes(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[derive(Clone, Copy, Debug, Default)]
struct Pcts {
    n: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// Percentiles (nearest rank) of durations in µs, reported in ms.
fn pcts(mut v: Vec<u64>) -> Pcts {
    if v.is_empty() {
        return Pcts::default();
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    Pcts {
        n: v.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: *v.last().unwrap_or(&0) as f64 / 1000.0,
    }
}

/// Sum of all series of a counter or gauge.
fn prom_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// A Prometheus histogram's cumulative buckets (le, count).
fn prom_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut v: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// `histogram_quantile` (linear within the bucket), in ms.
fn bucket_quantile(b: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in b {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0 * 1000.0);
            }
            let frac = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return Some((prev.0 + (le - prev.0) * frac) * 1000.0);
        }
        prev = (le, c);
    }
    None
}

async fn http_get(addr: &str, path: &str) -> Option<String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut r = Vec::new();
        s.read_to_end(&mut r).await.ok()?;
        let r = String::from_utf8_lossy(&r).into_owned();
        r.split_once("\r\n\r\n").map(|x| x.1.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------
// The raw publisher (child process)
// ---------------------------------------------------------------------------

mod raw {
    use super::*;

    struct Msg {
        exchange: ShortString,
        key: ShortString,
        body: Vec<u8>,
        props: Option<BasicProperties>,
        due: Duration,
    }

    pub fn main() {
        // Like `ami2amqp`'s main: a default multi-thread runtime.
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        if let Err(e) = rt.block_on(run()) {
            eprintln!("raw publisher: {e}");
            std::process::exit(1);
        }
    }

    fn var(name: &str) -> Res<String> {
        std::env::var(name).map_err(|_| format!("{name} not set"))
    }

    async fn run() -> Res<()> {
        let url = var("BENCH_RAW_URL")?;
        let mappings = PathBuf::from(var("BENCH_RAW_MAPPINGS")?);
        let out_path = PathBuf::from(var("BENCH_RAW_OUT")?);
        let window: usize = var("BENCH_RAW_WINDOW")?.parse().map_err(|_| "window")?;
        let pace = Pace::parse(&var("BENCH_RAW_PACE")?)?;

        // Everything the clock should not see: load, route, build.
        let stream = load_stream(pace == Pace::Timing)?;
        let router = ami2amqp::mapping::load_dir(&mappings).map_err(|e| e.to_string())?;
        let server: Arc<str> = Arc::from(SERVER);
        let mut msgs = Vec::with_capacity(stream.events.len());
        let mut out = Vec::new();
        for (i, ev) in stream.events.iter().enumerate() {
            let m = decode_event(&ev.bytes)?;
            let received_at = SystemTime::now();
            let seq = i as u64 + 1;
            let ctx = EventCtx {
                server: &server,
                seq,
                received_at,
                message: &m,
                instance: RAW_INSTANCE,
            };
            out.clear();
            router.route(&ctx, &mut out);
            if out.len() != 1 {
                return Err(format!(
                    "event {seq} maps to {} messages; this bench needs exactly one",
                    out.len()
                ));
            }
            let rec = Record {
                received_at_us: received_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(0),
                server: server.clone(),
                seq,
                msg: out.pop().ok_or("no message")?,
            };
            let due = match pace {
                Pace::Max => Duration::ZERO,
                Pace::Rate(r) => Duration::from_secs_f64(i as f64 / r),
                Pace::Timing => ev.at,
            };
            msgs.push(Msg {
                exchange: short(&rec.msg.exchange),
                key: short(&rec.msg.routing_key),
                props: Some(properties(&rec)),
                body: rec.msg.body,
                due,
            });
        }
        drop(stream);
        let n = msgs.len();
        let mut props: Vec<Option<BasicProperties>> =
            msgs.iter_mut().map(|m| m.props.take()).collect();
        let batched = std::env::var("BENCH_RAW_BATCHED").is_ok_and(|v| v == "1");

        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;

        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        println!("ready {n}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        let go = stdin.next_line().await.map_err(|e| e.to_string())?;
        if go.as_deref() != Some("go") {
            return Err(format!("expected go, got {go:?}"));
        }

        let mut arrival = vec![0u64; n];
        let mut published = vec![0u64; n];
        let mut confirmed = vec![0u64; n];
        let mut returned = 0u64;
        let mut nacked = 0u64;
        let start = tokio::time::Instant::now();
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        type ConfirmFut = std::pin::Pin<
            Box<dyn std::future::Future<Output = (usize, lapin::Result<Confirmation>)> + Send>,
        >;
        let mut confirms: FuturesUnordered<ConfirmFut> = FuturesUnordered::new();
        let (mut arrived, mut next) = (0usize, 0usize);
        loop {
            // Messages whose time has come "arrive" now (the raw
            // equivalent of the bridge reading an event off its socket).
            let el = start.elapsed();
            let t = now_us();
            while arrived < n && msgs[arrived].due <= el {
                arrival[arrived] = t;
                arrived += 1;
            }
            if batched {
                // Experiment (BENCH_RAW_BATCHED=1): start every publish
                // there is room for before awaiting any, so lapin's I/O
                // thread can write them with one wake-up. The futures are
                // first polled in order, which fixes frame order and
                // delivery tags.
                let k0 = next;
                let mut futs = Vec::new();
                while next < arrived && confirms.len() + futs.len() < window {
                    published[next] = now_us();
                    let props = props[next].take().unwrap_or_default();
                    let m = &msgs[next];
                    futs.push(ch.basic_publish(
                        m.exchange.clone(),
                        m.key.clone(),
                        opts,
                        &m.body,
                        props,
                    ));
                    next += 1;
                }
                let done = futures::future::join_all(futs).await;
                for (j, c) in done.into_iter().enumerate() {
                    let c = c.map_err(|e| format!("publish: {e}"))?;
                    let i = k0 + j;
                    confirms.push(Box::pin(async move { (i, c.await) }));
                }
            }
            while next < arrived && confirms.len() < window {
                let m = &msgs[next];
                published[next] = now_us();
                let p = props[next].take().unwrap_or_default();
                let c = ch
                    .basic_publish(m.exchange.clone(), m.key.clone(), opts, &m.body, p)
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                let i = next;
                confirms.push(Box::pin(async move { (i, c.await) }));
                next += 1;
            }
            if next == n && confirms.is_empty() {
                break;
            }
            let wake = (arrived < n).then(|| start + msgs[arrived].due);
            tokio::select! {
                biased;
                Some((i, r)) = confirms.next(), if !confirms.is_empty() => {
                    let mut ready = vec![(i, r)];
                    if batched {
                        // Take every confirm that is already in, then
                        // publish into all the room at once.
                        use futures::FutureExt;
                        while let Some(Some(x)) = confirms.next().now_or_never() {
                            ready.push(x);
                        }
                    }
                    let t = now_us();
                    for (i, r) in ready {
                        confirmed[i] = t;
                        match r {
                            Ok(Confirmation::Ack(ret)) => returned += ret.is_some() as u64,
                            Ok(Confirmation::Nack(_)) => nacked += 1,
                            Ok(Confirmation::NotRequested) => return Err("confirm not requested".into()),
                            Err(e) => return Err(format!("confirm: {e}")),
                        }
                    }
                }
                _ = async {
                    match wake {
                        Some(w) => tokio::time::sleep_until(w).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
        println!("done {returned} {nacked}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        let _ = stdin.next_line().await;
        let mut bytes = Vec::with_capacity(n * 24);
        for v in [&arrival, &published, &confirmed] {
            for x in v.iter() {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        std::fs::write(&out_path, bytes).map_err(|e| e.to_string())?;
        let _ = conn.close(200, short("bye")).await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Orchestration
// ---------------------------------------------------------------------------

struct Setup {
    url: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
    exchange: String,
    mappings: PathBuf,
    window: usize,
    queue_version: i64,
    /// Event names of the stream, in order (to check that messages are
    /// matched to the right event).
    names: Arc<Vec<String>>,
    /// Each event's time in the recorded pace, relative to the first.
    timing: Vec<Duration>,
    admin: Connection,
    tck: f64,
    perf: Option<String>,
}

/// Collects the deliveries of one queue.
struct Sink {
    ch: lapin::Channel,
    queue: String,
    tag: String,
    deliver: Arc<Mutex<Vec<u64>>>,
    count: Arc<AtomicUsize>,
    wrong: Arc<AtomicUsize>,
    dups: Arc<AtomicUsize>,
    /// Deliveries with a lower seq than one delivered before (order lost).
    reordered: Arc<AtomicUsize>,
}

impl Setup {
    async fn sink(&self, queue: &str) -> Res<Sink> {
        let ch = self
            .admin
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let mut args = FieldTable::default();
        args.insert(
            short("x-queue-version"),
            AMQPValue::LongLongInt(self.queue_version),
        );
        // A safety net: a queue left by a killed bench goes away by itself.
        args.insert(short("x-expires"), AMQPValue::LongLongInt(600_000));
        ch.queue_declare(
            short(queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|e| format!("declare queue: {e}"))?;
        ch.queue_bind(
            short(queue),
            short(&self.exchange),
            short("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("bind: {e}"))?;
        let tag = format!("{queue}.consumer");
        let mut consumer = ch
            .basic_consume(
                short(queue),
                short(&tag),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consume: {e}"))?;
        let n = self.names.len();
        let deliver = Arc::new(Mutex::new(vec![0u64; n]));
        let count = Arc::new(AtomicUsize::new(0));
        let wrong = Arc::new(AtomicUsize::new(0));
        let dups = Arc::new(AtomicUsize::new(0));
        let reordered = Arc::new(AtomicUsize::new(0));
        let (d2, c2, w2, u2, r2, names) = (
            deliver.clone(),
            count.clone(),
            wrong.clone(),
            dups.clone(),
            reordered.clone(),
            self.names.clone(),
        );
        tokio::spawn(async move {
            let mut last = 0usize;
            while let Some(Ok(d)) = consumer.next().await {
                let t = now_us();
                let kind = d.properties.kind().as_ref().map(|k| k.as_str().to_string());
                if kind.as_deref() == Some("BridgeStatus") {
                    continue; // the bridge's connected/stopped messages
                }
                let seq = d
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|id| id.as_str().rsplit(':').nth(1)?.parse::<usize>().ok());
                let Some(seq) = seq.filter(|&s| s >= 1 && s <= names.len()) else {
                    w2.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if kind.as_deref() != Some(names[seq - 1].as_str()) {
                    w2.fetch_add(1, Ordering::Relaxed);
                }
                if seq < last {
                    r2.fetch_add(1, Ordering::Relaxed);
                }
                last = last.max(seq);
                let mut v = d2.lock().unwrap_or_else(|p| p.into_inner());
                if v[seq - 1] != 0 {
                    u2.fetch_add(1, Ordering::Relaxed);
                } else {
                    v[seq - 1] = t;
                    c2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Sink {
            ch,
            queue: queue.to_string(),
            tag,
            deliver,
            count,
            wrong,
            dups,
            reordered,
        })
    }
}

impl Sink {
    /// Waits until every event's message arrived (or `deadline`).
    async fn wait_all(&self, n: usize, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.count.load(Ordering::Relaxed) >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn deliveries(&self) -> Vec<u64> {
        self.deliver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn close(self) {
        let _ = self
            .ch
            .basic_cancel(short(&self.tag), BasicCancelOptions::default())
            .await;
        let _ = self
            .ch
            .queue_delete(short(&self.queue), QueueDeleteOptions::default())
            .await;
        let _ = self.ch.close(200, short("bye")).await;
    }
}

/// What one side did in one scenario.
#[derive(Debug, Default)]
struct Outcome {
    n: usize,
    /// Start of the clock (µs since the epoch).
    start_us: u64,
    /// Last delivery at the consumer.
    last_delivery_us: u64,
    /// Raw: last confirm. Bridge: when /metrics first showed every
    /// message confirmed (polled).
    last_confirm_us: Option<u64>,
    cpu_s: f64,
    /// Context switches of the process's threads during the run.
    ctx_switches: u64,
    hwm: Option<u64>,
    rss_idle: Option<u64>,
    /// Bridge only: `spool_fsyncs_total` at the end of the run.
    spool_fsyncs: Option<f64>,
    /// Arrival → consumer delivery.
    e2e: Pcts,
    /// Raw: publish → confirm (exact). Bridge: read → confirm (histogram).
    confirm: Pcts,
    confirm_from_histogram: bool,
    /// Arrivals and deliveries (for the backlog).
    arrivals: Vec<u64>,
    delivered: Vec<u64>,
    /// Bridge only: AMI send checks.
    send: Option<SendCheck>,
    /// Bridge only: /metrics samples.
    samples: Vec<Sample>,
    notes: Vec<String>,
    ok: bool,
}

#[derive(Debug, Clone, Copy)]
struct SendCheck {
    /// First to last event handed to the bridge's socket, s.
    duration: f64,
    /// Largest (event handed over − its place in the schedule), ms.
    max_lag_ms: f64,
    /// Where in the schedule (s) the worst lag was.
    max_lag_at_s: f64,
    /// Longest wait in one write to the bridge's socket (ms), when (s after
    /// the first event), and all waits together (ms).
    longest_write_ms: f64,
    longest_write_at_s: f64,
    write_wait_ms: f64,
    /// When /metrics `ami_events_total` first showed every event, s after
    /// the first event.
    read_all_s: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    t_us: u64,
    events: f64,
    published: f64,
    confirmed: f64,
    spool: f64,
}

impl Outcome {
    fn throughput(&self) -> f64 {
        let d = self.last_delivery_us.saturating_sub(self.start_us) as f64 / 1e6;
        if d > 0.0 { self.n as f64 / d } else { 0.0 }
    }
    fn throughput_confirm(&self) -> Option<f64> {
        let d = self.last_confirm_us?.saturating_sub(self.start_us) as f64 / 1e6;
        (d > 0.0).then(|| self.n as f64 / d)
    }
    fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_s * 1e6 / self.n.max(1) as f64
    }
}

fn e2e_latencies(arrivals: &[u64], delivered: &[u64]) -> Vec<u64> {
    arrivals
        .iter()
        .zip(delivered)
        .filter(|(a, d)| **a > 0 && **d > 0)
        .map(|(a, d)| d.saturating_sub(*a))
        .collect()
}

async fn run_raw(s: &Setup, scenario: &str, pace: Pace, batched: bool) -> Res<Outcome> {
    let n = s.names.len();
    let side = if batched { "raw-batched" } else { "raw" };
    let sink = s.sink(&format!("{}.{scenario}.{side}", s.exchange)).await?;
    let out_path = s.dir.path().join(format!("{side}-{scenario}.bin"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .env("AMI2AMQP_BENCH_ROLE", "raw")
        .env("BENCH_RAW_URL", &s.url)
        .env("BENCH_RAW_MAPPINGS", &s.mappings)
        .env("BENCH_RAW_OUT", &out_path)
        .env("BENCH_RAW_WINDOW", s.window.to_string())
        .env("BENCH_RAW_PACE", pace.env())
        .env("BENCH_RAW_BATCHED", if batched { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start raw publisher: {e}"))?;
    let pid = child.id().ok_or("no pid")?;
    let mut stdin = child.stdin.take().ok_or("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .map_err(|_| "raw publisher not ready in 120 s")?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if !line.starts_with("ready") {
        return Err(format!("raw publisher: {line:?}"));
    }
    let perf = start_perf(s, scenario, side, pid);
    if perf.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu0 = cpu_ticks(pid).ok_or("cpu")?;
    let cs0 = ctx_switches(pid);
    let start_us = now_us();
    stdin.write_all(b"go\n").await.map_err(|e| e.to_string())?;
    let limit = scenario_limit(&pace, n);
    let done = tokio::time::timeout(limit, lines.next_line())
        .await
        .map_err(|_| format!("raw publisher not done in {limit:?}"))?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let cpu1 = cpu_ticks(pid).ok_or("cpu")?;
    let cs1 = ctx_switches(pid);
    let hwm = vm_bytes(pid, "VmHWM");
    stop_perf(perf).await;
    let mut o = Outcome {
        n,
        start_us,
        cpu_s: (cpu1 - cpu0) as f64 / s.tck,
        ctx_switches: cs1.saturating_sub(cs0),
        hwm,
        ..Default::default()
    };
    let mut f = done.split_whitespace().skip(1);
    let (ret, nack) = (f.next().unwrap_or("?"), f.next().unwrap_or("?"));
    if ret != "0" || nack != "0" {
        o.notes.push(format!("returned {ret}, nacked {nack}"));
    }
    stdin
        .write_all(b"exit\n")
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let bytes = std::fs::read(&out_path).map_err(|e| e.to_string())?;
    let col = |k: usize| -> Vec<u64> {
        bytes[k * n * 8..(k + 1) * n * 8]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect()
    };
    if bytes.len() != n * 24 {
        return Err("raw publisher result file has the wrong size".into());
    }
    let (arrival, published, confirmed) = (col(0), col(1), col(2));
    o.ok = sink
        .wait_all(n, tokio::time::Instant::now() + Duration::from_secs(60))
        .await;
    let delivered = sink.deliveries();
    note_sink(&sink, &mut o);
    sink.close().await;
    o.last_delivery_us = delivered.iter().copied().max().unwrap_or(0);
    o.last_confirm_us = confirmed.iter().copied().max();
    o.e2e = pcts(e2e_latencies(&arrival, &delivered));
    o.confirm = pcts(
        published
            .iter()
            .zip(&confirmed)
            .map(|(p, c)| c.saturating_sub(*p))
            .collect(),
    );
    o.arrivals = arrival;
    o.delivered = delivered;
    Ok(o)
}

fn note_sink(sink: &Sink, o: &mut Outcome) {
    let n = sink.count.load(Ordering::Relaxed);
    if n < o.n {
        o.notes
            .push(format!("only {n} of {} messages reached the consumer", o.n));
    }
    let w = sink.wrong.load(Ordering::Relaxed);
    if w > 0 {
        o.notes
            .push(format!("{w} messages did not match their event (type/seq)"));
    }
    let d = sink.dups.load(Ordering::Relaxed);
    if d > 0 {
        o.notes.push(format!("{d} duplicate deliveries"));
    }
    let r = sink.reordered.load(Ordering::Relaxed);
    if r > 0 {
        o.notes.push(format!("{r} messages arrived out of order"));
    }
}

fn scenario_limit(pace: &Pace, n: usize) -> Duration {
    match pace {
        Pace::Max => Duration::from_secs(180),
        Pace::Rate(r) => Duration::from_secs_f64(n as f64 / r + 120.0),
        Pace::Timing => Duration::from_secs(150),
    }
}

/// What the relay saw.
#[derive(Default)]
struct Relay {
    /// When the gate opened (µs).
    opened_us: u64,
    /// Time each event's last byte was handed to the bridge's socket.
    times: Vec<u64>,
    wrong_names: usize,
    /// Longest single write to the bridge's socket (µs) and when it
    /// started: a write only waits when the bridge stops reading and the
    /// socket buffer is full.
    longest_write_us: u64,
    longest_write_at_us: u64,
    /// Total time spent waiting in writes to the bridge's socket (µs).
    write_wait_us: u64,
}

/// Accepts the bridge's AMI connection, waits for the gate, then connects
/// to the replay and relays both ways; with `track`, decodes what it
/// forwards to stamp every event.
async fn relay(
    listener: TcpListener,
    gate: tokio::sync::oneshot::Receiver<()>,
    replay: String,
    track: bool,
    names: Arc<Vec<String>>,
    state: Arc<Mutex<Relay>>,
) -> Res<()> {
    let (client, _) = listener.accept().await.map_err(|e| e.to_string())?;
    gate.await.map_err(|_| "gate dropped")?;
    state.lock().unwrap_or_else(|p| p.into_inner()).opened_us = now_us();
    let server = TcpStream::connect(&replay)
        .await
        .map_err(|e| format!("connect to replay: {e}"))?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut codec = AmiCodec::new(Limits::default());
    let mut pending = BytesMut::new();
    let mut times = Vec::with_capacity(if track { names.len() } else { 0 });
    let mut wrong = 0usize;
    let mut write_wait = 0u64;
    let mut longest = (0u64, 0u64);
    loop {
        let k = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        let t = now_us();
        if cw.write_all(&buf[..k]).await.is_err() {
            break;
        }
        let w = now_us().saturating_sub(t);
        write_wait += w;
        if w > longest.0 {
            longest = (w, t);
        }
        if track {
            use tokio_util::codec::Decoder;
            pending.extend_from_slice(&buf[..k]);
            while let Ok(Some(f)) = codec.decode(&mut pending) {
                if let Frame::Message(m) = f
                    && m.kind() == Kind::Event
                {
                    let i = times.len();
                    if names.get(i).map(|s| s.as_str()) != m.event_name().as_deref() {
                        wrong += 1;
                    }
                    times.push(t);
                }
            }
        }
    }
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.times = times;
    st.wrong_names = wrong;
    st.longest_write_us = longest.0;
    st.longest_write_at_us = longest.1;
    st.write_wait_us = write_wait;
    Ok(())
}

async fn start_replay(s: &Setup, pace: &Pace, log: &Path) -> Res<(tokio::process::Child, String)> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(&s.bin)
        .arg("replay")
        .args(["--listen", "127.0.0.1:0", "--once"])
        .args(pace.replay_args())
        .arg(repo().join(TRACE))
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start replay: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| "replay did not start")?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("replay said {line:?}"))?
        .to_string();
    // Keep reading its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

fn free_port() -> Res<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

async fn run_bridge(s: &Setup, scenario: &str, pace: Pace) -> Res<Outcome> {
    let n = s.names.len();
    let track = pace != Pace::Max;
    let sink = s.sink(&format!("{}.{scenario}.bridge", s.exchange)).await?;
    let work = s.dir.path().join(format!("bridge-{scenario}"));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let (mut replay, replay_addr) = start_replay(s, &pace, &work.join("replay.log")).await?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let ami_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let spool_dir = match std::env::var("BENCH_SPOOL_DIR") {
        // An experiment: the spool somewhere else (e.g. /dev/shm); removed
        // at the end of the run.
        Ok(d) => Path::new(&d).join(format!(
            "ami2amqp-bench-spool.{}.{scenario}",
            std::process::id()
        )),
        Err(_) => work.join("spool"),
    };
    let config = work.join("ami2amqp.toml");
    // Defaults everywhere (confirm window, fsync interval, spool sizes…)
    // except where things live. One AMI connection: no action connections.
    let text = format!(
        r#"[amqp]
url = "{url}"

[[server]]
name = "{SERVER}"
address = "{ami_addr}"
username = "bench"
secret = "bench"
action_connections = 0

[mappings]
dir = "{mappings}"
watch = false

[spool]
dir = "{spool}"
{fsync}

[metrics]
listen = "{metrics}"

[status]
exchange = "{exchange}"
"#,
        url = s.url,
        mappings = s.mappings.display(),
        spool = spool_dir.display(),
        exchange = s.exchange,
        // An experiment: another fsync interval than the default.
        fsync = std::env::var("BENCH_FSYNC_MS")
            .map(|v| format!("fsync_interval_ms = {v}"))
            .unwrap_or_default(),
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(work.join("bridge.log")).map_err(|e| e.to_string())?;
    let mut bridge = tokio::process::Command::new(&s.bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start bridge: {e}"))?;
    let pid = bridge.id().ok_or("no pid")?;
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel();
    let relay_state = Arc::new(Mutex::new(Relay::default()));
    let relay_task = tokio::spawn(relay(
        listener,
        gate_rx,
        replay_addr,
        track,
        s.names.clone(),
        relay_state.clone(),
    ));

    // Wait for the broker connection (exchanges declared).
    let up_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = http_get(&metrics, "/healthz").await
            && h.contains("\"broker\":\"connected\"")
        {
            break;
        }
        if Instant::now() > up_deadline {
            return Err(format!(
                "bridge did not connect to the broker in 30 s; log: {}",
                tail(&work.join("bridge.log"))
            ));
        }
        if let Ok(Some(st)) = bridge.try_wait() {
            return Err(format!(
                "bridge exited ({st}); log: {}",
                tail(&work.join("bridge.log"))
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hwm_before = vm_bytes(pid, "VmHWM");

    // Metrics poller.
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let poller = {
        let (samples, stop, metrics) = (samples.clone(), stop.clone(), metrics.clone());
        let every = if pace == Pace::Timing { 50 } else { 100 };
        tokio::spawn(async move {
            loop {
                let t_us = now_us();
                if let Some(text) = http_get(&metrics, "/metrics").await {
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Sample {
                            t_us,
                            events: prom_sum(&text, "ami_events_total"),
                            published: prom_sum(&text, "amqp_published_total"),
                            confirmed: prom_sum(&text, "amqp_confirmed_total"),
                            spool: prom_sum(&text, "spool_messages"),
                        });
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(every)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        })
    };

    let perf = start_perf(s, scenario, "bridge", pid);
    if perf.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let cpu0 = cpu_ticks(pid).ok_or("cpu")?;
    let cs0 = ctx_switches(pid);
    let start_us = now_us();
    let _ = gate_tx.send(());
    let ok = sink
        .wait_all(n, tokio::time::Instant::now() + scenario_limit(&pace, n))
        .await;
    let cpu1 = cpu_ticks(pid).ok_or("cpu")?;
    let cs1 = ctx_switches(pid);
    let hwm = vm_bytes(pid, "VmHWM");
    stop_perf(perf).await;
    // Idle: the spool drained, nothing arriving; long enough for the
    // bridge's memory task (3 s period) to see the burst is over and trim.
    tokio::time::sleep(Duration::from_millis(7000)).await;
    let rss_idle = vm_bytes(pid, "VmRSS");
    stop.cancel();
    let _ = poller.await;
    let text = http_get(&metrics, "/metrics").await;
    let hist = text
        .as_deref()
        .map(|t| prom_buckets(t, "publish_latency_seconds"))
        .unwrap_or_default();
    let spool_fsyncs = text.as_deref().map(|t| prom_sum(t, "spool_fsyncs_total"));

    // Stop the bridge (SIGTERM: it logs off and exits), then the replay.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    if tokio::time::timeout(Duration::from_secs(20), bridge.wait())
        .await
        .is_err()
    {
        let _ = bridge.kill().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), replay.wait()).await;
    let _ = replay.kill().await;
    if !spool_dir.starts_with(s.dir.path()) {
        let _ = std::fs::remove_dir_all(&spool_dir);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), relay_task).await;

    let delivered = sink.deliveries();
    let mut o = Outcome {
        n,
        start_us,
        cpu_s: (cpu1 - cpu0) as f64 / s.tck,
        ctx_switches: cs1.saturating_sub(cs0),
        hwm,
        rss_idle,
        spool_fsyncs,
        ok,
        ..Default::default()
    };
    if hwm_before.is_some() && hwm_before == hwm {
        o.notes
            .push("peak RSS was reached before the events started".into());
    }
    note_sink(&sink, &mut o);
    sink.close().await;
    if !ok {
        o.notes.push(format!(
            "timed out; bridge log: {}",
            tail(&work.join("bridge.log"))
        ));
    }
    o.last_delivery_us = delivered.iter().copied().max().unwrap_or(0);
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    // +1: the bridge's own "connected" status message.
    o.last_confirm_us = first_at_least(&samples, |x| x.confirmed, n as f64 + 1.0);
    let st = std::mem::take(&mut *relay_state.lock().unwrap_or_else(|p| p.into_inner()));
    if st.wrong_names > 0 {
        o.notes.push(format!(
            "relay: {} events out of place against the trace",
            st.wrong_names
        ));
    }
    if track {
        if st.times.len() != n {
            o.notes.push(format!(
                "relay stamped {} events, expected {n}",
                st.times.len()
            ));
        }
        let first = st.times.first().copied().unwrap_or(0);
        let sched: Vec<Duration> = match pace {
            Pace::Timing => s.timing.clone(),
            Pace::Rate(r) => (0..n)
                .map(|i| Duration::from_secs_f64(i as f64 / r))
                .collect(),
            Pace::Max => vec![],
        };
        let (max_lag_us, max_lag_at) = st
            .times
            .iter()
            .zip(&sched)
            .map(|(t, at)| {
                (
                    t.saturating_sub(first) as i64 - at.as_micros() as i64,
                    at.as_secs_f64(),
                )
            })
            .fold((0i64, 0.0f64), |a, b| if b.0 > a.0 { b } else { a });
        o.send = Some(SendCheck {
            duration: st.times.last().copied().unwrap_or(0).saturating_sub(first) as f64 / 1e6,
            max_lag_ms: max_lag_us as f64 / 1000.0,
            max_lag_at_s: max_lag_at,
            longest_write_ms: st.longest_write_us as f64 / 1000.0,
            longest_write_at_s: st.longest_write_at_us.saturating_sub(first) as f64 / 1e6,
            write_wait_ms: st.write_wait_us as f64 / 1000.0,
            read_all_s: first_at_least(&samples, |x| x.events, n as f64)
                .map(|t| t.saturating_sub(first) as f64 / 1e6),
        });
        o.e2e = pcts(e2e_latencies(&st.times, &delivered));
        o.arrivals = st.times;
    }
    o.confirm = Pcts {
        n: hist.last().map_or(0, |b| b.1 as usize),
        p50: bucket_quantile(&hist, 0.5).unwrap_or(f64::NAN),
        p99: bucket_quantile(&hist, 0.99).unwrap_or(f64::NAN),
        p999: bucket_quantile(&hist, 0.999).unwrap_or(f64::NAN),
        max: f64::NAN,
    };
    o.confirm_from_histogram = true;
    o.delivered = delivered;
    o.samples = samples;
    let _ = st.opened_us;
    Ok(o)
}

/// The first sample time at which `f` reached `v`, interpolated between
/// polls.
fn first_at_least(samples: &[Sample], f: impl Fn(&Sample) -> f64, v: f64) -> Option<u64> {
    let i = samples.iter().position(|x| f(x) >= v)?;
    if i == 0 {
        return Some(samples[0].t_us);
    }
    let (a, b) = (&samples[i - 1], &samples[i]);
    let (fa, fb) = (f(a), f(b));
    let frac = if fb > fa { (v - fa) / (fb - fa) } else { 1.0 };
    Some(a.t_us + ((b.t_us - a.t_us) as f64 * frac) as u64)
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Backlog over time: arrived − delivered, sampled every 10 ms.
struct Backlog {
    peak: usize,
    peak_at_s: f64,
    /// Intervals (s after the start) with more than `threshold` waiting.
    episodes: Vec<(f64, f64, usize)>,
}

fn backlog(arrivals: &[u64], delivered: &[u64], start: u64, threshold: usize) -> Backlog {
    let mut a: Vec<u64> = arrivals.iter().copied().filter(|&x| x > 0).collect();
    let mut d: Vec<u64> = delivered.iter().copied().filter(|&x| x > 0).collect();
    a.sort_unstable();
    d.sort_unstable();
    let end = a
        .last()
        .copied()
        .unwrap_or(start)
        .max(d.last().copied().unwrap_or(start));
    let (mut i, mut j) = (0, 0);
    let mut b = Backlog {
        peak: 0,
        peak_at_s: 0.0,
        episodes: vec![],
    };
    let mut open: Option<(f64, usize)> = None;
    let mut t = start;
    while t <= end + 10_000 {
        while i < a.len() && a[i] <= t {
            i += 1;
        }
        while j < d.len() && d[j] <= t {
            j += 1;
        }
        let q = i.saturating_sub(j);
        let ts = t.saturating_sub(start) as f64 / 1e6;
        if q > b.peak {
            b.peak = q;
            b.peak_at_s = ts;
        }
        match (&mut open, q > threshold) {
            (None, true) => open = Some((ts, q)),
            (Some((_, p)), true) => *p = (*p).max(q),
            (Some((s0, p)), false) => {
                b.episodes.push((*s0, ts, *p));
                open = None;
            }
            (None, false) => {}
        }
        t += 10_000;
    }
    if let Some((s0, p)) = open {
        b.episodes
            .push((s0, end.saturating_sub(start) as f64 / 1e6, p));
    }
    b
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn mb(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
}

fn ms3(p: &Pcts) -> String {
    if p.n == 0 {
        return "-".into();
    }
    format!("{:.2} / {:.2} / {:.2}", p.p50, p.p99, p.p999)
}

fn row(label: &str, raw: &str, bridge: &str, note: &str) {
    println!("  {label:<38} {raw:>22} {bridge:>22}   {note}");
}

fn header(title: &str) {
    println!();
    println!("{title}");
    row("", "raw lapin", "bridge", "");
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.0} GB", kb as f64 / 1e6));
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{cpu}, {cores} cores, {mem} RAM, Linux {kernel}; load average before the run: {load}")
}

fn rabbitmq_version() -> String {
    for (cmd, args) in [
        ("rabbitmqctl", &["version"][..]),
        ("rabbitmq-diagnostics", &["server_version", "-q"][..]),
    ] {
        for dir in ["", "/usr/sbin/", "/usr/local/sbin/", "/sbin/"] {
            if let Ok(o) = std::process::Command::new(format!("{dir}{cmd}"))
                .args(args)
                .stderr(Stdio::null())
                .output()
                && o.status.success()
            {
                let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if !v.is_empty() {
                    return v;
                }
            }
        }
    }
    "unknown (rabbitmqctl not available)".into()
}

fn main() {
    if std::env::var("AMI2AMQP_BENCH_ROLE").as_deref() == Ok("raw") {
        raw::main();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // target without it, and must not start a three-minute benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        match smoke() {
            Ok(n) => println!(
                "bench bridge: smoke test ok ({n} events of calls_small mapped, encoded and decoded); `cargo bench --bench bridge` for numbers"
            ),
            Err(e) => {
                eprintln!("bench bridge: smoke test failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = rt.block_on(orchestrate()) {
        eprintln!("bench bridge: error: {e}");
        std::process::exit(1);
    }
}

/// A quick check of the glue (no broker, small trace): mapping, records,
/// properties, the percentile and histogram helpers.
fn smoke() -> Res<usize> {
    let trace = [repo().join("tests/traces/calls_small.ami")];
    let timing = [repo().join("tests/traces/calls_small.timing")];
    let stream = EventStream::load(&trace, Some(&timing[..]), false).map_err(|e| e.to_string())?;
    let router =
        ami2amqp::mapping::load_dir(&repo().join("mappings")).map_err(|e| e.to_string())?;
    let server: Arc<str> = Arc::from(SERVER);
    let mut out = Vec::new();
    for (i, ev) in stream.events.iter().enumerate() {
        let m = decode_event(&ev.bytes)?;
        let ctx = EventCtx {
            server: &server,
            seq: i as u64 + 1,
            received_at: SystemTime::now(),
            message: &m,
            instance: RAW_INSTANCE,
        };
        out.clear();
        router.route(&ctx, &mut out);
        for o in out.drain(..) {
            let rec = Record {
                received_at_us: now_us(),
                server: server.clone(),
                seq: i as u64 + 1,
                msg: o,
            };
            let mut b = Vec::new();
            rec.encode(&mut b);
            let back = Record::decode(&b)?;
            if back != rec {
                return Err(format!("record {} does not round-trip", i + 1));
            }
            let p = properties(&rec);
            let id = p.message_id().as_ref().map(|x| x.as_str().to_string());
            let seq = id
                .as_deref()
                .and_then(|id| id.rsplit(':').nth(1)?.parse::<u64>().ok());
            if seq != Some(i as u64 + 1) {
                return Err(format!("message id {id:?} does not carry seq {}", i + 1));
            }
        }
    }
    let p = pcts((1..=1000).collect());
    let b = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
    if p.p50 != 0.5 || bucket_quantile(&b, 0.5).map(|x| (x - 1.0).abs() < 1e-9) != Some(true) {
        return Err("percentile helpers".into());
    }
    Ok(stream.events.len())
}

/// CPU cost of the bridge's own per-event stages, in-process, one thread,
/// no broker (best of 3 passes over the trace): what the bridge adds on top
/// of a lapin publish.
fn stage_costs(mappings: &Path) -> Res<Vec<(&'static str, f64)>> {
    use std::hint::black_box;
    let stream = load_stream(false)?;
    let data = ami2amqp::trace::read_trace(repo().join(TRACE)).map_err(|e| e.to_string())?;
    let router = ami2amqp::mapping::load_dir(mappings).map_err(|e| e.to_string())?;
    let n = stream.events.len() as f64;
    let best = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
            * 1e9
            / n
    };
    // AMI decode of the stream in 64 KiB reads (as benches/parse.rs).
    let decode_ns = best(&mut || {
        use tokio_util::codec::Decoder;
        let mut codec = AmiCodec::new(Limits::default());
        let mut buf = BytesMut::with_capacity(128 * 1024);
        for chunk in data.chunks(64 * 1024) {
            buf.extend_from_slice(chunk);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                black_box(f);
            }
        }
    });
    let msgs: Vec<Message> = stream
        .events
        .iter()
        .map(|e| decode_event(&e.bytes))
        .collect::<Res<_>>()?;
    let server: Arc<str> = Arc::from(SERVER);
    let now = SystemTime::now();
    let route_one = |i: usize, m: &Message, out: &mut Vec<ami2amqp::mapping::Outgoing>| {
        let ctx = EventCtx {
            server: &server,
            seq: i as u64 + 1,
            received_at: now,
            message: m,
            instance: RAW_INSTANCE,
        };
        out.clear();
        router.route(&ctx, out);
    };
    let mut out = Vec::new();
    let route_ns = best(&mut || {
        for (i, m) in msgs.iter().enumerate() {
            route_one(i, m, &mut out);
            black_box(&out);
        }
    });
    let mut recs = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        route_one(i, m, &mut out);
        for o in out.drain(..) {
            recs.push(Record {
                received_at_us: now_us(),
                server: server.clone(),
                seq: i as u64 + 1,
                msg: o,
            });
        }
    }
    let mut buf = Vec::with_capacity(4 << 20);
    let encode_ns = best(&mut || {
        for r in &recs {
            buf.clear();
            r.encode(&mut buf);
            black_box(crc32fast::hash(&buf));
        }
    });
    let payloads: Vec<Vec<u8>> = recs
        .iter()
        .map(|r| {
            let mut b = Vec::new();
            r.encode(&mut b);
            b
        })
        .collect();
    let decode_rec_ns = best(&mut || {
        for p in &payloads {
            black_box(crc32fast::hash(p));
            black_box(Record::decode(p).ok());
        }
    });
    let props_ns = best(&mut || {
        for r in &recs {
            black_box(properties(r));
        }
    });
    Ok(vec![
        ("AMI decode (codec, 64 KiB reads)", decode_ns),
        ("route + JSON body (default mappings)", route_ns),
        ("spool record encode + CRC32", encode_ns),
        ("spool record CRC32 + decode", decode_rec_ns),
        ("AMQP properties (publisher::properties)", props_ns),
    ])
}

async fn orchestrate() -> Res<()> {
    let url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let scenarios = env_or("BENCH_SCENARIOS", "s,a,b,c");
    let sides = env_or("BENCH_SIDES", "raw,bridge,batched");
    let rate: f64 = env_or("BENCH_RATE", "5000")
        .parse()
        .map_err(|_| "BENCH_RATE")?;
    let queue_version: i64 = env_or("BENCH_QUEUE_VERSION", "2")
        .parse()
        .map_err(|_| "BENCH_QUEUE_VERSION")?;
    let window = ami2amqp::config::Amqp::default().confirm_window;
    let machine = machine();

    let t_setup = Instant::now();
    let timed = load_stream(true)?;
    let mut names = Vec::with_capacity(timed.events.len());
    for ev in &timed.events {
        let m = decode_event(&ev.bytes)?;
        names.push(m.event_name().unwrap_or_default().into_owned());
    }
    let timing: Vec<Duration> = timed.events.iter().map(|e| e.at).collect();
    let span = timing.last().copied().unwrap_or_default();
    let peak_1s = {
        let mut best = 0;
        let mut j = 0;
        for i in 0..timing.len() {
            while timing[i] - timing[j] >= Duration::from_secs(1) {
                j += 1;
            }
            best = best.max(i - j + 1);
        }
        best
    };
    drop(timed);

    let dir = tempfile::Builder::new()
        .prefix("ami2amqp-bench.")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let run_id = format!(
        "{}.{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let exchange = format!("ami2amqp.bench.{run_id}");
    let mappings = dir.path().join("mappings");
    std::fs::create_dir(&mappings).map_err(|e| e.to_string())?;
    for e in std::fs::read_dir(repo().join("mappings")).map_err(|e| e.to_string())? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let t = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
            let t = t.replace("\"ami.events\"", &format!("\"{exchange}\""));
            std::fs::write(mappings.join(p.file_name().ok_or("name")?), t)
                .map_err(|e| e.to_string())?;
        }
    }

    let admin = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| {
            format!("cannot connect to {url}: {e} (start RabbitMQ: scripts/ensure-rabbitmq.sh)")
        })?;
    {
        // The exchange exactly as the bridge declares it.
        let ch = admin.create_channel().await.map_err(|e| e.to_string())?;
        let mut args = FieldTable::default();
        args.insert(
            short("alternate-exchange"),
            AMQPValue::LongString("ami.unroutable".as_bytes().into()),
        );
        ch.exchange_declare(
            short(&exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|e| format!("declare exchange: {e}"))?;
        let _ = ch.close(200, short("ok")).await;
    }
    let s = Setup {
        url: url.clone(),
        bin: PathBuf::from(env!("CARGO_BIN_EXE_ami2amqp")),
        dir,
        exchange: exchange.clone(),
        mappings,
        window,
        queue_version,
        names: Arc::new(names),
        timing,
        admin,
        tck: clk_tck(),
        perf: std::env::var("BENCH_PERF").ok(),
    };
    let n = s.names.len();

    println!("ami2amqp bridge benchmark");
    println!("  machine:   {machine}");
    println!(
        "  broker:    RabbitMQ {} at {}",
        rabbitmq_version(),
        ami2amqp::config::redact_url(&url)
    );
    println!(
        "  messages:  {n} (calls_busy: one persistent JSON message per event, default mappings), exchange {exchange}"
    );
    println!(
        "  both:      confirm window {window} (the bridge's default), mandatory, durable queue x-queue-version {queue_version} bound with #, auto-ack consumer in this process"
    );
    println!(
        "  trace:     recorded span {:.1} s, busiest 1-s window {peak_1s} events",
        span.as_secs_f64()
    );
    println!("  setup:     {:.1} s", t_setup.elapsed().as_secs_f64());
    std::io::stdout().flush().ok();

    let mut results: BTreeMap<&str, (Res<Outcome>, Res<Outcome>)> = BTreeMap::new();
    if scenarios.split(',').any(|x| x.trim() == "s") {
        println!();
        println!(
            "(s) the bridge's own per-event work, in-process, one thread, no broker (best of 3)"
        );
        let stages = stage_costs(&s.mappings)?;
        let total: f64 = stages.iter().map(|x| x.1).sum();
        for (name, ns) in &stages {
            println!("  {name:<44} {:>8.2} µs/event", ns / 1000.0);
        }
        println!("  {:<44} {:>8.2} µs/event", "sum", total / 1000.0);
        std::io::stdout().flush().ok();
    }
    let plan: Vec<(&str, Pace)> = vec![
        ("a", Pace::Max),
        ("b", Pace::Rate(rate)),
        ("c", Pace::Timing),
    ];
    for (name, pace) in plan {
        if !scenarios.split(',').any(|x| x.trim() == name) {
            continue;
        }
        let t = Instant::now();
        let raw = if sides.contains("raw") {
            eprintln!("bench bridge: scenario {name} ({}) raw…", pace.env());
            let r = run_raw(&s, name, pace.clone(), false).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            r
        } else {
            Err("skipped (BENCH_SIDES)".to_string())
        };
        let bridge = if sides.contains("bridge") {
            eprintln!("bench bridge: scenario {name} ({}) bridge…", pace.env());
            let b = run_bridge(&s, name, pace.clone()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            b
        } else {
            Err("skipped (BENCH_SIDES)".to_string())
        };
        eprintln!(
            "bench bridge: scenario {name} took {:.0} s",
            t.elapsed().as_secs_f64()
        );
        report(name, &pace, &raw, &bridge, window);
        if name == "a" && sides.contains("batched") {
            eprintln!("bench bridge: scenario a, raw with batched publishes…");
            match run_raw(&s, name, pace.clone(), true).await {
                Ok(o) => {
                    println!(
                        "  raw lapin, each batch of publishes started together (join_all): {:.0}/s, {:.1} µs CPU and {:.2} context switches per message{}",
                        o.throughput(),
                        o.cpu_us_per_msg(),
                        o.ctx_switches as f64 / o.n.max(1) as f64,
                        if o.notes.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", o.notes.join("; "))
                        }
                    );
                }
                Err(e) => println!("  raw lapin with batched publishes: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        results.insert(name, (raw, bridge));
    }
    targets(&results, rate);

    {
        let ch = s.admin.create_channel().await.map_err(|e| e.to_string())?;
        let _ = ch
            .exchange_delete(short(&exchange), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = s.admin.close(200, short("bye")).await;
    if std::env::var("BENCH_KEEP").is_ok() {
        let p = s.dir.keep();
        println!("\nkept {}", p.display());
    }
    Ok(())
}

fn report(name: &str, pace: &Pace, raw: &Res<Outcome>, bridge: &Res<Outcome>, window: usize) {
    let title = match name {
        "a" => "(a) max speed: every message as fast as it goes".to_string(),
        "b" => format!(
            "(b) fixed rate: {} messages/s (replay --rate)",
            match pace {
                Pace::Rate(r) => *r,
                _ => 0.0,
            }
        ),
        _ => "(c) real burst: calls_busy at its recorded pace (replay --timing)".to_string(),
    };
    header(&title);
    let empty = Outcome::default();
    let (r, b) = match (raw, bridge) {
        (Ok(r), Ok(b)) => (r, b),
        (Ok(r), Err(e)) => {
            println!("  bridge: {e}");
            (r, &empty)
        }
        (Err(e), Ok(b)) => {
            println!("  raw: {e}");
            (&empty, b)
        }
        (Err(a), Err(b)) => {
            println!("  raw: {a}");
            println!("  bridge: {b}");
            return;
        }
    };
    let fmt_rate = |x: f64| format!("{x:.0}/s");
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { 0.0 };
    let (tr, tb) = (r.throughput(), b.throughput());
    row(
        "throughput to the consumer (msg/s)",
        &fmt_rate(tr),
        &fmt_rate(tb),
        &format!("bridge/raw {:.2}", ratio(tr, tb)),
    );
    if let (Some(cr), Some(cb)) = (r.throughput_confirm(), b.throughput_confirm()) {
        row(
            "throughput to the last confirm",
            &fmt_rate(cr),
            &fmt_rate(cb),
            &format!("bridge/raw {:.2} (bridge: /metrics polls)", ratio(cr, cb)),
        );
    }
    row(
        "wall time (s)",
        &format!(
            "{:.2}",
            r.last_delivery_us.saturating_sub(r.start_us) as f64 / 1e6
        ),
        &format!(
            "{:.2}",
            b.last_delivery_us.saturating_sub(b.start_us) as f64 / 1e6
        ),
        "",
    );
    row(
        "CPU per message (µs, user+sys)",
        &format!("{:.1}", r.cpu_us_per_msg()),
        &format!("{:.1}", b.cpu_us_per_msg()),
        &format!(
            "bridge/raw {:.2}; CPU s {:.2} / {:.2}",
            ratio(r.cpu_us_per_msg(), b.cpu_us_per_msg()),
            r.cpu_s,
            b.cpu_s
        ),
    );
    row(
        "context switches per message",
        &format!("{:.2}", r.ctx_switches as f64 / r.n.max(1) as f64),
        &format!("{:.2}", b.ctx_switches as f64 / b.n.max(1) as f64),
        "all threads, /proc/<pid>/task/*/status",
    );
    if *pace != Pace::Max {
        row(
            "arrival→consumer p50/p99/p99.9 (ms)",
            &ms3(&r.e2e),
            &ms3(&b.e2e),
            "raw: due→delivered; bridge: on its socket→delivered",
        );
        row(
            "arrival→consumer max (ms)",
            &format!("{:.2}", r.e2e.max),
            &format!("{:.2}", b.e2e.max),
            "",
        );
    }
    row(
        "publish→confirm p50/p99/p99.9 (ms)",
        &ms3(&r.confirm),
        &if b.confirm.n > 0 {
            format!("~{}", ms3(&b.confirm))
        } else {
            "-".into()
        },
        if *pace == Pace::Max {
            "bridge: read→confirm, /metrics histogram; includes the wait in the spool"
        } else {
            "bridge: read→confirm, /metrics histogram (interpolated)"
        },
    );
    row(
        "peak RSS (VmHWM)",
        &mb(r.hwm),
        &mb(b.hwm),
        "raw holds all messages in memory",
    );
    row("RSS when idle after the run", "-", &mb(b.rss_idle), "");
    if *pace != Pace::Max {
        let thr = window.max(1000);
        for (side, o) in [("raw", r), ("bridge", b)] {
            let arr = &o.arrivals;
            let bl = backlog(arr, &o.delivered, o.start_us, thr);
            let mut eps: Vec<String> = bl
                .episodes
                .iter()
                .take(5)
                .map(|(a, z, p)| format!("{a:.2}–{z:.2} s (peak {p})"))
                .collect();
            if bl.episodes.len() > 5 {
                eps.push(format!("… {} more", bl.episodes.len() - 5));
            }
            println!(
                "  {side:<7} backlog (arrived, not yet at the consumer): peak {} at {:.2} s; over {thr}: {}",
                bl.peak,
                bl.peak_at_s,
                if eps.is_empty() {
                    "never".into()
                } else {
                    eps.join(", ")
                }
            );
        }
        if *pace == Pace::Timing {
            for (side, o) in [("raw", r), ("bridge", b)] {
                let bl = backlog(&o.arrivals, &o.delivered, o.start_us, thr);
                // The episode with the peak: a 10 ms blip over the
                // threshold can come just before the real backlog.
                if let Some((a, z, p)) = bl
                    .episodes
                    .iter()
                    .find(|(a, z, _)| *a <= bl.peak_at_s && bl.peak_at_s <= *z)
                    .or(bl.episodes.first())
                {
                    println!(
                        "  {side:<7} after the burst: backlog over {thr} from {a:.2} s to {z:.2} s ({:.2} s, peak {p})",
                        z - a
                    );
                }
            }
        }
        if let Some(sc) = b.send {
            println!(
                "  AMI socket: replay → bridge took {:.2} s for the trace's {} schedule; worst lag behind schedule {:.1} ms (at {:.2} s); /metrics ami_events_total complete {}",
                sc.duration,
                match pace {
                    Pace::Timing => "15.8 s".to_string(),
                    Pace::Rate(r) => format!("{:.1} s", (r_n(b) as f64 - 1.0) / r),
                    Pace::Max => "-".into(),
                },
                sc.max_lag_ms,
                sc.max_lag_at_s,
                sc.read_all_s.map_or("never seen".into(), |t| format!(
                    "{t:.2} s after the first event"
                ))
            );
        }
        if let Some(sc) = b.send {
            println!(
                "  AMI socket: longest wait writing to the bridge's socket {:.1} ms (at {:.2} s), {:.1} ms in all (the bridge not reading)",
                sc.longest_write_ms, sc.longest_write_at_s, sc.write_wait_ms
            );
        }
        let peak_spool = b.samples.iter().map(|x| x.spool).fold(0.0, f64::max);
        let peak_unconf = b
            .samples
            .iter()
            .map(|x| x.events + 1.0 - x.confirmed)
            .fold(0.0, f64::max);
        let peak_flight = b
            .samples
            .iter()
            .map(|x| x.published - x.confirmed)
            .fold(0.0, f64::max);
        let full = b
            .samples
            .iter()
            .filter(|x| x.published - x.confirmed >= window as f64)
            .count();
        println!(
            "  bridge /metrics: peak spool_messages {peak_spool:.0}, peak read-but-unconfirmed {peak_unconf:.0}, peak in flight {peak_flight:.0} (window full in {full} of {} polls, every 50–100 ms); spool fsyncs {}",
            b.samples.len(),
            b.spool_fsyncs
                .map_or("?".into(), |f| format!("{:.0}", f + 0.0))
        );
        if let Ok(path) = std::env::var("BENCH_SAMPLES") {
            let mut csv = String::from("t_s,ami_events,published,confirmed,spool_messages\n");
            for x in &b.samples {
                csv.push_str(&format!(
                    "{:.3},{},{},{},{}\n",
                    x.t_us.saturating_sub(b.start_us) as f64 / 1e6,
                    x.events,
                    x.published,
                    x.confirmed,
                    x.spool
                ));
            }
            let _ = std::fs::write(format!("{path}.{name}.csv"), csv);
        }
        if let Some(last_arr) = b.arrivals.last() {
            println!(
                "  bridge drain: last message at the consumer {:.2} s after the last event was read",
                b.last_delivery_us.saturating_sub(*last_arr) as f64 / 1e6
            );
        }
        if let Some(last_arr) = r.arrivals.iter().max() {
            println!(
                "  raw drain:    last message at the consumer {:.2} s after the last one was due",
                r.last_delivery_us.saturating_sub(*last_arr) as f64 / 1e6
            );
        }
    }
    for (side, o) in [("raw", r), ("bridge", b)] {
        for note in &o.notes {
            println!("  note ({side}): {note}");
        }
    }
    std::io::stdout().flush().ok();
}

fn r_n(o: &Outcome) -> usize {
    o.n
}

fn targets(results: &BTreeMap<&str, (Res<Outcome>, Res<Outcome>)>, rate: f64) {
    if results.is_empty() {
        return;
    }
    println!();
    println!("targets");
    let get = |k: &str| match results.get(k) {
        Some((Ok(r), Ok(b))) => Some((r, b)),
        _ => None,
    };
    if let Some((r, b)) = get("a") {
        let q = b.throughput() / r.throughput().max(1e-9);
        println!(
            "  throughput ratio ≥ 0.9 (a):                     {:.2}  {}",
            q,
            verdict(q >= 0.9)
        );
        let c = b.cpu_us_per_msg() / r.cpu_us_per_msg().max(1e-9);
        println!(
            "  CPU per event ≤ 1.2 × raw (a, saturated):        {:.2}× ({:.1} vs {:.1} µs)  {}",
            c,
            b.cpu_us_per_msg(),
            r.cpu_us_per_msg(),
            verdict(c <= 1.2)
        );
    }
    if let Some((r, b)) = get("b") {
        println!(
            "  bridge p99 ≤ raw p99 + 2 ms at {rate:.0}/s (end to end): {:.2} vs {:.2} ms  {}",
            b.e2e.p99,
            r.e2e.p99,
            verdict(b.e2e.p99 <= r.e2e.p99 + 2.0)
        );
        println!(
            "      (publish→confirm: raw p99 {:.2} ms; bridge read→confirm histogram p99 ~{:.2} ms)",
            r.confirm.p99, b.confirm.p99
        );
        let c = b.cpu_us_per_msg() / r.cpu_us_per_msg().max(1e-9);
        println!(
            "  CPU per event ≤ 1.2 × raw (b, {rate:.0}/s):             {:.2}× ({:.1} vs {:.1} µs)  {}",
            c,
            b.cpu_us_per_msg(),
            r.cpu_us_per_msg(),
            verdict(c <= 1.2)
        );
        let rss = b.hwm.unwrap_or(u64::MAX);
        println!(
            "  RSS < 50 MB with the spool idle (b, peak):       {}  {}",
            mb(b.hwm),
            verdict(rss < 50_000_000)
        );
    }
    if let Some((_, b)) = get("c") {
        if let Some(sc) = b.send {
            let ok = sc.duration < 16.5 && sc.max_lag_ms < 250.0 && sc.longest_write_ms < 250.0;
            println!(
                "  AMI socket never stalls (c): sent in {:.2} s, worst lag {:.0} ms, longest blocked write {:.0} ms  {}",
                sc.duration,
                sc.max_lag_ms,
                sc.longest_write_ms,
                verdict(ok)
            );
        }
        println!(
            "  (c) peak RSS with the spool holding the backlog: {}",
            mb(b.hwm)
        );
    }
}
