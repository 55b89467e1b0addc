//! The spool's disk chores, on a thread of their own.
//!
//! `fdatasync`, `rename` and `unlink` can take a long time on a busy disk:
//! the benchmarks measured `fdatasync` tails of 100–300 ms on this project's
//! VM. When the spool ran them inline they blocked the tokio worker they
//! happened to run on — the publisher stopped publishing and taking
//! confirms, and with both workers stuck nothing ran at all, the AMI reader
//! included. None of these calls has to finish before the caller goes on:
//!
//! * the data of a segment is already in the kernel (`write(2)`) when the
//!   router moves on, which is all a `kill -9` needs; `fdatasync` only
//!   bounds what a power loss can take, so it can run a little later;
//! * the cursor only ever moves forward, and a stale cursor on disk only
//!   means re-publishing messages the broker already confirmed, which
//!   at-least-once delivery allows; so only the latest value matters;
//! * a confirmed segment can be deleted whenever.
//!
//! So the spool hands these jobs to one thread (this module), which
//! coalesces them (one fsync per dirty file, the newest cursor only) and
//! works through them while the runtime keeps going. [`Syncer::flush`]
//! waits for everything queued so far; shutdown and tests use it.
//!
//! The cursor is one 8-byte little-endian number at the start of the file
//! `cursor`, overwritten in place (`pwrite`) — no create + rename per
//! update. A `pwrite` is enough for a `kill -9` (the kernel has it); it is
//! `fdatasync`ed with the segments, on `flush`, and otherwise at most once
//! a second, not at every update: each `fsync` on
//! the broker's disk made RabbitMQ's own writes wait (the bridge's p99 at
//! 5,000 msg/s went from ~2 ms with the spool on tmpfs to ~6 ms on the
//! disk), and a cursor that a power loss sets back only re-publishes
//! confirmed messages. A write of 8 aligned bytes within one sector is not
//! torn by a crash, and `Spool::open` checks whatever it reads against the
//! segments that exist (a value that is not a record boundary there is
//! replaced by the oldest segment's start), so even an old value is safe.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

/// The cursor is fsynced at least this often while it moves (and with
/// every segment fsync): what a power loss can set it back by.
const CURSOR_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest [`Syncer::flush`] waits.
pub const FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
struct Jobs {
    /// Files to `fdatasync` (each once, however often it was asked for).
    files: Vec<Arc<File>>,
    /// The newest cursor value not yet written.
    cursor: Option<u64>,
    /// Files to delete.
    remove: Vec<PathBuf>,
    /// Make the cursor durable in this round even without segments (flush).
    durable: bool,
    /// Jobs queued so far / jobs done so far (for `flush`).
    queued: u64,
    done: u64,
    stop: bool,
}

struct State {
    jobs: Mutex<Jobs>,
    /// fsyncs of segment files done so far.
    fsyncs: AtomicU64,
    /// Signalled when jobs are queued (to the thread) and when a round is
    /// done (to `flush`).
    wake: Condvar,
    idle: Condvar,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        // Every update under the lock is a few assignments and pushes, so
        // the data stays consistent even if a holder panicked.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to the background thread. Dropping it finishes the queued jobs
/// and joins the thread.
pub struct Syncer {
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread. `cursor_path` is the cursor file (created if
    /// missing; its content is left alone until the first update).
    pub fn start(cursor_path: PathBuf) -> io::Result<Syncer> {
        let cursor = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cursor_path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open spool cursor {}: {e}", cursor_path.display()),
                )
            })?;
        let state = Arc::new(State {
            jobs: Mutex::new(Jobs::default()),
            fsyncs: AtomicU64::new(0),
            wake: Condvar::new(),
            idle: Condvar::new(),
        });
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || worker(&st, cursor, cursor_path))?;
        Ok(Syncer {
            state,
            thread: Some(thread),
        })
    }

    fn queue(&self, f: impl FnOnce(&mut Jobs)) {
        let mut j = self.state.lock();
        f(&mut j);
        j.queued += 1;
        drop(j);
        self.state.wake.notify_one();
    }

    /// Queues an `fdatasync` of `file`.
    pub fn sync_file(&self, file: Arc<File>) {
        self.queue(|j| {
            if !j.files.iter().any(|f| Arc::ptr_eq(f, &file)) {
                j.files.push(file);
            }
        });
    }

    /// Queues a cursor update (the newest value wins).
    pub fn write_cursor(&self, value: u64) {
        self.queue(|j| j.cursor = Some(j.cursor.map_or(value, |c| c.max(value))));
    }

    #[cfg(test)]
    /// How many segment fsyncs have been done.
    pub fn fsyncs(&self) -> u64 {
        self.state.fsyncs.load(Ordering::Relaxed)
    }

    /// Queues the deletion of a file.
    pub fn remove(&self, path: PathBuf) {
        self.queue(|j| j.remove.push(path));
    }

    /// Makes everything queued so far durable (cursor included) and waits
    /// for it — at most [`FLUSH_LIMIT`]: a disk that hangs must not keep a
    /// shutdown waiting forever (what was written is in the kernel either
    /// way; only its durability against a power loss is then unknown).
    pub fn flush(&self) {
        self.queue(|j| j.durable = true);
        let deadline = Instant::now() + FLUSH_LIMIT;
        let mut j = self.state.lock();
        let target = j.queued;
        while j.done < target && !j.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(limit = ?FLUSH_LIMIT,
                    "spool: the disk did not finish its fsyncs in time; going on without waiting");
                return;
            }
            j = self
                .state
                .idle
                .wait_timeout(j, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.state.lock().stop = true;
        self.state.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn worker(state: &State, cursor: File, cursor_path: PathBuf) {
    // Two callers may queue cursor values in the opposite order of the
    // values themselves (they read the position, then queue it, without
    // one lock around both): never write a smaller value after a larger.
    let mut written: Option<u64> = None;
    let mut cursor_dirty = false;
    let mut cursor_synced = Instant::now();
    loop {
        let (files, value, remove, durable, upto, stop) = {
            let mut j = state.lock();
            while j.queued == j.done && !j.stop {
                j = state.wake.wait(j).unwrap_or_else(|p| p.into_inner());
            }
            (
                std::mem::take(&mut j.files),
                j.cursor.take(),
                std::mem::take(&mut j.remove),
                std::mem::take(&mut j.durable),
                j.queued,
                j.stop,
            )
        };
        let started = Instant::now();
        // Segments first: the cursor never points past data that a power
        // loss could take back (and `Spool::open` resets it if it did).
        let durable = durable || !files.is_empty();
        for f in files {
            if let Err(e) = f.sync_data() {
                failed("fdatasync of a spool segment", &e);
            }
            state.fsyncs.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::internal_events::catalog::SPOOL_FSYNCS_TOTAL).increment(1);
        }
        if let Some(v) = value
            && written.is_none_or(|w| v > w)
        {
            written = Some(v);
            match cursor.write_all_at(&v.to_le_bytes(), 0) {
                Ok(()) => cursor_dirty = true,
                Err(e) => failed(&format!("writing {}", cursor_path.display()), &e),
            }
        }
        if cursor_dirty && (durable || cursor_synced.elapsed() >= CURSOR_SYNC) {
            cursor_dirty = false;
            cursor_synced = Instant::now();
            if let Err(e) = cursor.sync_data() {
                failed(&format!("fdatasync of {}", cursor_path.display()), &e);
            }
        }
        for p in remove {
            if let Err(e) = fs::remove_file(&p)
                && e.kind() != io::ErrorKind::NotFound
            {
                failed(&format!("deleting {}", p.display()), &e);
            }
        }
        metrics::histogram!(crate::internal_events::catalog::SPOOL_SYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let mut j = state.lock();
        j.done = upto;
        let finished = j.stop && j.queued == j.done;
        drop(j);
        state.idle.notify_all();
        if stop && finished {
            return;
        }
    }
}

fn failed(what: &str, e: &io::Error) {
    crate::internal_events::spool::SpoolSyncFailed { what, error: e }.emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cursor_latest_value_wins_and_flush_waits() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("cursor");
        let s = Syncer::start(path.clone()).unwrap();
        for v in [5u64, 900, 17] {
            s.write_cursor(v);
        }
        s.flush();
        // max of what was queued: the cursor never goes back
        assert_eq!(fs::read(&path).unwrap(), 900u64.to_le_bytes());
        s.write_cursor(1 << 40);
        s.flush();
        assert_eq!(fs::read(&path).unwrap(), (1u64 << 40).to_le_bytes());
    }

    #[test]
    fn removes_and_syncs_then_drop_finishes_queued_jobs() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("old.seg");
        fs::write(&victim, b"x").unwrap();
        let mut f = File::create(d.path().join("live.seg")).unwrap();
        f.write_all(b"data").unwrap();
        let s = Syncer::start(d.path().join("cursor")).unwrap();
        s.sync_file(Arc::new(f));
        s.remove(victim.clone());
        // a file that is already gone is not an error
        s.remove(d.path().join("never-existed"));
        s.write_cursor(42);
        drop(s);
        assert!(!victim.exists());
        assert_eq!(
            fs::read(d.path().join("cursor")).unwrap(),
            42u64.to_le_bytes()
        );
    }
}
