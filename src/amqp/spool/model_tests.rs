//! Model test of the spool: random sequences of stage / commit / read /
//! ack / rewind / crash / reopen against the real `Spool` in a temporary
//! directory and an in-memory model, checked after every step.
//!
//! The model is a `VecDeque` of the committed, unconfirmed payloads, in
//! order. What the spool promises, and so what is checked:
//!
//! * **Order, no loss:** a reader from the cursor yields exactly the
//!   model, in order; `pending()` counts exactly the model.
//! * **Crash and reopen** (everything dropped without a flush, possibly
//!   with the last record of the last segment cut as a torn write leaves
//!   it): the reopened spool yields `D ++ model`, where `D` is a suffix of
//!   the records confirmed since the last *forced* ack. That is the cursor's
//!   granularity: `ack(.., force = false)` persists the cursor at most every
//!   50 ms, so records confirmed since the last persisted cursor may come
//!   back (duplicates); an unconfirmed record never goes missing. A torn
//!   record was never completely written, so it leaves the model.
//! * Staged records that were not committed before a crash were never
//!   accepted; they leave no trace.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// Stage one record of this many filler bytes.
    Stage(usize),
    Commit,
    /// Read up to this many records.
    Read(usize),
    /// Confirm the oldest `n` records read (as many as were read at
    /// most), persisting the cursor when `force`.
    Ack(usize, bool),
    /// Back to the oldest unconfirmed record (a broker failure).
    Rewind,
    /// Drop everything without a flush; with `Some(x)`, cut the last record
    /// of the last segment (x picks how much of it) first. Then reopen.
    Crash(Option<u16>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..120).prop_map(Op::Stage),
        3 => Just(Op::Commit),
        3 => (1usize..12).prop_map(Op::Read),
        3 => ((1usize..10), any::<bool>()).prop_map(|(n, f)| Op::Ack(n, f)),
        1 => Just(Op::Rewind),
        1 => proptest::option::of(any::<u16>()).prop_map(Op::Crash),
    ]
}

fn cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        // Small segments: rolls and deletions happen all the time.
        segment_bytes: 300,
        on_full: OnFull::RefuseNew,
        // No fsyncs (they only slow the test): a crash here is a dropped
        // process, not a power loss.
        fsync_interval: Duration::from_secs(3600),
    }
}

/// The real spool and its two ends.
struct Real {
    spool: Spool,
    writer: SpoolWriter,
    reader: SpoolReader,
}

impl Real {
    fn open(dir: &Path) -> (Real, Recovered) {
        let (spool, rec) = Spool::open(cfg(dir)).expect("open");
        let writer = spool.writer().expect("writer");
        let reader = spool.reader();
        (
            Real {
                spool,
                writer,
                reader,
            },
            rec,
        )
    }
}

/// The model, and what the test remembers of the real reader.
#[derive(Default)]
struct Model {
    next_id: u64,
    /// Staged, not committed.
    staged: Vec<Vec<u8>>,
    /// Committed, not confirmed, in order.
    unconfirmed: VecDeque<Vec<u8>>,
    /// How many of `unconfirmed` the reader has yielded, and the global
    /// offset just past each (what `ack` takes).
    read_ends: Vec<u64>,
    /// Confirmed since the cursor was last known to be on disk (a forced
    /// ack, or the open): what a crash may bring back.
    since_persisted: Vec<Vec<u8>>,
}

fn payload(id: u64, fill: usize) -> Vec<u8> {
    format!("{id:08}:{}", "x".repeat(fill)).into_bytes()
}

fn read(r: &mut SpoolReader, max: usize) -> Vec<ReadRecord> {
    let mut out = Vec::new();
    r.read_batch(max, &mut out).expect("read_batch");
    out
}

fn show(v: &[Vec<u8>]) -> Vec<String> {
    v.iter()
        .map(|p| String::from_utf8_lossy(&p[..p.len().min(8)]).into_owned())
        .collect()
}

/// The last segment file in `dir`, if it has bytes.
fn last_segment(dir: &Path) -> Option<PathBuf> {
    let mut segs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop()
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0))
}

impl Model {
    fn step(&mut self, real: &mut Real, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Stage(fill) => {
                self.next_id += 1;
                let p = payload(self.next_id, fill);
                real.writer.stage(&p);
                self.staged.push(p);
            }
            Op::Commit => {
                prop_assert_eq!(real.writer.commit().expect("commit"), 0);
                self.unconfirmed.extend(self.staged.drain(..));
            }
            Op::Read(max) => {
                let got = read(&mut real.reader, max);
                let from = self.read_ends.len();
                let want = max.min(self.unconfirmed.len() - from);
                let want: Vec<Vec<u8>> =
                    self.unconfirmed.range(from..from + want).cloned().collect();
                let payloads: Vec<Vec<u8>> = got.iter().map(|r| r.payload.clone()).collect();
                prop_assert_eq!(show(&payloads), show(&want));
                prop_assert_eq!(payloads, want);
                self.read_ends.extend(got.iter().map(|r| r.end));
            }
            Op::Ack(n, force) => {
                let n = n.min(self.read_ends.len());
                // With nothing new to confirm, a forced ack of 0 records
                // persists the cursor where it is (as at shutdown).
                let upto = n.checked_sub(1).map_or(0, |i| self.read_ends[i]);
                real.spool.ack(upto, n as u64, force).expect("ack");
                self.read_ends.drain(..n);
                self.since_persisted.extend(self.unconfirmed.drain(..n));
                if force {
                    self.since_persisted.clear();
                }
            }
            Op::Rewind => {
                real.reader.rewind();
                self.read_ends.clear();
            }
            Op::Crash(_) => unreachable!("crashes are handled by `crash`"),
        }
        Ok(())
    }

    /// Cuts the last record as a torn write would, if the last segment
    /// ends with an unconfirmed record; returns whether it did.
    fn tear(&mut self, dir: &Path, x: u16) -> bool {
        let Some(last) = self.unconfirmed.back() else {
            return false;
        };
        let Some(path) = last_segment(dir) else {
            return false;
        };
        let rec = (HEADER + last.len()) as u64;
        let cut = 1 + u64::from(x) % rec;
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < rec {
            return false;
        }
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(len - cut).expect("truncate");
        self.unconfirmed.pop_back();
        true
    }

    /// Drops the spool without a flush, maybe tears the tail, reopens and
    /// checks what comes back.
    fn crash(&mut self, real: Real, dir: &Path, torn: Option<u16>) -> Result<Real, TestCaseError> {
        drop(real);
        self.staged.clear();
        self.read_ends.clear();
        if let Some(x) = torn {
            self.tear(dir, x);
        }
        let (mut real, rec) = Real::open(dir);
        let got: Vec<Vec<u8>> = read(&mut real.reader, usize::MAX)
            .into_iter()
            .map(|r| r.payload)
            .collect();
        prop_assert_eq!(rec.corrupt_records, 0);
        prop_assert_eq!(rec.records, got.len() as u64);
        // got = D ++ unconfirmed, D a suffix of since_persisted.
        let dups = got.len().checked_sub(self.unconfirmed.len());
        let ok = dups.is_some_and(|d| {
            d <= self.since_persisted.len()
                && got[..d] == self.since_persisted[self.since_persisted.len() - d..]
                && got[d..].iter().eq(self.unconfirmed.iter())
        });
        prop_assert!(
            ok,
            "after reopen: got {:?}\nunconfirmed {:?}\nconfirmed since the cursor was persisted {:?}",
            show(&got),
            show(&self.unconfirmed.iter().cloned().collect::<Vec<_>>()),
            show(&self.since_persisted)
        );
        // The duplicates wait for a confirm again; the cursor on disk is
        // where reading started.
        self.unconfirmed = got.into();
        self.since_persisted.clear();
        real.reader.rewind();
        Ok(real)
    }

    /// After every step: a fresh reader yields exactly the model, and
    /// `pending` counts it.
    fn check(&self, real: &Real) -> Result<(), TestCaseError> {
        let got: Vec<Vec<u8>> = read(&mut real.spool.reader(), usize::MAX)
            .into_iter()
            .map(|r| r.payload)
            .collect();
        prop_assert!(
            got.iter().eq(self.unconfirmed.iter()),
            "reader {:?} model {:?}",
            show(&got),
            show(&self.unconfirmed.iter().cloned().collect::<Vec<_>>())
        );
        let bytes: usize = self.unconfirmed.iter().map(|p| HEADER + p.len()).sum();
        prop_assert_eq!(
            real.spool.pending(),
            (bytes as u64, self.unconfirmed.len() as u64)
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn spool_matches_its_model(ops in proptest::collection::vec(op(), 1..120)) {
        let d = tempfile::tempdir().expect("tempdir");
        let (mut real, _) = Real::open(d.path());
        let mut m = Model::default();
        for op in &ops {
            real = match *op {
                Op::Crash(torn) => m.crash(real, d.path(), torn)?,
                _ => {
                    m.step(&mut real, op)?;
                    real
                }
            };
            m.check(&real)?;
        }
    }
}
