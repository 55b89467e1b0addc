//! `memory::trim` gives the pages a burst left behind back to the system
//! under the binary's allocator (jemalloc), not only under glibc's: after
//! a burst of small allocations is freed, the resident size falls at once
//! instead of after jemalloc's own decay.

#![cfg(feature = "jemalloc")]

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use ami2amqp::memory::{resident_bytes, trim};

const MB: u64 = 1 << 20;

#[test]
fn trim_returns_a_freed_burst_to_the_system() {
    let before = resident_bytes().expect("statm");
    // 96 MiB in 1 KiB buffers, like events in flight, all touched.
    let burst: Vec<Vec<u8>> = (0..96 * 1024).map(|i| vec![i as u8; 1024]).collect();
    let peak = resident_bytes().expect("statm");
    assert!(
        peak > before + 80 * MB,
        "burst not resident: {before} → {peak}"
    );
    drop(burst);
    let freed = resident_bytes().expect("statm");
    // jemalloc keeps freed pages (dirty) for its decay time: without a
    // purge the resident size has not come down yet.
    assert!(
        freed > before + 64 * MB,
        "already returned without trim: {freed}"
    );
    trim();
    let after = resident_bytes().expect("statm");
    assert!(
        after < before + 24 * MB,
        "trim left {} MiB of the burst resident ({before} → {peak} → {after})",
        (after.saturating_sub(before)) / MB
    );
}
