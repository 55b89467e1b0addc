//! Snapshots after (re)connect: the bookkeeping, without I/O.
//!
//! AMI has no replay: what Asterisk sent while the bridge was not connected
//! is gone. So after each login of the *event* connection, the client runs
//! the configured state actions (`CoreShowChannels`, `BridgeList`,
//! `QueueStatus`, `DeviceStateList`, `ExtensionStateList`,
//! `PresenceStateList`) on that same connection. Their list items are read
//! in the same byte stream as the live events, so their position relative
//! to the live events is exact; they go out in stream order, framed by a
//! start and an end item ([`SnapshotMark`]), and the router task turns them
//! into messages (docs/snapshots.md).
//!
//! [`Snapshotter`] is the part that needs no socket: which `ActionID`
//! belongs to which kind of which snapshot, what each message read is to
//! the snapshot (an item, the end of a list, a refusal, or not ours), when
//! the snapshot is over, and which refusals were already logged (once per
//! server and kind, for the life of the client). The client feeds it every
//! message it reads and writes the actions it returns.
//!
//! The rules:
//! - [`Snapshotter::begin`] starts a snapshot (one per login) and returns
//!   its start mark and the actions to send, each with its `ActionID`.
//! - A response `Response: Error` to one of them (permission denied, an
//!   unknown command on an older Asterisk or without the module) refuses
//!   that kind: no items, the snapshot goes on with the others.
//! - A response that opens a list (`EventList: start`) is followed by its
//!   items; the event with `EventList: Complete` ends that list and is not
//!   an item. A success that opens no list ends that kind with no items.
//! - When every kind has ended, the end mark says `complete`.
//! - [`Snapshotter::abort`] (connection lost, deadline passed, shutdown)
//!   ends a running snapshot with an end mark that says it is incomplete,
//!   so no snapshot is ever left open; messages of its lists that still
//!   arrive later on the same session are swallowed, never passed on as
//!   live events ([`Snapshotter::new_session`] forgets them).

use std::collections::HashSet;
use std::fmt;

use ami_proto::{EventLists, Kind, ListStep, Message};
use serde::{Deserialize, Serialize};

/// One kind of state a snapshot can take, with the action that lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// `CoreShowChannels`: `CoreShowChannel` items.
    Channels,
    /// `BridgeList`: `BridgeListItem` items.
    Bridges,
    /// `QueueStatus`: `QueueParams`, `QueueMember`, `QueueEntry` items.
    Queues,
    /// `DeviceStateList`: `DeviceStateChange` items.
    Devices,
    /// `ExtensionStateList`: `ExtensionStatus` items.
    Extensions,
    /// `PresenceStateList`: `PresenceStateChange` items.
    Presence,
}

impl SnapshotKind {
    /// Every kind, in the order a snapshot runs them (the default list).
    pub const ALL: [SnapshotKind; 6] = [
        SnapshotKind::Channels,
        SnapshotKind::Bridges,
        SnapshotKind::Queues,
        SnapshotKind::Devices,
        SnapshotKind::Extensions,
        SnapshotKind::Presence,
    ];

    /// The name in the config file, routing keys and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotKind::Channels => "channels",
            SnapshotKind::Bridges => "bridges",
            SnapshotKind::Queues => "queues",
            SnapshotKind::Devices => "devices",
            SnapshotKind::Extensions => "extensions",
            SnapshotKind::Presence => "presence",
        }
    }

    /// The AMI action that lists this state.
    pub fn action(self) -> &'static str {
        match self {
            SnapshotKind::Channels => "CoreShowChannels",
            SnapshotKind::Bridges => "BridgeList",
            SnapshotKind::Queues => "QueueStatus",
            SnapshotKind::Devices => "DeviceStateList",
            SnapshotKind::Extensions => "ExtensionStateList",
            SnapshotKind::Presence => "PresenceStateList",
        }
    }
}

impl<'de> Deserialize<'de> for SnapshotKind {
    /// A config word; another word is an error that lists the kinds.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        SnapshotKind::ALL
            .into_iter()
            .find(|k| k.name() == word)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown snapshot kind {word:?}: the kinds are {} ([] turns snapshots off)",
                    SnapshotKind::ALL
                        .iter()
                        .map(|k| format!("{:?}", k.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds as a comma-separated list (`channels,queues`).
pub fn kind_list(kinds: &[SnapshotKind]) -> String {
    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
}

/// How a snapshot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEnd {
    pub id: String,
    /// Every kind ended (refused kinds count as ended).
    pub complete: bool,
    /// Items read, all kinds together.
    pub items: u64,
    /// Kinds Asterisk refused (`Response: Error`), in the configured order.
    pub refused: Vec<SnapshotKind>,
    /// Why it is incomplete (empty when complete).
    pub reason: String,
}

/// What a snapshot puts into the event stream, in stream order.
#[derive(Clone, Debug)]
pub enum SnapshotMark<E> {
    /// Before the first item: the snapshot `id` and the kinds it asks for.
    Start {
        id: String,
        kinds: Vec<SnapshotKind>,
    },
    /// One list item (`event`: the event as read, with its time).
    Item {
        id: String,
        kind: SnapshotKind,
        event: E,
    },
    /// After the last item, or when the snapshot was cut short.
    End(SnapshotEnd),
}

/// What one message read is to the snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// Not a snapshot message: handle it as usual (it is handed back).
    NotOurs(Message),
    /// An item of `kind`: publish it (the message is handed back).
    Item {
        id: String,
        kind: SnapshotKind,
        message: Message,
    },
    /// A response or list end of the snapshot: nothing to publish. When it
    /// was the last one, `end` is the snapshot's end; when it was a refusal
    /// seen for the first time on this server, `log_refusal` names the
    /// kind and carries Asterisk's message, to be logged once.
    Consumed {
        end: Option<SnapshotEnd>,
        refused: Option<SnapshotKind>,
        log_refusal: Option<(SnapshotKind, String)>,
    },
}

/// One kind's list within the running snapshot.
#[derive(Debug)]
struct List {
    kind: SnapshotKind,
    action_id: String,
    done: bool,
}

#[derive(Debug)]
struct Run {
    id: String,
    lists: Vec<List>,
    items: u64,
    refused: Vec<SnapshotKind>,
}

/// The snapshots of one event connection (see the module docs).
#[derive(Debug, Default)]
pub struct Snapshotter {
    kinds: Vec<SnapshotKind>,
    /// Snapshots started, for unique ids.
    started: u64,
    /// Kinds whose refusal was logged already.
    logged: HashSet<SnapshotKind>,
    run: Option<Run>,
    lists: EventLists,
    /// ActionIDs of this session's snapshot actions whose snapshot was
    /// cut short: their late messages are swallowed.
    stale: HashSet<String>,
}

impl Snapshotter {
    /// A snapshotter for these kinds (duplicates are ignored; empty: off).
    pub fn new(kinds: &[SnapshotKind]) -> Self {
        let mut k: Vec<SnapshotKind> = Vec::new();
        for kind in kinds {
            if !k.contains(kind) {
                k.push(*kind);
            }
        }
        Snapshotter {
            kinds: k,
            ..Snapshotter::default()
        }
    }

    /// True when there is anything to snapshot.
    pub fn enabled(&self) -> bool {
        !self.kinds.is_empty()
    }

    /// True while a snapshot runs.
    #[cfg(test)]
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// A new session (after a login): what the last one left is forgotten.
    pub fn new_session(&mut self) {
        self.run = None;
        self.lists = EventLists::new();
        self.stale.clear();
    }

    /// Starts a snapshot: `id_prefix` (server and connect time) plus a
    /// counter makes its id; `action_id` gives each action its ActionID.
    /// Returns the start mark's id and kinds and the actions to send, or
    /// `None` when no kinds are configured. A snapshot still running is
    /// aborted first by the caller ([`Snapshotter::abort`]).
    pub fn begin(
        &mut self,
        id_prefix: &str,
        mut action_id: impl FnMut() -> String,
    ) -> Option<(String, Vec<SnapshotKind>, Vec<Message>)> {
        if self.kinds.is_empty() {
            return None;
        }
        self.started += 1;
        let id = format!("{id_prefix}-{}", self.started);
        let mut lists = Vec::with_capacity(self.kinds.len());
        let mut actions = Vec::with_capacity(self.kinds.len());
        for &kind in &self.kinds {
            let aid = action_id();
            actions.push(Message::from_pairs([
                ("Action", kind.action()),
                ("ActionID", aid.as_str()),
            ]));
            lists.push(List {
                kind,
                action_id: aid,
                done: false,
            });
        }
        self.run = Some(Run {
            id: id.clone(),
            lists,
            items: 0,
            refused: Vec::new(),
        });
        Some((id, self.kinds.clone(), actions))
    }

    /// Says what `m` is to the snapshot (see [`Observed`]).
    pub fn observe(&mut self, m: Message) -> Observed {
        if self.run.is_none() && self.stale.is_empty() {
            // The common case, between snapshots: nothing to look up.
            return Observed::NotOurs(m);
        }
        let kind = m.kind();
        if !matches!(kind, Kind::Response | Kind::Event) {
            return Observed::NotOurs(m);
        }
        let Some(aid) = m.action_id().map(|a| a.into_owned()) else {
            return Observed::NotOurs(m);
        };
        let Some(run) = &mut self.run else {
            return self.stale_or_not_ours(m, &aid);
        };
        let Some(li) = run.lists.iter().position(|l| l.action_id == aid) else {
            return self.stale_or_not_ours(m, &aid);
        };
        let step = self.lists.observe(&m);
        let list = &mut run.lists[li];
        let listed_kind = list.kind;
        if list.done {
            // A second response to the same action: not ours to publish.
            return Observed::Consumed {
                end: None,
                refused: None,
                log_refusal: None,
            };
        }
        let mut refused = None;
        let mut log_refusal = None;
        match (kind, step) {
            (Kind::Response, ListStep::Opened(_)) => {}
            (Kind::Response, _) => {
                list.done = true;
                let is_error = m
                    .get("Response")
                    .is_some_and(|r| r.eq_ignore_ascii_case("Error"));
                if is_error {
                    run.refused.push(listed_kind);
                    refused = Some(listed_kind);
                    if self.logged.insert(listed_kind) {
                        let text = m.get("Message").map(|s| s.into_owned()).unwrap_or_default();
                        log_refusal = Some((listed_kind, text));
                    }
                }
            }
            (Kind::Event, ListStep::Item { last: false, .. }) => {
                run.items += 1;
                return Observed::Item {
                    id: run.id.clone(),
                    kind: listed_kind,
                    message: m,
                };
            }
            (Kind::Event, ListStep::Item { last: true, .. }) => list.done = true,
            // An event with our ActionID before the list opened: Asterisk
            // never does this; not an item, not a live event.
            _ => {}
        }
        let end = if run.lists.iter().all(|l| l.done) {
            self.finish(true, "")
        } else {
            None
        };
        Observed::Consumed {
            end,
            refused,
            log_refusal,
        }
    }

    fn stale_or_not_ours(&mut self, m: Message, aid: &str) -> Observed {
        if self.stale.contains(aid) {
            return Observed::Consumed {
                end: None,
                refused: None,
                log_refusal: None,
            };
        }
        Observed::NotOurs(m)
    }

    /// Ends a running snapshot as incomplete (`reason`); `None` when none
    /// runs. Late messages of its lists are swallowed for the rest of the
    /// session.
    pub fn abort(&mut self, reason: &str) -> Option<SnapshotEnd> {
        self.finish(false, reason)
    }

    fn finish(&mut self, complete: bool, reason: &str) -> Option<SnapshotEnd> {
        let run = self.run.take()?;
        for l in &run.lists {
            self.lists.close(l.action_id.as_bytes());
            if !l.done {
                self.stale.insert(l.action_id.clone());
            }
        }
        Some(SnapshotEnd {
            id: run.id,
            complete,
            items: run.items,
            refused: run.refused,
            reason: reason.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(pairs: &[(&str, &str)]) -> Message {
        Message::from_pairs(pairs.iter().copied())
    }

    fn start(id: &str) -> Message {
        msg(&[
            ("Response", "Success"),
            ("ActionID", id),
            ("EventList", "start"),
        ])
    }

    fn item(id: &str, n: usize) -> Message {
        let n = n.to_string();
        msg(&[
            ("Event", "CoreShowChannel"),
            ("ActionID", id),
            ("Channel", n.as_str()),
        ])
    }

    fn complete(id: &str) -> Message {
        msg(&[
            ("Event", "CoreShowChannelsComplete"),
            ("ActionID", id),
            ("EventList", "Complete"),
        ])
    }

    fn refusal(id: &str) -> Message {
        msg(&[
            ("Response", "Error"),
            ("ActionID", id),
            ("Message", "Permission denied"),
        ])
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("a2a-events-{n}")
        }
    }

    #[test]
    fn refusals_are_logged_once_and_do_not_stop_the_others() {
        let mut s = Snapshotter::new(&[SnapshotKind::Channels, SnapshotKind::Bridges]);
        let mut next = ids();
        let (id, kinds, actions) = s.begin("pbx1-1", &mut next).unwrap();
        assert_eq!(id, "pbx1-1-1");
        assert_eq!(kinds, vec![SnapshotKind::Channels, SnapshotKind::Bridges]);
        assert_eq!(actions[1].get("Action").as_deref(), Some("BridgeList"));
        assert!(matches!(
            s.observe(refusal("a2a-events-2")),
            Observed::Consumed { log_refusal: Some((SnapshotKind::Bridges, ref t)), .. } if t == "Permission denied"
        ));
        assert!(matches!(
            s.observe(start("a2a-events-1")),
            Observed::Consumed { end: None, .. }
        ));
        assert!(matches!(
            s.observe(item("a2a-events-1", 1)),
            Observed::Item {
                kind: SnapshotKind::Channels,
                ..
            }
        ));
        let live = msg(&[("Event", "Newchannel"), ("Channel", "x")]);
        assert!(matches!(s.observe(live), Observed::NotOurs(_)));
        let Observed::Consumed { end: Some(end), .. } = s.observe(complete("a2a-events-1")) else {
            panic!("the last list end ends the snapshot")
        };
        assert_eq!(end.id, "pbx1-1-1");
        assert!(end.complete);
        assert_eq!(
            (end.items, end.refused.clone()),
            (1, vec![SnapshotKind::Bridges])
        );
        assert!(!s.running());

        // The next snapshot: the same refusal is not logged again.
        s.new_session();
        let (id2, _, _) = s.begin("pbx1-2", &mut next).unwrap();
        assert_eq!(id2, "pbx1-2-2");
        let o = s.observe(refusal("a2a-events-4"));
        assert!(matches!(
            o,
            Observed::Consumed {
                log_refusal: None,
                refused: Some(SnapshotKind::Bridges),
                ..
            }
        ));
    }

    #[test]
    fn an_aborted_snapshot_ends_incomplete_and_swallows_late_items() {
        let mut s = Snapshotter::new(&[SnapshotKind::Channels]);
        s.begin("p", ids()).unwrap();
        s.observe(start("a2a-events-1"));
        assert!(matches!(
            s.observe(item("a2a-events-1", 1)),
            Observed::Item { .. }
        ));
        let end = s.abort("connection lost").unwrap();
        assert!(!end.complete);
        assert_eq!((end.items, end.reason.as_str()), (1, "connection lost"));
        assert!(s.abort("again").is_none(), "ended once");
        assert!(matches!(
            s.observe(item("a2a-events-1", 2)),
            Observed::Consumed { end: None, .. }
        ));
        s.new_session();
        assert!(matches!(
            s.observe(item("a2a-events-1", 3)),
            Observed::NotOurs(_)
        ));
    }

    #[test]
    fn a_success_without_a_list_ends_that_kind_and_off_means_nothing() {
        let mut s = Snapshotter::new(&[]);
        assert!(!s.enabled());
        assert!(s.begin("p", ids()).is_none());
        let mut s = Snapshotter::new(&[SnapshotKind::Queues, SnapshotKind::Queues]);
        let (_, kinds, actions) = s.begin("p", ids()).unwrap();
        assert_eq!(
            (kinds.len(), actions.len()),
            (1, 1),
            "duplicates count once"
        );
        let ok = msg(&[("Response", "Success"), ("ActionID", "a2a-events-1")]);
        let Observed::Consumed { end: Some(end), .. } = s.observe(ok) else {
            panic!("ended")
        };
        assert!(end.complete && end.items == 0 && end.refused.is_empty());
    }

    /// What one list does in a generated run.
    #[derive(Clone, Debug)]
    enum Plan {
        Refuse,
        List(usize),
    }

    proptest! {
        /// Any interleaving of the kinds' answers with live events: every
        /// live event is handed back in order, every item is reported
        /// with its kind and nothing else is, the snapshot ends exactly
        /// once (complete) after the last list end, and the item count
        /// and refusals add up.
        #[test]
        fn interleavings_keep_live_events_and_count_items(
            plans in proptest::collection::vec(prop_oneof![
                Just(Plan::Refuse),
                (0usize..5).prop_map(Plan::List),
            ], 1..=6),
            live in proptest::collection::vec(any::<u8>(), 0..20),
            seed in any::<u64>(),
        ) {
            let kinds: Vec<SnapshotKind> = SnapshotKind::ALL[..plans.len()].to_vec();
            let mut s = Snapshotter::new(&kinds);
            let (_, _, actions) = s.begin("p", ids()).unwrap();
            // Each list's messages in order; lists interleave with each
            // other and with live events by a seeded shuffle of streams.
            let mut streams: Vec<Vec<Message>> = plans.iter().zip(&actions).map(|(p, a)| {
                let id = a.get("ActionID").unwrap().into_owned();
                match p {
                    Plan::Refuse => vec![refusal(&id)],
                    Plan::List(n) => {
                        let mut v = vec![start(&id)];
                        v.extend((0..*n).map(|i| item(&id, i)));
                        v.push(complete(&id));
                        v
                    }
                }
            }).collect();
            streams.push(live.iter().map(|b| {
                let n = b.to_string();
                msg(&[("Event", "Newstate"), ("Uniqueid", n.as_str())])
            }).collect());
            for v in &mut streams { v.reverse(); }
            let mut rng = seed;
            let mut ended = 0;
            let mut items = vec![0usize; plans.len()];
            let mut live_out = Vec::new();
            while streams.iter().any(|v| !v.is_empty()) {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let open: Vec<usize> = (0..streams.len()).filter(|&i| !streams[i].is_empty()).collect();
                let pick = open[(rng >> 33) as usize % open.len()];
                let m = streams[pick].pop().unwrap();
                match s.observe(m) {
                    Observed::NotOurs(m) => live_out.push(m.get("Uniqueid").unwrap().into_owned()),
                    Observed::Item { kind, .. } => {
                        prop_assert_eq!(ended, 0, "no item after the end");
                        let i = kinds.iter().position(|k| *k == kind).unwrap();
                        items[i] += 1;
                    }
                    Observed::Consumed { end, .. } => {
                        prop_assert_eq!(ended, 0, "nothing of the snapshot after its end");
                        if let Some(e) = end {
                            ended += 1;
                            prop_assert!(e.complete);
                            prop_assert_eq!(e.items as usize, items.iter().sum::<usize>());
                            let mut er = e.refused.clone();
                            er.sort();
                            let mut want: Vec<SnapshotKind> = plans.iter().zip(&kinds)
                                .filter(|(p, _)| matches!(p, Plan::Refuse)).map(|(_, k)| *k).collect();
                            want.sort();
                            prop_assert_eq!(er, want);
                        }
                    }
                }
            }
            prop_assert_eq!(ended, 1);
            prop_assert!(!s.running());
            let want_live: Vec<String> = live.iter().map(|b| b.to_string()).collect();
            prop_assert_eq!(live_out, want_live);
            for (i, p) in plans.iter().enumerate() {
                let want = match p { Plan::Refuse => 0, Plan::List(n) => *n };
                prop_assert_eq!(items[i], want);
            }
        }
    }
}
