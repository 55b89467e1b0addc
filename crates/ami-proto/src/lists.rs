//! Event lists: the answers of Asterisk's list actions.
//!
//! A list action (`CoreShowChannels`, `QueueStatus`, `Status`, …) is
//! answered by a response carrying `EventList: start`, then by events
//! carrying the action's `ActionID`, the last of which carries
//! `EventList: Complete`. Other events (with no `ActionID`, or another
//! one) may arrive in between. [`EventLists`] is the one place that knows
//! this: fed every message in order, it says which ones open a list, which
//! belong to an open list, and which close it.

use std::collections::HashSet;

use crate::message::{Kind, Message};

/// The event lists that are open, by `ActionID`, and the rules that open
/// and close them. No I/O: the caller feeds it messages in the order they
/// came and acts on the answers ([`ListStep`]).
///
/// The rules:
/// - a response (see [`Kind`]) with a non-empty `ActionID` and
///   `EventList: start` (any case) opens the list of that `ActionID`,
///   unless it says `Response: Error` (an error ends the action);
/// - an event whose `ActionID` names an open list belongs to it; the one
///   with `EventList: Complete` is its last and closes it;
/// - everything else (events of no open list, other responses, actions)
///   is unrelated and changes nothing.
///
/// ```
/// use ami_proto::{EventLists, ListStep, Message};
///
/// let mut lists = EventLists::new();
/// let start = Message::from_pairs([
///     ("Response", "Success"), ("ActionID", "7"), ("EventList", "start"),
/// ]);
/// assert_eq!(lists.observe(&start), ListStep::Opened(b"7"));
/// let item = Message::from_pairs([("Event", "CoreShowChannel"), ("ActionID", "7")]);
/// assert_eq!(lists.observe(&item), ListStep::Item { id: b"7", last: false });
/// let other = Message::from_pairs([("Event", "Newchannel")]);
/// assert_eq!(lists.observe(&other), ListStep::Unrelated);
/// let end = Message::from_pairs([
///     ("Event", "CoreShowChannelsComplete"), ("ActionID", "7"), ("EventList", "Complete"),
/// ]);
/// assert_eq!(lists.observe(&end), ListStep::Item { id: b"7", last: true });
/// assert!(lists.is_empty());
/// ```
#[derive(Clone, Debug, Default)]
pub struct EventLists {
    open: HashSet<Box<[u8]>>,
}

/// What one message is to the event lists (see [`EventLists::observe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStep<'m> {
    /// A response that opened (or re-opened) the list of this `ActionID`.
    Opened(&'m [u8]),
    /// An event of the open list of this `ActionID`; `last` when it carried
    /// `EventList: Complete`, which closed the list.
    Item { id: &'m [u8], last: bool },
    /// Not part of any open list.
    Unrelated,
}

impl EventLists {
    /// No list open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next message and says what it is to the lists (see the
    /// rules on [`EventLists`]).
    pub fn observe<'m>(&mut self, message: &'m Message) -> ListStep<'m> {
        let Some(id) = message.get_bytes("ActionID").filter(|id| !id.is_empty()) else {
            return ListStep::Unrelated;
        };
        match message.kind() {
            Kind::Response => {
                if is(message, "EventList", "start") && !is(message, "Response", "Error") {
                    self.open.insert(id.into());
                    ListStep::Opened(id)
                } else {
                    ListStep::Unrelated
                }
            }
            Kind::Event if self.open.contains(id) => {
                let last = is(message, "EventList", "Complete");
                if last {
                    self.open.remove(id);
                }
                ListStep::Item { id, last }
            }
            _ => ListStep::Unrelated,
        }
    }

    /// True while the list of `id` is open.
    pub fn is_open(&self, id: &[u8]) -> bool {
        self.open.contains(id)
    }

    /// Forgets the list of `id` (its reader gave up); true when it was open.
    pub fn close(&mut self, id: &[u8]) -> bool {
        self.open.remove(id)
    }

    /// Number of open lists.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True when no list is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

fn is(message: &Message, key: &str, value: &str) -> bool {
    message
        .get_bytes(key)
        .is_some_and(|v| v.eq_ignore_ascii_case(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(pairs: &[(&str, &str)]) -> Message {
        Message::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn an_error_answer_opens_nothing() {
        let mut l = EventLists::new();
        let err = msg(&[
            ("Response", "Error"),
            ("ActionID", "1"),
            ("EventList", "start"),
        ]);
        assert_eq!(l.observe(&err), ListStep::Unrelated);
        let ev = msg(&[("Event", "X"), ("ActionID", "1")]);
        assert_eq!(l.observe(&ev), ListStep::Unrelated);
    }

    #[test]
    fn an_empty_action_id_opens_nothing() {
        let mut l = EventLists::new();
        let start = msg(&[
            ("Response", "Success"),
            ("ActionID", ""),
            ("EventList", "start"),
        ]);
        assert_eq!(l.observe(&start), ListStep::Unrelated);
        assert!(l.is_empty());
    }

    #[test]
    fn values_are_case_insensitive_and_close_forgets() {
        let mut l = EventLists::new();
        let start = msg(&[
            ("Response", "success"),
            ("ActionID", "a"),
            ("EventList", "START"),
        ]);
        assert_eq!(l.observe(&start), ListStep::Opened(b"a"));
        assert!(l.is_open(b"a"));
        assert!(l.close(b"a"));
        assert!(!l.close(b"a"));
        let ev = msg(&[("Event", "X"), ("ActionID", "a"), ("EventList", "complete")]);
        assert_eq!(l.observe(&ev), ListStep::Unrelated);
    }

    #[test]
    fn events_before_the_start_and_actions_are_unrelated() {
        let mut l = EventLists::new();
        let early = msg(&[("Event", "X"), ("ActionID", "b"), ("EventList", "Complete")]);
        assert_eq!(l.observe(&early), ListStep::Unrelated);
        let action = msg(&[("Action", "Status"), ("ActionID", "b")]);
        assert_eq!(l.observe(&action), ListStep::Unrelated);
        assert!(l.is_empty());
    }
}
