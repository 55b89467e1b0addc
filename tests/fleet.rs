//! A fleet end to end (docs/scaling.md): several `ami2amqp run` instances
//! with `[fleet] enabled` sharing servers, a real RabbitMQ holding the
//! leases, and fake Asterisks (tests/common/tick_ami.rs) that broadcast
//! numbered events at a steady rate whether anybody reads or not, and log
//! every session. So the test knows which events each reader was sent, and
//! when a server had no reader at all.
//!
//! - Three instances, twelve servers: the leases spread 4/4/4. `kill -9`
//!   of one: its servers are read again within the bound below, and every
//!   event a live reader was sent arrives; the dead instance's spool is
//!   published when it comes back. SIGTERM of another: a hand-over with
//!   the status markers, the gap no longer than a reconnect. The
//!   restarted instance gets its share back by hand-overs.
//! - Two instances and one server, stopped, killed and restarted in turn:
//!   never two event sessions at once (the fake server's own log).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::broker::shared_amqp_url;
use common::fleet::Timings;
use common::procs::{body, sink, wait_for};
use common::tick_ami::TickAmi;

/// Events per second each fake server sends.
const RATE: u32 = 20;
/// `[fleet]` timings of the tests: a dead instance is noticed within
/// PEER_TIMEOUT, so its servers are read again within about
/// PEER_TIMEOUT + two announcements + an AMI login.
const ANNOUNCE_MS: u64 = 500;
const PEER_TIMEOUT_MS: u64 = 2000;
/// The takeover bound asserted after a `kill -9`: the peer timeout, two
/// announcement intervals (act, then settle a race between the
/// survivors), and 2 s for the AMI login on a loaded 2-core CI machine.
const KILL_TAKEOVER_BOUND: Duration =
    Duration::from_millis(PEER_TIMEOUT_MS + 2 * ANNOUNCE_MS + 2000);
/// After SIGTERM the leases are free at once: the next announcement tick
/// of a peer takes them, then the AMI login.
const TERM_GAP_BOUND: Duration = Duration::from_millis(2 * ANNOUNCE_MS + 2000);

/// The fleet's config with its fake Asterisks.
struct Fleet {
    f: common::fleet::Fleet,
    servers: Vec<(String, TickAmi)>,
}

impl std::ops::Deref for Fleet {
    type Target = common::fleet::Fleet;
    fn deref(&self) -> &Self::Target {
        &self.f
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.f
    }
}

impl Fleet {
    fn new(servers: usize) -> Fleet {
        let servers: Vec<(String, TickAmi)> = (0..servers)
            .map(|i| (format!("s{i}"), TickAmi::start(RATE)))
            .collect();
        let addrs: Vec<(String, String)> = servers
            .iter()
            .map(|(n, a)| (n.clone(), a.addr.clone()))
            .collect();
        let timings = Timings {
            announce_ms: ANNOUNCE_MS,
            peer_timeout_ms: PEER_TIMEOUT_MS,
        };
        Fleet {
            f: common::fleet::Fleet::new(&addrs, &[shared_amqp_url()], timings),
            servers,
        }
    }

    /// `Ping` on `server`; the process that answered.
    async fn ping_by(&self, server: &str) -> String {
        let r = self.f.ping(server).await.unwrap();
        assert_eq!(r["response"], "Success", "{r}");
        r["bridge"].as_str().unwrap().to_string()
    }

    fn server(&self, name: &str) -> &TickAmi {
        &self.servers.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Every server has exactly one event session logged in.
    fn one_reader_each(&self) -> bool {
        self.servers.iter().all(|(_, a)| a.readers() == 1)
    }
}

/// What arrived for one server: the `N` of each Tick event with the
/// process that published it (the first part of the message id), and the
/// status messages.
#[derive(Default)]
struct Arrived {
    /// (publishing process, N), the first arrival of each message id.
    ticks: Vec<(String, u64)>,
    /// Messages that arrived again with a message id already seen: a
    /// killed instance's spool republishes what was confirmed after its
    /// cursor was last saved (at least once, detectable by the id).
    republished: usize,
    status: Vec<serde_json::Value>,
}

fn sort_arrivals(got: &[lapin::message::Delivery]) -> BTreeMap<String, Arrived> {
    let mut out: BTreeMap<String, Arrived> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for d in got {
        let key = d.routing_key.as_str();
        let server = key.split('.').next().unwrap().to_string();
        let b = body(d);
        let a = out.entry(server).or_default();
        if key.ends_with(".bridge.status") {
            a.status.push(b);
        } else if key.ends_with(".user.Tick") {
            let id = d.properties.message_id().as_ref().unwrap().to_string();
            if !ids.insert(id.clone()) {
                a.republished += 1;
                continue;
            }
            let process = id.split(':').next().unwrap().to_string();
            let n = b["fields"]["N"].as_str().unwrap().parse().unwrap();
            a.ticks.push((process, n));
        }
    }
    out
}

async fn drain(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<lapin::message::Delivery>,
    quiet: Duration,
) -> Vec<lapin::message::Delivery> {
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(quiet, rx.recv()).await {
        got.push(d);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_twelve_servers_and_take_over() {
    let mut f = Fleet::new(12);
    let mut s = sink(&shared_amqp_url(), &f.exchange, "#").await;
    let mut a = f.start("a");
    let mut b = f.start("b");
    let mut c = f.start("c");

    // The leases spread 4/4/4, one reader per server.
    let spread = wait_for(Duration::from_secs(40), || {
        ["a", "b", "c"]
            .iter()
            .all(|i| f.held(i).is_some_and(|h| h.len() == 4))
            && f.one_reader_each()
    })
    .await;
    assert!(
        spread,
        "held: a {:?} b {:?} c {:?}\n{}",
        f.held("a"),
        f.held("b"),
        f.held("c"),
        f.log("a")
    );
    let held_b = f.held("b").unwrap();
    let held_c = f.held("c").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kill -9 b: its servers are read again within the bound.
    let killed = Instant::now();
    b.signal("KILL");
    b.wait_timeout(Duration::from_secs(5));
    let back = wait_for(KILL_TAKEOVER_BOUND + Duration::from_secs(10), || {
        f.one_reader_each()
    })
    .await;
    assert!(back, "b's servers were not taken over\n{}", f.log("a"));
    let mut kill_gaps = Vec::new();
    for srv in &held_b {
        let g = f
            .server(srv)
            .gap_after(killed)
            .expect("a new session after the kill");
        kill_gaps.push(g);
    }
    let worst = kill_gaps.iter().max().copied().unwrap();
    eprintln!("kill -9 takeover gaps: {kill_gaps:?}");
    assert!(worst <= KILL_TAKEOVER_BOUND, "takeover took {worst:?}");
    assert!(
        wait_for(Duration::from_secs(20), || {
            f.held("a").is_some_and(|h| h.len() == 6) && f.held("c").is_some_and(|h| h.len() == 6)
        })
        .await,
        "a {:?} c {:?}",
        f.held("a"),
        f.held("c")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGTERM c: a hand-over, the gap no longer than a reconnect.
    let held_c = f.held("c").unwrap_or(held_c);
    let termed = Instant::now();
    c.signal("TERM");
    assert_eq!(
        c.wait_timeout(Duration::from_secs(30)),
        Some(0),
        "{}",
        f.log("c")
    );
    assert!(
        wait_for(Duration::from_secs(15), || f.one_reader_each()).await,
        "c's servers were not taken over"
    );
    let mut term_gaps = Vec::new();
    for srv in &held_c {
        term_gaps.push(
            f.server(srv)
                .gap_after(termed)
                .expect("a new session after SIGTERM"),
        );
    }
    eprintln!("SIGTERM hand-over gaps: {term_gaps:?}");
    let worst = term_gaps.iter().max().copied().unwrap();
    assert!(worst <= TERM_GAP_BOUND, "hand-over gap {worst:?}");
    assert!(
        f.log("c")
            .contains("lease handed over: this instance is stopping")
    );

    // b comes back with its spool and gets its share by hand-overs; what
    // its spool held is published first, and /healthz says whose it was.
    let mut b = f.start("b");
    let mut recovered = BTreeMap::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            f.health("b").is_some_and(|h| {
                recovered = h["spool"]["recovered"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                true
            })
        })
        .await
    );
    eprintln!("b's spool at restart: {recovered:?}");
    for server in recovered.keys() {
        assert!(
            held_b.contains(server),
            "{server} was not b's: {recovered:?}"
        );
    }
    assert!(
        wait_for(Duration::from_secs(40), || {
            f.held("b").is_some_and(|h| h.len() == 6)
                && f.held("a").is_some_and(|h| h.len() == 6)
                && f.one_reader_each()
        })
        .await,
        "a {:?} b {:?}",
        f.held("a"),
        f.held("b")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Stop the traffic, then the instances, and read everything.
    for (_, ami) in &f.servers {
        ami.pause();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(a.wait_timeout(Duration::from_secs(30)), Some(0));
    assert_eq!(b.wait_timeout(Duration::from_secs(30)), Some(0));
    let got = drain(&mut s.rx, Duration::from_secs(3)).await;
    let arrived = sort_arrivals(&got);

    let mut lost_to_kill = 0u64;
    let mut unread = 0u64;
    let mut republished = 0;
    for (name, ami) in &f.servers {
        let a = arrived.get(name).expect("messages of every server");
        republished += a.republished;
        if !held_b.contains(name) {
            assert_eq!(a.republished, 0, "{name}: republished without a crash");
        }
        let mut seen = BTreeSet::new();
        for (_, n) in &a.ticks {
            assert!(
                seen.insert(*n),
                "{name}: N {n} arrived twice with different message ids"
            );
        }
        // Per publishing process, in order.
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for (p, n) in &a.ticks {
            let l = last.entry(p.as_str()).or_insert(0);
            assert!(*n > *l, "{name}: N {n} after {l} from {p}");
            *l = *n;
        }
        // Every event a reader was sent arrived, but the last ones b had
        // read and not yet written to its spool when it was killed.
        for sess in ami.sessions().iter().filter(|s| s.events) {
            let (Some(first), Some(lastn)) = (sess.first, sess.last) else {
                continue;
            };
            let missing: Vec<u64> = (first..=lastn).filter(|n| !seen.contains(n)).collect();
            let was_killed = held_b.contains(name)
                && sess
                    .logout
                    .is_some_and(|l| l >= killed && l < killed + Duration::from_secs(2));
            if was_killed {
                // Only a tail: everything up to some point arrived.
                if let Some(m) = missing.first() {
                    assert!(
                        missing.iter().copied().eq(*m..=lastn),
                        "{name}: the killed reader lost more than its tail: {missing:?}"
                    );
                }
                lost_to_kill += missing.len() as u64;
            } else {
                assert!(
                    missing.is_empty(),
                    "{name}: lost {missing:?} of a live reader ({first}..={lastn})"
                );
            }
        }
        // What nobody read: sent between sessions (the takeover gaps).
        let read: u64 = ami
            .sessions()
            .iter()
            .filter_map(|s| Some(s.last? - s.first? + 1))
            .sum();
        unread += ami.sent() - read;
        // The markers: every connect and disconnect names its instance.
        for st in &a.status {
            assert!(st["instance"].is_string(), "{st}");
        }
        if held_b.contains(name) {
            // The killed holder could not say anything; its successor's
            // `connected` marks where reading resumed.
            assert!(
                a.status
                    .iter()
                    .any(|st| st["status"] == "connected" && st["instance"] != "b"),
                "{name}: no connected marker from the new holder: {:?}",
                a.status
            );
        }
        if held_c.contains(name) {
            assert!(
                a.status.iter().any(|st| st["instance"] == "c"
                    && st["status"] == "disconnected"
                    && st["detail"] == "lease handed over: this instance is stopping"),
                "{name}: {:?}",
                a.status
            );
        }
    }
    eprintln!(
        "lost with the killed instance's memory: {lost_to_kill}; sent while nobody read: {unread}; republished from its spool (same message id): {republished}"
    );
    // At 20 events/s and 4 servers, the kill costs a few events at most.
    assert!(lost_to_kill <= 4 * u64::from(RATE), "{lost_to_kill}");
    for (_, ami) in &f.servers {
        assert!(
            ami.max_overlap() <= Duration::from_millis(100),
            "two readers at once"
        );
    }
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_one_server_never_read_it_together() {
    let mut f = Fleet::new(1);
    let mut x = f.start("x");
    let mut y = f.start("y");
    let one = |f: &Fleet| {
        let hx = f.held("x").map_or(0, |h| h.len());
        let hy = f.held("y").map_or(0, |h| h.len());
        hx + hy == 1 && f.one_reader_each()
    };
    assert!(
        wait_for(Duration::from_secs(30), || one(&f)).await,
        "{}",
        f.log("x")
    );
    for round in 0..4 {
        let holder_is_x = f.held("x").is_some_and(|h| h.len() == 1);
        let sig = if round % 2 == 0 { "TERM" } else { "KILL" };
        let p = if holder_is_x { &mut x } else { &mut y };
        p.signal(sig);
        p.wait_timeout(Duration::from_secs(30));
        let name = if holder_is_x { "x" } else { "y" };
        let other = if holder_is_x { "y" } else { "x" };
        assert!(
            wait_for(Duration::from_secs(15), || f
                .held(other)
                .is_some_and(|h| h.len() == 1)
                && f.one_reader_each())
            .await,
            "round {round}: {other} did not take over\n{}",
            f.log(other)
        );
        let restarted = f.start(name);
        if holder_is_x {
            x = restarted;
        } else {
            y = restarted;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(f.servers[0].1.readers(), 1, "round {round}");
    }
    let overlap = f.servers[0].1.max_overlap();
    let sessions = f.servers[0]
        .1
        .sessions()
        .iter()
        .filter(|s| s.events)
        .count();
    eprintln!("{sessions} event sessions, longest overlap {overlap:?}");
    assert!(sessions >= 5, "{sessions}");
    assert!(
        overlap <= Duration::from_millis(100),
        "two readers for {overlap:?}"
    );
    drop((x, y));
}

/// In a fleet an instance consumes a server's action queue only while it
/// holds the lease: the actions of the fleet's servers are spread like
/// their events, and follow a hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_follow_the_leases() {
    let mut f = Fleet::new(4);
    let _p = f.start("p");
    let mut q = f.start("q");
    assert!(
        wait_for(Duration::from_secs(30), || {
            ["p", "q"]
                .iter()
                .all(|i| f.held(i).is_some_and(|h| h.len() == 2))
                && f.one_reader_each()
        })
        .await,
        "{}",
        f.log("p")
    );
    let (pp, pq) = (f.process("p").unwrap(), f.process("q").unwrap());
    let held_p = f.held("p").unwrap();
    // Give the action paths a moment to follow the leases.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, _) in &f.servers {
        let by = f.ping_by(name).await;
        let want = if held_p.contains(name) { &pp } else { &pq };
        assert_eq!(
            &by, want,
            "{name}: answered by the instance without its lease"
        );
    }
    q.signal("TERM");
    assert_eq!(q.wait_timeout(Duration::from_secs(30)), Some(0));
    assert!(
        wait_for(Duration::from_secs(15), || f
            .held("p")
            .is_some_and(|h| h.len() == 4))
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, _) in &f.servers {
        assert_eq!(f.ping_by(name).await, pp, "{name}");
    }
}

/// An instance that loses the broker stops reading its servers, and
/// reads them again once it holds their leases again: when the broker
/// closes its connections (`close_all_connections`), and when the broker
/// falls silent (its processes stopped with SIGSTOP: no close, no
/// heartbeat), where the instance fences itself because its own
/// announcements stop coming back. A private broker, since both disturb
/// every client of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_broker_stops_reading_until_the_lease_is_back() {
    let broker = common::broker::blocking(common::broker::PrivateBroker::start).await;
    let ami = TickAmi::start(RATE);
    let mut f = common::fleet::Fleet::new(
        &[("s0".to_string(), ami.addr.clone())],
        &[broker.amqp_url()],
        Timings {
            announce_ms: ANNOUNCE_MS,
            peer_timeout_ms: PEER_TIMEOUT_MS,
        },
    );
    let _solo = f.start("solo");
    let reading = |n: usize| ami.readers() == n;
    assert!(
        wait_for(Duration::from_secs(30), || reading(1)).await,
        "{}",
        f.log("solo")
    );

    // The broker closes the lease connection: reading stops at once.
    broker.ctl(&["close_all_connections", "test"]);
    assert!(
        wait_for(Duration::from_secs(5), || reading(0)).await,
        "still reading after the lease connection closed\n{}",
        f.log("solo")
    );
    assert!(
        wait_for(Duration::from_secs(20), || reading(1)).await,
        "{}",
        f.log("solo")
    );
    assert!(f.log("solo").contains("lease lost"), "{}", f.log("solo"));

    // The broker falls silent: the instance fences itself within the
    // peer timeout and a tick or two.
    let pids = common::broker::processes_of_node(broker.node_name());
    assert!(!pids.is_empty());
    let kill = |sig: &str| {
        for p in &pids {
            let _ = std::process::Command::new("kill")
                .args([sig, &p.to_string()])
                .status();
        }
    };
    let silent = Instant::now();
    kill("-STOP");
    let fenced = wait_for(Duration::from_secs(10), || reading(0)).await;
    let took = silent.elapsed();
    kill("-CONT");
    assert!(
        fenced,
        "still reading with a silent broker\n{}",
        f.log("solo")
    );
    eprintln!("fenced {took:?} after the broker fell silent");
    assert!(
        took <= Duration::from_millis(PEER_TIMEOUT_MS + 2 * ANNOUNCE_MS + 1000),
        "fenced after {took:?}\n{}",
        f.log("solo")
    );
    assert!(
        wait_for(Duration::from_secs(30), || reading(1)).await,
        "not reading again after the broker came back\n{}",
        f.log("solo")
    );
    assert!(ami.max_overlap() <= Duration::from_millis(100));
}
