//! A RabbitMQ cluster losing a node, and a stream read back from an
//! offset: the real binary (`ami2amqp run`) reading a replayed trace.
//!
//! | test | broker | what it proves |
//! |---|---|---|
//! | [`node_loss`], part 1 | private 3-node cluster | the publisher connected to node 1 of `[amqp] urls` fails over when node 1 stops mid-stream: every event of the dry run arrives in a quorum queue exactly once after deduplication on `message_id`, in order (`seq` rising), and publishing resumes through another node within [`FAILOVER_BOUND`] (the measured time is printed) |
//! | [`node_loss`], part 2 | the same cluster | with `[actions] queue_type = "quorum"`, requests published while no bridge consumes survive the loss of their queue's leader: a bridge started afterwards on the surviving nodes answers every one |
//! | [`stream_read_back_from_an_offset`] | shared node | a consumer that was away reads a stream queue bound `#` from `first` (everything the dry run predicts, in order) and from a numeric offset in the middle (it starts exactly there) |
//!
//! The two cluster scenarios share one cluster (booting three nodes takes
//! 12-15 s on a 2-core machine; see `common::broker`): node 1 is started
//! again between them. On such a machine the cluster test takes 30-35 s,
//! the stream test about 1 s, in parallel.
//!
//! Why a quorum queue: a classic queue lives on one node and is gone with
//! it (its messages, its consumers, and every later declare of it fails
//! with `NOT_FOUND - home node ... is down`); a quorum queue is replicated
//! on the three nodes and carries on with two.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::arrivals::{
    assert_exactly_once_in_order, events_read, id_ref, is_status, metric, wait_drained,
};
use common::broker::{PrivateCluster, blocking, processes_of_node, shared_amqp_url};
use common::procs::{
    BridgeSetup, Proc, connect, consume_auto_ack, correlation_id, declare_exchange,
    passive_declare, replay_as_bridge, trace, unique, wait_exit, wait_for,
};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{Value, json};

const SMALL: &str = "calls_small.ami";

/// How soon after node 1 is told to stop the bridge must publish through
/// another node. A graceful stop takes 1-3 s; the bridge retries after
/// `reconnect_initial_ms` (100 ms here), and the next URL after one
/// refused connection. Measured on a 2-core VM: the publisher is connected
/// to the next node about 0.2 s after it reports the loss (its log), so
/// the first message through another node arrives as soon as node 1 is
/// down, about 1.1 s after the stop began, and the consumer's longest
/// silence is about 0.2 s. In about one run in ten the broken connection
/// does not finish closing and the publisher gives up on it after its
/// 2 s close bound ("AMQP connection did not close in time"): then the
/// silence is about 2.2 s. 15 s leaves room for a slow machine and still
/// catches a bridge that waits for node 1 to come back (it never does in
/// this test) or cannot declare its topology elsewhere.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

/// Action requests published while no bridge consumes.
const REQUESTS: usize = 20;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `x-queue-type: <kind>`.
fn queue_type(kind: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(kind.as_bytes().into()),
    );
    args
}

/// Declares `exchange` as the bridge does, a durable queue of type `kind`
/// bound to it with `#`, on `ch`.
async fn bound_typed_queue(ch: &Channel, exchange: &str, queue: &str, kind: &str) {
    declare_exchange(ch, exchange)
        .await
        .expect("declare exchange");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        queue_type(kind),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {kind} queue {queue}: {e}"));
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
}

/// Deliveries with the instant each arrived.
type Timed = tokio::sync::mpsc::UnboundedReceiver<(Instant, Delivery)>;

/// Consumes `queue` on `ch` without acks, from now on.
async fn consume_timed(ch: &Channel, queue: &str) -> Timed {
    let mut consumer = consume_auto_ack(ch, queue).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            if tx.send((Instant::now(), d)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Points the bridge at `urls`: the first as `[amqp] url`, the others as
/// `urls` (the config must have both lines, see [`cluster_setup`]).
fn set_amqp_urls(setup: &BridgeSetup, urls: &[String]) {
    let text = std::fs::read_to_string(&setup.config).expect("read config");
    let rest: Vec<String> = urls[1..].iter().map(|u| format!("\"{u}\"")).collect();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("url = ") {
            out += &format!("url = \"{}\"\n", urls[0]);
        } else if line.starts_with("urls = ") {
            out += &format!("urls = [{}]\n", rest.join(", "));
        } else {
            out += line;
            out.push('\n');
        }
    }
    std::fs::write(&setup.config, out).expect("write config");
}

/// A bridge config for `ami_addr` and the cluster, with the URLs in the
/// order of `order` (node indexes) and `extra` config lines.
fn cluster_setup(
    cluster: &PrivateCluster,
    ami_addr: &str,
    order: &[usize],
    extra: &str,
) -> BridgeSetup {
    let setup = BridgeSetup::new(ami_addr, &cluster.amqp_url(order[0]), extra);
    setup.insert_after("[amqp]\n", "urls = []");
    set_amqp_urls(&setup, &cluster.amqp_urls(order));
    setup
}

/// The time of day of a log line (`2026-01-02T10:11:12.345678Z ...`), in
/// seconds.
fn log_seconds(line: &str) -> Option<f64> {
    let time = line.split_once('T')?.1.split_once('Z')?.0;
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Stops a bridge with SIGTERM; it must exit 0.
async fn stop_bridge(mut bridge: Proc, setup: &BridgeSetup, what: &str) {
    bridge.signal("TERM");
    assert_eq!(
        wait_exit(&mut bridge, Duration::from_secs(15)).await,
        Some(0),
        "{what}: exit after SIGTERM\n{}",
        setup.log()
    );
}

/// `rabbitmqctl list_queues name type leader` on node `from`: the type
/// and leader of `queue`. (Not `messages`: the CLI's count of a quorum
/// queue lags behind, see [`message_count`].)
fn queue_row(cluster: &PrivateCluster, from: usize, queue: &str) -> Option<(String, String)> {
    let out = cluster.ctl(from, &["list_queues", "--quiet", "name", "type", "leader"]);
    out.lines()
        .find_map(|l| match l.split('\t').collect::<Vec<_>>()[..] {
            [name, kind, leader] if name == queue => Some((kind.to_string(), leader.to_string())),
            _ => None,
        })
}

/// [`queue_row`] off the runtime.
async fn queue_row_off(
    cluster: &Arc<PrivateCluster>,
    from: usize,
    queue: &str,
) -> Option<(String, String)> {
    let c = cluster.clone();
    let q = queue.to_string();
    blocking(move || queue_row(&c, from, &q)).await
}

/// The messages in `queue` (a passive declare on a channel of its own:
/// the queue's leader answers).
async fn message_count(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.expect("channel");
    let n = passive_declare(&ch, queue)
        .await
        .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"))
        .message_count();
    let _ = ch.close(200, "counted".into()).await;
    n
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// Part 1: the publisher fails over from node 1 (index 0) mid-stream.
async fn publisher_fails_over(cluster: &Arc<PrivateCluster>) {
    let what = "publisher fail-over";
    let began = Instant::now();
    let path = trace(SMALL);
    let loops = 3;
    let loops_s = loops.to_string();
    // 3 × 749 events at 300/s: a 7.5 s stream, node 1 stopped after 2 s.
    let (_replay, addr) =
        replay_as_bridge(&["--rate", "300", "--loop", &loops_s, path.to_str().unwrap()]);
    // The action path is part 2's business.
    let setup = cluster_setup(cluster, &addr, &[0, 1, 2], "[actions]\nenabled = false\n");
    let traces: Vec<&Path> = (0..loops).map(|_| path.as_path()).collect();
    let expected = setup.dry_run_all(&traces);
    let total = expected.len() as u64;

    // The consumer side lives on node 2 (index 1), which stays up; so does
    // the quorum queue's leader (declared from there: client-local).
    let conn = connect(&cluster.amqp_url(1)).await;
    let ch = conn.create_channel().await.expect("channel");
    let queue = format!("{}.q", setup.server);
    bound_typed_queue(&ch, &setup.exchange, &queue, "quorum").await;
    let mut arrivals = consume_timed(&ch, &queue).await;

    let bridge = setup.start();
    assert!(
        wait_for(Duration::from_secs(20), || events_read(&setup) >= 600).await,
        "{what}: the bridge did not read 600 events:\n{}",
        setup.log()
    );
    let reconnects = metric(&setup, "amqp_reconnects_total").unwrap_or(0.0);
    let read_at_stop = events_read(&setup);
    let stop_at = Instant::now();
    blocking({
        let c = cluster.clone();
        move || c.stop(0)
    })
    .await;
    let down_at = Instant::now();
    // Node 1 is gone: a `connected` publisher that has reconnected since
    // is connected to another node.
    let reconnected = wait_for(FAILOVER_BOUND.saturating_sub(stop_at.elapsed()), || {
        metric(&setup, "amqp_reconnects_total").unwrap_or(0.0) > reconnects
            && setup
                .health()
                .is_some_and(|(_, h)| h["broker"] == "connected")
    })
    .await;
    let connected_at = Instant::now();
    assert!(
        reconnected,
        "{what}: the bridge did not connect to another node within {FAILOVER_BOUND:?} of the stop: {:?}\n{}",
        setup.health(),
        setup.log()
    );
    assert!(
        read_at_stop < total,
        "{what}: the stream was over before the stop ({read_at_stop} of {total})"
    );

    wait_drained(&setup, total, Duration::from_secs(60)).await;
    stop_bridge(bridge, &setup, what).await;
    // Everything is confirmed, so it is in the queue or on its way to us.
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), arrivals.recv()).await {
        got.push(d);
    }
    let _ = conn.close(200, "bye".into()).await;

    let first_after = got
        .iter()
        .map(|(t, _)| *t)
        .find(|t| *t >= connected_at)
        .unwrap_or_else(|| panic!("{what}: nothing arrived after the fail-over"));
    let failover = first_after - stop_at;
    // The longest silence of the consumer around the stop.
    let gap = got
        .windows(2)
        .map(|w| (w[0].0, w[1].0 - w[0].0))
        .filter(|(t, _)| *t + Duration::from_secs(5) >= stop_at)
        .map(|(_, g)| g)
        .max()
        .unwrap_or_default();
    assert!(
        failover <= FAILOVER_BOUND,
        "{what}: publishing resumed {failover:?} after the stop (bound {FAILOVER_BOUND:?})"
    );

    let refs: Vec<&Delivery> = got.iter().map(|(_, d)| d).collect();
    let out = assert_exactly_once_in_order(what, &refs, &expected);
    // The AMI side never noticed, and `stopped` came after the events.
    assert_eq!(
        out.status_words(),
        ["connected", "stopped"],
        "{what}: status messages"
    );
    // The publisher's side of it, from its log: the loss of node 1
    // reported, a refused attempt there, connected to the next URL.
    let log = setup.log();
    let publisher: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ami2amqp::amqp::publisher"))
        .collect();
    let lost = publisher
        .iter()
        .position(|l| l.contains("AMQP unavailable"));
    let switch = lost.and_then(|i| {
        let back = publisher[i..]
            .iter()
            .find(|l| l.contains("AMQP connected"))?;
        Some(log_seconds(back)? - log_seconds(publisher[i])?)
    });
    let switch = switch.unwrap_or_else(|| {
        panic!(
            "{what}: no loss and reconnect in the publisher's log:\n{}",
            publisher.join("\n")
        )
    });
    eprintln!(
        "{what}: node 1 stopped after {read_at_stop} of {total} events (stop took {:.2} s); \
         the publisher connected to the next URL {switch:.2} s after reporting the loss (its log); \
         /healthz connected on another node {:.2} s and the next message arrived {:.2} s after the stop began; \
         longest gap between two arrivals {:.2} s; {} events exactly once in order ({} duplicates dropped); {:.1} s",
        (down_at - stop_at).as_secs_f64(),
        (connected_at - stop_at).as_secs_f64(),
        failover.as_secs_f64(),
        gap.as_secs_f64(),
        out.unique,
        out.duplicates,
        began.elapsed().as_secs_f64()
    );
}

/// Part 2: requests waiting in a quorum queue survive the loss of its
/// leader. Returns the index of the node it stopped.
async fn action_requests_survive_leader_loss(cluster: &Arc<PrivateCluster>) -> usize {
    let what = "quorum action queue";
    let began = Instant::now();
    let login = trace("login_plain.ami");
    let (_replay, addr) = replay_as_bridge(&[login.to_str().unwrap()]);
    // More requests at once than the default per-user bound (16) would
    // answer `busy`: not what this test is about.
    let extra = "[actions]\nqueue_type = \"quorum\"\nmax_in_flight_per_user = 100\n\n\
                 [[actions.allow]]\nuser = \"guest\"\nactions = [\"Ping\"]\n";
    let setup = cluster_setup(cluster, &addr, &[0, 1, 2], extra);
    let queue = setup.actions.queue(&setup.server);

    // Run 1 declares the queues, then goes away.
    let bridge = setup.start();
    assert!(
        wait_for(Duration::from_secs(30), || {
            setup.health().is_some_and(|(_, h)| h["actions"] == "ready")
        })
        .await,
        "{what}: the action path never got ready: {:?}\n{}",
        setup.health(),
        setup.log()
    );
    stop_bridge(bridge, &setup, what).await;
    for q in [&queue, &setup.actions.unrouted, &setup.actions.expired] {
        let (kind, _) = queue_row_off(cluster, 1, q)
            .await
            .unwrap_or_else(|| panic!("{what}: {q} not listed:\n{}", setup.log()));
        assert_eq!(kind, "quorum", "{what}: type of {q}");
    }
    let (_, leader_name) = queue_row_off(cluster, 1, &queue).await.expect("listed");
    let leader = cluster
        .index_of(&leader_name)
        .unwrap_or_else(|| panic!("{what}: leader {leader_name:?} is not a node of the cluster"));

    // A caller on another node publishes the requests (confirmed: in the
    // queue) and waits for the replies there (direct reply-to).
    let caller_node = (leader + 1) % cluster.len();
    let conn = connect(&cluster.amqp_url(caller_node)).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut replies = consume_timed(&ch, "amq.rabbitmq.reply-to").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    for i in 0..REQUESTS {
        let body = json!({"Action": "Ping", "ActionID": format!("req-{i}")}).to_string();
        let props = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_user_id("guest".into())
            .with_correlation_id(format!("c{i}").into());
        let confirm = ch
            .basic_publish(
                setup.actions.exchange.as_str().into(),
                setup.server.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                props,
            )
            .await
            .expect("publish request")
            .await
            .expect("request confirm");
        assert!(confirm.is_ack(), "{what}: request {i} not acked");
        assert!(
            confirm.take_message().is_none(),
            "{what}: request {i} was unroutable"
        );
    }
    assert_eq!(
        message_count(&conn, &queue).await,
        REQUESTS as u32,
        "{what}: requests waiting"
    );

    // The leader goes; the two others elect a new one and keep them.
    blocking({
        let c = cluster.clone();
        move || c.stop(leader)
    })
    .await;
    let elect_deadline = Instant::now() + Duration::from_secs(20);
    let (_, new_leader) = loop {
        let row = queue_row_off(cluster, caller_node, &queue).await;
        match row {
            Some((_, ref l)) if *l != leader_name && cluster.index_of(l).is_some() => {
                break row.expect("matched");
            }
            _ if Instant::now() > elect_deadline => {
                panic!("{what}: no new leader 20 s after {leader_name} stopped: {row:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(
        message_count(&conn, &queue).await,
        REQUESTS as u32,
        "{what}: requests left after the leader stopped"
    );

    // Run 2, pointed at the surviving nodes first.
    let mut order: Vec<usize> = (0..cluster.len()).filter(|&i| i != leader).collect();
    order.push(leader);
    set_amqp_urls(&setup, &cluster.amqp_urls(&order));
    let bridge = setup.start();
    let mut answers: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers.len() < REQUESTS && Instant::now() < deadline {
        if let Ok(Some((_, d))) = tokio::time::timeout(Duration::from_secs(1), replies.recv()).await
        {
            let corr = correlation_id(&d);
            let v: Value = serde_json::from_slice(&d.data).expect("JSON reply");
            assert!(
                answers.insert(corr.clone(), v).is_none(),
                "{what}: two replies to {corr}"
            );
        }
    }
    let answered_in = began.elapsed();
    stop_bridge(bridge, &setup, what).await;
    let _ = conn.close(200, "bye".into()).await;
    assert_eq!(
        answers.len(),
        REQUESTS,
        "{what}: replies to {} of {REQUESTS} requests; bridge log:\n{}",
        answers.len(),
        setup.log()
    );
    for i in 0..REQUESTS {
        let r = &answers[&format!("c{i}")];
        assert_eq!(r["response"], "Success", "{what}: reply {i}: {r}");
        assert_eq!(r["fields"]["Ping"], "Pong", "{what}: reply {i}: {r}");
        assert_eq!(r["action_id"], format!("req-{i}"), "{what}: reply {i}: {r}");
        assert_eq!(r["server"], setup.server.as_str(), "{what}: reply {i}");
    }
    eprintln!(
        "{what}: {REQUESTS} requests survived the stop of their leader {leader_name} \
         (new leader {new_leader}) and were all answered; {:.1} s",
        answered_in.as_secs_f64()
    );
    leader
}

/// Boots a 3-node cluster; part 1 stops node 1 under a publishing bridge,
/// node 1 comes back, part 2 stops the leader of an action queue. Then
/// the cluster is dropped, and nothing of it may be left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss() {
    let began = Instant::now();
    let cluster = Arc::new(blocking(|| PrivateCluster::start(3)).await);
    let names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.node_name().to_string())
        .collect();

    publisher_fails_over(&cluster).await;

    blocking({
        let c = cluster.clone();
        move || c.start_again(0)
    })
    .await;
    let running = blocking({
        let c = cluster.clone();
        move || c.running_nodes(0)
    })
    .await;
    assert_eq!(running.len(), 3, "node 1 back in the cluster: {running:?}");

    let stopped = action_requests_survive_leader_loss(&cluster).await;

    let dir = cluster.dir().to_path_buf();
    let node_dirs: Vec<_> = cluster.nodes().iter().map(|n| n.dir().to_owned()).collect();
    assert!(!cluster.node(stopped).is_running());
    drop(
        Arc::try_unwrap(cluster)
            .ok()
            .expect("the test holds the only reference"),
    );
    for name in &names {
        assert_eq!(
            processes_of_node(name),
            Vec::<i32>::new(),
            "processes of {name} left after drop"
        );
    }
    for d in node_dirs.iter().chain([&dir]) {
        assert!(!d.exists(), "{} left after drop", d.display());
    }
    eprintln!("node_loss: {:.1} s", began.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// A stream on the shared node
// ---------------------------------------------------------------------------

/// Consumes the stream `queue` from `offset` (`x-stream-offset`) with
/// manual acks, until `enough` says stop or nothing comes for 3 s.
/// Returns the deliveries with their stream offsets.
async fn read_stream(
    conn: &Connection,
    queue: &str,
    offset: AMQPValue,
    mut enough: impl FnMut(&[(u64, Delivery)]) -> bool,
) -> Vec<(u64, Delivery)> {
    let ch = conn.create_channel().await.expect("channel");
    // A stream is consumed with a prefetch and acks (the broker refuses
    // otherwise); acks only move the credit on, they remove nothing.
    ch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap_or_else(|e| panic!("consume stream {queue}: {e}"));
    let mut got: Vec<(u64, Delivery)> = Vec::new();
    while !enough(&got) {
        match tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.ack(BasicAckOptions::default()).await.expect("ack");
                let at = stream_offset(&d)
                    .unwrap_or_else(|| panic!("delivery without x-stream-offset: {d:?}"));
                got.push((at, d));
            }
            _ => break,
        }
    }
    let _ = ch.close(200, "done".into()).await;
    got
}

/// The `x-stream-offset` header of a delivery read from a stream.
fn stream_offset(d: &Delivery) -> Option<u64> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// A consumer that was away reads everything back from a stream queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_read_back_from_an_offset() {
    let what = "stream";
    let began = Instant::now();
    let url = shared_amqp_url();
    let path = trace(SMALL);
    let (_replay, addr) = replay_as_bridge(&[path.to_str().unwrap()]);
    let setup = BridgeSetup::new(&addr, &url, "[actions]\nenabled = false\n");
    let stream = unique("ami.test.stream.");
    setup.cleanup.queue(&stream);
    let expected = setup.dry_run(&path);
    let total = expected.len() as u64;

    let conn = connect(&url).await;
    {
        let ch = conn.create_channel().await.expect("channel");
        declare_exchange(&ch, &setup.exchange)
            .await
            .expect("declare exchange");
        if let Err(e) = ch
            .queue_declare(
                stream.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                queue_type("stream"),
            )
            .await
        {
            panic!(
                "declaring a stream queue on {url} failed ({e}): streams need RabbitMQ >= 3.9 \
                 with the `stream_queue` feature flag enabled \
                 (`rabbitmqctl list_feature_flags`; `rabbitmqctl enable_feature_flag stream_queue`)"
            );
        }
        ch.queue_bind(
            stream.as_str().into(),
            setup.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind stream");
        let _ = ch.close(200, "declared".into()).await;
    }

    // The bridge publishes the whole trace while nobody reads.
    let bridge = setup.start();
    wait_drained(&setup, total, Duration::from_secs(60)).await;
    stop_bridge(bridge, &setup, what).await;

    // From the first message: every event, in order (and the bridge's
    // `connected` and `stopped` around them).
    let events_of = |got: &[(u64, Delivery)]| got.iter().filter(|(_, d)| !is_status(d)).count();
    let all = read_stream(
        &conn,
        &stream,
        AMQPValue::LongString("first".into()),
        |got| events_of(got) >= expected.len() && got.last().is_some_and(|(_, d)| is_status(d)),
    )
    .await;
    let refs: Vec<&Delivery> = all.iter().map(|(_, d)| d).collect();
    let out = assert_exactly_once_in_order(what, &refs, &expected);
    assert_eq!(out.duplicates, 0, "{what}: duplicates in a stream");
    assert_eq!(
        out.status_words(),
        ["connected", "stopped"],
        "{what}: status messages"
    );
    let offsets: Vec<u64> = all.iter().map(|(o, _)| *o).collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: offsets are not consecutive"
    );

    // From an offset in the middle: it starts exactly there and goes on to
    // the end.
    let mid = all.len() / 2;
    let (mid_offset, mid_msg) = (&all[mid].0, &all[mid].1);
    let tail = read_stream(
        &conn,
        &stream,
        AMQPValue::LongLongInt(i64::try_from(*mid_offset).expect("offset fits i64")),
        |got| got.len() >= all.len() - mid,
    )
    .await;
    assert_eq!(
        tail.first().map(|(o, d)| (*o, id_ref(d).to_string())),
        Some((*mid_offset, id_ref(mid_msg).to_string())),
        "{what}: reading from offset {mid_offset} does not start there"
    );
    let tail_ids: Vec<&str> = tail.iter().map(|(_, d)| id_ref(d)).collect();
    let want_ids: Vec<&str> = all[mid..].iter().map(|(_, d)| id_ref(d)).collect();
    assert_eq!(
        tail_ids, want_ids,
        "{what}: from offset {mid_offset} to the end"
    );
    let _ = conn.close(200, "bye".into()).await;
    eprintln!(
        "{what}: {} events read back from `first` (offsets {}..={}), {} from offset {mid_offset}; {:.1} s",
        out.unique,
        offsets.first().copied().unwrap_or(0),
        offsets.last().copied().unwrap_or(0),
        tail.len(),
        began.elapsed().as_secs_f64()
    );
}
