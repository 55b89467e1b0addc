//! [`EventLists`] against a model: random interleavings of the event lists
//! of several actions with unrelated messages.
//!
//! Each list is `start` response, some items, `Complete` event, in that
//! order; lists and unrelated messages are interleaved at random (several
//! lists open at once). Property: every message is classified as what the
//! generator made it: the start opens its list, each item belongs to its
//! own list, the list closes exactly on its `Complete`, and nothing
//! unrelated (events without an `ActionID` or with one no list has,
//! responses that start nothing, error answers, list ids reused by a
//! response) ever attaches to a list. At the end no list is open.

use ami_proto::{EventLists, ListStep, Message};
use proptest::prelude::*;

/// What the generator made a message, and so what `observe` must say.
#[derive(Clone, Debug, PartialEq)]
enum Role {
    Start(String),
    Item(String),
    Last(String),
    Unrelated,
}

/// Header values in a random case (Asterisk compares them ignoring case).
fn cased(s: &str, upper: bool) -> String {
    if upper {
        s.to_ascii_uppercase()
    } else {
        s.to_string()
    }
}

fn list(id: &str, items: usize, upper: bool) -> Vec<(Message, Role)> {
    let mut v = vec![(
        Message::from_pairs([
            ("Response", "Success"),
            ("ActionID", id),
            ("EventList", cased("start", upper).as_str()),
            ("Message", "Channels will follow"),
        ]),
        Role::Start(id.to_string()),
    )];
    for i in 0..items {
        let n = i.to_string();
        let m = Message::from_pairs([
            ("Event", "CoreShowChannel"),
            ("ActionID", id),
            ("N", n.as_str()),
        ]);
        v.push((m, Role::Item(id.to_string())));
    }
    v.push((
        Message::from_pairs([
            ("Event", "CoreShowChannelsComplete"),
            ("ActionID", id),
            ("EventList", cased("Complete", upper).as_str()),
        ]),
        Role::Last(id.to_string()),
    ));
    v
}

/// An unrelated message; `n` picks the shape, `id` is some list's id.
fn unrelated(n: u8, id: &str) -> Message {
    match n % 6 {
        0 => Message::from_pairs([("Event", "Newchannel"), ("Channel", "PJSIP/1")]),
        1 => Message::from_pairs([("Event", "Hangup"), ("ActionID", "stray")]),
        2 => Message::from_pairs([("Event", "X"), ("ActionID", ""), ("EventList", "Complete")]),
        3 => Message::from_pairs([("Response", "Success"), ("ActionID", id)]),
        4 => Message::from_pairs([
            ("Response", "Error"),
            ("ActionID", "err"),
            ("EventList", "start"),
        ]),
        _ => Message::from_pairs([("Action", "Ping"), ("ActionID", id)]),
    }
}

/// Interleaves the queues, keeping each queue's order; `picks` choose
/// which non-empty queue goes next.
fn interleave(mut queues: Vec<Vec<(Message, Role)>>, picks: &[usize]) -> Vec<(Message, Role)> {
    for q in &mut queues {
        q.reverse();
    }
    let mut out = Vec::new();
    let mut picks = picks.iter().copied().chain(std::iter::repeat(0));
    loop {
        let live: Vec<usize> = (0..queues.len())
            .filter(|&i| !queues[i].is_empty())
            .collect();
        if live.is_empty() {
            return out;
        }
        let q = live[picks.next().unwrap_or(0) % live.len()];
        out.extend(queues[q].pop());
    }
}

fn step_role(step: ListStep<'_>) -> Role {
    let text = |id: &[u8]| String::from_utf8_lossy(id).into_owned();
    match step {
        ListStep::Opened(id) => Role::Start(text(id)),
        ListStep::Item { id, last: false } => Role::Item(text(id)),
        ListStep::Item { id, last: true } => Role::Last(text(id)),
        ListStep::Unrelated => Role::Unrelated,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn lists_close_exactly_on_their_complete(
        sizes in proptest::collection::vec((0usize..6, any::<bool>()), 1..6),
        noise in proptest::collection::vec(any::<u8>(), 0..30),
        picks in proptest::collection::vec(any::<usize>(), 0..120),
    ) {
        let mut queues: Vec<Vec<(Message, Role)>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &(items, upper))| list(&format!("list-{i}"), items, upper))
            .collect();
        let ids: Vec<String> = (0..sizes.len()).map(|i| format!("list-{i}")).collect();
        queues.push(
            noise
                .iter()
                .map(|&n| (unrelated(n, &ids[n as usize % ids.len()]), Role::Unrelated))
                .collect(),
        );
        let mut lists = EventLists::new();
        for (m, want) in interleave(queues, &picks) {
            let got = step_role(lists.observe(&m));
            prop_assert_eq!(&got, &want, "message {:?}", m.raw());
            if let Role::Start(id) | Role::Item(id) = &want {
                prop_assert!(lists.is_open(id.as_bytes()));
            }
            if let Role::Last(id) = &want {
                prop_assert!(!lists.is_open(id.as_bytes()));
            }
        }
        prop_assert!(lists.is_empty(), "every list closed");
    }
}

#[test]
fn an_id_can_be_reused_after_its_list_closed() {
    let mut lists = EventLists::new();
    for _ in 0..2 {
        for (m, want) in list("same", 2, false) {
            assert_eq!(step_role(lists.observe(&m)), want);
        }
    }
    assert!(lists.is_empty());
}
