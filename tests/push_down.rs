//! Push-down end to end: a replayed real trace (`ami2amqp replay`, which
//! answers `Filter` and applies masks and filters as Asterisk does and logs
//! what it sent each client) → `ami2amqp run` with `push_down = true` → a
//! real RabbitMQ.
//!
//! - With a mapping set that drops VarSet, Newexten and CEL, the event
//!   connection adds one exclude filter; the dropped events no longer cross
//!   the socket (the replay's counters), and what reaches RabbitMQ is what
//!   `ami2amqp map` predicts, which is what the bridge publishes without
//!   push-down (tests/bridge_events.rs).
//! - A user without the `system` write class: the filters are refused, the
//!   bridge says so once and goes on; the same messages arrive.
//! - A reload that widens the mask reconnects, and the new events arrive.

mod common;

use std::path::Path;
use std::time::Duration;

use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, body, replay_logged, sink, trace, wait_until, without_status};

const DROP_NOISE: &str = "mappings/examples/drop-noise/05-drop-noise.toml";

/// The numbers of the replay's `client stream stats` lines written when a
/// client that was streamed events left, in order (the action
/// connection, logged in with `Events: off`, is streamed nothing).
fn stream_stats(log: &Path) -> Vec<std::collections::HashMap<String, u64>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("client stream stats") && l.contains("when=\"client left\""))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        })
        .filter(|s: &std::collections::HashMap<String, u64>| s["events_sent"] + s["filtered"] > 0)
        .collect()
}

/// Events of these names in `trace`.
fn count_named(trace: &Path, names: &[&str]) -> u64 {
    let data = std::fs::read(trace).unwrap();
    let text = String::from_utf8_lossy(&data);
    text.split("\r\n\r\n")
        .filter(|m| {
            m.lines()
                .next()
                .and_then(|l| l.strip_prefix("Event: "))
                .is_some_and(|n| names.contains(&n))
        })
        .count() as u64
}

/// What arrived (without the status messages) is exactly the dry run:
/// routing key, event and fields, in order.
fn assert_same(arrived: &[lapin::message::Delivery], expected: &[serde_json::Value]) {
    assert_eq!(arrived.len(), expected.len(), "message count");
    for (i, (d, e)) in arrived.iter().zip(expected).enumerate() {
        assert_eq!(d.routing_key.as_str(), e["routing_key"], "message {i}");
        let b = body(d);
        assert_eq!(b["event"], e["body"]["event"], "message {i}");
        assert_eq!(b["fields"], e["body"]["fields"], "message {i}");
    }
}

/// Runs calls_small through a bridge with the drop-noise overlay and
/// `push_down = true`, the replay's account having `write_classes`;
/// returns the bridge's log and the replay's stats of its one client.
async fn drop_noise_run(write_classes: &str) -> (String, std::collections::HashMap<String, u64>) {
    let url = shared_amqp_url();
    let logs = tempfile::tempdir().unwrap();
    let replay_log = logs.path().join("replay.log");
    // 500 events/s: the first events go out with the login answer, before
    // the bridge's Filter can arrive (as on a real Asterisk): a few may
    // pass unfiltered; the mappings drop them as always.
    let (replay, addr) = replay_logged(
        &[
            "--username",
            "bridge",
            "--secret",
            "bridgepass",
            "--rate",
            "500",
            "--write-classes",
            write_classes,
            trace("calls_small.ami").to_str().unwrap(),
        ],
        &replay_log,
    );
    let setup = BridgeSetup::new(&addr, &url, "");
    setup.insert_after("action_connections = 1\n", "push_down = true");
    std::fs::copy(
        common::procs::repo().join(DROP_NOISE),
        setup.mappings.join("05-drop-noise.toml"),
    )
    .unwrap();
    let expected = setup.dry_run(&trace("calls_small.ami"));
    assert_eq!(expected.len(), 749 - 385);
    let mut events = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    let mut bridge = setup.start();
    let got = events
        .collect(expected.len() + 1, Duration::from_secs(30))
        .await;
    let got = without_status(got);
    assert_same(&got, &expected);
    let (_, metrics) = setup.http_get("/metrics").expect("metrics");
    let refused = format!(
        "ami_push_down_refused_total{{server=\"{}\"}} 1",
        setup.server
    );
    assert_eq!(
        metrics.contains(&refused),
        write_classes != "all",
        "{refused} in\n{metrics}"
    );
    bridge.signal("TERM");
    assert_eq!(bridge.wait_timeout(Duration::from_secs(15)), Some(0));
    drop(replay);
    let stats = stream_stats(&replay_log);
    assert_eq!(stats.len(), 1, "one client, one stats line: {stats:?}");
    (setup.log(), stats[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_events_stay_in_asterisk_and_the_messages_do_not_change() {
    let dropped = count_named(&trace("calls_small.ami"), &["VarSet", "Newexten", "CEL"]);
    assert_eq!(dropped, 385);
    let (log, stats) = drop_noise_run("all").await;
    assert!(log.contains("push-down: event filters added"), "{log}");
    assert_eq!(stats["filters"], 1, "{stats:?}");
    assert_eq!(stats["masked"], 0, "{stats:?}");
    // At most a few events went out before the filter was in place.
    assert!(stats["filtered"] >= dropped - 10, "{stats:?}");
    assert_eq!(stats["events_sent"] + stats["filtered"], 749, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_system_write_the_filters_are_refused_and_nothing_changes() {
    let (log, stats) = drop_noise_run("call,originate").await;
    assert_eq!(
        log.matches("push-down: Asterisk refused the event filters")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("Permission denied"), "{log}");
    assert_eq!((stats["filters"], stats["filtered"]), (0, 0), "{stats:?}");
    assert_eq!(stats["events_sent"], 749, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_widens_the_mask_reconnects_and_delivers_the_new_events() {
    let url = shared_amqp_url();
    let logs = tempfile::tempdir().unwrap();
    let replay_log = logs.path().join("replay.log");
    let (_replay, addr) = replay_logged(
        &[
            "--username",
            "bridge",
            "--secret",
            "bridgepass",
            "--rate",
            "400",
            "--loop",
            "0",
            trace("calls_small.ami").to_str().unwrap(),
        ],
        &replay_log,
    );
    let setup = BridgeSetup::new(&addr, &url, "");
    setup.insert_after("action_connections = 1\n", "push_down = true");
    // A closed set: CDRs only, so the mask narrows to `cdr`.
    for e in std::fs::read_dir(&setup.mappings).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let route = |name: &str, event: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nevents = [\"{event}\"]\nexchange = \"{}\"\nrouting_key = \"{{server}}.t.{{Event}}\"\n",
            setup.exchange
        )
    };
    std::fs::write(setup.mappings.join("10-cdr.toml"), route("cdr", "Cdr")).unwrap();
    let (ok, out, err) = common::procs::with_config("check", &setup.config);
    assert!(ok, "{out}{err}");
    let explain = std::process::Command::new(common::procs::bin())
        .args(["check", "--explain-filters", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let explain = String::from_utf8_lossy(&explain.stdout).into_owned();
    assert!(
        explain.contains("Events: cdr (configured: on)"),
        "{explain}"
    );

    let mut cdrs = sink(&url, &setup.exchange, &format!("{}.t.Cdr", setup.server)).await;
    let mut hangups = sink(&url, &setup.exchange, &format!("{}.t.Hangup", setup.server)).await;
    let mut status = sink(
        &url,
        &setup.exchange,
        &format!("{}.bridge.status", setup.server),
    )
    .await;
    let _bridge = setup.start();
    assert!(!cdrs.collect(5, Duration::from_secs(20)).await.is_empty());
    assert!(
        hangups.collect(1, Duration::from_secs(2)).await.is_empty(),
        "no route for Hangup yet"
    );
    assert!(
        std::fs::read_to_string(&replay_log)
            .unwrap()
            .contains("mask=0x400"),
        "the bridge logged in with Events: cdr"
    );

    // A reload that leaves the plan as it is (another route name) does not
    // reconnect.
    std::fs::write(setup.mappings.join("10-cdr.toml"), route("cdrs", "Cdr")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || setup
            .log()
            .contains("mapping set reloaded")),
        "{}",
        setup.log()
    );
    assert!(!setup.log().contains("reconnects"), "{}", setup.log());

    // Hangups (class call) too: the mask must widen.
    std::fs::write(
        setup.mappings.join("20-hangup.toml"),
        route("hangup", "Hangup"),
    )
    .unwrap();
    let got = hangups.collect(3, Duration::from_secs(30)).await;
    assert!(!got.is_empty(), "{}", setup.log());
    assert!(
        setup.log().contains("the event connection reconnects"),
        "{}",
        setup.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(
            &replay_log
        )
        .unwrap()
        .contains("mask=0x402")),
        "the bridge logged in again with Events: call,cdr"
    );
    // The consumer saw the reconnect: connected, disconnected, connected.
    let states: Vec<String> = status
        .collect(3, Duration::from_secs(5))
        .await
        .iter()
        .map(|d| body(d)["status"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        states,
        ["connected", "disconnected", "connected"],
        "{states:?}"
    );
}
