//! End to end, events out: a replayed real trace → `ami2amqp run` → a real
//! RabbitMQ → a queue bound with `<server>.#`. What arrives must be exactly
//! what `ami2amqp map` says the mappings produce, in order.

mod common;

use std::time::Duration;

use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, body, replay, sink, trace, wait_until, without_status};

/// Compares what arrived with the dry run: same exchange, routing key,
/// event, fields and type, in the same order.
fn assert_same(arrived: &[lapin::message::Delivery], expected: &[serde_json::Value]) {
    assert_eq!(arrived.len(), expected.len(), "message count");
    for (i, (d, e)) in arrived.iter().zip(expected).enumerate() {
        assert_eq!(
            d.routing_key.as_str(),
            e["routing_key"],
            "routing key of message {i}"
        );
        assert_eq!(
            d.exchange.as_str(),
            e["exchange"],
            "exchange of message {i}"
        );
        let b = body(d);
        assert_eq!(b["event"], e["body"]["event"], "event of message {i}");
        assert_eq!(b["fields"], e["body"]["fields"], "fields of message {i}");
        assert_eq!(b["server"], e["body"]["server"], "server of message {i}");
        assert_eq!(
            d.properties.kind().as_ref().map(|s| s.as_str()),
            e["properties"]["type"].as_str(),
            "type of message {i}"
        );
        assert_eq!(d.properties.delivery_mode(), &Some(2), "persistent");
    }
}

/// Every metric family on a /metrics page is a declared one, with its
/// declared type and a `# HELP` line giving its declared help text.
fn assert_described(page: &str) {
    use ami2amqp::METRICS;
    let families: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    assert!(families.len() >= 2, "{page}");
    for family in families {
        let (name, kind) = family.split_once(' ').unwrap();
        let m = METRICS
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} is not declared"));
        assert_eq!(kind, m.kind.as_str(), "{name}");
        let help = format!("# HELP {name} {}\n", m.help);
        assert!(page.contains(&help), "no {help:?} in\n{page}");
    }
}

async fn run_trace(name: &str) {
    let url = shared_amqp_url();
    let (_replay, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        trace(name).to_str().unwrap(),
    ]);
    let setup = BridgeSetup::new(&addr, &url, "");
    let expected = setup.dry_run(&trace(name));
    assert!(!expected.is_empty());
    // Everything of this server except the bridge's own status messages.
    let mut events = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    let bridge = setup.start();
    let got = events
        .collect(expected.len() + 1, Duration::from_secs(20))
        .await;
    let got = without_status(got);
    assert_same(&got, &expected);
    // seq increases by one per event, per server
    let seqs: Vec<u64> = got
        .iter()
        .map(|d| body(d)["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] >= w[0]), "seq never goes back");
    // message ids are unique
    let mut ids: Vec<String> = got
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len());
    assert!(
        wait_until(Duration::from_secs(5), || setup
            .http_get("/healthz")
            .is_some_and(|(c, _)| c == 200)),
        "healthz: {:?}\n{}",
        setup.http_get("/healthz"),
        setup.log()
    );
    let (_, metrics) = setup.http_get("/metrics").unwrap();
    assert!(metrics.contains("amqp_confirmed_total"), "{metrics}");
    assert!(metrics.contains("ami_events_total"), "{metrics}");
    assert_described(&metrics);
    bridge.signal("TERM");
    let mut bridge = bridge;
    assert_eq!(
        bridge.wait_timeout(Duration::from_secs(15)),
        Some(0),
        "{}",
        setup.log()
    );
    assert!(setup.log().contains("ami2amqp stopped"));
    // With the broker up, a clean stop publishes everything, the `stopped`
    // status included: nothing is left in the spool.
    assert!(
        setup.log().contains("spooled_messages=0"),
        "{}",
        setup.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_small_arrives_as_mapped() {
    run_trace("calls_small.ami").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_trace_arrives_as_mapped() {
    run_trace("actions.ami").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_messages_announce_connect_and_disconnect() {
    let url = shared_amqp_url();
    let (replay_proc, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        trace("login_plain.ami").to_str().unwrap(),
    ]);
    let setup = BridgeSetup::new(&addr, &url, "");
    let mut status = sink(
        &url,
        &setup.exchange,
        &format!("{}.bridge.status", setup.server),
    )
    .await;
    let bridge = setup.start();
    let first = status.collect(1, Duration::from_secs(15)).await;
    assert_eq!(first.len(), 1, "{}", setup.log());
    let b = body(&first[0]);
    assert_eq!(b["status"], "connected");
    assert_eq!(b["server"], setup.server.as_str());
    // Asterisk goes away: a disconnected status follows.
    drop(replay_proc);
    let second = status.collect(1, Duration::from_secs(15)).await;
    assert_eq!(second.len(), 1, "{}", setup.log());
    assert_eq!(body(&second[0])["status"], "disconnected");
    assert!(
        wait_until(Duration::from_secs(5), || setup
            .http_get("/healthz")
            .is_some_and(|(c, b)| c == 503 && b.contains("disconnected"))),
        "healthz must say unhealthy: {:?}",
        setup.http_get("/healthz")
    );
    drop(bridge);
}
