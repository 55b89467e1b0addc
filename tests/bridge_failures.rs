//! End to end, when things break: a real bridge process (`ami2amqp run`)
//! reading real traces, publishing to a real RabbitMQ that the tests stop,
//! restart, disconnect and put under a memory alarm.
//!
//! | test | broker | what it proves |
//! |---|---|---|
//! | [`broker_disruptions_mid_stream`] | private node | `rabbitmqctl close_all_connections`, a memory alarm (connections also force-closed while it blocks the bridge) and a broker restart, each in the middle of a paced replay: every event arrives exactly once after deduplication on `message_id`, in the order of `ami2amqp map`, and the AMI side is read on while the broker blocks publishers |
//! | [`spool_survives_sigterm_and_kill_9_while_the_broker_is_down`] | private node | SIGTERM with the broker down exits 0 quickly and keeps the spool; `kill -9` with the broker down keeps what was spooled and loses at most the few events still in memory (counted against what the AMI side sent); a new process delivers both spools in order once the broker is back |
//! | [`asterisk_closing_mid_message`] | shared node | a connection cut inside a message: the complete events arrive, the partial one is reported and never published, the bridge reconnects and announces `disconnected`/`connected` in order with the events |
//! | [`bad_setups_fail_with_one_clear_line`] | none | invalid config, missing config, invalid mappings, unusable spool paths: exit 1 and one `ami2amqp: error:` line naming the problem |
//! | [`unreachable_asterisk_or_broker_keeps_the_bridge_running`] | shared node | nothing listening for AMI or AMQP: the bridge keeps running, `/healthz` answers 503 with the reason, and events wait in the spool |
//!
//! Consumers of the broker tests read a *durable* queue bound before the
//! bridge starts, and only once the scenario is over (bridge spool empty =
//! everything confirmed = everything in the queue), so a broker restart
//! cannot take messages away from the consumer side: the count read is
//! exactly the queue's `message_count`.
//!
//! The two private-node tests each boot their own node (about 7 s on a
//! 2-core machine) and run in parallel with the rest; the whole file takes
//! about 40 s.

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::arrivals::{
    Outcome, assert_exactly_once_in_order, events_read, id_ref, is_status, metric, split_id,
    spool_bytes, wait_drained,
};
use common::broker::{PrivateBroker, blocking, shared_amqp_url};
use common::procs::{
    BridgeSetup, Proc, bin, body, bound_queue, connect, consume_auto_ack, free_port,
    passive_declare, replay, sink, trace, wait_exit, wait_for,
};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicQosOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// Helpers: the bridge's numbers, processes, the expected messages.
// ---------------------------------------------------------------------------

/// Points the setup's config at another AMI address.
fn set_ami_address(setup: &BridgeSetup, from: &str, to: &str) {
    let text = std::fs::read_to_string(&setup.config).expect("read config");
    let old = format!("address = \"{from}\"");
    assert!(text.contains(&old), "config has no {old}");
    std::fs::write(
        &setup.config,
        text.replace(&old, &format!("address = \"{to}\"")),
    )
    .expect("write config");
}

/// An address where nothing listens.
fn dead_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

// ---------------------------------------------------------------------------
// Helpers: a durable queue read after the fact.
// ---------------------------------------------------------------------------

/// Declares `exchange` as the bridge does and a durable queue bound with
/// `<server>.#`, so it collects everything of the server, surviving broker
/// restarts. Returns the queue name.
async fn durable_queue(url: &str, setup: &BridgeSetup) -> String {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    let queue = format!("{}.q", setup.server);
    let binding = format!("{}.#", setup.server);
    bound_queue(&ch, &setup.exchange, &queue, &binding).await;
    let _ = conn.close(200, "bye".into()).await;
    queue
}

/// Reads every message in `queue` (its `message_count` when we start): the
/// queue is complete once the bridge's spool is empty.
async fn read_queue(url: &str, queue: &str) -> Vec<Delivery> {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    let n = passive_declare(&ch, queue)
        .await
        .expect("passive declare")
        .message_count() as usize;
    ch.basic_qos(2000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume_auto_ack(&ch, queue).await;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
            Ok(Some(Ok(d))) => got.push(d),
            other => panic!(
                "reading {queue}: {} of {n} messages, then {:?}",
                got.len(),
                other.map(|o| o.map(|r| r.map(|_| ())))
            ),
        }
    }
    // Nothing more may be there.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "{queue} held more than its message_count"
    );
    let _ = conn.close(200, "bye".into()).await;
    got
}

fn replay_args<'a>(extra: &[&'a str], trace_path: &'a str) -> Vec<&'a str> {
    let mut v = vec!["--username", "bridge", "--secret", "bridgepass"];
    v.extend_from_slice(extra);
    v.push(trace_path);
    v
}

// ---------------------------------------------------------------------------
// Private node, broker up all along with disruptions.
// ---------------------------------------------------------------------------

const SMALL: &str = "calls_small.ami";

/// One paced replay of `loops` × calls_small.ami at 300 events/s into a new
/// bridge; `disrupt` runs once the bridge has read `at` events. Returns the
/// outcome once everything arrived.
async fn disrupted_stream<F, Fut>(
    broker: &Arc<PrivateBroker>,
    what: &str,
    loops: usize,
    at: u64,
    disrupt: F,
) -> Outcome
where
    F: FnOnce(Arc<PrivateBroker>, Arc<BridgeSetup>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let began = Instant::now();
    let url = broker.amqp_url();
    let path = trace(SMALL);
    let loops_s = loops.to_string();
    let (_replay, addr) = replay(&replay_args(
        &["--rate", "300", "--loop", &loops_s],
        path.to_str().unwrap(),
    ));
    let setup = Arc::new(BridgeSetup::new(&addr, &url, ""));
    let traces: Vec<&Path> = (0..loops).map(|_| path.as_path()).collect();
    let expected = setup.dry_run_all(&traces);
    let total = expected.len() as u64; // one message per event with the default mappings
    let queue = durable_queue(&url, &setup).await;
    let mut bridge = setup.start();
    let s2 = setup.clone();
    assert!(
        wait_for(Duration::from_secs(20), || events_read(&s2) >= at).await,
        "{what}: the bridge did not read {at} events: {}",
        setup.log()
    );
    let read_at_disruption = events_read(&setup);
    assert!(
        read_at_disruption < total,
        "{what}: the stream was over before the disruption ({read_at_disruption} of {total})"
    );
    disrupt(broker.clone(), setup.clone()).await;
    wait_drained(&setup, total, Duration::from_secs(60)).await;
    let got = read_queue(&url, &queue).await;
    let refs: Vec<&Delivery> = got.iter().collect();
    let out = assert_exactly_once_in_order(what, &refs, &expected);
    // The AMI side never noticed: one `connected`, nothing else yet.
    assert_eq!(out.status_words(), ["connected"], "{what}: status messages");
    bridge.signal("TERM");
    assert_eq!(
        wait_exit(&mut bridge, Duration::from_secs(15)).await,
        Some(0),
        "{what}: exit after SIGTERM\n{}",
        setup.log()
    );
    eprintln!(
        "{what}: {} events exactly once in order ({} duplicates dropped), disruption after {read_at_disruption} events, {:.1} s",
        out.unique,
        out.duplicates,
        began.elapsed().as_secs_f64()
    );
    out
}

/// Waits until the bridge has reconnected to the broker since
/// `amqp_reconnects_total` was `before`; panics with the log otherwise.
async fn wait_reconnected(setup: &BridgeSetup, before: f64, what: &str) {
    assert!(
        wait_for(Duration::from_secs(10), || {
            metric(setup, "amqp_reconnects_total").unwrap_or(0.0) > before
                && setup.health().is_some_and(|(c, _)| c == 200)
        })
        .await,
        "{what}: no reconnect within 10 s: {:?}\n{}",
        setup.health(),
        setup.log()
    );
}

/// Scenarios 1-3 on one private node, each in the middle of a replay of
/// calls_small.ami paced at 300 events/s: connections force-closed, a
/// memory alarm (with connections force-closed while it blocks the
/// bridge), a broker restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_disruptions_mid_stream() {
    let began = Instant::now();
    let broker = Arc::new(blocking(PrivateBroker::start).await);

    // 1. rabbitmqctl close_all_connections, twice, mid-stream.
    disrupted_stream(
        &broker,
        "close_all_connections",
        2,
        300,
        |b, setup| async move {
            let before = metric(&setup, "amqp_reconnects_total").unwrap_or(0.0);
            blocking({
                let b = b.clone();
                move || b.ctl(&["close_all_connections", "test: forced close"])
            })
            .await;
            wait_reconnected(&setup, before, "close_all_connections").await;
            let read = events_read(&setup);
            assert!(
                read < 2 * 749,
                "second close still mid-stream ({read} read)"
            );
            blocking(move || b.ctl(&["close_all_connections", "test: forced close again"])).await;
        },
    )
    .await;

    // 2. A memory alarm: publishers are blocked; the bridge must go on
    //    reading AMI into the spool, survive its connection being closed
    //    while blocked, and deliver everything once the alarm clears.
    disrupted_stream(&broker, "memory alarm", 2, 300, |b, setup| async move {
        blocking({
            let b = b.clone();
            move || b.ctl(&["set_vm_memory_high_watermark", "0.0000001"])
        })
        .await;
        let total = 2 * 749;
        // The replay is not stalled: every event is read (and spooled)
        // while the broker refuses to take any.
        assert!(
            wait_for(Duration::from_secs(20), || events_read(&setup) >= total).await,
            "AMI reading stalled under the memory alarm: {} of {total} read\n{}",
            events_read(&setup),
            setup.log()
        );
        let waiting = spool_bytes(&setup).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let confirmed_before = metric(&setup, "amqp_confirmed_total").unwrap_or(0.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let confirmed_after = metric(&setup, "amqp_confirmed_total").unwrap_or(0.0);
        assert!(
            waiting > 0 && confirmed_after == confirmed_before && confirmed_after < total as f64,
            "the alarm did not block publishing (spool {waiting} bytes, confirmed {confirmed_before} → {confirmed_after})"
        );
        // Messages left unconfirmed for longer than fsync_interval (200 ms)
        // are fsynced (with a broker that confirms promptly, none are).
        assert!(
            metric(&setup, "spool_fsyncs_total").unwrap_or(0.0) > 0.0,
            "unconfirmed spooled messages were never fsynced"
        );
        let (code, h) = setup.health().expect("healthz");
        assert!(
            h["spool"]["messages"].as_u64().unwrap_or(0) > 0,
            "healthz shows the spooled messages: {code} {h}"
        );
        // Connections closed while publishing is blocked: the bridge
        // reconnects (and is blocked again).
        let before = metric(&setup, "amqp_reconnects_total").unwrap_or(0.0);
        blocking({
            let b = b.clone();
            move || b.ctl(&["close_all_connections", "test: closed during the alarm"])
        })
        .await;
        wait_reconnected(&setup, before, "close during the alarm").await;
        blocking(move || b.ctl(&["set_vm_memory_high_watermark", "0.4"])).await;
    })
    .await;

    // 3. The broker stopped and started again mid-stream.
    disrupted_stream(&broker, "broker restart", 5, 300, |b, setup| async move {
        blocking({
            let b = b.clone();
            move || b.stop()
        })
        .await;
        // The outage is noticed (this is where a publisher stuck on the
        // dead connection used to keep saying "connected").
        assert!(
            wait_for(Duration::from_secs(5), || setup.health().is_some_and(
                |(c, h)| { c == 503 && h["broker"].as_str().is_some_and(|b| b != "connected") }
            ))
            .await,
            "healthz while the broker is down: {:?}\n{}",
            setup.health(),
            setup.log()
        );
        let read_when_down = events_read(&setup);
        blocking(move || b.start_again()).await;
        let read_when_up = events_read(&setup);
        assert!(
            read_when_up > read_when_down,
            "AMI was not read while the broker was away ({read_when_down} → {read_when_up})"
        );
        // Usually the broker is back before the stream ends (5 × 2.5 s);
        // a slow boot only makes the second half less interesting.
        eprintln!(
            "broker restart: down at event {read_when_down}, back at event {read_when_up} of {}",
            5 * 749
        );
    })
    .await;

    eprintln!(
        "broker_disruptions_mid_stream: {:.1} s",
        began.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Private node: SIGTERM and kill -9 with the broker away.
// ---------------------------------------------------------------------------

/// The events of a trace as raw AMI messages (`…\r\n\r\n`), responses
/// left out.
fn trace_events(name: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(trace(name)).expect("read trace");
    let start = data
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + 2)
        .unwrap_or(0); // after the banner line
    let mut out = Vec::new();
    let mut rest = &data[start..];
    while let Some(p) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let msg = &rest[..p + 4];
        if msg.starts_with(b"Event:") {
            out.push(msg.to_vec());
        }
        rest = &rest[p + 4..];
    }
    out
}

/// Writes a trace file (banner + events) for `ami2amqp map`.
fn write_trace(dir: &Path, name: &str, events: &[Vec<u8>]) -> PathBuf {
    let p = dir.join(name);
    let mut data = b"Asterisk Call Manager/11.0.0\r\n".to_vec();
    for e in events {
        data.extend_from_slice(e);
    }
    std::fs::write(&p, data).expect("write trace");
    p
}

/// What an event connection of the fake Asterisk sends after login.
struct Script {
    /// (bytes, counts as a complete event)
    chunks: Vec<(Vec<u8>, bool)>,
    /// Pause between chunks.
    gap: Duration,
    /// Close the connection after the last chunk.
    close: bool,
}

/// A tiny AMI server: banner, `Challenge`/`Login` accepted, `Ping` and
/// `Logoff` answered. Each event connection (a login without `Events:
/// off`) plays the next [`Script`]; action connections get no events.
struct FakeAmi {
    addr: String,
    /// Complete events written so far (all connections).
    sent: Arc<AtomicUsize>,
    /// Event connections that logged in.
    logins: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAmi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAmi {
    async fn start(scripts: Vec<Script>) -> FakeAmi {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let sent = Arc::new(AtomicUsize::new(0));
        let logins = Arc::new(AtomicUsize::new(0));
        let scripts = Arc::new(std::sync::Mutex::new(VecDeque::from(scripts)));
        let (s2, l2) = (sent.clone(), logins.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((sock, _)) = l.accept().await {
                conns.spawn(fake_conn(sock, scripts.clone(), s2.clone(), l2.clone()));
            }
        });
        FakeAmi {
            addr,
            sent,
            logins,
            task,
        }
    }
}

fn header(msg: &str, key: &str) -> Option<String> {
    msg.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().to_string())
    })
}

async fn fake_conn(
    sock: TcpStream,
    scripts: Arc<std::sync::Mutex<VecDeque<Script>>>,
    sent: Arc<AtomicUsize>,
    logins: Arc<AtomicUsize>,
) {
    let (mut rd, mut wr) = sock.into_split();
    if wr
        .write_all(b"Asterisk Call Manager/11.0.0\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut inbuf = Vec::new();
    let mut tmp = vec![0u8; 8192];
    let mut script: Option<(Script, usize)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    loop {
        tokio::select! {
            r = rd.read(&mut tmp) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                inbuf.extend_from_slice(&tmp[..n]);
                while let Some(p) = inbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let msg: Vec<u8> = inbuf.drain(..p + 4).collect();
                    let msg = String::from_utf8_lossy(&msg).to_string();
                    let action = header(&msg, "Action").unwrap_or_default().to_ascii_lowercase();
                    let id = header(&msg, "ActionID").unwrap_or_default();
                    let reply = match action.as_str() {
                        "challenge" => format!("Response: Success\r\nActionID: {id}\r\nChallenge: 840216418\r\n\r\n"),
                        "login" => {
                            let events = header(&msg, "Events").unwrap_or_else(|| "on".into());
                            if !events.eq_ignore_ascii_case("off") {
                                logins.fetch_add(1, Ordering::SeqCst);
                                if let Some(s) = scripts.lock().unwrap().pop_front() {
                                    tick = tokio::time::interval(s.gap.max(Duration::from_micros(100)));
                                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                                    script = Some((s, 0));
                                }
                            }
                            format!("Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n")
                        }
                        "ping" => format!("Response: Success\r\nActionID: {id}\r\nPing: Pong\r\nTimestamp: 1.000000\r\n\r\n"),
                        "logoff" => {
                            let _ = wr.write_all(format!("Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish.\r\n\r\n").as_bytes()).await;
                            return;
                        }
                        _ => format!("Response: Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command\r\n\r\n"),
                    };
                    if wr.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
            _ = tick.tick(), if script.is_some() => {
                let Some((s, pos)) = script.as_mut() else { continue };
                if let Some((bytes, complete)) = s.chunks.get(*pos) {
                    if wr.write_all(bytes).await.is_err() {
                        return;
                    }
                    if *complete {
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                    *pos += 1;
                }
                if *pos >= s.chunks.len() {
                    if s.close {
                        // FIN, then wait for the peer to close (closing
                        // with unread input would send a RST instead).
                        let _ = wr.shutdown().await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            while matches!(rd.read(&mut tmp).await, Ok(n) if n > 0) {}
                        })
                        .await;
                        return;
                    }
                    script = None;
                }
            }
        }
    }
}

/// Scenario 7 then 5 on one private node, broker stopped:
///
/// * bridge A reads calls_small.ami (replayed) into its spool; SIGTERM: it
///   exits 0 within a few seconds and the spool stays;
/// * bridge B (same spool) reads a paced stream from a fake Asterisk that
///   counts what it sent, and is killed with SIGKILL mid-stream;
/// * the broker comes back and bridge C (same spool, no Asterisk) delivers
///   A's and B's messages: A's exactly once and in order, B's as an
///   in-order prefix of what was sent, missing at most the events that
///   were still in memory when the process died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_survives_sigterm_and_kill_9_while_the_broker_is_down() {
    let began = Instant::now();
    let broker = Arc::new(blocking(PrivateBroker::start).await);
    let url = broker.amqp_url();
    let path = trace(SMALL);
    let (_replay, replay_addr) = replay(&replay_args(&[], path.to_str().unwrap()));
    let setup = BridgeSetup::new(&replay_addr, &url, "");
    let expected_a = setup.dry_run_all(&[&path]);
    let queue = durable_queue(&url, &setup).await;
    blocking({
        let b = broker.clone();
        move || b.stop()
    })
    .await;

    // --- A: SIGTERM while the broker is down.
    let mut a = setup.start();
    let total_a = expected_a.len() as u64;
    assert!(
        wait_for(Duration::from_secs(20), || events_read(&setup) >= total_a
            && setup.health().is_some_and(|(_, h)| h["spool"]["messages"]
                .as_u64()
                > Some(total_a)))
        .await,
        "A did not spool the trace: {:?}\n{}",
        setup.health(),
        setup.log()
    );
    let (code, h) = setup.health().expect("healthz");
    assert_eq!(code, 503, "healthz with the broker down: {h}");
    assert_ne!(h["broker"], "connected", "{h}");
    let t = Instant::now();
    a.signal("TERM");
    let code = wait_exit(&mut a, Duration::from_secs(10)).await;
    let sigterm_took = t.elapsed();
    assert_eq!(
        code,
        Some(0),
        "SIGTERM with the broker down: exit code within 10 s\n{}",
        setup.log()
    );
    assert!(
        sigterm_took < Duration::from_secs(5),
        "SIGTERM took {sigterm_took:?}"
    );
    let log = setup.log();
    assert!(
        log.contains("events wait in the spool"),
        "log says events are spooled: {log}"
    );
    // 749 events + `connected` + `stopped` are in the spool.
    let stopped_line = log
        .lines()
        .find(|l| l.contains("ami2amqp stopped"))
        .expect("stopped line");
    assert!(
        stopped_line.contains(&format!("spooled_messages={}", total_a + 2)),
        "{stopped_line}"
    );
    let seg_bytes: u64 = std::fs::read_dir(setup.spool_dir())
        .expect("spool dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(seg_bytes > 100_000, "spool segments hold {seg_bytes} bytes");

    // --- B: kill -9 mid-stream, broker still down.
    let events = trace_events(SMALL);
    assert_eq!(events.len() as u64, total_a);
    let fake = FakeAmi::start(vec![Script {
        chunks: events.iter().map(|e| (e.clone(), true)).collect(),
        gap: Duration::from_millis(2),
        close: false,
    }])
    .await;
    set_ami_address(&setup, &replay_addr, &fake.addr);
    let mut b = setup.start();
    let sent = fake.sent.clone();
    assert!(
        wait_for(Duration::from_secs(20), || sent.load(Ordering::SeqCst)
            >= 300)
        .await,
        "fake Asterisk sent only {} events to B\n{}",
        sent.load(Ordering::SeqCst),
        setup.log()
    );
    b.signal("KILL");
    assert_eq!(wait_exit(&mut b, Duration::from_secs(5)).await, None);
    assert!(b.child.try_wait().ok().flatten().is_some(), "B is dead");
    // Writes after the death fail at once; give the server a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_b = sent.load(Ordering::SeqCst);
    assert!(sent_b < events.len(), "the stream was over before the kill");

    // --- C: broker back, same spool, no Asterisk.
    let dead = dead_address();
    set_ami_address(&setup, &fake.addr, &dead);
    drop(fake);
    blocking({
        let b = broker.clone();
        move || b.start_again()
    })
    .await;
    let mut c = setup.start();
    assert!(
        wait_for(Duration::from_secs(30), || setup.health().is_some_and(
            |(_, h)| { h["broker"] == "connected" && h["spool"]["bytes"].as_u64() == Some(0) }
        ))
        .await,
        "C did not deliver the spool: {:?}\n{}",
        setup.health(),
        setup.log()
    );
    let got = read_queue(&url, &queue).await;
    // Instances in order of first arrival: A's, then B's (spool order).
    let mut instances: Vec<String> = Vec::new();
    for d in &got {
        let inst = split_id(id_ref(d)).0.to_string();
        if !instances.contains(&inst) {
            instances.push(inst);
        }
    }
    assert_eq!(
        instances.len(),
        2,
        "messages of A and B only: {instances:?}"
    );
    let of = |i: usize| -> Vec<&Delivery> {
        got.iter()
            .filter(|d| split_id(id_ref(d)).0 == instances[i])
            .collect()
    };
    let (got_a, got_b) = (of(0), of(1));
    // Spool order: every message of A before every message of B.
    let last_a = got
        .iter()
        .rposition(|d| split_id(id_ref(d)).0 == instances[0])
        .unwrap_or(0);
    let first_b = got
        .iter()
        .position(|d| split_id(id_ref(d)).0 == instances[1])
        .unwrap_or(0);
    assert!(
        last_a < first_b,
        "A's messages come first (spool order): last A at {last_a}, first B at {first_b}"
    );
    let out_a = assert_exactly_once_in_order("A (SIGTERM, spooled)", &got_a, &expected_a);
    assert_eq!(
        out_a.status_words(),
        ["connected", "stopped"],
        "A's status messages"
    );

    // B: an in-order prefix of what the fake Asterisk sent.
    let arrived_b = got_b.iter().filter(|d| !is_status(d)).count();
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = write_trace(dir.path(), "b.ami", &events[..arrived_b]);
    let expected_b = setup.dry_run_all(&[&prefix]);
    let out_b = assert_exactly_once_in_order("B (kill -9, spooled)", &got_b, &expected_b);
    assert_eq!(out_b.status_words(), ["connected"], "B's status messages");
    let lost = sent_b - arrived_b;
    eprintln!(
        "kill -9: fake Asterisk sent {sent_b} events, {arrived_b} were spooled and delivered, {lost} lost (in memory or in flight)"
    );
    assert!(arrived_b >= 250, "B spooled only {arrived_b} of {sent_b}");
    // What a kill -9 can lose: events read from the socket but not yet
    // written to the spool (decoder, the connection's queue, the channel
    // to the router task, the batch being built) plus what sat unread in
    // the socket buffer. At this rate that is a few milliseconds of
    // traffic (2 to 17 events measured, mostly the socket); 150 events is
    // 300 ms of it.
    assert!(
        lost <= 150,
        "kill -9 lost {lost} events (sent {sent_b}, delivered {arrived_b})"
    );
    c.signal("TERM");
    assert_eq!(
        wait_exit(&mut c, Duration::from_secs(15)).await,
        Some(0),
        "{}",
        setup.log()
    );
    eprintln!(
        "spool_survives_sigterm_and_kill_9: SIGTERM exit in {:.2} s, {} + {} events delivered, {:.1} s",
        sigterm_took.as_secs_f64(),
        out_a.unique,
        out_b.unique,
        began.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Asterisk closes the connection in the middle of a message.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_closing_mid_message() {
    let url = shared_amqp_url();
    let all = trace_events(SMALL);
    let events = &all[..80];
    let k = 50; // complete events before the cut
    let cut = &events[k][..events[k].len() / 2];
    assert!(!cut.ends_with(b"\r\n\r\n"));
    let mut first: Vec<(Vec<u8>, bool)> = events[..k].iter().map(|e| (e.clone(), true)).collect();
    first.push((cut.to_vec(), false));
    let second: Vec<(Vec<u8>, bool)> = events[k..].iter().map(|e| (e.clone(), true)).collect();
    let fake = FakeAmi::start(vec![
        Script {
            chunks: first,
            gap: Duration::from_millis(1),
            close: true,
        },
        Script {
            chunks: second,
            gap: Duration::from_millis(1),
            close: false,
        },
    ])
    .await;
    let setup = BridgeSetup::new(&fake.addr, &url, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = setup.dry_run_all(&[&write_trace(dir.path(), "cut.ami", events)]);
    assert_eq!(expected.len(), events.len());
    let mut sink = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    let mut bridge = setup.start();
    // k events, the rest, and connected / disconnected / connected.
    let n = events.len() + 3;
    let got = sink.collect(n + 1, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        n,
        "messages: {:?}\n{}",
        got.iter()
            .map(|d| d.routing_key.as_str())
            .collect::<Vec<_>>(),
        setup.log()
    );
    // Exact order: the status messages sit where the connection changed.
    let kinds: Vec<String> = got
        .iter()
        .map(|d| {
            if is_status(d) {
                format!("status:{}", body(d)["status"].as_str().unwrap_or(""))
            } else {
                "event".into()
            }
        })
        .collect();
    let mut want = vec!["status:connected".to_string()];
    want.extend(std::iter::repeat_n("event".to_string(), k));
    want.push("status:disconnected".into());
    want.push("status:connected".into());
    want.extend(std::iter::repeat_n("event".to_string(), events.len() - k));
    assert_eq!(kinds, want, "order of events and status messages");
    let disconnected = body(&got[k + 1]);
    assert!(
        disconnected["detail"]
            .as_str()
            .is_some_and(|d| d.contains("closed")),
        "disconnected status says why: {disconnected}"
    );
    assert_eq!(disconnected["last_seq"], k as u64, "{disconnected}");
    let refs: Vec<&Delivery> = got.iter().collect();
    let out = assert_exactly_once_in_order("mid-message close", &refs, &expected);
    assert_eq!(out.duplicates, 0);
    // The partial message was reported, not published.
    assert_eq!(metric(&setup, "ami_parse_errors_total"), Some(1.0));
    let log = setup.log();
    assert!(
        log.contains("malformed AMI input skipped")
            && log.contains("the stream ended in the middle of a message"),
        "the cut message is reported: {log}"
    );
    assert_eq!(fake.logins.load(Ordering::SeqCst), 2, "one reconnect");
    assert_eq!(fake.sent.load(Ordering::SeqCst), events.len());
    bridge.signal("TERM");
    assert_eq!(
        wait_exit(&mut bridge, Duration::from_secs(15)).await,
        Some(0)
    );
}

// ---------------------------------------------------------------------------
// Bad setups.
// ---------------------------------------------------------------------------

/// Runs `ami2amqp run --config <config>` to its end (at most `t`): exit
/// code and stderr. Logs at `info`, as in production.
async fn run_to_exit(config: &Path, t: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("stderr");
    let child = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start bridge");
    let mut p = Proc {
        child,
        name: "bridge".into(),
    };
    let code = wait_exit(&mut p, t).await;
    (code, std::fs::read_to_string(&err).unwrap_or_default())
}

/// Exit 1 and exactly one line on stderr, the `ami2amqp: error:` line,
/// containing every string of `needles`.
async fn assert_fails_with_one_line(what: &str, config: &Path, needles: &[&str]) {
    let (code, stderr) = run_to_exit(config, Duration::from_secs(10)).await;
    assert_eq!(code, Some(1), "{what}: exit code; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr:\n{stderr}");
    assert!(
        lines[0].starts_with("ami2amqp: error: "),
        "{what}: {}",
        lines[0]
    );
    for n in needles {
        assert!(lines[0].contains(n), "{what}: {:?} lacks {n:?}", lines[0]);
    }
}

/// A copy of the setup's config with `from` replaced by `to`.
fn edit_config(setup: &BridgeSetup, from: &str, to: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let text = std::fs::read_to_string(&setup.config).expect("read config");
    assert!(text.contains(from), "config has no {from:?}");
    let p = setup
        .dir
        .path()
        .join(format!("edited-{}.toml", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&p, text.replace(from, to)).expect("write config");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_setups_fail_with_one_clear_line() {
    let setup = BridgeSetup::new("127.0.0.1:5038", "amqp://guest:guest@127.0.0.1:1/%2f", "");
    let spool = setup.spool_dir().display().to_string();

    // A typo in a key: file:line:col.
    let cfg = edit_config(&setup, "action_connections = 1", "action_conections = 1");
    let name = cfg.display().to_string();
    assert_fails_with_one_line(
        "unknown key",
        &cfg,
        &[&format!("{name}:"), "unknown field `action_conections`"],
    )
    .await;

    // No config file at all.
    let missing = setup.dir.path().join("nope.toml");
    assert_fails_with_one_line(
        "missing config",
        &missing,
        &["nope.toml", "cannot read config file"],
    )
    .await;

    // A mapping file that does not parse.
    std::fs::write(
        setup.mappings.join("00-broken.toml"),
        "[[route]]\nname = 5\n",
    )
    .expect("write mapping");
    assert_fails_with_one_line(
        "invalid mappings",
        &setup.config,
        &["invalid mappings", "00-broken.toml"],
    )
    .await;
    std::fs::remove_file(setup.mappings.join("00-broken.toml")).expect("rm");

    // Spool directories that cannot be used (root ignores permission bits,
    // so: under /proc, a file where the directory should be, a directory
    // below a file).
    let cfg = edit_config(&setup, &spool, "/proc/ami2amqp-test-spool");
    assert_fails_with_one_line(
        "spool under /proc",
        &cfg,
        &["spool", "/proc/ami2amqp-test-spool"],
    )
    .await;
    let file = setup.dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let cfg = edit_config(&setup, &spool, &file.display().to_string());
    assert_fails_with_one_line("spool is a file", &cfg, &["spool", "a-file"]).await;
    let below = file.join("spool");
    let cfg = edit_config(&setup, &spool, &below.display().to_string());
    assert_fails_with_one_line("spool below a file", &cfg, &["spool", "a-file/spool"]).await;

    // The metrics address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let cfg = edit_config(&setup, &setup.metrics, &taken_addr);
    assert_fails_with_one_line("metrics address in use", &cfg, &["metrics", &taken_addr]).await;
}

/// Nothing listens for AMI, or for AMQP: the bridge runs on and says why
/// it is unhealthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_asterisk_or_broker_keeps_the_bridge_running() {
    // Asterisk unreachable, broker fine.
    let ami = dead_address();
    let setup = BridgeSetup::new(&ami, &shared_amqp_url(), "");
    let mut bridge = setup.start();
    assert!(
        wait_for(Duration::from_secs(10), || setup.health().is_some_and(
            |(c, h)| c == 503
                && h["broker"] == "connected"
                && h["servers"][&setup.server] == "disconnected"
        ))
        .await,
        "healthz with Asterisk unreachable: {:?}\n{}",
        setup.health(),
        setup.log()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        bridge.child.try_wait().ok().flatten().is_none(),
        "still running"
    );
    let log = setup.log();
    assert!(
        log.contains("AMI disconnected; will reconnect") && log.contains(&ami),
        "the log says why: {log}"
    );
    bridge.signal("TERM");
    assert_eq!(
        wait_exit(&mut bridge, Duration::from_secs(10)).await,
        Some(0)
    );

    // Broker unreachable, Asterisk fine: events wait in the spool.
    let path = trace(SMALL);
    let (_replay, addr) = replay(&replay_args(&[], path.to_str().unwrap()));
    let amqp = format!("amqp://guest:guest@{}/%2f", dead_address());
    let setup = BridgeSetup::new(&addr, &amqp, "");
    let mut bridge = setup.start();
    assert!(
        wait_for(Duration::from_secs(15), || events_read(&setup) >= 749
            && setup.health().is_some_and(|(c, h)| c == 503
                && h["servers"][&setup.server] == "connected"
                && h["broker"]
                    .as_str()
                    .is_some_and(|b| b.contains("refused"))
                && h["spool"]["messages"].as_u64() == Some(750)))
        .await,
        "healthz with the broker unreachable: {:?}\n{}",
        setup.health(),
        setup.log()
    );
    assert!(
        bridge.child.try_wait().ok().flatten().is_none(),
        "still running"
    );
    bridge.signal("TERM");
    assert_eq!(
        wait_exit(&mut bridge, Duration::from_secs(10)).await,
        Some(0)
    );
}
