//! A fleet of bridges (docs/scaling.md): `cargo bench --bench fleet` (or
//! `make bench`). BENCHMARKS.md records what it printed.
//!
//! * **Takeover** — two instances with the default `[fleet]` timings share
//!   four fake Asterisks (`tests/common/tick_ami.rs`, 50 events/s each,
//!   logging every session). `BENCH_FLEET_RUNS` rounds (default 10) of:
//!   `kill -9` of one instance, restart it (its share comes back by
//!   rebalancing hand-overs), SIGTERM of one, restart it. Per server the
//!   gap is the fake server's own measure: the new reader's login − the
//!   old reader's logout. Printed as p50 / max per kind of change.
//! * **Event rate** — 1, 2 and 3 instances sharing six `ami2amqp replay`
//!   servers (the real capture `calls_busy.ami.zst`, looped), for
//!   `BENCH_FLEET_SECONDS` (default 15) once the leases have settled: at
//!   full speed, and at `BENCH_FLEET_RATE` events/s per server (default
//!   500). The aggregate is the growth of `amqp_confirmed_total` summed
//!   over the instances; CPU is each instance's utime + stime from /proc,
//!   per confirmed message of that instance. A durable queue bound `#`
//!   takes the messages (consumed by this process, auto-ack).
//! * **Action round trips** — the same fleets, `BENCH_FLEET_IN_FLIGHT`
//!   (default 64) `Ping` requests in flight spread over the six servers,
//!   direct reply-to, for `BENCH_FLEET_SECONDS`: replies per second.
//!
//! `AMQP_URLS` (comma-separated, default the local broker) points the
//! instances and this process at a broker or a cluster: instance `i`
//! starts on URL `i mod n` (its `[amqp] urls` rotated), so a 3-node
//! cluster gets one instance per node. `BENCH_FLEET_CLUSTER=1` starts a
//! private 3-node cluster on this machine (`tests/common/broker.rs`) for
//! the event and action parts instead. `BENCH_FLEET_PARTS` (default
//! `takeover,events,actions`) picks the parts.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cpu::cpu_seconds;
use common::fleet::{Fleet, Timings};
use common::procs::{Proc, replay, trace};
use common::tick_ami::TickAmi;
use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};

type Res<T> = Result<T, String>;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn urls() -> Vec<String> {
    if let Some(u) = CLUSTER_URLS.get() {
        return u.clone();
    }
    std::env::var("AMQP_URLS")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| vec![common::broker::shared_amqp_url()])
}

/// The URLs of the private cluster of `BENCH_FLEET_CLUSTER=1` (the
/// cluster itself lives in `run`, which stops it when it returns).
static CLUSTER_URLS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let parts =
        std::env::var("BENCH_FLEET_PARTS").unwrap_or_else(|_| "takeover,events,actions".into());
    println!("fleet bench: brokers {:?}", urls());
    if let Err(e) = rt.block_on(run(&parts)) {
        eprintln!("fleet bench: {e}");
        std::process::exit(1);
    }
}

async fn run(parts: &str) -> Res<()> {
    if parts.contains("takeover") {
        takeover().await?;
    }
    let mut cluster = None;
    if parts.contains("events") || parts.contains("actions") {
        if std::env::var("BENCH_FLEET_CLUSTER").is_ok_and(|v| v == "1") {
            let c = tokio::task::spawn_blocking(|| common::broker::PrivateCluster::start(3))
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "\nprivate 3-node cluster booted in {:.1} s: {:?}",
                c.boot_duration().as_secs_f64(),
                c.amqp_urls(&[0, 1, 2])
            );
            let _ = CLUSTER_URLS.set(c.amqp_urls(&[0, 1, 2]));
            cluster = Some(c);
        }
        println!("\n## Event rate and action round trips (6 replay servers, calls_busy looped)\n");
        println!("| load | instances | aggregate | per instance |");
        println!("|---|---|---|---|");
        for n in [1, 2, 3] {
            throughput(n, parts).await?;
        }
    }
    drop(cluster);
    Ok(())
}

/// Polls `f` every 50 ms for at most `t`.
async fn until(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Two instances, four servers: kill -9 / SIGTERM / restart rounds.
async fn takeover() -> Res<()> {
    let runs: usize = env_or("BENCH_FLEET_RUNS", 10);
    let servers: Vec<(String, TickAmi)> = (0..4)
        .map(|i| (format!("t{i}"), TickAmi::start(50)))
        .collect();
    let addrs: Vec<(String, String)> = servers
        .iter()
        .map(|(n, a)| (n.clone(), a.addr.clone()))
        .collect();
    let mut f = Fleet::new(&addrs, &urls(), Timings::DEFAULT);
    let mut procs: BTreeMap<String, Proc> = BTreeMap::new();
    for name in ["x", "y"] {
        procs.insert(name.into(), f.start(name));
    }
    let settled = |f: &Fleet| {
        ["x", "y"]
            .iter()
            .all(|i| f.held(i).is_some_and(|h| h.len() == 2))
            && servers.iter().all(|(_, a)| a.readers() == 1)
    };
    if !until(Duration::from_secs(60), || settled(&f)).await {
        return Err(format!("the leases did not settle:\n{}", f.log("x")));
    }
    let mut gaps: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for round in 0..runs {
        for (kind, sig) in [("kill -9", "KILL"), ("SIGTERM", "TERM")] {
            let victim = if f.held("x").is_some_and(|h| h.contains("t0")) {
                "x"
            } else {
                "y"
            };
            let held = f.held(victim).unwrap_or_default();
            let t = Instant::now();
            if let Some(p) = procs.get_mut(victim) {
                p.signal(sig);
                p.wait_timeout(Duration::from_secs(30));
            }
            let other = if victim == "x" { "y" } else { "x" };
            if !until(Duration::from_secs(30), || {
                f.held(other).is_some_and(|h| h.len() == 4)
                    && servers.iter().all(|(_, a)| a.readers() == 1)
            })
            .await
            {
                return Err(format!("round {round}: no takeover after {kind}"));
            }
            for s in &held {
                if let Some((_, a)) = servers.iter().find(|(n, _)| n == s)
                    && let Some(g) = a.gap_after(t)
                {
                    gaps.entry(kind).or_default().push(g);
                }
            }
            let back = Instant::now();
            procs.insert(victim.into(), f.start(victim));
            if !until(Duration::from_secs(60), || settled(&f)).await {
                return Err(format!("round {round}: no rebalancing after the restart"));
            }
            for (_, a) in &servers {
                if let Some(g) = a.gap_after(back) {
                    gaps.entry("rebalancing").or_default().push(g);
                }
            }
        }
        eprintln!("round {} done", round + 1);
    }
    println!(
        "\n## Takeover (2 instances, 4 servers, [fleet] defaults: announce 1000 ms, peer timeout 3000 ms; {runs} rounds)\n"
    );
    println!("| change | gaps | p50 | max |");
    println!("|---|---|---|---|");
    for (kind, v) in &mut gaps {
        let n = v.len();
        let (p50, max) = (pct(v, 0.5), pct(v, 1.0));
        println!("| {kind} | {n} | {} | {} |", ms(p50), ms(max));
    }
    let overlap = servers
        .iter()
        .map(|(_, a)| a.max_overlap())
        .max()
        .unwrap_or_default();
    println!(
        "\nlongest time two instances read one server: {}",
        ms(overlap)
    );
    drop(procs);
    Ok(())
}

fn confirmed(f: &mut Fleet, name: &str) -> f64 {
    let addr = f.metrics_addr(name);
    common::procs::http_get(&addr, "/metrics")
        .map(|(_, page)| common::arrivals::metric_sum(&page, "amqp_confirmed_total"))
        .unwrap_or(0.0)
}

/// VmRSS of a process, in MB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Six replay servers; `n` instances; the event rate at full speed and at
/// a fixed rate, and the action round trips.
async fn throughput(n: usize, parts: &str) -> Res<()> {
    let secs: u64 = env_or("BENCH_FLEET_SECONDS", 15);
    let rate: u32 = env_or("BENCH_FLEET_RATE", 500);
    let names: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
    let mut modes: Vec<Option<u32>> = Vec::new();
    if parts.contains("events") {
        modes.extend([None, Some(rate)]);
    }
    if parts.contains("actions") {
        // Actions with the events at the fixed rate flowing.
        modes.push(Some(0));
    }
    for mode in modes {
        let busy = trace("calls_busy.ami.zst");
        let rate_s = mode.filter(|r| *r > 0).unwrap_or(rate).to_string();
        let mut args = vec![
            "--username",
            "bridge",
            "--secret",
            "bridgepass",
            "--loop",
            "0",
        ];
        if mode.is_some() {
            args.extend(["--rate", rate_s.as_str()]);
        }
        args.push(busy.to_str().ok_or("trace path")?);
        let replays: Vec<(Proc, String)> = (0..6).map(|_| replay(&args)).collect();
        let addrs: Vec<(String, String)> = replays
            .iter()
            .enumerate()
            .map(|(i, (_, a))| (format!("r{i}"), a.clone()))
            .collect();
        let all = urls();
        let mut f = Fleet::new(&addrs, &all, Timings::DEFAULT);
        let sink = common::procs::sink(&all[0], &f.exchange, "#").await;
        let mut procs = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            // Instance i starts on broker i mod n.
            let mut rotated = all.clone();
            rotated.rotate_left(i % all.len());
            let config = f.config(name);
            let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
            let first = format!("urls = [\"{}\"", all.join("\", \""));
            let mine = format!("urls = [\"{}\"", rotated.join("\", \""));
            std::fs::write(&config, text.replacen(&first, &mine, 1)).map_err(|e| e.to_string())?;
            procs.insert(name.clone(), f.start_with(name, &config));
        }
        let share = 6usize.div_ceil(n);
        let ok = until(Duration::from_secs(60), || {
            let held: usize = names
                .iter()
                .filter_map(|i| f.held(i))
                .map(|h| h.len())
                .sum();
            held == 6
                && names
                    .iter()
                    .all(|i| f.held(i).is_some_and(|h| h.len() <= share))
        })
        .await;
        if !ok {
            return Err(format!("{n} instances: the leases did not settle"));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (label, result) = match mode {
            Some(0) => ("actions", actions_rate(&f, secs).await?),
            _ => ("events", String::new()),
        };
        let before: Vec<(f64, f64)> = names
            .iter()
            .map(|i| (confirmed(&mut f, i), cpu_seconds(procs[i].pid())))
            .collect();
        let t0 = Instant::now();
        if label == "events" {
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
        let el = t0.elapsed().as_secs_f64().max(0.001);
        let after: Vec<(f64, f64)> = names
            .iter()
            .map(|i| (confirmed(&mut f, i), cpu_seconds(procs[i].pid())))
            .collect();
        if label == "events" {
            let total: f64 = before.iter().zip(&after).map(|(b, a)| a.0 - b.0).sum();
            let per: Vec<String> = before
                .iter()
                .zip(&after)
                .zip(&names)
                .map(|((b, a), name)| {
                    let m = (a.0 - b.0).max(1.0);
                    format!(
                        "{:.0} msg/s, {:.1} µs CPU/msg, {:.0} MB",
                        m / el,
                        (a.1 - b.1) * 1e6 / m,
                        rss_mb(procs[name].pid())
                    )
                })
                .collect();
            let how = match mode {
                None => "full speed".to_string(),
                Some(r) => format!("{r}/s per server"),
            };
            println!(
                "| events, {how} | {n} | {:.0} msg/s | {} |",
                total / el,
                per.join("; ")
            );
        } else {
            println!("| actions, 64 in flight | {n} | {result} | |");
        }
        drop(sink);
        drop(procs);
        drop(replays);
    }
    Ok(())
}

/// Pipelined `Ping` requests over the six servers for `secs`: replies/s.
async fn actions_rate(f: &Fleet, secs: u64) -> Res<String> {
    let in_flight: usize = env_or("BENCH_FLEET_IN_FLIGHT", 64);
    let conn = Connection::connect(&f.url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut replies = common::procs::consume_auto_ack(&ch, "amq.rabbitmq.reply-to").await;
    let body = ami2amqp::actions::client::body_from_args("Ping", &[])?.to_string();
    let mut next = 0usize;
    let send = |i: usize| {
        let ch = ch.clone();
        let body = body.clone();
        let exchange = f.actions.clone();
        async move {
            let props = BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id(format!("{i}").into())
                .with_user_id("guest".into())
                .with_content_type("application/json".into());
            ch.basic_publish(
                exchange.as_str().into(),
                format!("r{}", i % 6).as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .map(|_| ())
        }
    };
    for _ in 0..in_flight {
        send(next).await.map_err(|e| e.to_string())?;
        next += 1;
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let (mut ok, mut err) = (0u64, 0u64);
    while Instant::now() < end {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(10), replies.next()).await
        else {
            return Err("no reply within 10 s".into());
        };
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        if v["response"] == "Success" {
            ok += 1;
        } else {
            err += 1;
        }
        send(next).await.map_err(|e| e.to_string())?;
        next += 1;
    }
    let el = t0.elapsed().as_secs_f64();
    let _ = conn.close(200, "bye".into()).await;
    Ok(format!("{:.0} replies/s ({err} errors)", ok as f64 / el))
}
