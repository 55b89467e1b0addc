//! The publisher's confirm bookkeeping, with no I/O: which published
//! records wait for the broker, and how far the spool cursor may move.
//!
//! A session (one connection, one channel in confirm mode) reads records
//! from the spool in order and [`push`](ConfirmWindow::push)es each one
//! it publishes; a record that could not be decoded (and so is not
//! published) is [`skip`](ConfirmWindow::skip)ped into the same order. The
//! broker's answers come back through [`resolve`](ConfirmWindow::resolve),
//! in any order (lapin splits a `multiple` ack into one answer per
//! delivery, so the window only ever sees single answers).
//!
//! **The guarantee kept here:** the cursor moves only over the longest run
//! of resolved records at the front of the window, so everything before the
//! cursor is at the broker; a resolve that leaves an older record
//! unconfirmed moves nothing. A skipped record counts as resolved: it is
//! released as soon as nothing older waits.
//!
//! A `nack` moves nothing either: it is [`Resolved::Refused`], and the
//! session must end. The caller drops the window, reconnects and re-reads
//! the spool from [`cursor`](ConfirmWindow::cursor) (the same place as the
//! spool's own cursor): the refused record and everything published after
//! it are published again, in the order of the spool — at-least-once, never
//! a gap, never out of order.

use std::collections::VecDeque;

/// A delivery's id in its window: 0, 1, 2, … in the order of `push`
/// (skipped records take an id too).
pub(crate) type Id = u64;

/// The broker's answer to one publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Confirmation {
    /// Stored (routed, or kept by the alternate exchange).
    Ack,
    /// Acked, but returned first: no queue was bound for its routing key.
    Returned,
    /// The channel is not in confirm mode: taken as confirmed.
    NotRequested,
    /// The broker refused it.
    Nack,
}

/// How far the spool cursor may move after a resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Advance {
    /// The new cursor: the end of the last record released.
    pub upto: u64,
    /// How many records were released (for the spool's pending count).
    pub records: u64,
}

impl Advance {
    /// Folds a later advance into an earlier one that has not been applied
    /// yet, so that a run of confirms moves the spool cursor once.
    pub(crate) fn then(earlier: Option<Advance>, later: Option<Advance>) -> Option<Advance> {
        match (earlier, later) {
            (Some(a), Some(b)) => Some(Advance {
                upto: b.upto.max(a.upto),
                records: a.records + b.records,
            }),
            (a, None) => a,
            (None, b) => b,
        }
    }
}

/// What one resolve means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolved<T> {
    /// The record is confirmed; `advance` is `None` while an older record
    /// is still unconfirmed.
    Confirmed { meta: T, advance: Option<Advance> },
    /// The broker refused the record: end the session and re-publish from
    /// [`ConfirmWindow::cursor`].
    Refused { meta: T },
    /// Not a delivery waiting in this window (never pushed, already
    /// released, or resolved twice).
    Unknown,
}

struct Slot<T> {
    /// Spool offset just past the record.
    end: u64,
    meta: T,
    done: bool,
}

/// Records published and not yet released, oldest first, at most
/// `capacity` of them.
pub(crate) struct ConfirmWindow<T> {
    slots: VecDeque<Slot<T>>,
    /// Id of `slots[0]`.
    front_id: Id,
    capacity: usize,
    cursor: u64,
}

impl<T: Clone> ConfirmWindow<T> {
    /// An empty window for a session that starts reading at spool offset
    /// `cursor`; `capacity` is the confirm window (at least 1).
    pub(crate) fn new(capacity: usize, cursor: u64) -> ConfirmWindow<T> {
        let capacity = capacity.max(1);
        ConfirmWindow {
            slots: VecDeque::with_capacity(capacity),
            front_id: 0,
            capacity,
            cursor,
        }
    }

    /// How many more records may be pushed now.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.slots.len())
    }

    /// Whether the window is worth refilling now: once a quarter of it (at
    /// most 64 records, at least 1) is free, not record by record as
    /// confirms trickle in. At full speed that makes one spool read and one
    /// batch of publishes per refill, and lapin writes several messages per
    /// syscall (BENCHMARKS.md, "Pipelining the publisher and refilling the
    /// window"). An empty window always has that much room, so this never
    /// waits on a window that no confirm will free.
    pub(crate) fn wants_refill(&self) -> bool {
        self.room() >= self.refill_at()
    }

    /// How many of the oldest records must be released before
    /// [`wants_refill`](Self::wants_refill) holds (at least 1): how many
    /// answers the publisher waits for before it has anything to do.
    pub(crate) fn releases_until_refill(&self) -> usize {
        self.refill_at().saturating_sub(self.room()).max(1)
    }

    fn refill_at(&self) -> usize {
        (self.capacity / 4).clamp(1, 64)
    }

    /// The spool offset everything before which is confirmed: where to
    /// re-read from after the session ends.
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor
    }

    fn next_id(&self) -> Id {
        self.front_id + self.slots.len() as Id
    }

    /// Records a published record ending at spool offset `end`; its answer
    /// is to be resolved with the returned id.
    pub(crate) fn push(&mut self, end: u64, meta: T) -> Id {
        let id = self.next_id();
        self.slots.push_back(Slot {
            end,
            meta,
            done: false,
        });
        id
    }

    /// Records a record that is not published (it could not be decoded):
    /// it counts as resolved, and is released at once if nothing older
    /// waits (a window full of skipped records no confirm would release
    /// would stop the session for good).
    pub(crate) fn skip(&mut self, end: u64, meta: T, release: impl FnMut(T)) -> Option<Advance> {
        self.slots.push_back(Slot {
            end,
            meta,
            done: true,
        });
        self.release_front(release)
    }

    /// Applies the broker's answer for `id`; every record released from
    /// the front of the window goes to `release`, oldest first.
    pub(crate) fn resolve(
        &mut self,
        id: Id,
        answer: Confirmation,
        release: impl FnMut(T),
    ) -> Resolved<T> {
        let Some(idx) = id.checked_sub(self.front_id) else {
            return Resolved::Unknown;
        };
        let Some(slot) = usize::try_from(idx)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        else {
            return Resolved::Unknown;
        };
        if slot.done {
            return Resolved::Unknown;
        }
        let meta = slot.meta.clone();
        if answer == Confirmation::Nack {
            return Resolved::Refused { meta };
        }
        slot.done = true;
        let advance = self.release_front(release);
        Resolved::Confirmed { meta, advance }
    }

    /// Pops the run of resolved records at the front.
    fn release_front(&mut self, mut release: impl FnMut(T)) -> Option<Advance> {
        let mut records = 0;
        while self.slots.front().is_some_and(|s| s.done) {
            let Some(s) = self.slots.pop_front() else {
                break;
            };
            self.front_id += 1;
            self.cursor = s.end;
            records += 1;
            release(s.meta);
        }
        (records > 0).then_some(Advance {
            upto: self.cursor,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refills_once_a_quarter_is_free() {
        let mut w = ConfirmWindow::new(256, 0);
        assert!(w.wants_refill());
        let ids: Vec<Id> = (0..256).map(|i| w.push(i + 1, ())).collect();
        assert!(!w.wants_refill());
        for &id in &ids[..63] {
            w.resolve(id, Confirmation::Ack, |_| {});
        }
        assert!(!w.wants_refill(), "63 free of 256");
        w.resolve(ids[63], Confirmation::Ack, |_| {});
        assert!(w.wants_refill(), "64 free");
        // Small windows: a quarter, and never less than one record.
        for (cap, at) in [(1, 1), (2, 1), (8, 2), (1000, 64)] {
            let mut w = ConfirmWindow::new(cap, 0);
            for i in 0..cap {
                w.push(i as u64 + 1, ());
            }
            let mut freed = 0;
            while !w.wants_refill() {
                w.resolve(freed as Id, Confirmation::Ack, |_| {});
                freed += 1;
            }
            assert_eq!(freed, at, "capacity {cap}");
        }
    }

    #[test]
    fn cursor_moves_over_the_contiguous_run_only() {
        let mut w = ConfirmWindow::new(4, 100);
        let a = w.push(110, 'a');
        let b = w.push(120, 'b');
        let c = w.push(130, 'c');
        assert_eq!(w.room(), 1);
        let mut out = Vec::new();
        let r = w.resolve(c, Confirmation::Ack, |m| out.push(m));
        assert_eq!(
            r,
            Resolved::Confirmed {
                meta: 'c',
                advance: None
            }
        );
        assert_eq!(
            w.resolve(b, Confirmation::Nack, |m| out.push(m)),
            Resolved::Refused { meta: 'b' }
        );
        assert_eq!(w.cursor(), 100);
        let r = w.resolve(a, Confirmation::Returned, |m| out.push(m));
        let advance = Some(Advance {
            upto: 110,
            records: 1,
        });
        assert_eq!(r, Resolved::Confirmed { meta: 'a', advance });
        assert_eq!(
            w.resolve(a, Confirmation::Ack, |m| out.push(m)),
            Resolved::Unknown
        );
        assert_eq!(
            w.resolve(9, Confirmation::Ack, |m| out.push(m)),
            Resolved::Unknown
        );
        let r = w.resolve(b, Confirmation::NotRequested, |m| out.push(m));
        let advance = Some(Advance {
            upto: 130,
            records: 2,
        });
        assert_eq!(r, Resolved::Confirmed { meta: 'b', advance });
        assert_eq!(out, ['a', 'b', 'c']);
        assert_eq!(w.cursor(), 130);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Read and publish up to n records (what fits in the window).
        Read(usize),
        /// The broker answers one of the deliveries it owes an answer.
        Answer(usize, Confirmation),
        /// An answer for a delivery already answered or released.
        Stale(usize),
        /// The connection fails: the session ends.
        Reconnect,
    }

    fn answer() -> impl Strategy<Value = Confirmation> {
        prop_oneof![
            8 => Just(Confirmation::Ack),
            2 => Just(Confirmation::Returned),
            1 => Just(Confirmation::NotRequested),
            2 => Just(Confirmation::Nack),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1usize..8).prop_map(Op::Read),
            6 => (any::<usize>(), answer()).prop_map(|(i, a)| Op::Answer(i, a)),
            1 => any::<usize>().prop_map(Op::Stale),
            1 => Just(Op::Reconnect),
        ]
    }

    /// A spool of records (some undecodable), a broker, and the publisher's
    /// session loop around a window, with a model of the cursor beside it.
    struct Harness {
        ends: Vec<u64>,
        undecodable: Vec<bool>,
        capacity: usize,
        window: ConfirmWindow<usize>,
        /// Next record the session reads.
        reader: usize,
        /// Model: records before this one are released.
        cursor: usize,
        /// Deliveries the broker owes an answer: (id, record).
        owed: Vec<(Id, usize)>,
        answered: Vec<Id>,
        /// Resolved (or skipped) in the current session.
        done: Vec<bool>,
        /// Ever acked by the broker.
        at_broker: Vec<bool>,
        /// Every publish, in order.
        published: Vec<usize>,
        /// Spool position each session started reading at.
        session_starts: Vec<usize>,
    }

    impl Harness {
        fn new(sizes: &[(u64, bool)], capacity: usize) -> Harness {
            let ends = sizes
                .iter()
                .scan(0, |end, (n, _)| {
                    *end += n;
                    Some(*end)
                })
                .collect();
            let n = sizes.len();
            Harness {
                ends,
                undecodable: sizes.iter().map(|s| s.1).collect(),
                capacity,
                window: ConfirmWindow::new(capacity, 0),
                reader: 0,
                cursor: 0,
                owed: Vec::new(),
                answered: Vec::new(),
                done: vec![false; n],
                at_broker: vec![false; n],
                published: Vec::new(),
                session_starts: vec![0],
            }
        }

        fn offset(&self, record: usize) -> u64 {
            record.checked_sub(1).map_or(0, |i| self.ends[i])
        }

        fn reconnect(&mut self) {
            // The spool's reader rewinds to the cursor the window moved.
            assert_eq!(self.window.cursor(), self.offset(self.cursor));
            self.window = ConfirmWindow::new(self.capacity, self.offset(self.cursor));
            self.reader = self.cursor;
            self.owed.clear();
            self.answered.clear();
            self.done.fill(false);
            self.session_starts.push(self.cursor);
        }

        /// An undecodable record: released at once unless older ones wait.
        fn skip(&mut self, rec: usize, end: u64) {
            self.done[rec] = true;
            let before = self.cursor;
            let mut released = Vec::new();
            let advance = self.window.skip(end, rec, |m| released.push(m));
            self.advance_model();
            assert_eq!(advance, self.advance_since(before));
            assert_eq!(released, (before..self.cursor).collect::<Vec<_>>());
        }

        fn read(&mut self, n: usize) {
            let n = n.min(self.window.room());
            for _ in 0..n {
                let rec = self.reader;
                let Some(&end) = self.ends.get(rec) else {
                    return;
                };
                self.reader += 1;
                if self.undecodable[rec] {
                    self.skip(rec, end);
                } else {
                    let id = self.window.push(end, rec);
                    self.owed.push((id, rec));
                    self.published.push(rec);
                }
            }
            let in_window = self.reader - self.cursor;
            assert!(
                in_window <= self.capacity,
                "{in_window} records in a window of {}",
                self.capacity
            );
        }

        /// The model: the cursor moves over the records resolved in this
        /// session, in order.
        fn advance_model(&mut self) {
            while self.cursor < self.reader && self.done[self.cursor] {
                self.cursor += 1;
            }
        }

        fn advance_since(&self, before: usize) -> Option<Advance> {
            (self.cursor > before).then(|| Advance {
                upto: self.offset(self.cursor),
                records: (self.cursor - before) as u64,
            })
        }

        fn answer(&mut self, pick: usize, a: Confirmation) -> Result<(), TestCaseError> {
            if self.owed.is_empty() {
                return Ok(());
            }
            let (id, rec) = self.owed.remove(pick % self.owed.len());
            self.answered.push(id);
            let before = self.cursor;
            let mut released = Vec::new();
            let r = self.window.resolve(id, a, |m| released.push(m));
            if a == Confirmation::Nack {
                prop_assert_eq!(r, Resolved::Refused { meta: rec });
                prop_assert!(released.is_empty());
                self.reconnect();
                return Ok(());
            }
            self.at_broker[rec] = true;
            self.done[rec] = true;
            self.advance_model();
            let advance = self.advance_since(before);
            prop_assert_eq!(r, Resolved::Confirmed { meta: rec, advance });
            prop_assert_eq!(released, (before..self.cursor).collect::<Vec<_>>());
            Ok(())
        }

        fn stale(&mut self, pick: usize) -> Result<(), TestCaseError> {
            let Some(&id) = self.answered.get(pick % self.answered.len().max(1)) else {
                return Ok(());
            };
            let cursor = self.window.cursor();
            let r = self
                .window
                .resolve(id, Confirmation::Ack, |_| panic!("released"));
            prop_assert_eq!(r, Resolved::Unknown);
            prop_assert_eq!(self.window.cursor(), cursor);
            Ok(())
        }

        fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
            match op {
                Op::Read(n) => self.read(n),
                Op::Answer(i, a) => self.answer(i, a)?,
                Op::Stale(i) => self.stale(i)?,
                Op::Reconnect => self.reconnect(),
            }
            self.check_cursor()
        }

        /// The cursor never passes a record the broker has not acked.
        fn check_cursor(&self) -> Result<(), TestCaseError> {
            let upto = self.window.cursor();
            prop_assert_eq!(upto, self.offset(self.cursor));
            for (i, &end) in self.ends.iter().enumerate() {
                if end <= upto {
                    prop_assert!(
                        self.at_broker[i] || self.undecodable[i],
                        "cursor {} passed record {}",
                        upto,
                        i
                    );
                }
            }
            Ok(())
        }

        /// The broker comes back and answers everything with an ack.
        fn drain(&mut self) -> Result<(), TestCaseError> {
            self.reconnect();
            while self.reader < self.ends.len() || !self.owed.is_empty() {
                let (reader, owed) = (self.reader, self.owed.len());
                self.read(usize::MAX);
                if !self.owed.is_empty() {
                    self.answer(owed / 2, Confirmation::Ack)?;
                }
                prop_assert!(
                    self.reader > reader || self.owed.len() < owed,
                    "stalled: window full of skipped records at {}",
                    self.reader
                );
            }
            Ok(())
        }

        /// Nothing lost, first publications in spool order, a record
        /// published again only by a later session that started at or
        /// before it.
        fn check_end(&self) -> Result<(), TestCaseError> {
            for i in 0..self.ends.len() {
                prop_assert!(
                    self.at_broker[i] || self.undecodable[i],
                    "record {} lost",
                    i
                );
            }
            let mut firsts = Vec::new();
            let mut seen = vec![false; self.ends.len()];
            let mut session = 0;
            let mut last: Option<usize> = None;
            for &r in &self.published {
                if last.is_some_and(|l| r <= l) {
                    session += 1;
                    prop_assert!(self.session_starts[session..].iter().any(|&s| s <= r));
                }
                last = Some(r);
                if !std::mem::replace(&mut seen[r], true) {
                    firsts.push(r);
                }
            }
            let decodable: Vec<usize> = (0..self.ends.len())
                .filter(|&i| !self.undecodable[i])
                .collect();
            prop_assert_eq!(firsts, decodable);
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn the_cursor_never_passes_an_unconfirmed_record(
            sizes in proptest::collection::vec((1u64..100, proptest::bool::weighted(0.1)), 0..60),
            capacity in 1usize..6,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut h = Harness::new(&sizes, capacity);
            for op in ops {
                h.apply(op)?;
            }
            h.drain()?;
            h.check_cursor()?;
            h.check_end()?;
        }

        /// Folding the advances of any run of confirms with
        /// [`Advance::then`] moves the cursor where applying each would,
        /// and releases as many records.
        #[test]
        fn folded_advances_equal_applying_each(
            n in 1usize..40,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
        ) {
            let mut w = ConfirmWindow::new(n, 0);
            let mut ids: Vec<Id> = (1..=n as u64).map(|i| w.push(i * 10, ())).collect();
            let (mut folded, mut cursor, mut released) = (None, 0, 0);
            for ix in order {
                if ids.is_empty() {
                    break;
                }
                let id = ids.remove(ix.index(ids.len()));
                if let Resolved::Confirmed { advance, .. } = w.resolve(id, Confirmation::Ack, |_| {}) {
                    if let Some(a) = advance {
                        prop_assert!(a.upto > cursor);
                        cursor = a.upto;
                        released += a.records;
                    }
                    folded = Advance::then(folded, advance);
                }
            }
            prop_assert_eq!(folded.map(|a| a.upto).unwrap_or(0), cursor);
            prop_assert_eq!(folded.map(|a| a.records).unwrap_or(0), released);
            prop_assert_eq!(cursor, w.cursor());
        }
    }
}
