//! The raw lapin publisher: this bench binary re-run as a child process
//! (`AMI2AMQP_BENCH_ROLE=raw`). It routes the trace with the library before
//! the clock starts, then publishes the ready messages on one channel in
//! confirm mode with the bridge's confirm window, in one of three ways
//! ([`Mode`], `BENCH_RAW_MODE`):
//!
//! * `pipelined` (the reference): each publish is started as soon as its
//!   message is due and there is room (at most `BENCH_RAW_IN_FLIGHT`, 64,
//!   publishes being written, at most the window unconfirmed), without
//!   waiting for the earlier ones to be written; confirms are taken as they
//!   come. What a careful user of lapin writes.
//! * `awaited`: each `basic_publish` awaited in turn — the obvious loop,
//!   which wakes lapin's I/O thread and is woken back once per message.
//! * `batched`: every publish that fits in the window started together
//!   (`join_all`), then awaited as a batch.
//!
//! Publishes are always *started* (first polled) in message order: lapin
//! queues a publish's frames and assigns its delivery tag on that first
//! poll, so this fixes frame order and tags whatever completes first.
//!
//! Protocol with the parent (stdin/stdout lines): it prints `ready <n>`,
//! waits for `go`, publishes, prints `done <returned> <nacked>`, waits for
//! any line, then writes the arrival, publish and confirm times (µs, three
//! columns of `n` little-endian u64) to `BENCH_RAW_OUT`.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ami2amqp::amqp::Record;
use ami2amqp::amqp::{properties, short};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt, BufReader};

use ami2amqp::mapping::Router;

use crate::Res;
use crate::trace::{Pace, SERVER, decode_event, load_stream, now_us, route_event};

struct Msg {
    exchange: ShortString,
    key: ShortString,
    body: Vec<u8>,
    props: Option<BasicProperties>,
    due: Duration,
}

/// The child's settings, from the environment the parent sets.
struct Params {
    url: String,
    mappings: PathBuf,
    out_path: PathBuf,
    window: usize,
    pace: Pace,
    mode: Mode,
    in_flight: usize,
}

/// How the publishes are driven (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Pipelined,
    Awaited,
    Batched,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Pipelined => "pipelined",
            Mode::Awaited => "awaited",
            Mode::Batched => "batched",
        }
    }

    fn parse(s: &str) -> Res<Mode> {
        [Mode::Pipelined, Mode::Awaited, Mode::Batched]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("BENCH_RAW_MODE {s:?}: pipelined, awaited or batched"))
    }
}

pub(crate) fn main() {
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

fn params() -> Res<Params> {
    Ok(Params {
        url: var("BENCH_RAW_URL")?,
        mappings: PathBuf::from(var("BENCH_RAW_MAPPINGS")?),
        out_path: PathBuf::from(var("BENCH_RAW_OUT")?),
        window: var("BENCH_RAW_WINDOW")?.parse().map_err(|_| "window")?,
        pace: Pace::parse(&var("BENCH_RAW_PACE")?)?,
        mode: Mode::parse(&var("BENCH_RAW_MODE")?)?,
        in_flight: var("BENCH_RAW_IN_FLIGHT")?
            .parse()
            .map_err(|_| "BENCH_RAW_IN_FLIGHT")?,
    })
}

async fn run() -> Res<()> {
    let p = params()?;
    // Everything the clock should not see: load, route, build.
    let (_router, mut msgs) = prepare(&p)?;
    let n = msgs.len();
    let props: Vec<Option<BasicProperties>> = msgs.iter_mut().map(|m| m.props.take()).collect();

    let conn = Connection::connect(&p.url, ConnectionProperties::default())
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

    let mut run = Publish::new(&ch, &msgs, props, p.window, p.mode, p.in_flight.max(1));
    run.run().await?;
    println!("done {} {}", run.returned, run.nacked);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let _ = stdin.next_line().await;
    let mut bytes = Vec::with_capacity(n * 24);
    for v in [&run.arrival, &run.published, &run.confirmed] {
        for x in v.iter() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(&p.out_path, bytes).map_err(|e| e.to_string())?;
    let _ = conn.close(200, short("bye")).await;
    Ok(())
}

/// Routes every event of the trace into a ready message (same exchange,
/// key, properties and body as the bridge's) with the time it is due. The
/// router is returned to live on as it did when this was one function.
fn prepare(p: &Params) -> Res<(Router, Vec<Msg>)> {
    let stream = load_stream(p.pace == Pace::Timing)?;
    let router = ami2amqp::mapping::load_dir(&p.mappings).map_err(|e| e.to_string())?;
    let server: Arc<str> = Arc::from(SERVER);
    let mut msgs = Vec::with_capacity(stream.events.len());
    let mut out = Vec::new();
    for (i, ev) in stream.events.iter().enumerate() {
        let m = decode_event(&ev.bytes)?;
        let received_at = SystemTime::now();
        let seq = i as u64 + 1;
        route_event(&router, &server, seq, received_at, &m, &mut out);
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
        let due = match p.pace {
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
    Ok((router, msgs))
}

type ConfirmFut = Pin<Box<dyn Future<Output = (usize, lapin::Result<Confirmation>)> + Send>>;
/// A started publish (pipelined mode): done when lapin has written it.
type SendFut<'a> =
    Pin<Box<dyn Future<Output = (usize, lapin::Result<lapin::PublisherConfirm>)> + Send + 'a>>;

/// The timed part: publishes as messages fall due, at most `window`
/// unconfirmed, and stamps each message's arrival, publish and confirm.
struct Publish<'a> {
    ch: &'a lapin::Channel,
    msgs: &'a [Msg],
    props: Vec<Option<BasicProperties>>,
    window: usize,
    mode: Mode,
    in_flight: usize,
    opts: BasicPublishOptions,
    arrival: Vec<u64>,
    published: Vec<u64>,
    confirmed: Vec<u64>,
    returned: u64,
    nacked: u64,
    confirms: FuturesUnordered<ConfirmFut>,
    /// Pipelined: publishes started and not yet written.
    sending: FuturesUnordered<SendFut<'a>>,
    /// Messages due so far, and the next one to publish.
    arrived: usize,
    next: usize,
}

impl<'a> Publish<'a> {
    fn new(
        ch: &'a lapin::Channel,
        msgs: &'a [Msg],
        props: Vec<Option<BasicProperties>>,
        window: usize,
        mode: Mode,
        in_flight: usize,
    ) -> Self {
        let n = msgs.len();
        Publish {
            ch,
            msgs,
            props,
            window,
            mode,
            in_flight,
            opts: BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            arrival: vec![0u64; n],
            published: vec![0u64; n],
            confirmed: vec![0u64; n],
            returned: 0,
            nacked: 0,
            confirms: FuturesUnordered::new(),
            sending: FuturesUnordered::new(),
            arrived: 0,
            next: 0,
        }
    }

    async fn run(&mut self) -> Res<()> {
        let n = self.msgs.len();
        let start = tokio::time::Instant::now();
        loop {
            self.arrive(start.elapsed());
            match self.mode {
                Mode::Pipelined => self.start_publishes().await?,
                Mode::Batched => self.publish_together().await?,
                Mode::Awaited => self.publish_each().await?,
            }
            if self.next == n && self.confirms.is_empty() && self.sending.is_empty() {
                break;
            }
            let wake = (self.arrived < n).then(|| start + self.msgs[self.arrived].due);
            tokio::select! {
                biased;
                Some((i, r)) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.settle(i, r)?;
                }
                Some((i, r)) = self.sending.next(), if !self.sending.is_empty() => {
                    self.sent(i, r)?;
                }
                _ = async {
                    match wake {
                        Some(w) => tokio::time::sleep_until(w).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
        Ok(())
    }

    /// Messages whose time has come "arrive" now (the raw equivalent of
    /// the bridge reading an event off its socket).
    fn arrive(&mut self, el: Duration) {
        let t = now_us();
        while self.arrived < self.msgs.len() && self.msgs[self.arrived].due <= el {
            self.arrival[self.arrived] = t;
            self.arrived += 1;
        }
    }

    /// Pipelined: start every publish there is room for, in order, each
    /// polled once right away (so lapin queues its frames in this order)
    /// and then left to finish in `sending`.
    async fn start_publishes(&mut self) -> Res<()> {
        let (ch, msgs, opts) = (self.ch, self.msgs, self.opts);
        while self.next < self.arrived
            && self.sending.len() < self.in_flight
            && self.confirms.len() + self.sending.len() < self.window
        {
            let i = self.next;
            self.published[i] = now_us();
            let props = self.props[i].take().unwrap_or_default();
            let m = &msgs[i];
            let publish = ch.basic_publish(m.exchange.clone(), m.key.clone(), opts, &m.body, props);
            let mut fut: SendFut<'a> = Box::pin(async move { (i, publish.await) });
            self.next += 1;
            match futures::poll!(fut.as_mut()) {
                std::task::Poll::Ready((i, r)) => self.sent(i, r)?,
                std::task::Poll::Pending => self.sending.push(fut),
            }
        }
        Ok(())
    }

    /// Pipelined: a publish was written; its confirm is awaited from now.
    fn sent(&mut self, i: usize, r: lapin::Result<lapin::PublisherConfirm>) -> Res<()> {
        let c = r.map_err(|e| format!("publish: {e}"))?;
        self.confirms.push(Box::pin(async move { (i, c.await) }));
        Ok(())
    }

    /// Experiment (BENCH_RAW_MODE=batched): start every publish there is room
    /// for before awaiting any, so lapin's I/O thread can write them with
    /// one wake-up. The futures are first polled in order, which fixes
    /// frame order and delivery tags.
    async fn publish_together(&mut self) -> Res<()> {
        let (ch, msgs, opts) = (self.ch, self.msgs, self.opts);
        let k0 = self.next;
        let mut futs = Vec::new();
        while self.next < self.arrived && self.confirms.len() + futs.len() < self.window {
            self.published[self.next] = now_us();
            let props = self.props[self.next].take().unwrap_or_default();
            let m = &msgs[self.next];
            futs.push(ch.basic_publish(m.exchange.clone(), m.key.clone(), opts, &m.body, props));
            self.next += 1;
        }
        let done = futures::future::join_all(futs).await;
        for (j, c) in done.into_iter().enumerate() {
            let c = c.map_err(|e| format!("publish: {e}"))?;
            let i = k0 + j;
            self.confirms.push(Box::pin(async move { (i, c.await) }));
        }
        Ok(())
    }

    /// The bridge's pattern: each `basic_publish` awaited in turn.
    async fn publish_each(&mut self) -> Res<()> {
        while self.next < self.arrived && self.confirms.len() < self.window {
            let m = &self.msgs[self.next];
            self.published[self.next] = now_us();
            let p = self.props[self.next].take().unwrap_or_default();
            let c = self
                .ch
                .basic_publish(m.exchange.clone(), m.key.clone(), self.opts, &m.body, p)
                .await
                .map_err(|e| format!("publish: {e}"))?;
            let i = self.next;
            self.confirms.push(Box::pin(async move { (i, c.await) }));
            self.next += 1;
        }
        Ok(())
    }

    /// Stamps a confirm (batched: and every other one already in, so the
    /// next round publishes into all the room at once).
    fn settle(&mut self, i: usize, r: lapin::Result<Confirmation>) -> Res<()> {
        let mut ready = vec![(i, r)];
        if self.mode == Mode::Batched {
            use futures::FutureExt;
            while let Some(Some(x)) = self.confirms.next().now_or_never() {
                ready.push(x);
            }
        }
        let t = now_us();
        for (i, r) in ready {
            self.confirmed[i] = t;
            match r {
                Ok(Confirmation::Ack(ret)) => self.returned += ret.is_some() as u64,
                Ok(Confirmation::Nack(_)) => self.nacked += 1,
                Ok(Confirmation::NotRequested) => return Err("confirm not requested".into()),
                Err(e) => return Err(format!("confirm: {e}")),
            }
        }
        Ok(())
    }
}
