//! Which ActionID a session's client sees on an event, and when (F20, F22).
//!
//! A forwarded action carries a bridge ActionID (`a2a-f<n>`). Its response
//! and list come back to the one session that asked, through the pool; but
//! two kinds of events carrying that id arrive on the server's *event*
//! connection, shared by every session: the `OriginateResponse` of an async
//! `Originate` and the `UserEvent` of a `UserEvent` action. The session that
//! sent the action must see them with its own ActionID, and never before
//! the response (pitfall 10: clients resolve the action with whatever comes
//! first), even though the event connection may deliver them first.
//!
//! [`ActionIds`] is that bookkeeping, with no I/O and no clock of its own:
//! the session feeds it the action it starts, every event it would deliver
//! and the end of the action, and writes what it is told. Property tests
//! below check it against random interleavings.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Events held for a response still on its way; past this they are
/// delivered as they are (the bound on a session's memory).
pub const MAX_HELD: usize = 256;
/// Async Originates / UserEvents whose events are still expected.
pub const MAX_MAPPED: usize = 1024;

/// What [`ActionIds`] needs to know of an event.
pub trait Tagged {
    /// Its `ActionID`, if any.
    fn action_id(&self) -> Option<&[u8]>;
    /// Whether it is the last event a mapping waits for
    /// (`OriginateResponse`: one per Originate).
    fn ends_mapping(&self) -> bool;
}

/// How to write an event to this session's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// As the server sent it.
    AsIs,
    /// With the client's ActionID in place of the bridge's (`None`: the
    /// client sent none, so no ActionID line).
    Client(Option<Bytes>),
}

#[derive(Debug)]
struct Running {
    bridge_id: String,
    client_id: Option<Bytes>,
}

/// One session's ActionID bookkeeping.
#[derive(Debug)]
pub struct ActionIds<E> {
    running: Option<Running>,
    held: Vec<E>,
    mapped: HashMap<String, (Option<Bytes>, Instant)>,
}

impl<E> Default for ActionIds<E> {
    fn default() -> Self {
        ActionIds {
            running: None,
            held: Vec::new(),
            mapped: HashMap::new(),
        }
    }
}

impl<E: Tagged> ActionIds<E> {
    /// Whether an action is running.
    #[cfg(test)]
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The running action's client ActionID (to answer it with an error).
    pub fn running_client_id(&self) -> Option<Option<Bytes>> {
        self.running.as_ref().map(|r| r.client_id.clone())
    }

    /// An action starts. `maps_events`: its events come back on the event
    /// connection (async Originate, UserEvent) and are remembered until
    /// `until`.
    pub fn start(
        &mut self,
        bridge_id: String,
        client_id: Option<Bytes>,
        maps_events: bool,
        until: Instant,
    ) {
        if maps_events {
            if self.mapped.len() >= MAX_MAPPED {
                let now = Instant::now();
                self.mapped.retain(|_, (_, u)| *u > now);
            }
            if self.mapped.len() < MAX_MAPPED {
                self.mapped
                    .insert(bridge_id.clone(), (client_id.clone(), until));
            }
        }
        self.running = Some(Running {
            bridge_id,
            client_id,
        });
    }

    /// An event this session gets: `None` while it waits for the running
    /// action's response, else how to write it.
    pub fn route(&mut self, ev: E) -> Option<(E, Restore)> {
        if self.running.is_none() && self.mapped.is_empty() {
            // Most sessions, most of the time: nothing to look up.
            return Some((ev, Restore::AsIs));
        }
        let id = ev.action_id();
        if let (Some(r), Some(id)) = (&self.running, id)
            && r.bridge_id.as_bytes() == id
            && self.held.len() < MAX_HELD
        {
            self.held.push(ev);
            return None;
        }
        let restore = self.restore(&ev);
        Some((ev, restore))
    }

    fn restore(&mut self, ev: &E) -> Restore {
        let Some(key) = ev.action_id().and_then(|id| std::str::from_utf8(id).ok()) else {
            return Restore::AsIs;
        };
        let Some((client, _)) = self.mapped.get(key) else {
            return Restore::AsIs;
        };
        let client = client.clone();
        if ev.ends_mapping() {
            self.mapped.remove(key);
        }
        Restore::Client(client)
    }

    /// The running action is answered (its response is written first);
    /// returns the events held for it, in arrival order, with how to
    /// write each. A failed action's events are not mapped any more.
    pub fn finish(&mut self, answered: bool) -> Vec<(E, Restore)> {
        if let Some(r) = self.running.take()
            && !answered
        {
            self.mapped.remove(&r.bridge_id);
        }
        std::mem::take(&mut self.held)
            .into_iter()
            .filter_map(|ev| self.route(ev))
            .collect()
    }
}

/// How long an async Originate's events are expected after it starts:
/// the action timeout plus this.
pub const MAPPING_TTL: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Ev {
        id: Option<String>,
        ends: bool,
        n: usize,
    }

    impl Tagged for Ev {
        fn action_id(&self) -> Option<&[u8]> {
            self.id.as_deref().map(str::as_bytes)
        }
        fn ends_mapping(&self) -> bool {
            self.ends
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn an_early_event_waits_for_the_response_then_gets_the_client_id() {
        let mut ids = ActionIds::default();
        ids.start("a2a-f1".into(), Some(Bytes::from("o/1")), true, later());
        let ev = Ev {
            id: Some("a2a-f1".into()),
            ends: true,
            n: 0,
        };
        assert_eq!(ids.route(ev.clone()), None, "held");
        let other = Ev {
            id: Some("a2a-f9".into()),
            ends: false,
            n: 1,
        };
        assert_eq!(ids.route(other.clone()), Some((other, Restore::AsIs)));
        let out = ids.finish(true);
        assert_eq!(
            out,
            vec![(ev.clone(), Restore::Client(Some(Bytes::from("o/1"))))]
        );
        assert_eq!(
            ids.route(ev.clone()),
            Some((ev, Restore::AsIs)),
            "mapping ended"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Start action k (only when none runs), mapping its events or not.
        Start { maps: bool, with_id: bool },
        /// An event carrying the bridge id of action k (of those started).
        Event { k: usize, ends: bool },
        /// An event with no ActionID.
        Plain,
        /// The running action is answered (or fails).
        Finish { answered: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), any::<bool>()).prop_map(|(maps, with_id)| Op::Start { maps, with_id }),
            (0usize..8, any::<bool>()).prop_map(|(k, ends)| Op::Event { k, ends }),
            Just(Op::Plain),
            any::<bool>().prop_map(|answered| Op::Finish { answered }),
        ]
    }

    proptest! {
        /// Against a model: an event of the running action is never
        /// written before its response; every event comes out exactly
        /// once, in order apart from the held ones (which follow their
        /// response in arrival order); an event gets a client ActionID
        /// only if it carries the bridge id of one of this session's
        /// mapped actions, and then that action's.
        #[test]
        fn events_follow_their_response_and_carry_their_own_client_id(ops in prop::collection::vec(op(), 1..80)) {
            let mut ids: ActionIds<Ev> = ActionIds::default();
            let mut started: Vec<(String, Option<Bytes>, bool)> = Vec::new();
            let mut running: Option<usize> = None;
            let mut ended: Vec<bool> = Vec::new();
            let mut answered_or_failed: Vec<Option<bool>> = Vec::new();
            let mut out: Vec<(Ev, Restore)> = Vec::new();
            let mut sent = 0usize;
            for o in ops {
                match o {
                    Op::Start { maps, with_id } if running.is_none() => {
                        let k = started.len();
                        let client = with_id.then(|| Bytes::from(format!("c{k}")));
                        ids.start(format!("a2a-f{k}"), client.clone(), maps, later());
                        started.push((format!("a2a-f{k}"), client, maps));
                        ended.push(false);
                        answered_or_failed.push(None);
                        running = Some(k);
                    }
                    Op::Start { .. } => {}
                    Op::Event { k, ends } => {
                        if k >= started.len() { continue; }
                        let ev = Ev { id: Some(started[k].0.clone()), ends, n: sent };
                        sent += 1;
                        match ids.route(ev.clone()) {
                            None => prop_assert_eq!(running, Some(k), "only the running action's events are held"),
                            Some((e, r)) => {
                                prop_assert_ne!(running, Some(k), "an event came before its response");
                                let (_, client, maps) = &started[k];
                                let want = if *maps && !ended[k] && answered_or_failed[k] != Some(false) {
                                    Restore::Client(client.clone())
                                } else {
                                    Restore::AsIs
                                };
                                prop_assert_eq!(&r, &want);
                                if *maps && ends && matches!(r, Restore::Client(_)) { ended[k] = true; }
                                out.push((e, r));
                            }
                        }
                    }
                    Op::Plain => {
                        let ev = Ev { id: None, ends: false, n: sent };
                        sent += 1;
                        let got = ids.route(ev.clone());
                        prop_assert_eq!(got, Some((ev, Restore::AsIs)));
                    }
                    Op::Finish { answered } => {
                        let Some(k) = running.take() else { continue; };
                        answered_or_failed[k] = Some(answered);
                        let released = ids.finish(answered);
                        let mut last = None;
                        for (e, r) in released {
                            prop_assert_eq!(e.id.as_deref(), Some(started[k].0.as_str()));
                            prop_assert!(last.is_none_or(|n| e.n > n), "held events keep their order");
                            last = Some(e.n);
                            let (_, client, maps) = &started[k];
                            let want = if *maps && answered && !ended[k] {
                                Restore::Client(client.clone())
                            } else {
                                Restore::AsIs
                            };
                            prop_assert_eq!(&r, &want);
                            if *maps && e.ends && matches!(r, Restore::Client(_)) { ended[k] = true; }
                        }
                    }
                }
            }
            prop_assert_eq!(ids.is_running(), running.is_some());
        }
    }
}
