//! The spool: an on-disk, ordered log of every message not yet confirmed.
//!
//! Every message the router produces is appended here *before* it is
//! published, and leaves only when the broker has confirmed it. One path for
//! every message, whether the broker is up or away, is what makes the two
//! promises easy to keep:
//!
//! * **Nothing is lost.** A broker restart, a killed connection or a
//!   `kill -9` of the bridge itself leaves the unconfirmed messages in the
//!   log; the publisher (or the next process) publishes them again from the
//!   last confirmed position. Data is handed to the kernel with `write(2)`
//!   as soon as a batch is appended, so a `kill -9` loses nothing written;
//!   a message still unconfirmed after `fsync_interval` is `fsync`ed, which
//!   bounds what a power loss can take (see `SpoolWriter::sync_if_due` for
//!   why confirmed messages are not). The `fsync`s, cursor updates and
//!   deletions run on a thread of their own (`syncer`), never on a tokio
//!   worker: a slow disk must not stop the publisher or the AMI reader.
//! * **Order is kept.** The log has one writer (the router task) and one
//!   reader (the publisher), and the reader re-reads from the oldest
//!   unconfirmed record after any failure, so messages reach the broker in
//!   the order they were appended. A re-read may publish a message the
//!   broker had already confirmed just before a failure: delivery is
//!   at-least-once, and consumers that must not see a duplicate dedupe on
//!   `message_id`.
//!
//! ## Files
//!
//! The log is a series of segment files named after the global byte offset
//! of their first record (`00000000000000000000.seg`), each at most
//! `segment_bytes` long, plus `cursor`, the global offset of the oldest
//! unconfirmed record (8 bytes, overwritten in place). A record is
//! `u32 length | u32 crc32 | payload` (little endian, never empty).
//!
//! Segments whose records are all confirmed are deleted. When the log would
//! pass `max_bytes`, `on_full` decides: refuse new messages or delete the
//! oldest segment. Either way the loss is counted and logged, never silent.
//!
//! ## Damage
//!
//! A crash can only leave one kind of damage: a **torn tail**, the last
//! record of the last segment cut in the middle of its write. That is cut
//! off at start (`Recovered::torn_bytes`), and nothing else ever is. Any
//! other damage (a flipped byte, a zeroed block, a file cut short) is a
//! **hole**: the scan (`scan.rs`, pure functions, property-tested) resyncs
//! on the next position where a record header and its CRC validate, the
//! records lost in between are counted (`spool_corrupt_records_total`, with
//! `spool_corrupt_bytes_total`) and logged with the file and offset, and
//! every later record and segment is kept. The reader does the same when it
//! meets damage that appeared after start (or a segment file deleted under
//! it): skip, count once, go on — never an error that would make the
//! publisher reconnect and read the same record again.
//!
//! At start the **cursor** must be a record boundary of a segment on disk;
//! an unreadable cursor, one before the oldest segment, past the end or
//! inside a record is logged and replaced by the oldest segment's start:
//! its messages are published again (duplicates, not losses). A **gap** in
//! the segment numbering (a segment file deleted) is logged and counted
//! (`spool_missing_segments_total`); what it held is gone.
//!
//! ## Disk full
//!
//! When the disk refuses a write (`ENOSPC`, quota, or any I/O error), the
//! batch stays in memory and the router task retries it every second
//! ([`SpoolWriter::retry`]); meanwhile new messages are refused and counted
//! (`spool_dropped_total{reason="disk_full"}` or `"write_error"`), so memory
//! stays bounded by that one batch, and `/healthz` shows the state
//! ([`Spool::write_failure`]). That is `refuse_new` whatever `on_full` says,
//! except that `drop_oldest` first deletes the oldest segments to make room
//! (`{reason="disk_full_drop_oldest"}`). At shutdown a batch the disk still
//! refuses is counted as lost (`{reason="shutdown"}`) and logged with its
//! size ([`SpoolWriter::finish`]).
//!
//! ## Tests
//!
//! Besides the unit tests below, `spool/model_tests.rs` checks these
//! promises against an in-memory model (a queue of unconfirmed payloads)
//! over random append / commit / read / ack / crash / reopen sequences.
//! What a crash may bring back is the cursor's granularity: records
//! confirmed since the cursor was last persisted (`ack` with `force`, or
//! every 50 ms) come back as duplicates; an unconfirmed record never goes
//! missing, and order holds.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::scan::{self, HEADER, MAX_RECORD};
use super::syncer::Syncer;

use crate::logs::Throttle;

mod config;
pub use config::{OnFull, SpoolSettings};

/// Spool settings.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub on_full: OnFull,
    pub fsync_interval: Duration,
}

/// One segment file.
#[derive(Debug, Clone)]
struct Segment {
    base: u64,
    len: u64,
    records: u64,
}

#[derive(Debug)]
struct Shared {
    segments: VecDeque<Segment>,
    /// Global offset of the end of the last complete record.
    end: u64,
    /// Global offset of the oldest unconfirmed record.
    acked: u64,
    /// Records between `acked` and `end` (approximate after drop_oldest).
    pending_records: u64,
    /// Set when records were dropped by `drop_oldest` under the reader.
    skipped_to: Option<u64>,
    /// Damaged regions not yet passed by the cursor (global offsets,
    /// start..end): the reader skips them. Found at open or by the reader.
    holes: Vec<(u64, u64)>,
    /// Set while the writer cannot write (disk full, I/O error): what
    /// `/healthz` shows.
    write_failure: Option<WriteFailure>,
    cursor_written: u64,
    cursor_written_at: Instant,
}

/// The spool. Clone-able handle; [`Spool::writer`] and [`Spool::reader`]
/// give the two ends.
#[derive(Clone)]
pub struct Spool {
    cfg: Arc<SpoolConfig>,
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    syncer: Arc<Syncer>,
}

/// What `open` found on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub records: u64,
    pub bytes: u64,
    /// Bytes cut off the end because the last record was incomplete.
    pub torn_bytes: u64,
    /// Records lost to damage inside the spool (skipped; see `scan`).
    pub corrupt_records: u64,
    /// Bytes of those damaged regions.
    pub corrupt_bytes: u64,
    /// Gaps in the numbering of the segments (segment files missing).
    pub missing_segments: u64,
    /// The cursor was unusable and reading starts at the oldest segment.
    pub cursor_reset: bool,
    /// Records per server (at most [`MAX_RECOVERED_SERVERS`] names; the
    /// records of further names are counted under `""`).
    pub by_server: std::collections::BTreeMap<String, u64>,
}

/// How many server names [`Recovered::by_server`] keeps (a damaged or
/// foreign spool could hold any number).
pub const MAX_RECOVERED_SERVERS: usize = 1024;

/// Counts the records at `offsets` of the segment bytes `b` per server.
fn count_servers(b: &[u8], offsets: &[u64], by: &mut std::collections::BTreeMap<String, u64>) {
    for &o in offsets {
        let Some(payload) = usize::try_from(o)
            .ok()
            .and_then(|o| b.get(o.checked_add(scan::HEADER)?..))
        else {
            continue;
        };
        let name = super::record::Record::server_of(payload).unwrap_or("");
        if let Some(n) = by.get_mut(name) {
            *n += 1;
        } else if by.len() < MAX_RECOVERED_SERVERS {
            by.insert(name.to_string(), 1);
        } else {
            *by.entry(String::new()).or_insert(0) += 1;
        }
    }
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn io_ctx(e: io::Error, what: &str, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

/// The cursor file as read at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// No cursor yet (new spool, or nothing ever confirmed).
    Absent,
    At(u64),
    /// Not 8 bytes, or a value no spool reaches.
    Garbage,
}

fn read_cursor(path: &Path) -> io::Result<Cursor> {
    match fs::read(path) {
        Ok(b) if b.is_empty() => Ok(Cursor::Absent),
        Ok(b) => match <[u8; 8]>::try_from(b.as_slice()) {
            Ok(a) if u64::from_le_bytes(a) < 1 << 62 => Ok(Cursor::At(u64::from_le_bytes(a))),
            _ => Ok(Cursor::Garbage),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cursor::Absent),
        Err(e) => Err(io_ctx(e, "cannot read spool cursor", path)),
    }
}

/// A segment file found at start: its base and the length that belongs to
/// it (the file's, cut where the next segment begins if they overlap).
#[derive(Debug, Clone, Copy)]
struct Found {
    base: u64,
    len: u64,
}

/// The segment files in `dir`, in order.
fn list_segments(dir: &Path) -> io::Result<Vec<Found>> {
    let mut bases: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            n.strip_suffix(".seg")?.parse::<u64>().ok()
        })
        .collect();
    bases.sort_unstable();
    let mut found = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let path = seg_path(dir, base);
        let mut len = fs::metadata(&path)?.len();
        if let Some(&next) = bases.get(i + 1)
            && base + len > next
        {
            tracing::error!(segment = %path.display(), overlap = base + len - next,
                "spool segment runs into the next one; its end is treated as damaged");
            len = next - base;
        }
        found.push(Found { base, len });
    }
    Ok(found)
}

/// Reads and scans one segment (at most `len` bytes of it).
fn scan_file(dir: &Path, g: Found, last: bool) -> io::Result<scan::SegScan> {
    let path = seg_path(dir, g.base);
    let mut b = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(g.len).read_to_end(&mut b))
        .map_err(|e| io_ctx(e, "cannot read spool segment", &path))?;
    Ok(scan::scan(&b, last))
}

/// Where reading starts: the cursor if it is a record boundary in a
/// segment on disk, else the oldest segment's start (duplicates rather
/// than losses). Returns the index of the first segment to keep, the
/// position, and whether the cursor was reset.
fn resolve_cursor(
    cursor: Cursor,
    segs: &[Found],
    scans: &mut [Option<scan::SegScan>],
    dir: &Path,
) -> io::Result<(usize, u64, bool)> {
    let oldest = segs.first().map(|g| g.base);
    let c = match (cursor, oldest) {
        (Cursor::Absent, o) => return Ok((0, o.unwrap_or(0), false)),
        (Cursor::At(c), None) => return Ok((0, c, false)),
        (Cursor::Garbage, o) => {
            tracing::error!(dir = %dir.display(),
                "spool cursor is unreadable; publishing again from the oldest segment (duplicates, not losses)");
            return Ok((0, o.unwrap_or(0), true));
        }
        (Cursor::At(c), Some(_)) => c,
    };
    let last = segs.len() - 1;
    if let Some(i) = segs.iter().rposition(|g| g.base <= c)
        && c <= segs[i].base + segs[i].len
    {
        if scans[i].is_none() {
            scans[i] = Some(scan_file(dir, segs[i], i == last)?);
        }
        if scans[i]
            .as_ref()
            .is_some_and(|s| s.is_boundary(c - segs[i].base))
        {
            return Ok((i, c, false));
        }
    }
    tracing::error!(
        cursor = c,
        oldest = oldest.unwrap_or(0),
        end = segs[last].base + segs[last].len,
        "spool cursor is not on a record of the spool; publishing again from the oldest segment (duplicates, not losses)"
    );
    Ok((0, segs[0].base, true))
}

/// The segments kept at open, the damaged regions (global offsets) and
/// the end of the log.
type Recovery = (VecDeque<Segment>, Vec<(u64, u64)>, u64);

/// Removes segments that are confirmed, cuts a torn tail off the last one
/// and finds the damaged regions of the rest. Returns the segments kept,
/// the damaged regions (global offsets) and the end of the log.
fn recover(
    dir: &Path,
    found: &[Found],
    mut scans: Vec<Option<scan::SegScan>>,
    first: usize,
    acked: u64,
    rec: &mut Recovered,
) -> io::Result<Recovery> {
    // Wholly confirmed segments before the cursor: leftovers of a crash.
    for g in &found[..first] {
        let _ = fs::remove_file(seg_path(dir, g.base));
    }
    let mut segments = VecDeque::new();
    let mut holes = Vec::new();
    let mut end = acked;
    let last = found.len().saturating_sub(1);
    for (i, &g) in found.iter().enumerate().skip(first) {
        let path = seg_path(dir, g.base);
        if i < last && g.base + g.len <= acked {
            let _ = fs::remove_file(&path);
            continue;
        }
        let s = match scans[i].take() {
            Some(s) => s,
            None => scan_file(dir, g, i == last)?,
        };
        if s.torn > 0 {
            rec.torn_bytes += s.torn;
            tracing::warn!(segment = %path.display(), cut = s.torn,
                "spool ends in an incomplete record (the process died mid-write); cutting it off");
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(s.len)?;
            f.sync_all()?;
        }
        let from = acked.saturating_sub(g.base);
        let (mut lost, mut bytes) = (0, 0);
        for h in s.holes.iter().filter(|h| h.end > from) {
            holes.push((g.base + h.start, g.base + h.end));
            lost += h.lost;
            bytes += h.end - h.start;
        }
        if let Some(h) = s.holes.iter().find(|h| h.end > from) {
            tracing::error!(segment = %path.display(), offset = h.start, records = lost, bytes,
                "spool segment is damaged: skipping what cannot be read, publishing every intact record");
        }
        rec.corrupt_records += lost;
        rec.corrupt_bytes += bytes;
        let pending: Vec<u64> = s.records.iter().copied().filter(|&o| o >= from).collect();
        let records = pending.len() as u64;
        rec.records += records;
        if records > 0 {
            let mut b = Vec::new();
            File::open(&path)
                .and_then(|f| f.take(s.len).read_to_end(&mut b))
                .map_err(|e| io_ctx(e, "cannot read spool segment", &path))?;
            count_servers(&b, &pending, &mut rec.by_server);
        }
        if let Some(next) = found.get(i + 1)
            && g.base + g.len < next.base
        {
            rec.missing_segments += 1;
            tracing::error!(after = %path.display(), missing_bytes = next.base - g.base - g.len,
                "spool segment file(s) missing: the messages they held are lost");
        }
        end = g.base + s.len;
        segments.push_back(Segment {
            base: g.base,
            len: s.len,
            records,
        });
    }
    Ok((segments, holes, end))
}

impl Spool {
    /// Opens (or creates) the spool in `cfg.dir`, recovering what a previous
    /// process left: see the module docs for what is cut, skipped and
    /// counted.
    pub fn open(cfg: SpoolConfig) -> io::Result<(Spool, Recovered)> {
        fs::create_dir_all(&cfg.dir)
            .map_err(|e| io_ctx(e, "cannot create spool directory", &cfg.dir))?;
        // Fail now, with a clear message, if the directory is not writable.
        let probe = cfg.dir.join(".write-test");
        File::create(&probe)
            .map_err(|e| io_ctx(e, "spool directory is not writable:", &cfg.dir))?;
        let _ = fs::remove_file(&probe);

        let cursor_path = cfg.dir.join("cursor");
        let cursor = read_cursor(&cursor_path)?;
        let found = list_segments(&cfg.dir)?;
        let mut scans = vec![None; found.len()];
        let (first, acked, reset) = resolve_cursor(cursor, &found, &mut scans, &cfg.dir)?;
        let mut rec = Recovered {
            cursor_reset: reset,
            ..Recovered::default()
        };
        let (segments, holes, end) = recover(&cfg.dir, &found, scans, first, acked, &mut rec)?;
        rec.bytes = end - acked;
        if reset || cursor == Cursor::Absent {
            // Replace an unusable cursor now (it may not even be 8 bytes),
            // and give a new one its 8 bytes, so that updating it in place
            // never needs a block from a full disk. Best effort: the syncer
            // writes it at the next confirm anyway.
            if let Err(e) = fs::write(&cursor_path, acked.to_le_bytes()) {
                tracing::warn!(error = %e, path = %cursor_path.display(), "cannot write the spool cursor");
            }
        }
        // A leftover of versions that replaced the cursor by rename.
        let _ = fs::remove_file(cfg.dir.join("cursor.tmp"));
        let syncer = Syncer::start(cursor_path)?;
        let shared = Shared {
            segments,
            end,
            acked,
            pending_records: rec.records,
            skipped_to: None,
            holes,
            write_failure: None,
            cursor_written: acked,
            cursor_written_at: Instant::now(),
        };
        let spool = Spool {
            cfg: Arc::new(cfg),
            shared: Arc::new(Mutex::new(shared)),
            notify: Arc::new(Notify::new()),
            syncer: Arc::new(syncer),
        };
        spool.update_gauges();
        Ok((spool, rec))
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves consistent data (every
        // update is a few assignments), so poisoning is ignored.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes and records waiting (appended, not yet confirmed).
    pub fn pending(&self) -> (u64, u64) {
        let s = self.lock();
        (s.end - s.acked, s.pending_records)
    }

    /// Why new messages cannot be written at the moment, if they cannot
    /// (disk full, I/O error); `None` while the spool is writable.
    pub fn write_failure(&self) -> Option<WriteFailure> {
        self.lock().write_failure.clone()
    }

    /// Global offset of the end of the last record written.
    pub fn end(&self) -> u64 {
        self.lock().end
    }

    #[cfg(test)]
    /// Bytes the segment files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        let s = self.lock();
        s.segments.iter().map(|g| g.len).sum()
    }

    fn update_gauges(&self) {
        let (b, r) = self.pending();
        metrics::gauge!(crate::internal_events::catalog::SPOOL_BYTES).set(b as f64);
        metrics::gauge!(crate::internal_events::catalog::SPOOL_MESSAGES).set(r as f64);
    }

    /// The writing end (one per spool: the router task).
    pub fn writer(&self) -> io::Result<SpoolWriter> {
        let (base, len) = {
            let s = self.lock();
            match s.segments.back() {
                Some(g) => (g.base, g.len),
                None => (s.end, 0),
            }
        };
        let path = seg_path(&self.cfg.dir, base);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_ctx(e, "cannot open spool segment", &path))?;
        {
            let mut s = self.lock();
            if s.segments.is_empty() {
                s.segments.push_back(Segment {
                    base,
                    len: 0,
                    records: 0,
                });
            }
            // What a previous process left unconfirmed may still be only in
            // the page cache (it was killed before an fsync): make it
            // durable now, in the background.
            for g in s.segments.iter().filter(|g| g.base + g.len > s.acked) {
                if let Ok(f) = File::open(seg_path(&self.cfg.dir, g.base)) {
                    self.syncer.sync_file(Arc::new(f));
                }
            }
        }
        Ok(SpoolWriter {
            spool: self.clone(),
            file: Arc::new(file),
            seg_base: base,
            buf: Vec::with_capacity(256 * 1024),
            synced: base + len,
            written: VecDeque::new(),
            older: Vec::new(),
            refused_since_log: 0,
            staged: 0,
            held: None,
        })
    }

    /// The reading end (one per spool: the publisher), positioned at the
    /// oldest unconfirmed record.
    pub fn reader(&self) -> SpoolReader {
        let pos = self.lock().acked;
        SpoolReader {
            spool: self.clone(),
            pos,
            file: None,
            holes: Vec::new(),
        }
    }

    /// Marks everything before global offset `upto` as confirmed, deletes
    /// segments that are wholly confirmed and (at most every 50 ms, or when
    /// `force`) persists the cursor. The disk work runs on the syncer thread;
    /// with `force` this call waits for it (shutdown).
    pub fn ack(&self, upto: u64, records: u64, force: bool) -> io::Result<()> {
        let mut to_delete = Vec::new();
        let write_cursor;
        {
            let mut s = self.lock();
            if upto > s.acked {
                s.acked = upto.min(s.end);
                s.pending_records = s.pending_records.saturating_sub(records);
            }
            let acked = s.acked;
            s.holes.retain(|h| h.1 > acked);
            // Keep the last segment (the writer appends to it).
            while s.segments.len() > 1 && s.segments[0].base + s.segments[0].len <= s.acked {
                if let Some(g) = s.segments.pop_front() {
                    to_delete.push(g.base);
                }
            }
            write_cursor = s.acked != s.cursor_written
                && (force || s.cursor_written_at.elapsed() >= Duration::from_millis(50));
            if write_cursor {
                s.cursor_written = s.acked;
                s.cursor_written_at = Instant::now();
            }
        }
        for b in to_delete {
            self.syncer.remove(seg_path(&self.cfg.dir, b));
        }
        if write_cursor || force {
            self.write_cursor();
        }
        if force {
            self.syncer.flush();
        }
        self.update_gauges();
        Ok(())
    }

    /// Queues the current cursor for the syncer thread.
    fn write_cursor(&self) {
        let acked = self.lock().acked;
        self.syncer.write_cursor(acked);
    }

    #[cfg(test)]
    /// Waits until the disk work queued so far (fsyncs, cursor, deletions)
    /// is done.
    pub fn flush(&self) {
        self.syncer.flush();
    }

    #[cfg(test)]
    /// How many segment fsyncs the spool has done (`spool_fsyncs_total`).
    pub fn fsyncs(&self) -> u64 {
        self.syncer.fsyncs()
    }

    /// Records a damaged region the reader found (counted once: later
    /// reads skip it).
    fn add_hole(&self, start: u64, end: u64, lost: u64) {
        if end <= start {
            return;
        }
        let mut s = self.lock();
        s.holes.push((start, end));
        s.pending_records = s.pending_records.saturating_sub(lost);
        drop(s);
        metrics::counter!(crate::internal_events::catalog::SPOOL_CORRUPT_RECORDS_TOTAL)
            .increment(lost);
        metrics::counter!(crate::internal_events::catalog::SPOOL_CORRUPT_BYTES_TOTAL)
            .increment(end - start);
        self.update_gauges();
    }

    /// Waits until data past `pos` may be available.
    pub async fn wait_for_data(&self, pos: u64) {
        let notified = self.notify.notified();
        if self.lock().end > pos {
            return;
        }
        notified.await;
    }
}

/// Appends records. Owned by the one task that produces messages.
pub struct SpoolWriter {
    spool: Spool,
    /// Shared with the syncer thread, which fsyncs it.
    file: Arc<File>,
    seg_base: u64,
    buf: Vec<u8>,
    /// Global offset up to which an fsync has been asked for.
    synced: u64,
    /// When data was written: (time of a batch, end offset after it and
    /// the batches up to 10 ms later). Oldest first; see `sync_if_due`.
    written: VecDeque<(Instant, u64)>,
    /// Earlier segments with data not yet fsynced, and their end offsets.
    older: Vec<(Arc<File>, u64)>,
    refused_since_log: u64,
    /// Records staged and not yet written.
    staged: usize,
    /// A batch the disk refused, at the start of `buf`, waiting for
    /// [`SpoolWriter::retry`].
    held: Option<Held>,
}

/// The batch the disk refused: its size in `buf` and why.
#[derive(Debug, Clone, Copy)]
struct Held {
    bytes: usize,
    records: usize,
    reason: &'static str,
}

/// Why the writer cannot write at the moment (see [`Spool::write_failure`]).
#[derive(Debug, Clone)]
pub struct WriteFailure {
    /// `"disk_full"` (no space, quota) or `"write_error"` (any other).
    pub reason: &'static str,
    pub error: String,
    /// Records held in memory for the retry.
    pub held: usize,
    pub since: Instant,
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl SpoolWriter {
    /// Stages one record; call [`SpoolWriter::commit`] to write the batch.
    #[cfg(test)]
    pub fn stage(&mut self, payload: &[u8]) {
        self.stage_with(|b| b.extend_from_slice(payload));
    }

    /// Stages one record whose payload `fill` appends to the buffer (saves
    /// a copy on the hot path). An empty payload is not staged: length 0
    /// is what zeroed bytes look like, so the format has no empty record.
    pub fn stage_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; HEADER]);
        fill(&mut self.buf);
        if self.buf.len() == start + HEADER {
            self.buf.truncate(start);
            return;
        }
        self.staged += 1;
        let payload = &self.buf[start + HEADER..];
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32fast::hash(payload).to_le_bytes();
        self.buf[start..start + 4].copy_from_slice(&len);
        self.buf[start + 4..start + 8].copy_from_slice(&crc);
    }

    /// Writes the staged records to the kernel (one `write` per batch),
    /// rolls the segment when full, and wakes the reader. Returns how many
    /// records were refused: because the spool is full (`refuse_new`), or
    /// because the disk refused an earlier batch that is still held.
    ///
    /// When the disk refuses a write (full, or an I/O error), the batch is
    /// held in memory and [`SpoolWriter::retry`] (on a timer) writes it once
    /// the disk takes it; until then, later records are refused and counted
    /// (`spool_dropped_total{reason="disk_full"}` or `"write_error"`), so
    /// memory stays bounded by one batch. With `on_full = "drop_oldest"` a
    /// full disk first deletes the oldest segments to make room.
    pub fn commit(&mut self) -> io::Result<usize> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        if let Some(h) = self.held {
            return Ok(self.refuse_after_held(h));
        }
        let records = self.staged;
        let batch = self.buf.len() as u64;
        if !self.make_room(batch)? {
            self.refuse_full(records);
            return Ok(records);
        }
        self.write_staged()?;
        Ok(0)
    }

    /// Applies `on_full` until `batch` more bytes fit under `max_bytes`;
    /// false if the batch is to be refused.
    fn make_room(&mut self, batch: u64) -> io::Result<bool> {
        let cfg = self.spool.cfg.clone();
        loop {
            // The limit is on what waits (appended, not confirmed). The disk
            // may hold up to one more segment of confirmed records that the
            // writer is still appending to; counting those would refuse
            // messages while nothing waits at all.
            let (used, segs) = {
                let s = self.spool.lock();
                (s.end - s.acked, s.segments.len())
            };
            if used + batch <= cfg.max_bytes {
                return Ok(true);
            }
            match cfg.on_full {
                OnFull::RefuseNew => return Ok(false),
                OnFull::DropOldest if segs > 1 => self.drop_oldest("full_drop_oldest")?,
                OnFull::DropOldest => {
                    // Only the active segment left: start a new one so the
                    // old one can go.
                    self.roll()?;
                    if self.spool.lock().segments.len() <= 1 {
                        return Ok(false);
                    }
                }
            }
        }
    }

    fn refuse_full(&mut self, refused: usize) {
        self.buf.clear();
        self.staged = 0;
        // One line every 10 s while it lasts, not one per batch.
        crate::internal_events::spool::SpoolFullRefused {
            records: refused as u64,
            max_bytes: self.spool.cfg.max_bytes,
            since_logged: &mut self.refused_since_log,
        }
        .emit();
    }

    /// While a batch the disk refused is held: drops what was staged after
    /// it (counted) and returns how many records that was.
    fn refuse_after_held(&mut self, h: Held) -> usize {
        let new = self.staged.saturating_sub(h.records);
        self.buf.truncate(h.bytes);
        self.staged = h.records;
        if new > 0 {
            crate::internal_events::spool::SpoolRefusedWhileHeld {
                records: new as u64,
                reason: h.reason,
                held: h.records,
            }
            .emit();
        }
        new
    }

    /// Writes the staged batch; on failure holds it (see `commit`).
    fn write_staged(&mut self) -> io::Result<()> {
        while let Err(e) = (&*self.file).write_all(&self.buf) {
            // Part of the batch may be on disk: cut the file back to the
            // last complete record so that the retry lands where the
            // offsets say it does.
            let len = self.spool.lock().segments.back().map_or(0, |g| g.len);
            let _ = self.file.set_len(len);
            let reason = if is_disk_full(&e) {
                "disk_full"
            } else {
                "write_error"
            };
            if reason == "disk_full"
                && matches!(self.spool.cfg.on_full, OnFull::DropOldest)
                && self.free_disk()
            {
                continue;
            }
            self.hold(reason, &e);
            return Ok(());
        }
        self.written_ok()
    }

    /// `drop_oldest` on a full disk: deletes the oldest segment (waiting
    /// for the deletion) so that the write can be tried again; false when
    /// there is nothing left to delete.
    fn free_disk(&mut self) -> bool {
        if self.spool.lock().segments.len() <= 1
            && (self.roll().is_err() || self.spool.lock().segments.len() <= 1)
        {
            return false;
        }
        if self.drop_oldest("disk_full_drop_oldest").is_err() {
            return false;
        }
        self.spool.syncer.flush();
        true
    }

    /// Keeps the staged batch for [`SpoolWriter::retry`] and says so (in
    /// the log, in `/healthz`).
    fn hold(&mut self, reason: &'static str, e: &io::Error) {
        let first = self.held.is_none();
        self.held = Some(Held {
            bytes: self.buf.len(),
            records: self.staged,
            reason,
        });
        {
            let mut s = self.spool.lock();
            let since = s
                .write_failure
                .as_ref()
                .map_or_else(Instant::now, |f| f.since);
            s.write_failure = Some(WriteFailure {
                reason,
                error: e.to_string(),
                held: self.staged,
                since,
            });
        }
        crate::internal_events::spool::SpoolWriteFailed {
            error: e,
            reason,
            held: self.staged,
            first,
        }
        .emit();
    }

    /// Writes a batch the disk refused, if there is one (the router task
    /// calls this every second). Returns whether nothing is held any more.
    pub fn retry(&mut self) -> io::Result<bool> {
        let Some(h) = self.held else {
            return Ok(true);
        };
        // Nothing may have been staged after it, but make sure.
        self.refuse_after_held(h);
        self.write_staged()?;
        Ok(self.held.is_none())
    }

    /// Shutdown: one last try for a batch the disk refused; what still
    /// cannot be written is counted (`spool_dropped_total{reason="shutdown"}`)
    /// and logged as lost. Returns how many records were lost.
    pub fn finish(&mut self) -> u64 {
        if let Err(e) = self.retry() {
            tracing::error!(error = %e, "spool: last write at shutdown failed");
        }
        let Some(h) = self.held.take() else {
            return 0;
        };
        self.buf.clear();
        self.staged = 0;
        crate::internal_events::spool::SpoolLostAtShutdown {
            records: h.records as u64,
            reason: h.reason,
        }
        .emit();
        h.records as u64
    }

    /// The bookkeeping after a batch reached the kernel.
    fn written_ok(&mut self) -> io::Result<()> {
        let cfg = self.spool.cfg.clone();
        let batch = self.buf.len() as u64;
        let records = self.staged;
        self.buf.clear();
        self.staged = 0;
        if let Some(h) = self.held.take() {
            tracing::info!(
                records = h.records,
                "the spool is writable again; the held messages are written"
            );
            self.spool.lock().write_failure = None;
        }
        let (roll, end) = {
            let mut s = self.spool.lock();
            s.end += batch;
            let end = s.end;
            s.pending_records += records as u64;
            let roll = match s.segments.back_mut() {
                Some(g) => {
                    g.len += batch;
                    g.records += records as u64;
                    g.len >= cfg.segment_bytes
                }
                None => false,
            };
            (roll, end)
        };
        let now = Instant::now();
        match self.written.back_mut() {
            Some((t, e)) if now.duration_since(*t) < Duration::from_millis(10) => *e = end,
            _ => self.written.push_back((now, end)),
        }
        if roll {
            self.roll()?;
        }
        self.sync_if_due();
        self.spool.notify.notify_waiters();
        self.spool.update_gauges();
        Ok(())
    }

    /// Has written data fsynced (on the syncer thread, never blocking
    /// here) once a message has waited `fsync_interval` without being
    /// confirmed. Called after each write and by a timer, so a quiet spool
    /// is synced too.
    ///
    /// Why not fsync everything every `fsync_interval`: an fsync protects
    /// only against a power loss, and only messages the broker has not
    /// confirmed need protecting — a confirmed one is safe at the broker.
    /// With a healthy broker every message is confirmed within
    /// milliseconds, so nothing needs syncing, and the spool's data is
    /// mostly deleted (segment confirmed) before the kernel ever writes it
    /// back: the bridge adds no disk flushes to a disk it may share with
    /// RabbitMQ. Each flush there made the broker's own writes wait (the
    /// benchmarks saw confirms stop for up to a second). When the broker is
    /// slow or away, messages stay unconfirmed and are fsynced every
    /// `fsync_interval` as before.
    pub fn sync_if_due(&mut self) {
        let interval = self.spool.cfg.fsync_interval;
        let now = Instant::now();
        let mut due = None;
        while let Some(&(t, e)) = self.written.front() {
            if now.duration_since(t) < interval {
                break;
            }
            due = Some(e);
            self.written.pop_front();
        }
        let Some(due) = due else { return };
        if due <= self.synced {
            return;
        }
        let acked = self.spool.lock().acked;
        self.older.retain(|(_, end)| *end > acked);
        if acked < due {
            self.sync_later();
        }
    }

    /// Queues an fsync of everything written so far.
    fn sync_later(&mut self) {
        let end = self.spool.lock().end;
        if end <= self.synced {
            return;
        }
        for (f, _) in self.older.drain(..) {
            self.spool.syncer.sync_file(f);
        }
        self.spool.syncer.sync_file(self.file.clone());
        self.synced = end;
    }

    /// fsyncs written data and waits for it and every other queued disk
    /// job (shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        self.sync_later();
        self.spool.syncer.flush();
        self.file.sync_data()
    }

    fn roll(&mut self) -> io::Result<()> {
        let base = self.spool.lock().end;
        if base == self.seg_base {
            return Ok(());
        }
        let path = seg_path(&self.spool.cfg.dir, base);
        let old = self.file.clone();
        self.file = Arc::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_ctx(e, "cannot create spool segment", &path))?,
        );
        self.seg_base = base;
        // The old segment is fsynced later if its messages wait too long.
        if self.synced < base {
            self.older.push((old, base));
        }
        self.spool.lock().segments.push_back(Segment {
            base,
            len: 0,
            records: 0,
        });
        Ok(())
    }

    fn drop_oldest(&mut self, reason: &'static str) -> io::Result<()> {
        let dropped = {
            let mut s = self.spool.lock();
            let Some(g) = s.segments.pop_front() else {
                return Ok(());
            };
            let next = g.base + g.len;
            // Records of the segment that were not yet confirmed are lost.
            let lost = if s.acked < next {
                s.pending_records = s.pending_records.saturating_sub(g.records);
                s.acked = next;
                s.skipped_to = Some(next);
                g.records
            } else {
                0
            };
            (g, lost)
        };
        self.spool
            .syncer
            .remove(seg_path(&self.spool.cfg.dir, dropped.0.base));
        crate::internal_events::spool::SpoolDroppedOldest {
            records: dropped.1,
            bytes: dropped.0.len,
            reason,
        }
        .emit();
        self.spool.write_cursor();
        Ok(())
    }
}

/// Reads records in order. Owned by the publisher.
pub struct SpoolReader {
    spool: Spool,
    /// Global offset of the next record to read.
    pos: u64,
    file: Option<(u64, BufReader<File>)>,
    /// The spool's damaged regions, as of the last `read_batch`.
    holes: Vec<(u64, u64)>,
}

/// A record read from the spool: its payload and the global offset just
/// past it (what to acknowledge once it is confirmed).
#[derive(Debug)]
pub struct ReadRecord {
    pub end: u64,
    pub payload: Vec<u8>,
}

impl SpoolReader {
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Goes back to the oldest unconfirmed record (after a failure).
    pub fn rewind(&mut self) {
        self.pos = self.spool.lock().acked;
        self.file = None;
    }

    /// Reads up to `max` records that are available now. Damage found on
    /// the way (a record that fails its checks, a segment file gone) is
    /// skipped and counted, never returned as an error: a spool that
    /// cannot be read past one record would stop every later message.
    pub fn read_batch(&mut self, max: usize, out: &mut Vec<ReadRecord>) -> io::Result<()> {
        let (end, segs, skipped) = {
            let mut s = self.spool.lock();
            let skipped = s.skipped_to.take();
            self.holes.clone_from(&s.holes);
            (s.end, s.segments.clone(), skipped)
        };
        if let Some(sk) = skipped
            && self.pos < sk
        {
            self.pos = sk;
            self.file = None;
        }
        let mut n = 0;
        while n < max && self.pos < end {
            if let Some(h_end) = self.hole_at(self.pos) {
                self.pos = h_end;
                self.file = None;
                continue;
            }
            // Which segment holds pos?
            let Some(seg) = segs
                .iter()
                .find(|g| g.base <= self.pos && self.pos < g.base + g.len)
            else {
                // pos is at the end of a segment: move to the next one.
                match segs.iter().find(|g| g.base >= self.pos && g.len > 0) {
                    Some(g) => {
                        self.pos = g.base;
                        self.file = None;
                        continue;
                    }
                    None => break,
                }
            };
            let seg_end = seg.base + seg.len;
            if self.file.as_ref().map(|(b, _)| *b) != Some(seg.base) {
                let path = seg_path(&self.spool.cfg.dir, seg.base);
                let opened = File::open(&path).and_then(|mut f| {
                    f.seek(SeekFrom::Start(self.pos - seg.base))?;
                    Ok(f)
                });
                match opened {
                    Ok(f) => self.file = Some((seg.base, BufReader::with_capacity(256 * 1024, f))),
                    Err(e) => {
                        self.segment_gone(&path, &e, seg_end);
                        continue;
                    }
                }
            }
            n += self.read_segment(max - n, seg.base, seg_end, out);
        }
        Ok(())
    }

    /// The end of the damaged region that `pos` is in, if it is in one.
    fn hole_at(&self, pos: u64) -> Option<u64> {
        self.holes
            .iter()
            .find(|h| h.0 <= pos && pos < h.1)
            .map(|h| h.1)
    }

    /// Reads records of the open segment up to `seg_end` (or a hole).
    fn read_segment(
        &mut self,
        max: usize,
        base: u64,
        seg_end: u64,
        out: &mut Vec<ReadRecord>,
    ) -> usize {
        let mut n = 0;
        while n < max && self.pos < seg_end && self.hole_at(self.pos).is_none() {
            let Some((_, r)) = self.file.as_mut() else {
                break;
            };
            match read_record(r, seg_end - self.pos) {
                Some(payload) => {
                    self.pos += (HEADER + payload.len()) as u64;
                    out.push(ReadRecord {
                        end: self.pos,
                        payload,
                    });
                    n += 1;
                }
                None => {
                    self.resync(base, seg_end);
                    break;
                }
            }
        }
        n
    }

    /// A record at `pos` fails its checks: finds the next valid record in
    /// the segment, records the damaged region as a hole (so a rewind
    /// does not count it twice) and moves there.
    fn resync(&mut self, base: u64, seg_end: u64) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        self.file = None;
        let path = seg_path(&self.spool.cfg.dir, base);
        let want = seg_end - self.pos;
        let mut rest = Vec::new();
        let _ = File::open(&path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.pos - base))?;
            f.take(want).read_to_end(&mut rest)
        });
        let (next, lost) = match scan::resync(&rest, 1) {
            Some(k) => (self.pos + k as u64, scan::lost_in(&rest, 0, k)),
            None if rest.len() as u64 == want => (seg_end, scan::lost_in(&rest, 0, rest.len())),
            None => (seg_end, 1),
        };
        self.spool.add_hole(self.pos, next, lost);
        self.holes.push((self.pos, next));
        if let Some(suppressed) = LOG.allow() {
            tracing::error!(segment = %path.display(), offset = self.pos - base, records = lost,
                bytes = next - self.pos, suppressed,
                "damaged spool record(s) skipped; publishing goes on with the next intact record");
        }
        self.pos = next;
    }

    /// A segment file cannot be opened (deleted under the bridge): what
    /// it held is lost; counted as a missing segment.
    fn segment_gone(&mut self, path: &Path, e: &io::Error, seg_end: u64) {
        crate::internal_events::spool::SpoolSegmentMissing {
            segment: path,
            error: e,
        }
        .emit();
        self.spool.add_hole(self.pos, seg_end, 0);
        self.holes.push((self.pos, seg_end));
        self.pos = seg_end;
        self.file = None;
    }
}

/// Reads one record of at most `left` bytes; `None` if it fails its checks
/// or cannot be read.
fn read_record(r: &mut impl Read, left: u64) -> Option<Vec<u8>> {
    let mut h = [0u8; HEADER];
    r.read_exact(&mut h).ok()?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > MAX_RECORD || HEADER as u64 + len as u64 > left {
        return None;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).ok()?;
    (crc32fast::hash(&payload) == crc).then_some(payload)
}

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            on_full: OnFull::RefuseNew,
            fsync_interval: Duration::from_millis(0),
        }
    }

    fn append(w: &mut SpoolWriter, items: impl IntoIterator<Item = String>) -> usize {
        let mut n = 0;
        for i in items {
            w.stage(i.as_bytes());
            n += 1;
        }
        let _ = n;
        w.commit().unwrap()
    }

    fn read_all(r: &mut SpoolReader) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        r.read_batch(usize::MAX, &mut out).unwrap();
        out.into_iter()
            .map(|x| (x.end, String::from_utf8(x.payload).unwrap()))
            .collect()
    }

    #[test]
    fn order_ack_and_segment_deletion() {
        let d = tempfile::tempdir().unwrap();
        let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(rec, Recovered::default());
        let mut w = sp.writer().unwrap();
        let mut r = sp.reader();
        for batch in 0..20 {
            append(
                &mut w,
                (0..10).map(|i| format!("msg-{batch}-{i}-{}", "x".repeat(50))),
            );
        }
        let got = read_all(&mut r);
        assert_eq!(got.len(), 200);
        for (i, (_, s)) in got.iter().enumerate() {
            assert!(s.starts_with(&format!("msg-{}-{}-", i / 10, i % 10)), "{s}");
        }
        let segs_before = fs::read_dir(d.path()).unwrap().count();
        assert!(segs_before >= 3, "several segments: {segs_before}");
        sp.ack(got[149].0, 150, true).unwrap();
        assert_eq!(sp.pending().1, 50);
        let segs_after = fs::read_dir(d.path()).unwrap().count();
        assert!(segs_after < segs_before);
        // rewind goes back to the first unconfirmed record
        r.rewind();
        let again = read_all(&mut r);
        assert_eq!(again.len(), 50);
        assert_eq!(again[0].1, got[150].1);
    }

    #[test]
    fn reopen_resumes_after_cursor() {
        let d = tempfile::tempdir().unwrap();
        {
            let (sp, _) = Spool::open(cfg(d.path())).unwrap();
            let mut w = sp.writer().unwrap();
            append(&mut w, (0..100).map(|i| format!("m{i}")));
            let mut r = sp.reader();
            let got = read_all(&mut r);
            sp.ack(got[39].0, 40, true).unwrap();
            // dropped without any shutdown: like kill -9 after write()
        }
        let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(rec.records, 60);
        let mut r = sp.reader();
        let got = read_all(&mut r);
        assert_eq!(got.len(), 60);
        assert_eq!(got[0].1, "m40");
        assert_eq!(got[59].1, "m99");
        // and appending continues after the recovered data
        let mut w = sp.writer().unwrap();
        append(&mut w, ["after".to_string()]);
        let more = read_all(&mut r);
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].1, "after");
    }

    #[test]
    fn recovery_counts_the_unconfirmed_records_per_server() {
        use crate::mapping::{MessageProps, Outgoing};
        let rec = |server: &str, seq: u64| {
            let r = crate::amqp::record::Record {
                received_at_us: 1,
                server: Arc::from(server),
                seq,
                msg: Outgoing {
                    exchange: Arc::from("x"),
                    routing_key: "k".into(),
                    props: MessageProps {
                        persistent: true,
                        priority: None,
                        expiration_ms: None,
                        content_type: Arc::from("application/json"),
                        kind: "E".into(),
                        message_id: format!("{server}:{seq}"),
                        headers: Vec::new(),
                    },
                    body: b"{}".to_vec(),
                    route: Arc::from("r"),
                },
            };
            let mut b = Vec::new();
            r.encode(&mut b);
            b
        };
        let d = tempfile::tempdir().unwrap();
        {
            let (sp, _) = Spool::open(cfg(d.path())).unwrap();
            let mut w = sp.writer().unwrap();
            for i in 0..10 {
                w.stage(&rec(if i % 3 == 0 { "pbx1" } else { "pbx2" }, i));
            }
            w.stage(b"not a record");
            w.commit().unwrap();
            let mut r = sp.reader();
            let got = read_all(&mut r);
            // The first four (pbx1, pbx2, pbx2, pbx1) are confirmed.
            sp.ack(got[3].0, 4, true).unwrap();
        }
        let (_sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(rec.records, 7);
        let by: Vec<(&str, u64)> = rec
            .by_server
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(by, [("", 1), ("pbx1", 2), ("pbx2", 4)]);
    }

    #[test]
    fn recovered_server_names_are_bounded() {
        let mut by = std::collections::BTreeMap::new();
        let mut b = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..(MAX_RECOVERED_SERVERS + 10) {
            offsets.push(b.len() as u64);
            let mut payload = vec![1u8];
            payload.extend_from_slice(&0u64.to_le_bytes());
            let name = format!("s{i}");
            payload.extend_from_slice(&(name.len() as u32).to_le_bytes());
            payload.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            b.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            b.extend_from_slice(&payload);
        }
        count_servers(&b, &offsets, &mut by);
        assert_eq!(by.len(), MAX_RECOVERED_SERVERS + 1);
        assert_eq!(by[""], 10);
    }

    #[test]
    fn torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        {
            let (sp, _) = Spool::open(cfg(d.path())).unwrap();
            let mut w = sp.writer().unwrap();
            append(&mut w, (0..5).map(|i| format!("m{i}")));
        }
        // Simulate a write cut in the middle of a record.
        let seg = seg_path(d.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'p', b'a'])
            .unwrap();
        drop(f);
        let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(rec.records, 5);
        assert_eq!(rec.torn_bytes, 10);
        let got = read_all(&mut sp.reader());
        assert_eq!(got.len(), 5);
        // appends after the cut are readable
        let mut w = sp.writer().unwrap();
        append(&mut w, ["m5".to_string()]);
        let got = read_all(&mut sp.reader());
        assert_eq!(got.last().unwrap().1, "m5");
    }

    #[test]
    fn full_spool_refuses_new() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.max_bytes = 2000;
        c.segment_bytes = 500;
        let (sp, _) = Spool::open(c).unwrap();
        let mut w = sp.writer().unwrap();
        let mut refused = 0;
        for i in 0..100 {
            refused += append(&mut w, [format!("{i:0>92}")]);
        }
        assert!(refused > 0);
        assert!(sp.disk_bytes() <= 2000);
        let got = read_all(&mut sp.reader());
        assert_eq!(got.len() + refused, 100);
        // the oldest are the ones kept
        assert_eq!(got[0].1, format!("{:0>92}", 0));
    }

    #[test]
    fn confirmed_data_does_not_count_against_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.max_bytes = 2000;
        c.segment_bytes = 1 << 20; // one segment bigger than the limit
        let (sp, _) = Spool::open(c).unwrap();
        let mut w = sp.writer().unwrap();
        let mut r = sp.reader();
        for i in 0..100 {
            assert_eq!(
                append(&mut w, [format!("{i:0>92}")]),
                0,
                "message {i} refused"
            );
            let got = read_all(&mut r);
            sp.ack(got.last().unwrap().0, 1, false).unwrap();
        }
        assert_eq!(sp.pending(), (0, 0));
    }

    #[test]
    fn full_spool_drops_oldest() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.max_bytes = 2000;
        c.segment_bytes = 500;
        c.on_full = OnFull::DropOldest;
        let (sp, _) = Spool::open(c).unwrap();
        let mut w = sp.writer().unwrap();
        let mut r = sp.reader();
        for i in 0..100 {
            assert_eq!(append(&mut w, [format!("{i:0>92}")]), 0);
        }
        assert!(sp.disk_bytes() <= 2000);
        let got = read_all(&mut r);
        assert!(got.len() < 100);
        // the newest are the ones kept, in order
        assert_eq!(got.last().unwrap().1, format!("{:0>92}", 99));
        let nums: Vec<u32> = got.iter().map(|(_, s)| s.parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn only_messages_left_unconfirmed_for_fsync_interval_are_fsynced() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.fsync_interval = Duration::from_millis(40);
        c.segment_bytes = 1000;
        let (sp, _) = Spool::open(c).unwrap();
        let mut w = sp.writer().unwrap();
        let mut r = sp.reader();
        // A healthy broker: everything confirmed at once. Nothing to sync,
        // however long we wait and however many segments are filled.
        for round in 0..5 {
            append(&mut w, (0..20).map(|i| format!("{round}-{i:0>60}")));
            let got = read_all(&mut r);
            sp.ack(got.last().unwrap().0, got.len() as u64, false)
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            w.sync_if_due();
        }
        sp.flush();
        assert_eq!(sp.fsyncs(), 0, "confirmed data was fsynced");

        // A broker that does not confirm: after fsync_interval the data is
        // fsynced, the segments rolled before included.
        append(&mut w, (0..40).map(|i| format!("late-{i:0>60}")));
        let segments = sp.lock().segments.len();
        assert!(segments >= 2, "{segments}");
        w.sync_if_due();
        sp.flush();
        assert_eq!(sp.fsyncs(), 0, "fsynced before fsync_interval");
        std::thread::sleep(Duration::from_millis(50));
        w.sync_if_due();
        sp.flush();
        let n = sp.fsyncs();
        assert!(n >= 2, "the current and the earlier segment: {n}");
        // Nothing new written: nothing more to sync.
        std::thread::sleep(Duration::from_millis(50));
        w.sync_if_due();
        sp.flush();
        assert_eq!(sp.fsyncs(), n);
    }

    /// A spool of `n` records over several segments, closed; returns the
    /// records' payloads and the segment files in order.
    fn filled(dir: &Path, n: usize) -> (Vec<String>, Vec<PathBuf>) {
        let msgs: Vec<String> = (0..n)
            .map(|i| format!("m{i:04}-{}", "x".repeat(60)))
            .collect();
        {
            let (sp, _) = Spool::open(cfg(dir)).unwrap();
            let mut w = sp.writer().unwrap();
            for chunk in msgs.chunks(10) {
                append(&mut w, chunk.iter().cloned());
            }
        }
        (msgs, segment_files(dir))
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut segs: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        segs
    }

    fn flip(path: &Path, at: u64) {
        let mut b = fs::read(path).unwrap();
        b[at as usize] ^= 0x20;
        fs::write(path, b).unwrap();
    }

    fn payloads(r: &mut SpoolReader) -> Vec<String> {
        read_all(r).into_iter().map(|x| x.1).collect()
    }

    #[test]
    fn flipped_byte_mid_segment_loses_one_record_and_keeps_later_segments() {
        let d = tempfile::tempdir().unwrap();
        let (msgs, segs) = filled(d.path(), 200);
        assert!(segs.len() >= 3, "{segs:?}");
        // A payload byte of a record in the middle of the first segment.
        flip(&segs[0], 1000);
        let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(rec.corrupt_records, 1);
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(rec.records, 199);
        assert_eq!(segment_files(d.path()), segs, "no segment deleted");
        let got = payloads(&mut sp.reader());
        assert_eq!(got.len(), 199);
        let missing: Vec<&String> = msgs.iter().filter(|m| !got.contains(m)).collect();
        assert_eq!(missing.len(), 1);
        assert_eq!(sp.pending().1, 199);
    }

    #[test]
    fn garbage_or_impossible_cursor_falls_back_to_the_oldest_segment() {
        let d = tempfile::tempdir().unwrap();
        let (msgs, segs) = filled(d.path(), 200);
        let cursor = d.path().join("cursor");
        let end: u64 = segs.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
        let second = segs[1]
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        for (what, bytes) in [
            ("garbage", b"not a cursor at all".to_vec()),
            ("beyond the end", (end + 4096).to_le_bytes().to_vec()),
            ("huge", u64::MAX.to_le_bytes().to_vec()),
            ("inside a record", (second + 3).to_le_bytes().to_vec()),
        ] {
            fs::write(&cursor, &bytes).unwrap();
            let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
            assert!(rec.cursor_reset, "{what}");
            assert_eq!(rec.records, 200, "{what}");
            assert_eq!(payloads(&mut sp.reader()), msgs, "{what}");
            assert_eq!(segment_files(d.path()), segs, "{what}: no segment deleted");
            drop(sp);
            assert_eq!(
                fs::read(&cursor).unwrap(),
                0u64.to_le_bytes(),
                "{what}: cursor rewritten"
            );
        }
        // A valid cursor is kept (and what is before it deleted).
        fs::write(&cursor, second.to_le_bytes()).unwrap();
        let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert!(!rec.cursor_reset);
        let got = payloads(&mut sp.reader());
        assert_eq!(got.last(), msgs.last());
        assert!(got.len() < 200);
        assert_eq!(segment_files(d.path()), segs[1..]);
    }

    #[test]
    fn garbage_cursor_of_an_empty_spool_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cursor"), b"twelve bytes").unwrap();
        let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert!(rec.cursor_reset);
        drop(sp);
        // 8 bytes again: later in-place updates make a valid cursor.
        assert_eq!(
            fs::read(d.path().join("cursor")).unwrap(),
            0u64.to_le_bytes()
        );
    }

    #[test]
    fn cursor_before_the_first_segment_is_reset_to_it() {
        let d = tempfile::tempdir().unwrap();
        let (msgs, segs) = filled(d.path(), 200);
        let first_len = fs::metadata(&segs[0]).unwrap().len();
        fs::remove_file(&segs[0]).unwrap();
        fs::write(d.path().join("cursor"), 0u64.to_le_bytes()).unwrap();
        let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert!(rec.cursor_reset);
        let got = payloads(&mut sp.reader());
        assert_eq!(sp.reader().position(), first_len);
        assert_eq!(got.last(), msgs.last());
    }

    #[test]
    fn missing_middle_segment_is_counted_and_the_rest_is_read() {
        let d = tempfile::tempdir().unwrap();
        let (msgs, segs) = filled(d.path(), 200);
        let gone = fs::read(&segs[1]).unwrap();
        fs::remove_file(&segs[1]).unwrap();
        let (sp, rec) = Spool::open(cfg(d.path())).unwrap();
        assert_eq!(rec.missing_segments, 1);
        let got = payloads(&mut sp.reader());
        let records_gone = scan::scan(&gone, false).records.len();
        assert_eq!(got.len(), 200 - records_gone);
        assert_eq!(got.first(), msgs.first());
        assert_eq!(got.last(), msgs.last());
    }

    #[test]
    fn reader_skips_damage_found_at_read_time_and_counts_it_once() {
        let d = tempfile::tempdir().unwrap();
        let (msgs, segs) = filled(d.path(), 200);
        let (sp, _) = Spool::open(cfg(d.path())).unwrap();
        // Damage after open: recovery did not see it; the reader must.
        flip(&segs[1], 500);
        let mut r = sp.reader();
        let got = payloads(&mut r);
        assert_eq!(got.len(), 199);
        assert_eq!(got.last(), msgs.last());
        assert_eq!(sp.pending().1, 199);
        assert_eq!(sp.lock().holes.len(), 1);
        // A rewind (broker failure) reads the same, and counts nothing new.
        r.rewind();
        assert_eq!(payloads(&mut r), got);
        assert_eq!(sp.lock().holes.len(), 1);
        assert_eq!(sp.pending().1, 199);
        // A segment deleted under the reader is skipped too.
        fs::remove_file(&segs[2]).unwrap();
        r.rewind();
        let fewer = payloads(&mut r);
        assert!(fewer.len() < 199 && fewer.last() == msgs.last());
    }

    #[test]
    fn cursor_inside_a_record_at_read_time_does_not_loop() {
        let d = tempfile::tempdir().unwrap();
        let (msgs, _) = filled(d.path(), 50);
        let (sp, _) = Spool::open(cfg(d.path())).unwrap();
        // A position that is not a record start (as a bad cursor was).
        let mut r = sp.reader();
        r.pos = 3;
        let got = payloads(&mut r);
        assert_eq!(got.len(), 49);
        assert_eq!(got.last(), msgs.last());
    }

    /// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            let d = tempfile::tempdir().ok()?;
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(d.path())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(Tmpfs(d))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    /// Fills the file system of `path` with a file of that name.
    fn fill_up(path: &Path) {
        let mut f = File::create(path).unwrap();
        let block = vec![7u8; 4096];
        while f.write_all(&block).is_ok() {}
    }

    #[test]
    fn disk_full_holds_one_batch_refuses_the_rest_and_retries() {
        let Some(fs_) = Tmpfs::mount("256k") else {
            panic!("cannot mount a tmpfs (tests run as root)");
        };
        let (sp, _) = Spool::open(cfg(fs_.0.path())).unwrap();
        let mut w = sp.writer().unwrap();
        assert_eq!(append(&mut w, ["before".to_string()]), 0);
        let filler = fs_.0.path().join("filler");
        fill_up(&filler);
        // The disk refuses this batch: held, not refused, reported.
        let batch: Vec<String> = (0..5)
            .map(|i| format!("held-{i}-{}", "y".repeat(3000)))
            .collect();
        assert_eq!(append(&mut w, batch.clone()), 0);
        let f = sp.write_failure().expect("failure reported");
        assert_eq!((f.reason, f.held), ("disk_full", 5));
        // While it is held, later messages are refused (counted by the
        // caller through the return value), and memory does not grow.
        assert_eq!(
            append(&mut w, ["later".to_string(), "later2".to_string()]),
            2
        );
        assert_eq!(w.buf.len(), w.held.unwrap().bytes);
        assert!(!w.retry().unwrap(), "still full");
        // Room again: the retry (no new message needed) writes the batch.
        fs::remove_file(&filler).unwrap();
        assert!(w.retry().unwrap());
        assert!(sp.write_failure().is_none());
        let got = payloads(&mut sp.reader());
        let mut want = vec!["before".to_string()];
        want.extend(batch);
        assert_eq!(got, want);
        // Full again at shutdown: what is held is counted as lost.
        fill_up(&filler);
        append(&mut w, ["doomed".to_string(), "doomed2".to_string()]);
        assert!(sp.write_failure().is_some());
        assert_eq!(w.finish(), 2);
        drop(w);
        drop(sp);
    }

    #[test]
    fn disk_full_with_drop_oldest_deletes_the_oldest_segment() {
        let Some(fs_) = Tmpfs::mount("256k") else {
            panic!("cannot mount a tmpfs (tests run as root)");
        };
        let mut c = cfg(fs_.0.path());
        c.on_full = OnFull::DropOldest;
        let (sp, _) = Spool::open(c).unwrap();
        let mut w = sp.writer().unwrap();
        for i in 0..40 {
            assert_eq!(append(&mut w, [format!("{i:04}-{}", "z".repeat(2000))]), 0);
        }
        fill_up(&fs_.0.path().join("filler"));
        assert_eq!(append(&mut w, [format!("new-{}", "z".repeat(3000))]), 0);
        assert!(sp.write_failure().is_none(), "room was made");
        let got = payloads(&mut sp.reader());
        assert!(got.len() < 41);
        assert!(got.last().unwrap().starts_with("new-"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]
        /// Damage anywhere, before the spool is opened or while it is read:
        /// reading never fails or loops, finds every record the damage did
        /// not touch, in order, and invents none.
        #[test]
        fn random_damage_never_stops_reading(
            n in 20usize..200,
            hits in proptest::collection::vec((0.0f64..1.0, 0.0f64..1.0, 1usize..64, proptest::bool::ANY), 1..4),
            before_open in proptest::bool::ANY,
        ) {
            let d = tempfile::tempdir().unwrap();
            let (msgs, segs) = filled(d.path(), n);
            let damage = |segs: &[PathBuf]| {
                let mut touched = Vec::new();
                for &(which, at, len, zero) in &hits {
                    let p = &segs[((segs.len() as f64) * which) as usize % segs.len()];
                    let mut b = fs::read(p).unwrap();
                    if b.is_empty() {
                        continue;
                    }
                    let start = ((b.len() as f64) * at) as usize % b.len();
                    let end = (start + len).min(b.len());
                    for x in &mut b[start..end] {
                        *x = if zero { 0 } else { *x ^ 0x55 };
                    }
                    fs::write(p, b).unwrap();
                    touched.push((p.clone(), start, end));
                }
                touched
            };
            let (sp, touched) = if before_open {
                let t = damage(&segs);
                (Spool::open(cfg(d.path())).unwrap().0, t)
            } else {
                let sp = Spool::open(cfg(d.path())).unwrap().0;
                (sp, damage(&segs))
            };
            let mut r = sp.reader();
            let got = payloads(&mut r);
            // In order, nothing invented.
            let mut it = msgs.iter();
            for g in &got {
                proptest::prop_assert!(it.any(|m| m == g), "invented or out of order: {}", g);
            }
            // Every record the damage did not touch is there.
            for seg in &segs {
                let b = fs::read(seg).unwrap();
                let mut off = 0usize;
                while off + HEADER <= b.len() {
                    let len = msgs[0].len() + HEADER; // every test record has this size
                    let hit = touched.iter().any(|(p, s, e)| p == seg && *s < off + len && off < *e);
                    if !hit && off + len <= b.len() {
                        let m = String::from_utf8_lossy(&b[off + HEADER..off + len]).to_string();
                        proptest::prop_assert!(got.contains(&m), "intact record lost: {}", m);
                    }
                    off += len;
                }
            }
            r.rewind();
            proptest::prop_assert_eq!(payloads(&mut r), got);
        }
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let e = match Spool::open(cfg(Path::new("/proc/ami2amqp-spool"))) {
            Err(e) => e,
            Ok(_) => panic!("opened a spool under /proc"),
        };
        assert!(e.to_string().contains("/proc/ami2amqp-spool"), "{e}");
    }
}
