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
//! unconfirmed moves nothing. A skipped record counts as resolved, but it
//! is released only with the next resolve that reaches it.
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

    pub(crate) fn is_full(&self) -> bool {
        self.room() == 0
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
    /// it counts as resolved and is released with the next resolve.
    pub(crate) fn skip(&mut self, end: u64, meta: T) {
        self.slots.push_back(Slot {
            end,
            meta,
            done: true,
        });
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
