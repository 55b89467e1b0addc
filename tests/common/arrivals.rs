//! What a bridge delivered, against what `ami2amqp map` predicts: the
//! comparison of the end-to-end tests that break the broker
//! (`tests/bridge_failures.rs`, `tests/cluster.rs`), and the bridge's own
//! numbers they wait on (`/metrics`, `/healthz`).
//!
//! Delivery is at-least-once: a message whose confirm was lost with a
//! connection is published again. So deliveries are compared after
//! dropping repeated `message_id`s (the first arrival is kept).

use std::collections::HashSet;
use std::time::Duration;

use lapin::message::Delivery;
use serde_json::Value;

use super::procs::{BridgeSetup, body, wait_for};

/// Sum of every series of a Prometheus metric (counter or gauge), or None
/// when the bridge does not answer.
pub fn metric(setup: &BridgeSetup, name: &str) -> Option<f64> {
    let (_, text) = setup.http_get("/metrics")?;
    Some(metric_sum(&text, name))
}

/// The samples of metric `name` in a /metrics page, summed over every
/// label set.
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Bytes waiting in the bridge's spool (appended, not yet confirmed).
pub fn spool_bytes(setup: &BridgeSetup) -> Option<u64> {
    setup
        .health()
        .and_then(|(_, h)| h["spool"]["bytes"].as_u64())
}

/// Events the bridge has read from AMI (all servers, all names).
pub fn events_read(setup: &BridgeSetup) -> u64 {
    metric(setup, "ami_events_total").unwrap_or(0.0) as u64
}

/// `message_id` of a delivery.
pub fn msg_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

pub fn is_status(d: &Delivery) -> bool {
    d.routing_key.as_str().ends_with(".bridge.status")
}

/// `instance:server:seq:route` → (`instance`, `server:seq:route`).
pub fn split_id(id: &str) -> (&str, &str) {
    id.split_once(':').unwrap_or((id, ""))
}

/// What a batch of deliveries held, once duplicates are dropped.
#[derive(Debug)]
pub struct Outcome {
    /// Event messages after deduplication, in first-arrival order.
    pub unique: usize,
    /// Deliveries dropped as duplicates (same `message_id` seen before).
    pub duplicates: usize,
    /// Bridge status messages (bodies), in arrival order.
    pub statuses: Vec<Value>,
}

impl Outcome {
    /// The `status` word of each status message, in arrival order.
    pub fn status_words(&self) -> Vec<&str> {
        self.statuses
            .iter()
            .map(|s| s["status"].as_str().unwrap_or(""))
            .collect()
    }
}

/// The core assertion: after dropping repeated `message_id`s (first
/// arrival kept), the event messages are exactly `expected` (the dry run),
/// one for one and in the same order — no loss, no extra, no reordering.
pub fn assert_exactly_once_in_order(what: &str, got: &[&Delivery], expected: &[Value]) -> Outcome {
    let mut seen = HashSet::new();
    let mut unique = Vec::new();
    let mut statuses = Vec::new();
    let mut duplicates = 0;
    for d in got {
        if !seen.insert(msg_id(d)) {
            duplicates += 1;
            continue;
        }
        if is_status(d) {
            statuses.push(body(d));
        } else {
            unique.push(*d);
        }
    }
    let missing: Vec<&str> = {
        let have: HashSet<&str> = unique.iter().map(|d| split_id(id_ref(d)).1).collect();
        expected
            .iter()
            .map(|e| split_id(e["properties"]["message_id"].as_str().unwrap_or("")).1)
            .filter(|k| !have.contains(k))
            .take(10)
            .collect()
    };
    assert_eq!(
        unique.len(),
        expected.len(),
        "{what}: {} distinct event messages arrived, {} expected; first missing ids: {missing:?}",
        unique.len(),
        expected.len()
    );
    let mut last_seq = 0;
    for (i, (d, e)) in unique.iter().zip(expected).enumerate() {
        let want = split_id(e["properties"]["message_id"].as_str().unwrap_or("")).1;
        assert_eq!(
            split_id(id_ref(d)).1,
            want,
            "{what}: message {i} (after dedup) is not the one `ami2amqp map` puts there"
        );
        assert_eq!(
            d.routing_key.as_str(),
            e["routing_key"],
            "{what}: routing key of {i}"
        );
        let b = body(d);
        assert_eq!(b["event"], e["body"]["event"], "{what}: event of {i}");
        assert_eq!(b["fields"], e["body"]["fields"], "{what}: fields of {i}");
        let seq = b["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "{what}: seq {seq} after {last_seq} at {i}");
        last_seq = seq;
        assert_eq!(d.properties.delivery_mode(), &Some(2), "{what}: persistent");
    }
    Outcome {
        unique: unique.len(),
        duplicates,
        statuses,
    }
}

pub fn id_ref(d: &Delivery) -> &str {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str())
        .unwrap_or("")
}

/// Waits until the bridge has read `events` events and confirmed
/// everything it spooled; panics with the log otherwise.
pub async fn wait_drained(setup: &BridgeSetup, events: u64, t: Duration) {
    let ok = wait_for(t, || {
        events_read(setup) >= events && spool_bytes(setup) == Some(0)
    })
    .await;
    assert!(
        ok,
        "bridge did not read {events} events and empty its spool within {t:?}: read {}, health {:?}\n{}",
        events_read(setup),
        setup.health(),
        setup.log()
    );
}
