//! Which write class each action needs, as a server's `ListCommands` says.
//!
//! Asterisk runs an action for a session when the action's authority is 0
//! or shares a class with the session's write classes (`process_message`
//! in main/manager.c). A listener that forwards actions to Asterisk under
//! its own, more powerful login must apply that rule itself, per client,
//! with the same table. Asterisk publishes the table as the answer to
//! `ListCommands`: one header per action, `Name: Synopsis  (Priv: classes)`
//! (`<none>` for authority 0). It lists only the actions the asking login
//! may run, which is what a forwarder needs: an action missing from the
//! table is one Asterisk would refuse the forwarder anyway.

use std::collections::HashMap;

use crate::events::privilege_bits;
use crate::message::Message;

/// What the table says of one action for one set of write classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Its authority is 0 or shares a class with the write classes.
    Allowed,
    /// It needs a class the write classes lack: Asterisk's
    /// `Permission denied`.
    Denied,
    /// Not in the table (a module loaded since, or an action the
    /// forwarder's own login may not run).
    Unknown,
}

/// Action name (any case) → authority bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionClasses {
    by_name: HashMap<String, u32>,
}

impl ActionClasses {
    /// Reads a `ListCommands` response. Headers that do not end in
    /// `(Priv: …)` (`Response`, `ActionID`, …) are not actions and are
    /// skipped.
    pub fn from_list_commands(response: &Message) -> Self {
        let by_name = response
            .iter_bytes()
            .filter_map(|(k, v)| Some((k, authority(v)?)))
            .map(|(k, a)| (String::from_utf8_lossy(k).to_ascii_lowercase(), a))
            .collect();
        ActionClasses { by_name }
    }

    /// How many actions the table knows.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when the table knows no action (an empty or failed answer).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The authority bits of `action` (0: anyone may run it).
    pub fn authority(&self, action: &str) -> Option<u32> {
        self.by_name.get(&action.to_ascii_lowercase()).copied()
    }

    /// Whether a session with `write` classes may run `action`.
    pub fn permits(&self, action: &str, write: u32) -> Permit {
        match self.authority(action) {
            None => Permit::Unknown,
            Some(0) => Permit::Allowed,
            Some(a) if a & write != 0 => Permit::Allowed,
            Some(_) => Permit::Denied,
        }
    }
}

/// The authority in `Synopsis  (Priv: system,call,all)`.
fn authority(value: &[u8]) -> Option<u32> {
    let body = value.strip_suffix(b")")?;
    let at = memchr::memmem::rfind(body, b"(Priv: ")?;
    let classes = &body[at + b"(Priv: ".len()..];
    Some(if classes == b"<none>" {
        0
    } else {
        privilege_bits(classes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, Limits, decode_all};

    fn listing() -> Message {
        let wire = b"Response: Success\r\nActionID: 1\r\n\
            AbsoluteTimeout: Set absolute timeout.  (Priv: system,call,all)\r\n\
            Challenge: Generate Challenge for MD5 Auth.  (Priv: <none>)\r\n\
            Originate: Originate a call.  (Priv: originate,all)\r\n\
            Odd: A synopsis (with parentheses) here.  (Priv: reporting,all)\r\n\r\n";
        match decode_all(wire, Limits::default()).remove(0) {
            Frame::Message(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_table() {
        let t = ActionClasses::from_list_commands(&listing());
        assert_eq!(t.len(), 4, "{t:?}");
        assert_eq!(
            t.authority("absolutetimeout"),
            Some(privilege_bits(b"system,call"))
        );
        assert_eq!(t.authority("CHALLENGE"), Some(0));
        assert_eq!(t.authority("Odd"), Some(privilege_bits(b"reporting")));
        assert_eq!(t.authority("ActionID"), None);
    }

    #[test]
    fn permits_as_process_message_does() {
        let t = ActionClasses::from_list_commands(&listing());
        let call = privilege_bits(b"call");
        assert_eq!(
            t.permits("AbsoluteTimeout", call),
            Permit::Allowed,
            "one shared class is enough"
        );
        assert_eq!(t.permits("Originate", call), Permit::Denied);
        assert_eq!(
            t.permits("Originate", privilege_bits(b"originate")),
            Permit::Allowed
        );
        assert_eq!(t.permits("Challenge", 0), Permit::Allowed, "authority 0");
        assert_eq!(t.permits("Unheard", u32::MAX), Permit::Unknown);
    }

    /// The answer of a real Asterisk 22.10.1 (tests/traces/actions.ami).
    #[test]
    fn real_listing() {
        let wire = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/traces/actions.ami"
        ))
        .expect("trace");
        let table = decode_all(&wire, Limits::default())
            .into_iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(m),
                _ => None,
            })
            .map(|m| ActionClasses::from_list_commands(&m))
            .find(|t| !t.is_empty())
            .expect("a ListCommands answer");
        assert_eq!(table.len(), 90);
        assert_eq!(table.authority("Filter"), Some(privilege_bits(b"system")));
        assert_eq!(table.authority("Ping"), Some(0));
        assert_eq!(
            table.authority("Originate"),
            Some(privilege_bits(b"originate"))
        );
    }
}
