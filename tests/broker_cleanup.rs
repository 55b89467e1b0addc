//! Tests leave nothing behind on the shared broker: a bridge run with the
//! action path on declares durable queues and exchanges there, and the
//! test's [`BridgeSetup`] must delete them all when it is dropped, also
//! when the test panics ([`BrokerCleanup`]). CI's node once collected 1555
//! durable queues from test runs and then took over 60 s to boot.

mod common;

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use common::broker::shared_amqp_url;
use common::cleanup::BrokerCleanup;
use common::procs::{BridgeSetup, passive_declare, replay, trace, unique};

async fn connect(url: &str) -> Connection {
    tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connect timed out")
    .expect("connect to RabbitMQ")
}

/// Whether `queue` exists (a passive declare, on a channel of its own: a
/// 404 closes the channel).
async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let ch = conn.create_channel().await.expect("channel");
    let r = passive_declare(&ch, queue).await;
    let _ = ch.close(200, "bye".into()).await;
    r.is_ok()
}

/// Whether `exchange` exists (passive declare; the kind is not checked).
async fn exchange_exists(conn: &Connection, exchange: &str) -> bool {
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = ch.close(200, "bye".into()).await;
    r.is_ok()
}

/// The names that exist, of `queues` and `exchanges`.
async fn existing(conn: &Connection, queues: &[String], exchanges: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    for q in queues {
        if queue_exists(conn, q).await {
            v.push(format!("queue {q}"));
        }
    }
    for x in exchanges {
        if exchange_exists(conn, x).await {
            v.push(format!("exchange {x}"));
        }
    }
    v
}

/// A bridge with the action path on (BridgeSetup's default) declares its
/// per-server queue `<queue_prefix><server>`, the unrouted and expired
/// queues and exchanges, the actions exchange and the events exchange;
/// once the bridge and its setup are dropped, none of them is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_with_actions_leaves_no_queue_or_exchange_behind() {
    let url = shared_amqp_url();
    let conn = connect(&url).await;
    let (_replay, addr) = replay(&[trace("calls_small.ami").to_str().unwrap()]);
    let setup = BridgeSetup::new(&addr, &url, "");
    let a = setup.actions.clone();
    let server_queue = a.queue(&setup.server);
    let queues = vec![server_queue.clone(), a.unrouted.clone(), a.expired.clone()];
    let exchanges = vec![
        setup.exchange.clone(),
        a.exchange.clone(),
        a.unrouted.clone(),
        a.expired.clone(),
    ];
    // What this test checks must be what the setup deletes.
    let (cq, cx) = setup.cleanup.names();
    for n in &queues {
        assert!(cq.contains(n), "the setup does not delete queue {n}");
    }
    for n in &exchanges {
        assert!(cx.contains(n), "the setup does not delete exchange {n}");
    }

    let bridge = setup.start();
    let mut up = false;
    for _ in 0..200 {
        if existing(&conn, &queues, &exchanges).await.len() == queues.len() + exchanges.len() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "the bridge never declared its topology (present: {:?})\n{}",
        existing(&conn, &queues, &exchanges).await,
        setup.log()
    );
    drop(bridge);
    drop(setup);
    let left = existing(&conn, &queues, &exchanges).await;
    assert!(left.is_empty(), "left on the broker: {left:?}");
    let _ = conn.close(200, "bye".into()).await;
}

/// The guard deletes what it recorded when the test owning it panics, and
/// nothing it did not record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_deletes_its_names_when_a_test_panics_and_no_others() {
    let url = shared_amqp_url();
    let conn = connect(&url).await;
    let ch = conn.create_channel().await.expect("channel");
    let mine = unique("ami.test.cleanup.");
    let other = unique("ami.test.cleanup.other.");
    // `other` is deleted by this test at the end, not by the guard.
    let keep = BrokerCleanup::new();
    keep.queue(&other);
    for q in [&mine, &other] {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    let m2 = mine.clone();
    let panicked = tokio::task::spawn_blocking(move || {
        let guard = BrokerCleanup::new();
        guard.queue(&m2);
        panic!("a failing test");
    })
    .await;
    assert!(panicked.is_err_and(|e| e.is_panic()));
    assert!(!queue_exists(&conn, &mine).await, "{mine} left behind");
    assert!(queue_exists(&conn, &other).await, "{other} was deleted");
    drop(keep);
    assert!(!queue_exists(&conn, &other).await, "{other} left behind");
    let _ = conn.close(200, "bye".into()).await;
}
