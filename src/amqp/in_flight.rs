//! The publishes in flight, oldest first, and which one of them may wake
//! the publisher.
//!
//! Every publish is a future (its write, then its confirm) that lapin's I/O
//! thread completes. A future polled with the task's waker wakes the task
//! when it completes, so with every future polled that way the publisher's
//! thread would be woken for nearly every write and every run of confirms:
//! measured, 0.25 wake-ups per message at full speed against 0.10 for a
//! plain lapin publisher, each a park in `epoll_wait` and a context switch
//! (BENCHMARKS.md, "Waking the publisher once per refill").
//!
//! Yet while the window is full the publisher has nothing to do until
//! enough of the oldest records are confirmed to refill it. [`InFlight`]
//! therefore hands the task's waker to one pending future only: the one
//! whose answer is the last the publisher waits for (the `wait_for`-th
//! oldest). The others are polled with a no-op waker when they are polled
//! at all; they are polled with the real waker when they become that one.
//! Answers are handed out oldest first, which is the order the spool cursor
//! moves in anyway ([`ConfirmWindow`](super::confirm::ConfirmWindow)).
//!
//! No I/O here: the type is generic over the future, and the tests drive it
//! with channels.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Futures in the order they were started; see the module docs.
pub(crate) struct InFlight<F: Future> {
    slots: VecDeque<Slot<F>>,
}

struct Slot<F: Future> {
    fut: F,
    /// The answer, once the future completed before its turn to be handed
    /// out; the future is not polled again.
    out: Option<F::Output>,
}

impl<F: Future + Unpin> InFlight<F> {
    pub(crate) fn new() -> InFlight<F> {
        InFlight {
            slots: VecDeque::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a future that has been polled once (or never) and is pending.
    pub(crate) fn push(&mut self, fut: F) {
        self.slots.push_back(Slot { fut, out: None });
    }

    /// The oldest future's answer, if it is in. `wait_for` (at least 1) is
    /// how many of the oldest answers the caller needs before it has
    /// anything to do: on `Pending`, `cx`'s waker has been registered with
    /// one pending future among the `wait_for` oldest, the youngest of them
    /// that is still pending; no other future was polled with it in this
    /// call. `Ready(None)`: empty.
    pub(crate) fn poll_oldest(
        &mut self,
        cx: &mut Context<'_>,
        wait_for: usize,
    ) -> Poll<Option<F::Output>> {
        let wait_for = wait_for.clamp(1, self.slots.len().max(1));
        // The oldest answer, if it is in; polled quietly unless it is the
        // only one waited for.
        let mut quiet = Context::from_waker(Waker::noop());
        let first = if wait_for == 1 { &mut *cx } else { &mut quiet };
        match self.poll_slot(0, first) {
            None => return Poll::Ready(None),
            Some(true) => return Poll::Ready(self.pop()),
            Some(false) if wait_for == 1 => return Poll::Pending,
            Some(false) => {}
        }
        // The waker goes to the youngest pending one among those waited for.
        for i in (1..wait_for).rev() {
            if self.poll_slot(i, cx) == Some(false) {
                return Poll::Pending;
            }
        }
        match self.poll_slot(0, cx) {
            Some(true) => Poll::Ready(self.pop()),
            _ => Poll::Pending,
        }
    }

    /// Polls slot `i` unless its answer is already in; `Some(true)` once
    /// it is in, `None` for no such slot.
    fn poll_slot(&mut self, i: usize, cx: &mut Context<'_>) -> Option<bool> {
        let slot = self.slots.get_mut(i)?;
        if slot.out.is_none()
            && let Poll::Ready(out) = Pin::new(&mut slot.fut).poll(cx)
        {
            slot.out = Some(out);
        }
        Some(slot.out.is_some())
    }

    fn pop(&mut self) -> Option<F::Output> {
        self.slots.pop_front().and_then(|s| s.out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use futures::channel::oneshot;
    use proptest::prelude::*;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn queue(
        n: usize,
    ) -> (
        InFlight<oneshot::Receiver<usize>>,
        Vec<oneshot::Sender<usize>>,
    ) {
        let mut q = InFlight::new();
        let mut senders = Vec::new();
        for _ in 0..n {
            let (tx, rx) = oneshot::channel();
            q.push(rx);
            senders.push(tx);
        }
        (q, senders)
    }

    #[test]
    fn answers_come_out_oldest_first() {
        let (mut q, senders) = queue(3);
        let (_, w) = counting();
        let mut cx = Context::from_waker(&w);
        for (i, tx) in senders.into_iter().enumerate().rev() {
            tx.send(i).unwrap();
        }
        for i in 0..3 {
            assert_eq!(q.poll_oldest(&mut cx, 1), Poll::Ready(Some(Ok(i))));
        }
        assert_eq!(q.poll_oldest(&mut cx, 1), Poll::Ready(None));
    }

    #[test]
    fn only_the_last_awaited_answer_wakes_the_task() {
        let (mut q, senders) = queue(64);
        let (count, w) = counting();
        let mut cx = Context::from_waker(&w);
        assert!(q.poll_oldest(&mut cx, 16).is_pending());
        let mut senders = senders.into_iter().enumerate();
        for (i, tx) in senders.by_ref().take(15) {
            tx.send(i).unwrap();
        }
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "woken before the 16th answer"
        );
        let (i, tx) = senders.next().unwrap();
        tx.send(i).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        for i in 0..16 {
            assert_eq!(q.poll_oldest(&mut cx, 16 - i), Poll::Ready(Some(Ok(i))));
        }
        assert!(q.poll_oldest(&mut cx, 1).is_pending());
        for (i, tx) in senders {
            tx.send(i).unwrap();
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever the order answers come in and whatever the caller waits
        /// for: answers come out oldest first, and once the awaited ones
        /// are all in, the task has been woken (no lost wake-up).
        #[test]
        fn no_answer_is_lost_and_no_wake_up_is_missed(
            n in 1usize..40,
            order in Just(()).prop_perturb(|_, mut rng| {
                let mut v: Vec<usize> = (0..40).collect();
                for i in (1..v.len()).rev() {
                    v.swap(i, rng.random_range(0..=i));
                }
                v
            }),
            waits in proptest::collection::vec(1usize..50, 1..20),
        ) {
            let (mut q, senders) = queue(n);
            let mut senders: Vec<Option<oneshot::Sender<usize>>> =
                senders.into_iter().map(Some).collect();
            let order: Vec<usize> = order.into_iter().filter(|&i| i < n).collect();
            let mut next_to_send = order.iter();
            let (count, w) = counting();
            let mut cx = Context::from_waker(&w);
            let (mut out, mut turn) = (0usize, 0usize);
            loop {
                let wait_for = waits[turn % waits.len()];
                turn += 1;
                match q.poll_oldest(&mut cx, wait_for) {
                    Poll::Ready(Some(v)) => {
                        prop_assert_eq!(v, Ok(out));
                        out += 1;
                    }
                    Poll::Ready(None) => break,
                    Poll::Pending => {
                        let before = count.0.load(Ordering::SeqCst);
                        let awaited = out..(out + wait_for).min(n);
                        loop {
                            let all_in = awaited.clone().all(|i| senders[i].is_none());
                            if count.0.load(Ordering::SeqCst) > before {
                                break;
                            }
                            prop_assert!(!all_in, "the awaited answers are in and no wake-up came");
                            let &i = next_to_send.next().expect("all sent, still pending");
                            if let Some(tx) = senders[i].take() {
                                let _ = tx.send(i);
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(out, n);
        }
    }
}
