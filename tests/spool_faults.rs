//! End to end, when the spool itself is the problem: a real bridge process
//! (`ami2amqp run`) with its spool on a tiny tmpfs that fills up, and a
//! spool damaged between two runs.
//!
//! | test | broker | what it proves |
//! |---|---|---|
//! | [`full_disk_is_reported_retried_and_counted`] | none (unreachable URL) | with the disk full, `/healthz` says `disk_full` (503), one batch is held and every later message is counted in `spool_dropped_total{reason="disk_full"}` (held + dropped = every message produced); once there is room the held batch is written by the retry timer, without a new event; full again at SIGTERM, what could not be written is logged and counted as lost |
//! | [`damaged_spool_still_publishes_every_intact_message`] | shared node | a byte flipped in the middle of the first segment between two runs costs exactly that one message: every other message of the spool is published, `spool_corrupt_records_total` is 1, no segment is deleted |
//!
//! Mounting a tmpfs needs root (CI and the dev VM run tests as root).

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::broker::shared_amqp_url;
use common::procs::{
    BridgeSetup, Proc, free_port, replay, sink, spool_segments, trace, wait_exit, wait_for,
};
use serde_json::Value;

const SMALL: &str = "calls_small.ami";

/// A tmpfs mounted on `dir` (created), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mount tmpfs on {} (needs root)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system that holds `path` with the file `path`.
fn fill_up(path: &Path) {
    let mut f = File::create(path).expect("create filler");
    let block = vec![0x5au8; 4096];
    while f.write_all(&block).is_ok() {}
}

/// One series of a metric, by its exact label text (`""` for none).
fn series(setup: &BridgeSetup, name: &str, labels: &str) -> Option<f64> {
    let (_, text) = setup.http_get("/metrics")?;
    let prefix = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

fn dead_amqp() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port())
}

fn replay_args(path: &str) -> Vec<&str> {
    // Paced, so that the events come in many batches.
    vec![
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--rate",
        "1000",
        path,
    ]
}

/// Smaller segments than the default, so that a trace fills several.
fn small_segments(setup: &BridgeSetup) {
    let text = std::fs::read_to_string(&setup.config).expect("config");
    let text = text.replace(
        "fsync_interval_ms = 50",
        "fsync_interval_ms = 50\nsegment_bytes = 65536",
    );
    std::fs::write(&setup.config, text).expect("write config");
}

fn spool_state(setup: &BridgeSetup) -> Option<(u16, Value)> {
    setup.health().map(|(c, h)| (c, h["spool"].clone()))
}

/// Starts the bridge on a full disk (the spool holding `before` messages)
/// and waits until every message of the trace is accounted for: written
/// (what still fit in a page the segment had), one batch held in memory,
/// the others refused and counted. Returns the bridge, how many messages
/// are held, and how many the spool holds.
async fn start_on_full_disk(
    setup: &BridgeSetup,
    filler: &Path,
    produced: u64,
    before: u64,
) -> (Proc, u64, u64) {
    fill_up(filler);
    let bridge = setup.start();
    let full = wait_for(Duration::from_secs(20), || {
        spool_state(setup).is_some_and(|(c, s)| c == 503 && s["state"] == "disk_full")
    })
    .await;
    assert!(full, "healthz: {:?}\n{}", setup.health(), setup.log());
    let dropped = || series(setup, "spool_dropped_total", "{reason=\"disk_full\"}");
    let settled = wait_for(Duration::from_secs(10), || {
        let Some((_, s)) = spool_state(setup) else {
            return false;
        };
        let (held, spooled) = (s["held"].as_u64(), s["messages"].as_u64());
        let written = spooled.map(|m| m - before);
        held.zip(written)
            .zip(dropped())
            .is_some_and(|((h, w), d)| d > 0.0 && h > 0 && h + w + d as u64 == produced)
    })
    .await;
    let (_, s) = spool_state(setup).expect("healthz");
    assert!(
        settled,
        "held + written {s} + dropped {:?} != {produced}",
        dropped()
    );
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    (bridge, n("held"), n("messages"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_reported_retried_and_counted() {
    let path = trace(SMALL);
    let (_replay, addr) = replay(&replay_args(path.to_str().unwrap()));
    let setup = BridgeSetup::new(&addr, &dead_amqp(), "");
    let produced = setup.dry_run(&path).len() as u64 + 1; // + `connected`
    let spool = setup.spool_dir();
    let _fs = Tmpfs::mount(&spool, "1m");
    let filler = spool.join("filler");

    // A: full from the start (the bridge can still create its files).
    let (mut a, held, spooled) = start_on_full_disk(&setup, &filler, produced, 0).await;
    assert_eq!(spooled, 0, "nothing fits on a disk full from the start");
    // Room again, and no new event: the retry timer writes the batch.
    std::fs::remove_file(&filler).expect("rm filler");
    let written = wait_for(Duration::from_secs(5), || {
        spool_state(&setup)
            .is_some_and(|(c, s)| c == 503 && s["state"] == "ok" && s["messages"] == held)
    })
    .await;
    assert!(written, "after freeing space: {:?}", setup.health());
    assert!(setup.log().contains("the spool is writable again"));
    a.signal("TERM");
    assert_eq!(wait_exit(&mut a, Duration::from_secs(15)).await, Some(0));

    // B: full again, SIGTERM while a batch is held: it is counted and
    // logged as lost, not silently gone.
    let (mut b, held_b, spooled_b) = start_on_full_disk(&setup, &filler, produced, held + 1).await;
    b.signal("TERM");
    assert_eq!(
        wait_exit(&mut b, Duration::from_secs(15)).await,
        Some(0),
        "{}",
        setup.log()
    );
    let log = setup.log();
    let lost = log
        .lines()
        .find(|l| l.contains("lost at shutdown"))
        .unwrap_or_else(|| panic!("no loss logged at shutdown:\n{log}"));
    assert!(lost.contains(&format!("records={held_b}")), "{lost}");
    let stopped = log
        .lines()
        .filter(|l| l.contains("ami2amqp stopped"))
        .nth(1)
        .expect("stopped line of B");
    assert!(
        stopped.contains(&format!("lost_at_shutdown={held_b}")),
        "{stopped}"
    );
    // A's held batch and its `stopped` status stayed in the spool, with
    // what B could write.
    assert!(
        stopped.contains(&format!("spooled_messages={spooled_b}")),
        "{stopped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_spool_still_publishes_every_intact_message() {
    let path = trace(SMALL);
    let (_replay, addr) = replay(&replay_args(path.to_str().unwrap()));
    let dead = dead_amqp();
    let setup = BridgeSetup::new(&addr, &dead, "");
    small_segments(&setup);
    // events + `connected` + `stopped`
    let spooled = setup.dry_run(&path).len() as u64 + 2;

    // Run 1: broker away; everything stays in the spool.
    setup.spool_with_broker_away(spooled).await;
    let segs = spool_segments(&setup.spool_dir());
    assert!(segs.len() >= 2, "{segs:?}");

    // One byte flipped in the middle of the first segment.
    let mut b = std::fs::read(&segs[0]).expect("read segment");
    let mid = b.len() / 2;
    b[mid] ^= 0x20;
    std::fs::write(&segs[0], b).expect("write segment");

    // Run 2: broker up, no Asterisk (so nothing new is produced).
    let url = shared_amqp_url();
    let mut sink = sink(&url, &setup.exchange, "#").await;
    setup.move_to_broker(&url, "");
    let mut bridge = setup.start();
    let got = sink
        .collect(spooled as usize, Duration::from_secs(10))
        .await;
    let drained = setup.spool_drained(Duration::from_secs(10)).await;
    let corrupt = series(&setup, "spool_corrupt_records_total", "");
    bridge.signal("TERM");
    let _ = wait_exit(&mut bridge, Duration::from_secs(15)).await;
    let log = setup.log();
    assert_eq!(
        got.len() as u64,
        spooled - 1,
        "exactly the damaged message is missing\n{log}"
    );
    assert!(drained, "spool not drained: {:?}", setup.health());
    assert_eq!(corrupt, Some(1.0), "{log}");
    assert!(log.contains("spool segment is damaged"), "{log}");
    assert!(!log.contains("died mid-write"), "{log}");
    // In order, no duplicate: `connected` first, then seq 1.. with one gap.
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|d| serde_json::from_slice::<Value>(&d.data).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order: {seqs:?}");
    assert_eq!(seqs.len() as u64, spooled - 3, "events: all but one");
}
