//! Which action requests to ack, in as few frames as their order allows,
//! with no I/O.
//!
//! The action path acks a request once its reply is published
//! ([`super::rpc`]). Requests finish in any order (a `Ping` overtakes a
//! slow `Originate`), and acking each one alone costs a frame, a broker
//! operation and a wake-up of the AMQP connection's thread per request.
//! An [`AckBook`] per channel collects the requests that finished since
//! the last look and turns them into acks: one `multiple` ack for the run
//! of finished requests right above everything already acked, single acks
//! for the others, so that no finished request waits for an older one.
//!
//! **The guarantee kept here:** an ack never covers a request that has not
//! finished, every finished request is acked exactly once, and no ack names
//! a delivery tag that is already acked (RabbitMQ closes the channel with
//! `PRECONDITION_FAILED` for that). A multiple ack at tag `t` covers every
//! unacked delivery of the channel up to `t`; it is sent only when every
//! tag from the last covered one up to `t` has finished or been acked: the
//! broker numbers a channel's deliveries 1, 2, 3, … whichever queue they
//! come from, so a tag not seen yet is a request still on its way, and it
//! stops the run.

use std::collections::BTreeSet;

/// A channel's delivery tag (1, 2, 3, … on each channel).
pub(crate) type Tag = u64;

/// One ack to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    pub tag: Tag,
    /// Acks every unacked delivery of the channel up to `tag`.
    pub multiple: bool,
}

/// The finished requests of one channel and what is acked.
#[derive(Debug, Default)]
pub(crate) struct AckBook {
    /// Every tag up to this one is acked (0: none yet).
    floor: Tag,
    /// Finished, not acked yet (all above `floor`).
    finished: BTreeSet<Tag>,
    /// Acked alone, above `floor` (a gap below them).
    acked_alone: BTreeSet<Tag>,
}

impl AckBook {
    pub(crate) fn new() -> AckBook {
        AckBook::default()
    }

    /// The request delivered with `tag` is done (its reply published, or
    /// it needs none): it may be acked. A tag already acked or finished is
    /// ignored.
    pub(crate) fn finish(&mut self, tag: Tag) {
        if tag > self.floor && !self.acked_alone.contains(&tag) {
            self.finished.insert(tag);
        }
    }

    /// The acks that cover every finished request, fewest first: the run
    /// above the floor as one multiple ack, the rest alone.
    pub(crate) fn take(&mut self) -> Vec<Ack> {
        let mut acks = Vec::new();
        if let Some(run) = self.run_above_floor() {
            acks.push(run);
        }
        for tag in std::mem::take(&mut self.finished) {
            acks.push(Ack {
                tag,
                multiple: false,
            });
            self.acked_alone.insert(tag);
        }
        self.raise_floor();
        acks
    }

    /// Requests finished and not yet acked.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.finished.len()
    }

    /// Takes the finished tags of the run right above the floor (gaps
    /// filled by tags acked alone) and acks them as one.
    fn run_above_floor(&mut self) -> Option<Ack> {
        let mut next = self.floor + 1;
        let mut last_finished = None;
        let mut count = 0;
        loop {
            if self.finished.remove(&next) {
                last_finished = Some(next);
                count += 1;
            } else if !self.acked_alone.contains(&next) {
                break;
            }
            next += 1;
        }
        let tag = last_finished?;
        self.floor = tag;
        Some(Ack {
            tag,
            multiple: count > 1,
        })
    }

    /// Moves the floor over the tags acked alone right above it.
    fn raise_floor(&mut self) {
        while self.acked_alone.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        let floor = self.floor;
        self.acked_alone.retain(|t| *t > floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the broker would do with the acks: the set of acked tags, or
    /// the error that closes the channel.
    #[derive(Default)]
    struct Broker {
        acked: BTreeSet<Tag>,
    }

    impl Broker {
        fn apply(&mut self, a: Ack, delivered: Tag) -> Result<Vec<Tag>, String> {
            if a.tag == 0 || a.tag > delivered || self.acked.contains(&a.tag) {
                return Err(format!("unknown delivery tag {}", a.tag));
            }
            let covered: Vec<Tag> = if a.multiple {
                (1..=a.tag).filter(|t| !self.acked.contains(t)).collect()
            } else {
                vec![a.tag]
            };
            self.acked.extend(&covered);
            Ok(covered)
        }
    }

    #[test]
    fn in_order_requests_take_one_ack() {
        let mut b = AckBook::new();
        for t in 1..=5 {
            b.finish(t);
        }
        assert_eq!(
            b.take(),
            vec![Ack {
                tag: 5,
                multiple: true
            }]
        );
        assert!(b.take().is_empty());
    }

    #[test]
    fn a_slow_request_does_not_hold_back_the_others() {
        let mut b = AckBook::new();
        for t in [1, 2, 4, 5] {
            b.finish(t);
        }
        let acks = b.take();
        assert_eq!(
            acks,
            vec![
                Ack {
                    tag: 2,
                    multiple: true
                },
                Ack {
                    tag: 4,
                    multiple: false
                },
                Ack {
                    tag: 5,
                    multiple: false
                },
            ]
        );
        b.finish(3);
        b.finish(6);
        b.finish(7);
        // 3 alone would do, but 3..7 is one run: 4 and 5 are acked already.
        assert_eq!(
            b.take(),
            vec![Ack {
                tag: 7,
                multiple: true
            }]
        );
    }

    proptest! {
        /// Requests 1..=n finish in a random order, looked at in random
        /// batches, some never finish: every finished one is acked once,
        /// nothing unfinished is acked, no ack names an acked tag.
        #[test]
        fn acks_cover_exactly_the_finished_requests(
            n in 1u64..60,
            order in proptest::collection::vec(any::<u64>(), 60),
            stuck in proptest::collection::btree_set(1u64..60, 0..5),
            cuts in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let mut tags: Vec<Tag> = (1..=n).filter(|t| !stuck.contains(t)).collect();
            // A permutation from the random keys.
            let mut keyed: Vec<(u64, Tag)> = tags.iter().map(|t| (order[(*t as usize) % 60] ^ t, *t)).collect();
            keyed.sort();
            tags = keyed.into_iter().map(|(_, t)| t).collect();
            let mut book = AckBook::new();
            let mut broker = Broker::default();
            let mut finished = BTreeSet::new();
            let mut acked_by_us = Vec::new();
            for (i, t) in tags.iter().enumerate() {
                book.finish(*t);
                finished.insert(*t);
                if cuts[i % 60] || i + 1 == tags.len() {
                    for a in book.take() {
                        let covered = broker.apply(a, n).map_err(TestCaseError::fail)?;
                        for c in covered {
                            prop_assert!(finished.contains(&c), "acked {c} before it finished");
                            acked_by_us.push(c);
                        }
                    }
                }
            }
            acked_by_us.sort();
            let expected: Vec<Tag> = finished.iter().copied().collect();
            prop_assert_eq!(acked_by_us, expected);
            prop_assert_eq!(book.pending(), 0);
            // Memory: what is kept is above the floor, below n.
            prop_assert!(book.acked_alone.len() as u64 <= n);
        }
    }
}
