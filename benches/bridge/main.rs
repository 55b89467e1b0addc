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
//!   window, **pipelined**: each publish started as soon as its message is
//!   due and there is room (at most `BENCH_IN_FLIGHT`, default 64, being
//!   written; at most the window unconfirmed), without awaiting the earlier
//!   ones, and confirms taken as they come. This is the reference every
//!   ratio and target compares against: what a careful lapin user writes.
//! * **raw, awaited** and **raw, batched** (scenario a only, extra lines)
//!   — the same publisher with each `basic_publish` awaited in turn (the
//!   obvious loop), and with every publish that fits in the window started
//!   together (`join_all`).
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
//! * **f, AMI facade** — scenario c's bridge set-up twice: as in c, then
//!   with a `[facade]` section and `BENCH_FACADE_CLIENTS` (default 50) AMI
//!   clients logged in (read all) before the gate opens, in a child
//!   process (this binary, `AMI2AMQP_BENCH_ROLE=facade-clients`). Every
//!   client must get every broadcast event in the relay's order; latency
//!   from the relay's stamp to the client's read; the bridge's extra CPU
//!   per event per client (with − without); RSS, the consumer's count and
//!   the AMI stall check of both runs. No raw side. See [`facade`].
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
//! `BENCH_SCENARIOS` (default `s,a,b,c,f`), `BENCH_FACADE_CLIENTS`
//! (scenario f, default 50), `BENCH_SIDES` (default
//! `raw,bridge,awaited,batched`), `BENCH_IN_FLIGHT` (default 64), `BENCH_RATE` (default 5000),
//! `BENCH_QUEUE_VERSION` (default 2), `BENCH_BIN=<path>` (run the replay
//! and the bridge from another build of `ami2amqp`, e.g. to compare two
//! commits run after run), `BENCH_PERF=PREFIX` (during scenario
//! a, run `perf $BENCH_PERF_ARGS -o PREFIX.<side>.data -p <pid>` on each
//! side, and on the bridge of both runs of f as PREFIX.f0 / PREFIX.f50; `BENCH_PERF_ARGS` defaults to `record -F 999`, `stat -e …` works
//! too), `BENCH_SPOOL_DIR` (put the bridge's spool under this
//! directory instead of the temporary one, e.g. /dev/shm to take the disk
//! out of the picture), `BENCH_FSYNC_MS` (the bridge's
//! `spool.fsync_interval_ms`), `BENCH_SAMPLES=PREFIX` (write the bridge's /metrics
//! samples to PREFIX.<scenario>.csv), `BENCH_KEEP=1` (keep the temporary
//! directory, with the bridge's and the replay's logs).

//!
//! # Layout
//!
//! * [`trace`] — the workload: trace, pace, decoding and routing;
//! * [`ami_feed`] — the fake Asterisk (`ami2amqp replay`) and the relay;
//! * [`raw_publisher`] — the raw lapin baseline (the child process), and
//!   [`raw`] — its side of a scenario, run from the parent;
//! * [`bridge_side`] — the bridge's side of a scenario;
//! * [`facade`] — scenario f, and [`facade_clients`] — its AMI clients
//!   (the child process);
//! * [`consumer`] — the queue both sides are measured at;
//! * [`measure`] (/proc, perf, HTTP) and [`stats`] (percentiles, histograms,
//!   backlog) — measurement;
//! * [`outcome`] and [`report`] — what a side did, and how it is printed;
//! * [`stages`] — scenario s and the smoke test;
//! * [`setup`] — settings and the shared per-run setup.
//!
//! Helpers the integration tests have too (the binary's path, the
//! repository, free ports, the default mappings copied with an exchange of
//! one's own, the exchange declared as the bridge does) come from
//! `tests/common`, included below as a module exactly as the tests include
//! it (`mod common;`). That is the simplest way to share them: a separate
//! crate could not use `CARGO_BIN_EXE_ami2amqp` or this package's
//! `CARGO_MANIFEST_DIR`, which only a package's own tests and benches get.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

#[path = "../../tests/common/mod.rs"]
mod common;

mod ami_feed;
mod bridge_side;
mod consumer;
mod facade;
mod facade_clients;
mod measure;
mod outcome;
mod raw;
mod raw_publisher;
mod report;
mod setup;
mod stages;
mod stats;
mod trace;

use outcome::Outcome;
use raw_publisher::Mode;
use report::{machine, rabbitmq_version, report, targets};
use setup::{Params, Setup, TraceFacts};
use trace::Pace;

type Res<T> = Result<T, String>;

/// The allocator the bridge uses (Cargo.toml, feature `jemalloc`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    match std::env::var("AMI2AMQP_BENCH_ROLE").as_deref() {
        Ok("raw") => return raw_publisher::main(),
        Ok("facade-clients") => return facade_clients::main(),
        _ => {}
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // target without it, and must not start a three-minute benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        match stages::smoke() {
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

async fn orchestrate() -> Res<()> {
    let p = Params::from_env()?;
    let machine = machine();

    let t_setup = Instant::now();
    let facts = TraceFacts::load()?;
    let (span, peak_1s) = (facts.span, facts.peak_1s);
    let s = Setup::new(&p, facts).await?;
    print_header(&p, &s, &machine, span, peak_1s, t_setup);

    let mut results: BTreeMap<&str, (Res<Outcome>, Res<Outcome>)> = BTreeMap::new();
    if p.wants("s") {
        print_stages(&s)?;
    }
    let plan: Vec<(&str, Pace)> = vec![
        ("a", Pace::Max),
        ("b", Pace::Rate(p.rate)),
        ("c", Pace::Timing),
    ];
    for (name, pace) in plan {
        if !p.wants(name) {
            continue;
        }
        let (raw, bridge) = run_scenario(&p, &s, name, &pace).await;
        results.insert(name, (raw, bridge));
    }
    let f = if p.wants("f") && p.sides.contains("bridge") {
        Some(facade::run_f(&s).await)
    } else {
        None
    };
    targets(&results, p.rate);
    if let Some(f) = &f {
        facade::target(f);
    }
    s.finish().await
}

fn print_header(
    p: &Params,
    s: &Setup,
    machine: &str,
    span: Duration,
    peak_1s: usize,
    t_setup: Instant,
) {
    let n = s.names.len();
    println!("ami2amqp bridge benchmark");
    println!("  machine:   {machine}");
    println!(
        "  broker:    RabbitMQ {} at {}",
        rabbitmq_version(),
        ami2amqp::config::redact_url(&p.url)
    );
    println!(
        "  messages:  {n} (calls_busy: one persistent JSON message per event, default mappings), exchange {}",
        s.exchange
    );
    println!(
        "  both:      confirm window {} (the bridge's default), mandatory, durable queue x-queue-version {} bound with #, auto-ack consumer in this process",
        p.window, p.queue_version
    );
    println!(
        "  trace:     recorded span {:.1} s, busiest 1-s window {peak_1s} events",
        span.as_secs_f64()
    );
    println!("  setup:     {:.1} s", t_setup.elapsed().as_secs_f64());
    std::io::stdout().flush().ok();
}

/// Scenario s: the bridge's own per-event work.
fn print_stages(s: &Setup) -> Res<()> {
    println!();
    println!("(s) the bridge's own per-event work, in-process, one thread, no broker (best of 3)");
    let stages = stages::stage_costs(&s.mappings)?;
    let total: f64 = stages.iter().map(|x| x.1).sum();
    for (name, ns) in &stages {
        println!("  {name:<44} {:>8.2} µs/event", ns / 1000.0);
    }
    println!("  {:<44} {:>8.2} µs/event", "sum", total / 1000.0);
    std::io::stdout().flush().ok();
    Ok(())
}

/// One scenario: raw (pipelined), then the bridge, the report, and in
/// scenario a the other two ways of driving lapin.
async fn run_scenario(
    p: &Params,
    s: &Setup,
    name: &str,
    pace: &Pace,
) -> (Res<Outcome>, Res<Outcome>) {
    let t = Instant::now();
    let raw = if p.sides.contains("raw") {
        eprintln!("bench bridge: scenario {name} ({}) raw…", pace.env());
        let r = raw::run_raw(s, name, pace.clone(), Mode::Pipelined).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        r
    } else {
        Err("skipped (BENCH_SIDES)".to_string())
    };
    let bridge = if p.sides.contains("bridge") {
        eprintln!("bench bridge: scenario {name} ({}) bridge…", pace.env());
        let b = bridge_side::run_bridge(s, name, pace.clone()).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        b
    } else {
        Err("skipped (BENCH_SIDES)".to_string())
    };
    eprintln!(
        "bench bridge: scenario {name} took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    report(name, pace, &raw, &bridge, s.window);
    for mode in [Mode::Awaited, Mode::Batched] {
        if name == "a" && p.sides.contains(mode.as_str()) {
            run_extra(s, name, pace, mode).await;
        }
    }
    (raw, bridge)
}

/// Scenario a's extra lines: the raw publisher driven another way.
async fn run_extra(s: &Setup, name: &str, pace: &Pace, mode: Mode) {
    let how = match mode {
        Mode::Awaited => "each publish awaited in turn",
        Mode::Batched => "each batch of publishes started together (join_all)",
        Mode::Pipelined => "pipelined",
    };
    eprintln!("bench bridge: scenario a, raw lapin, {how}…");
    match raw::run_raw(s, name, pace.clone(), mode).await {
        Ok(o) => {
            println!(
                "  raw lapin, {how}: {:.0}/s, {:.1} µs CPU and {:.2} context switches per message, peak RSS {}{}",
                o.throughput(),
                o.cpu_us_per_msg(),
                o.ctx_switches as f64 / o.n.max(1) as f64,
                report::mb(o.hwm),
                if o.notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", o.notes.join("; "))
                }
            );
        }
        Err(e) => println!("  raw lapin, {how}: {e}"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}
