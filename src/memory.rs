//! Giving memory back after a burst.
//!
//! A burst of AMI traffic (a call storm, a reconnect that replays a backlog)
//! fills the in-memory buffers in front of the spool for a few seconds: the
//! AMI client's budget, the channel to the router. When it is over the
//! buffers are empty again, but the allocator keeps the freed pages
//! mapped — with glibc's malloc the benchmarks saw the process stay at
//! 47–101 MB after a max-speed read, against ~30 MB before. An operator
//! reads that as a leak.
//!
//! So every 3 s this task looks at the resident size and, when it has grown
//! by more than 8 MiB since the last trim and stopped growing (the burst is
//! over: trimming in the middle of one would only compete with it for the
//! allocator's locks), returns the free pages from a blocking thread:
//! jemalloc's arenas are purged (feature `jemalloc`, the binary's
//! allocator; it would also give them back by itself, but only after its
//! 10-second decay and only while something allocates), and glibc's heap,
//! which the C libraries still use, is trimmed (`malloc_trim`). It also
//! publishes the resident size as the `process_resident_memory_bytes`
//! gauge.

use std::time::Duration;

const PERIOD: Duration = Duration::from_secs(3);
const GROWTH: u64 = 8 << 20;

/// Resident set size of this process, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

/// Returns free heap pages to the kernel; true if glibc released any
/// (jemalloc's purge does not say).
pub fn trim() -> bool {
    purge_jemalloc();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Purges the unused dirty pages of every jemalloc arena.
fn purge_jemalloc() {
    #[cfg(feature = "jemalloc")]
    {
        // 4096 is MALLCTL_ARENAS_ALL: every arena at once.
        let name = c"arena.4096.purge";
        // SAFETY: a "void" mallctl (no old or new value) with a
        // NUL-terminated name; it only changes jemalloc's own state.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            tracing::debug!(rc, "jemalloc purge failed");
        }
    }
}

/// Runs forever: the gauge, and a trim after growth (see the module docs).
pub async fn keep_trim() {
    let mut t = tokio::time::interval(PERIOD);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut baseline = resident_bytes().unwrap_or(0);
    let mut previous = baseline;
    loop {
        t.tick().await;
        let Some(rss) = resident_bytes() else {
            continue;
        };
        let settled = rss <= previous + (1 << 20);
        previous = rss;
        if rss > baseline + GROWTH && settled {
            let after = tokio::task::spawn_blocking(|| {
                trim();
                resident_bytes()
            })
            .await
            .ok()
            .flatten()
            .unwrap_or(rss);
            tracing::debug!(before = rss, after, "returned free memory to the system");
            baseline = after;
            previous = after;
            metrics::gauge!(crate::internal_events::catalog::PROCESS_RESIDENT_MEMORY_BYTES)
                .set(after as f64);
        } else {
            // Follow shrinking too, so the next growth is measured from here.
            baseline = baseline.min(rss);
            metrics::gauge!(crate::internal_events::catalog::PROCESS_RESIDENT_MEMORY_BYTES)
                .set(rss as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_gives_back_a_freed_burst() {
        let before = resident_bytes().unwrap();
        assert!(before > 1 << 20, "{before}");
        // A burst of small allocations like the AMI buffers', then freed
        // except for one at the end (so the heap top cannot simply shrink).
        let mut v: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 400]).collect();
        let keep = v.pop();
        for b in &v {
            std::hint::black_box(b);
        }
        let peak = resident_bytes().unwrap();
        drop(v);
        let freed = resident_bytes().unwrap();
        trim();
        let after = resident_bytes().unwrap();
        drop(keep);
        assert!(peak > before + (50 << 20), "peak {peak}, before {before}");
        // Other tests of this binary allocate at the same time; the burst
        // is 80+ MB, so most of it must be gone.
        assert!(
            after + (40 << 20) < peak,
            "peak {peak}, after free {freed}, after trim {after}"
        );
    }
}
