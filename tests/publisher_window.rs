//! End to end, the publisher's confirm window on a spool that holds records
//! it cannot decode (a record of another format version, CRC intact).
//!
//! | test | broker | what it proves |
//! |---|---|---|
//! | [`undecodable_records_do_not_stop_a_window_of_one`] | shared node | with `confirm_window = 1`, records the publisher skips are released at once: every other message of the spool is published, in order, and the spool drains (before, the first skipped record filled the window with nothing left to confirm, and the publisher waited for ever) |
//!
//! The window itself is property-tested in `src/amqp/confirm.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, free_port, replay, sink, spool_segments, trace, wait_exit};
use serde_json::Value;

const SMALL: &str = "calls_small.ami";

/// Gives the first `n` records of a segment an unknown format version,
/// with their CRC recomputed (so the spool reads them and only the
/// publisher's decode refuses them).
fn bump_versions(seg: &Path, n: usize) {
    let mut b = std::fs::read(seg).expect("read segment");
    let mut off = 0;
    for _ in 0..n {
        let len = u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes")) as usize;
        let payload = off + 8..off + 8 + len;
        b[payload.start] = 0xEE;
        let crc = crc32fast::hash(&b[payload.clone()]);
        b[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
        off = payload.end;
    }
    std::fs::write(seg, b).expect("write segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_do_not_stop_a_window_of_one() {
    const BAD: usize = 3;
    let path = trace(SMALL);
    let replay_args = [
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        path.to_str().expect("utf-8 path"),
    ];
    let (_replay, addr) = replay(&replay_args);
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let setup = BridgeSetup::new(&addr, &dead, "");
    // events + `connected` + `stopped`
    let spooled = setup.dry_run(&path).len() as u64 + 2;

    // Run 1: broker away; everything stays in the spool.
    setup.spool_with_broker_away(spooled).await;
    let segs = spool_segments(&setup.spool_dir());
    bump_versions(&segs[0], BAD);

    // Run 2: broker up, a window of one, no Asterisk.
    let url = shared_amqp_url();
    let mut sink = sink(&url, &setup.exchange, "#").await;
    setup.move_to_broker(&url, "confirm_window = 1");
    let mut bridge = setup.start();
    let got = sink
        .collect(spooled as usize, Duration::from_secs(10))
        .await;
    let drained = setup.spool_drained(Duration::from_secs(10)).await;
    bridge.signal("TERM");
    let _ = wait_exit(&mut bridge, Duration::from_secs(15)).await;
    let log = setup.log();
    assert!(log.contains("undecodable spool record skipped"), "{log}");
    assert_eq!(
        got.len() as u64,
        spooled - BAD as u64,
        "every decodable message\n{log}"
    );
    assert!(drained, "spool not drained: {:?}", setup.health());
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|d| serde_json::from_slice::<Value>(&d.data).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order: {seqs:?}");
}
