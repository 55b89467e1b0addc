//! Decode + route + JSON encode throughput on one core, with the default
//! mapping set (`mappings/`) over the largest real trace (calls_busy, 179k
//! events, 77 MB): the work the bridge's router task does per event, minus
//! the spool and the broker.
//!
//! Run with `cargo bench --bench route`. Without `--bench` (as `cargo test
//! --all-targets` runs it) it does one short pass as a smoke test.

use std::time::{Duration, Instant, UNIX_EPOCH};

use ami2amqp::ami::{AmiCodec, Frame, Kind, Limits};
use ami2amqp::mapping::{EventCtx, load_dir};
use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// CPU time of this thread (user + system), from /proc: on a shared
/// machine wall time also counts the time other processes had the core.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime, in 1/100 s) are the 12th and
    // 13th after the `)`.
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((num(11) + num(12)) * 10)
}

fn main() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let quick = !std::env::args().any(|a| a == "--bench");
    let data = ami2amqp::trace::read_trace(format!("{repo}/tests/traces/calls_busy.ami.zst"))
        .expect("read calls_busy");
    let data = if quick {
        data[..data.len() / 50].to_vec()
    } else {
        data
    };
    let router =
        load_dir(std::path::Path::new(&format!("{repo}/mappings"))).expect("default mappings");
    let runs = if quick { 1 } else { 7 };

    let mut results = Vec::new();
    let mut cpu_results = Vec::new();
    let mut last = (0u64, 0u64, 0usize);
    for _ in 0..runs {
        let mut codec = AmiCodec::new(Limits::default());
        let mut buf = BytesMut::with_capacity(128 * 1024);
        let mut out = Vec::new();
        let (mut events, mut messages, mut body_bytes) = (0u64, 0u64, 0usize);
        let start = Instant::now();
        let cpu0 = thread_cpu();
        for chunk in data.chunks(64 * 1024) {
            buf.extend_from_slice(chunk);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                let Frame::Message(m) = f else { continue };
                if m.kind() != Kind::Event {
                    continue;
                }
                events += 1;
                let ctx = EventCtx {
                    server: "pbx1",
                    seq: events,
                    received_at: UNIX_EPOCH + Duration::from_millis(events),
                    message: &m,
                    instance: "bench",
                };
                out.clear();
                let o = router.route(&ctx, &mut out);
                assert!(o.errors.is_empty(), "mapping errors: {:?}", o.errors);
                for msg in &out {
                    messages += 1;
                    body_bytes += msg.body.len();
                }
            }
        }
        let t = start.elapsed();
        let cpu = thread_cpu()
            .saturating_sub(cpu0)
            .max(Duration::from_millis(10));
        results.push(events as f64 / t.as_secs_f64());
        cpu_results.push(events as f64 / cpu.as_secs_f64());
        last = (events, messages, body_bytes);
    }
    results.sort_by(|a, b| a.total_cmp(b));
    cpu_results.sort_by(|a, b| a.total_cmp(b));
    let cpu_median = cpu_results[cpu_results.len() / 2];
    let median = results[results.len() / 2];
    let best = results[results.len() - 1];
    let (events, messages, body_bytes) = last;
    println!(
        "route: decode + route + JSON encode, default mappings, calls_busy{}",
        if quick { " (smoke: 2%)" } else { "" }
    );
    println!(
        "route: events {events}, messages {messages}, avg body {} bytes",
        body_bytes / messages.max(1) as usize
    );
    println!("route: median {median:.0} events/s, best {best:.0} events/s ({runs} runs, one core)");
    println!(
        "route: median {cpu_median:.0} events per CPU-second (thread CPU time; robust to other load)"
    );
    println!(
        "route: {:.0} ns/event median (target: >= 500,000 events/s, i.e. <= 2000 ns/event)",
        1e9 / median
    );
}
