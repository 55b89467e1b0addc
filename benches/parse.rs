//! Decoder throughput on a real capture: `cargo bench --bench parse`.
//!
//! Loads `tests/traces/calls_busy.ami.zst` (179,005 events, 77 MB once
//! decompressed; the decompression is not timed), then decodes the whole
//! stream several times with [`AmiCodec`] into [`Message`]s, fed in 64 KiB
//! reads as a socket would deliver it, on one thread. Each run classifies
//! every message (`Message::kind`) and drops it, as a consumer that routes
//! and forgets would.
//!
//! Prints one line per metric: events/s and MB/s (10^6 bytes) for the best
//! and the median run, ns per event, and heap allocations per message
//! (counted by a wrapping global allocator, a relaxed atomic add per call).
//!
//! Environment: `BENCH_RUNS` (default 9), `BENCH_CHUNK` (read size in bytes,
//! default 65536), `BENCH_TRACE` (another `.ami` / `.ami.zst` file).
//! The target is at least 1,000,000 events/s on one core.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ami2amqp::ami::{AmiCodec, Frame, Kind};
use bytes::BytesMut;
use tokio_util::codec::Decoder;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Counts {
    events: u64,
    responses: u64,
    other: u64,
    banners: u64,
    malformed: u64,
}

impl Counts {
    fn messages(&self) -> u64 {
        self.events + self.responses + self.other
    }
}

/// One full decode of `data` in reads of `chunk` bytes.
fn run(data: &[u8], chunk: usize) -> (Duration, Counts, u64) {
    let allocs_before = ALLOCS.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut codec = AmiCodec::default();
    let mut buf = BytesMut::with_capacity(2 * chunk);
    let mut c = Counts::default();
    let count = |frame: Frame, c: &mut Counts| match frame {
        Frame::Message(m) => {
            match m.kind() {
                Kind::Event => c.events += 1,
                Kind::Response => c.responses += 1,
                _ => c.other += 1,
            }
            black_box(m);
        }
        Frame::Banner(b) => {
            c.banners += 1;
            black_box(b);
        }
        Frame::Malformed(m) => {
            c.malformed += 1;
            black_box(m);
        }
    };
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(frame) = codec.decode(&mut buf).expect("decode") {
            count(frame, &mut c);
        }
    }
    while let Some(frame) = codec.decode_eof(&mut buf).expect("decode_eof") {
        count(frame, &mut c);
    }
    let elapsed = start.elapsed();
    (elapsed, c, ALLOCS.load(Ordering::Relaxed) - allocs_before)
}

/// One unoptimised pass over the trace: checks the bench still works
/// without spending `cargo test` time on timing.
fn smoke() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/traces/calls_busy.ami.zst");
    let data = zstd::stream::decode_all(&std::fs::read(&path).expect("trace")[..]).expect("zstd");
    let (t, c, _) = run(&data, 64 * 1024);
    assert_eq!(c.malformed, 0);
    assert!(c.events > 0);
    println!(
        "parse bench smoke run: {} events in {:.2} s (not a measurement; run `cargo bench --bench parse`)",
        c.events,
        t.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`. Without it (`cargo test --all-targets`
    // runs bench targets too, in a debug build) decode once as a smoke test.
    if !std::env::args().any(|a| a == "--bench") {
        return smoke();
    }
    let env_usize = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let runs = env_usize("BENCH_RUNS", 9).max(1);
    let chunk = env_usize("BENCH_CHUNK", 64 * 1024).max(1);
    let path = std::env::var_os("BENCH_TRACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/traces/calls_busy.ami.zst")
        });

    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data = if path.extension().is_some_and(|e| e == "zst") {
        zstd::stream::decode_all(&raw[..]).expect("zstd")
    } else {
        raw
    };

    // Warm-up (page faults, caches), not reported.
    let (_, expected, _) = run(&data, chunk);

    let mut times = Vec::with_capacity(runs);
    let mut allocs = 0;
    for _ in 0..runs {
        let (t, c, a) = run(&data, chunk);
        assert_eq!(c, expected, "runs disagree");
        times.push(t);
        allocs = a;
    }
    times.sort();
    let best = times[0];
    let median = times[times.len() / 2];
    let events = expected.events as f64;
    let mb = data.len() as f64 / 1e6;
    let eps = |t: Duration| events / t.as_secs_f64();
    let mbs = |t: Duration| mb / t.as_secs_f64();

    println!(
        "parse bench: {} ({:.1} MB), {} runs, reads of {} bytes, one thread",
        path.file_name().unwrap().to_string_lossy(),
        mb,
        runs,
        chunk
    );
    println!("events:                 {}", expected.events);
    println!(
        "messages:               {} ({} responses, {} other, {} banner, {} malformed)",
        expected.messages(),
        expected.responses,
        expected.other,
        expected.banners,
        expected.malformed
    );
    println!(
        "time best / median:     {:.1} ms / {:.1} ms",
        best.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3
    );
    println!("events/s best:          {:.0}", eps(best));
    println!("events/s median:        {:.0}", eps(median));
    println!("MB/s best:              {:.1}", mbs(best));
    println!("MB/s median:            {:.1}", mbs(median));
    println!(
        "ns/event median:        {:.1}",
        median.as_secs_f64() * 1e9 / events
    );
    println!(
        "allocations/message:    {:.2}",
        allocs as f64 / expected.messages() as f64
    );
    let target = 1_000_000.0;
    println!(
        "target 1,000,000 ev/s:  {} (median {:.2}x)",
        if eps(median) >= target {
            "met"
        } else {
            "NOT met"
        },
        eps(median) / target
    );
}
