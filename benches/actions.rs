//! Action round trips: `Ping` through AMQP → bridge → AMI → bridge → AMQP
//! reply, against `ami2amqp replay` as the AMI server, beside a plain lapin
//! echo service (consume the request, publish the reply, ack; no AMI) on
//! the same broker: the ceiling RabbitMQ itself sets on this machine.
//!
//! Both are driven by the same client: one connection, direct reply-to,
//! a fixed number of requests in flight (1 and 64). Latency is from
//! publishing a request to receiving its reply.
//!
//! Run with `cargo bench --bench actions` (RabbitMQ on AMQP_URL or
//! 127.0.0.1:5672; `make bench` makes sure one runs).

//!
//! The processes (the replay, the bridge) are started with the integration
//! tests' helpers (`tests/common`, included as a module as the tests do).

use std::collections::HashMap;
use std::process::{Command, Stdio};
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
use common::procs::{ActionNames, Proc, bin, consume_auto_ack, free_port, replay, repo, trace};

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Result {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Sends `n` requests keeping `window` in flight; returns rate and latency.
async fn drive(url: &str, exchange: &str, key: &str, n: usize, window: usize) -> Result {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
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
        let corr = d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default();
        if let Some(t) = sent_at.remove(&corr) {
            lat.push(t.elapsed());
        }
    }
    let total = start.elapsed();
    let _ = conn.close(200, "bye".into()).await;
    lat.sort();
    Result {
        rate: n as f64 / total.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[(lat.len() * 99 / 100).min(lat.len() - 1)],
    }
}

/// The plain lapin echo service: consume, reply, ack.
async fn echo_service(url: String, queue: String, ready: tokio::sync::oneshot::Sender<()>) {
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let out = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue");
    ch.basic_qos(64, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = ch
        .basic_consume(
            queue.as_str().into(),
            "echo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let _ = ready.send(());
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

/// The bridge under test, with its fake Asterisk and its temp dir (dropped
/// in this order: the bridge is killed first).
struct Bridge {
    _bridge: Proc,
    /// Deletes the action path's queues and exchanges once the bridge is
    /// gone (fields drop in order).
    _cleanup: BrokerCleanup,
    _dir: tempfile::TempDir,
    _replay: Proc,
    /// The action exchange (unique to this run).
    exchange: String,
}

/// Starts `ami2amqp replay` as the AMI server and the bridge with `Ping`
/// allowed for `guest`.
fn start_bridge(url: &str) -> Bridge {
    let (replay, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        &trace("login_plain.ami").display().to_string(),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = format!("ami.actions.bench{}", std::process::id());
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
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bridge");
    Bridge {
        _bridge: Proc {
            child,
            name: "bridge".into(),
        },
        _cleanup: cleanup,
        _dir: dir,
        _replay: replay,
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

#[tokio::main]
async fn main() {
    let url = url();
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n1, n64) = if quick { (50, 500) } else { (2000, 20000) };

    let bridge = start_bridge(&url);
    let ex = bridge.exchange.clone();
    assert!(wait_answering(&url, &ex).await, "bridge did not answer");

    // The echo service.
    let q = format!("bench.echo.{}", std::process::id());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let echo = tokio::spawn(echo_service(url.clone(), q.clone(), tx));
    rx.await.expect("echo ready");

    println!(
        "action round trips (Ping), {} requests at 1 in flight, {} at 64",
        n1, n64
    );
    println!("{:<28} {:>12} {:>10} {:>10}", "", "req/s", "p50", "p99");
    let mut rows = Vec::new();
    for (name, exch, key) in [
        ("bridge (AMQP→AMI→AMQP)", ex.as_str(), "pbx1"),
        ("lapin echo (no AMI)", "", q.as_str()),
    ] {
        for (w, n) in [(1usize, n1), (64usize, n64)] {
            let _ = drive(&url, exch, key, 20.min(n), w).await; // warm-up
            let r = drive(&url, exch, key, n, w).await;
            println!(
                "{:<28} {:>12.0} {:>10} {:>10}   ({} in flight)",
                name,
                r.rate,
                ms(r.p50),
                ms(r.p99),
                w
            );
            rows.push((name, w, r));
        }
    }
    summary(&rows);
    echo.abort();
    drop(bridge);
}

/// The targets line: bridge/echo throughput at 64 in flight, bridge p99 at 1.
fn summary(rows: &[(&str, usize, Result)]) {
    let bridge64 = rows
        .iter()
        .find(|(n, w, _)| n.starts_with("bridge") && *w == 64)
        .map(|r| r.2.rate)
        .unwrap_or(0.0);
    let echo64 = rows
        .iter()
        .find(|(n, w, _)| n.starts_with("lapin") && *w == 64)
        .map(|r| r.2.rate)
        .unwrap_or(1.0);
    let bridge1 = rows
        .iter()
        .find(|(n, w, _)| n.starts_with("bridge") && *w == 1)
        .map(|r| r.2.p99)
        .unwrap_or_default();
    println!(
        "bridge/echo at 64 in flight: {:.2} (target >= 0.90, median of 7 runs); bridge p99 at 1 in flight: {} (target < 2 ms)",
        bridge64 / echo64,
        ms(bridge1)
    );
}
