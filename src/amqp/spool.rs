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
//! `u32 length | u32 crc32 | payload` (little endian). At start the log is
//! scanned from the cursor; a torn record at the end (the process died in
//! the middle of a write) fails its CRC and is cut off.
//!
//! Segments whose records are all confirmed are deleted. When the log would
//! pass `max_bytes`, `on_full` decides: refuse new messages or delete the
//! oldest segment. Either way the loss is counted and logged, never silent.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::syncer::Syncer;

use crate::config::OnFull;

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
}

/// Why an append did not store everything.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub records: usize,
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn io_ctx(e: io::Error, what: &str, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

const HEADER: usize = 8;
/// Largest record accepted (a sanity bound when scanning).
const MAX_RECORD: u32 = 64 << 20;

impl Spool {
    /// Opens (or creates) the spool in `cfg.dir`, recovering what a previous
    /// process left.
    pub fn open(cfg: SpoolConfig) -> io::Result<(Spool, Recovered)> {
        fs::create_dir_all(&cfg.dir)
            .map_err(|e| io_ctx(e, "cannot create spool directory", &cfg.dir))?;
        // Fail now, with a clear message, if the directory is not writable.
        let probe = cfg.dir.join(".write-test");
        File::create(&probe)
            .map_err(|e| io_ctx(e, "spool directory is not writable:", &cfg.dir))?;
        let _ = fs::remove_file(&probe);

        let cursor_path = cfg.dir.join("cursor");
        let acked = match fs::read(&cursor_path) {
            Ok(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
            Ok(_) => 0,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_ctx(e, "cannot read spool cursor", &cursor_path)),
        };
        let mut bases: Vec<u64> = fs::read_dir(&cfg.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                n.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        bases.sort_unstable();

        let mut segments = VecDeque::new();
        let mut rec = Recovered::default();
        let mut end = 0u64;
        for (i, &base) in bases.iter().enumerate() {
            let path = seg_path(&cfg.dir, base);
            let file_len = fs::metadata(&path)?.len();
            let next_base = bases.get(i + 1).copied();
            if base + file_len <= acked && next_base.is_some() {
                // Fully confirmed: leftover from before a crash.
                let _ = fs::remove_file(&path);
                continue;
            }
            // Scan records at or after the cursor; count and validate.
            let (valid_len, records) = scan_segment(&path, base, acked)?;
            if valid_len < file_len {
                rec.torn_bytes += file_len - valid_len;
                tracing::warn!(segment = %path.display(), cut = file_len - valid_len,
                    "spool segment ends in an incomplete record (the process died mid-write); cutting it off");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(valid_len)?;
                f.sync_all()?;
            }
            rec.records += records;
            segments.push_back(Segment {
                base,
                len: valid_len,
                records,
            });
            end = base + valid_len;
            if valid_len < file_len {
                // Anything after a torn record cannot be trusted.
                for &later in &bases[i + 1..] {
                    let _ = fs::remove_file(seg_path(&cfg.dir, later));
                }
                break;
            }
        }
        let acked = acked.min(end).max(segments.front().map_or(end, |s| s.base));
        rec.bytes = end - acked;
        if segments.is_empty() {
            end = acked;
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

    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    /// Bytes and records waiting (appended, not yet confirmed).
    pub fn pending(&self) -> (u64, u64) {
        let s = self.lock();
        (s.end - s.acked, s.pending_records)
    }

    /// Global offset of the end of the last record written.
    pub fn end(&self) -> u64 {
        self.lock().end
    }

    /// Bytes the segment files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        let s = self.lock();
        s.segments.iter().map(|g| g.len).sum()
    }

    fn update_gauges(&self) {
        let (b, r) = self.pending();
        metrics::gauge!("spool_bytes").set(b as f64);
        metrics::gauge!("spool_messages").set(r as f64);
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
            last_refused_log: None,
            staged: 0,
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

    /// Waits until the disk work queued so far (fsyncs, cursor, deletions)
    /// is done.
    pub fn flush(&self) {
        self.syncer.flush();
    }

    /// How many segment fsyncs the spool has done (`spool_fsyncs_total`).
    pub fn fsyncs(&self) -> u64 {
        self.syncer.fsyncs()
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

/// Validates records of a segment from `from` (global) on; returns the
/// length of the valid prefix and the number of records at or after `from`.
fn scan_segment(path: &Path, base: u64, from: u64) -> io::Result<(u64, u64)> {
    let f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut off = 0u64;
    let mut records = 0u64;
    let mut buf = Vec::new();
    while off + HEADER as u64 <= file_len {
        let mut h = [0u8; HEADER];
        if r.read_exact(&mut h).is_err() {
            break;
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len > MAX_RECORD || off + HEADER as u64 + len as u64 > file_len {
            break;
        }
        buf.resize(len as usize, 0);
        if r.read_exact(&mut buf).is_err() || crc32fast::hash(&buf) != crc {
            break;
        }
        if base + off >= from {
            records += 1;
        }
        off += HEADER as u64 + len as u64;
    }
    Ok((off, records))
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
    last_refused_log: Option<Instant>,
    /// Records staged and not yet written.
    staged: usize,
}

impl SpoolWriter {
    /// Stages one record; call [`SpoolWriter::commit`] to write the batch.
    pub fn stage(&mut self, payload: &[u8]) {
        self.stage_with(|b| b.extend_from_slice(payload));
    }

    /// Stages one record whose payload `fill` appends to the buffer (saves
    /// a copy on the hot path).
    pub fn stage_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        self.staged += 1;
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; HEADER]);
        fill(&mut self.buf);
        let payload = &self.buf[start + HEADER..];
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32fast::hash(payload).to_le_bytes();
        self.buf[start..start + 4].copy_from_slice(&len);
        self.buf[start + 4..start + 8].copy_from_slice(&crc);
    }

    /// Writes the staged records to the kernel (one `write` per batch),
    /// rolls the segment when full, and wakes the reader. Returns how many
    /// records were refused because the spool is full (`refuse_new`). On a
    /// write error the batch stays staged and the next commit retries it.
    pub fn commit(&mut self) -> io::Result<usize> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        let records = self.staged;
        let cfg = self.spool.cfg.clone();
        let batch = self.buf.len() as u64;
        // Room?
        let mut refused = 0;
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
                break;
            }
            match cfg.on_full {
                OnFull::RefuseNew => {
                    refused = records;
                    break;
                }
                OnFull::DropOldest if segs > 1 => self.drop_oldest()?,
                OnFull::DropOldest => {
                    // Only the active segment left: start a new one so the
                    // old one can go.
                    self.roll()?;
                    if self.spool.lock().segments.len() <= 1 {
                        refused = records;
                        break;
                    }
                }
            }
        }
        if refused > 0 {
            self.buf.clear();
            self.staged = 0;
            metrics::counter!("spool_dropped_total", "reason" => "full_refuse_new")
                .increment(refused as u64);
            self.refused_since_log += refused as u64;
            // One line every 10 s while it lasts, not one per batch.
            if self
                .last_refused_log
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                tracing::error!(
                    records = self.refused_since_log,
                    max_bytes = cfg.max_bytes,
                    "spool full: new messages refused (on_full = refuse_new); is the broker reachable?"
                );
                self.refused_since_log = 0;
                self.last_refused_log = Some(Instant::now());
            }
            return Ok(refused);
        }
        if let Err(e) = (&*self.file).write_all(&self.buf) {
            // Part of the batch may be on disk: cut the file back to the
            // last complete record so that the retry (the batch stays
            // staged) lands where the offsets say it does.
            let len = self.spool.lock().segments.back().map_or(0, |g| g.len);
            let _ = self.file.set_len(len);
            return Err(io::Error::new(e.kind(), format!("spool write failed: {e}")));
        }
        self.buf.clear();
        self.staged = 0;
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
        Ok(0)
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

    fn drop_oldest(&mut self) -> io::Result<()> {
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
        metrics::counter!("spool_dropped_total", "reason" => "full_drop_oldest")
            .increment(dropped.1);
        tracing::error!(
            records = dropped.1,
            bytes = dropped.0.len,
            "spool full: oldest messages dropped (on_full = drop_oldest)"
        );
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

    /// Reads up to `max` records that are available now.
    pub fn read_batch(&mut self, max: usize, out: &mut Vec<ReadRecord>) -> io::Result<()> {
        let (end, segs, skipped) = {
            let mut s = self.spool.lock();
            let skipped = s.skipped_to.take();
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
                let mut f =
                    File::open(&path).map_err(|e| io_ctx(e, "cannot open spool segment", &path))?;
                f.seek(SeekFrom::Start(self.pos - seg.base))?;
                self.file = Some((seg.base, BufReader::with_capacity(256 * 1024, f)));
            }
            let Some((_, r)) = self.file.as_mut() else {
                break;
            };
            while n < max && self.pos < seg_end {
                let mut h = [0u8; HEADER];
                r.read_exact(&mut h)?;
                let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
                if len > MAX_RECORD {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "spool record length is corrupt",
                    ));
                }
                let mut payload = vec![0u8; len as usize];
                r.read_exact(&mut payload)?;
                if crc32fast::hash(&payload) != crc {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "spool record fails its CRC",
                    ));
                }
                self.pos += HEADER as u64 + len as u64;
                out.push(ReadRecord {
                    end: self.pos,
                    payload,
                });
                n += 1;
            }
        }
        Ok(())
    }
}

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

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let e = match Spool::open(cfg(Path::new("/proc/ami2amqp-spool"))) {
            Err(e) => e,
            Ok(_) => panic!("opened a spool under /proc"),
        };
        assert!(e.to_string().contains("/proc/ami2amqp-spool"), "{e}");
    }
}
