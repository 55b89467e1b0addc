//! Event classes and the `Events:` mask.
//!
//! Asterisk tags each event with classes (`Privilege: call,all`) and sends
//! a session the events whose classes are all in its mask. A client sets
//! the mask with `Events:` on `Login` or with the `Events` action
//! (`EventMask:`). Asterisk reads that value in `strings_to_mask`
//! (main/manager.c): all digits is a decimal bitmask; otherwise a true
//! word (`on`, `yes`, …) is every class, a false word (`off`, `no`, …) none,
//! and anything else a comma-separated class list. [`EventMask::parse`] is
//! that reading, once, for both ends: the client that sends a mask and the
//! fake server (the trace replay) that applies one.

/// Asterisk's event classes and their bits (`include/asterisk/manager.h`).
pub const CLASSES: &[(&str, u32)] = &[
    ("system", 1 << 0),
    ("call", 1 << 1),
    ("log", 1 << 2),
    ("verbose", 1 << 3),
    ("command", 1 << 4),
    ("agent", 1 << 5),
    ("user", 1 << 6),
    ("config", 1 << 7),
    ("dtmf", 1 << 8),
    ("reporting", 1 << 9),
    ("cdr", 1 << 10),
    ("dialplan", 1 << 11),
    ("originate", 1 << 12),
    ("agi", 1 << 13),
    ("cc", 1 << 14),
    ("aoc", 1 << 15),
    ("test", 1 << 16),
    ("security", 1 << 17),
    ("message", 1 << 18),
];

/// Every class (`Events: on`, the class `all`).
pub const ALL_CLASSES: u32 = 0x7fff_ffff;

/// The class bits of an event's `Privilege:` value (`call,all` → call).
/// `all` is decoration on events and adds nothing; unknown names are
/// ignored.
pub fn privilege_bits(value: &[u8]) -> u32 {
    value
        .split(|&b| b == b',')
        .filter_map(|c| {
            let c = c.trim_ascii();
            CLASSES
                .iter()
                .find(|(name, _)| c.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, bit)| *bit)
        })
        .fold(0, |a, b| a | b)
}

/// Whether a session with `mask` receives an event of `category`:
/// Asterisk's `(send_events & category) == category`.
pub fn mask_allows(mask: u32, category: u32) -> bool {
    mask != 0 && mask & category == category
}

/// An `Events:` mask: what a session asks to receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventMask {
    /// Every class.
    On,
    /// No events.
    Off,
    /// A class list such as `call,user,cdr` (lowercase; `all` allowed).
    Classes(Vec<String>),
    /// A decimal bitmask of [`CLASSES`].
    Bits(u32),
}

impl EventMask {
    /// The value to send in an `Events:` header.
    pub fn header_value(&self) -> String {
        match self {
            EventMask::On => "on".into(),
            EventMask::Off => "off".into(),
            EventMask::Classes(c) => c.join(","),
            EventMask::Bits(b) => b.to_string(),
        }
    }

    /// Reads an `Events:` value as Asterisk does (see the module docs). An
    /// empty value, which Asterisk refuses as a mask, reads as
    /// [`EventMask::Off`]; [`EventMask::from_header`] tells it apart.
    pub fn parse(value: &str) -> EventMask {
        EventMask::from_header(value).unwrap_or(EventMask::Off)
    }

    /// [`EventMask::parse`], but `None` for an empty value (Asterisk
    /// answers it with an error).
    pub fn from_header(value: &str) -> Option<EventMask> {
        let v = value.trim();
        if v.is_empty() {
            return None;
        }
        if v.bytes().all(|b| b.is_ascii_digit()) {
            // Past u64: Asterisk's atoi saturates to every bit.
            let bits = v
                .parse::<u64>()
                .map_or(ALL_CLASSES, |n| n as u32 & ALL_CLASSES);
            return Some(EventMask::Bits(bits));
        }
        let lower = v.to_ascii_lowercase();
        Some(match lower.as_str() {
            "on" | "yes" | "true" | "y" | "t" | "all" => EventMask::On,
            "off" | "no" | "false" | "n" | "f" => EventMask::Off,
            _ => EventMask::Classes(
                lower
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            ),
        })
    }

    /// The class bits this mask selects (unknown class names add nothing).
    pub fn bits(&self) -> u32 {
        match self {
            EventMask::On => ALL_CLASSES,
            EventMask::Off => 0,
            EventMask::Bits(b) => *b,
            EventMask::Classes(c) => c
                .iter()
                .map(|c| match c.as_str() {
                    "all" => ALL_CLASSES,
                    c => privilege_bits(c.as_bytes()),
                })
                .fold(0, |a, b| a | b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_class_lists() {
        assert_eq!(EventMask::parse("on"), EventMask::On);
        assert_eq!(EventMask::parse("OFF"), EventMask::Off);
        assert_eq!(EventMask::parse(""), EventMask::Off);
        assert_eq!(EventMask::from_header(" "), None);
        assert_eq!(
            EventMask::parse("call, user"),
            EventMask::Classes(vec!["call".into(), "user".into()])
        );
        assert_eq!(EventMask::parse("call, user").bits(), 2 | 64);
        assert_eq!(
            EventMask::Classes(vec!["call".into(), "cdr".into()]).header_value(),
            "call,cdr"
        );
        assert_eq!(EventMask::parse("call,all").bits(), ALL_CLASSES);
        assert_eq!(EventMask::parse("nonsense").bits(), 0);
    }

    /// Digits are a bitmask, as Asterisk reads them, not a class named "6".
    #[test]
    fn digits_are_a_bitmask() {
        assert_ne!(EventMask::parse("6"), EventMask::Classes(vec!["6".into()]));
        assert_eq!(EventMask::parse("6"), EventMask::Bits(6));
        assert_eq!(EventMask::parse("6").bits(), 2 | 4);
        assert_eq!(EventMask::parse("6").header_value(), "6");
        assert_eq!(EventMask::parse("0").bits(), 0);
        assert_eq!(EventMask::parse("99999999999999999999").bits(), ALL_CLASSES);
    }

    /// What the client sends is read back, by the same parser, as the mask
    /// it meant.
    #[test]
    fn header_value_reads_back() {
        for v in [
            "on", "off", "y", "F", "call,cdr", "all", "7", "security", "x,call",
        ] {
            let m = EventMask::parse(v);
            assert_eq!(EventMask::parse(&m.header_value()).bits(), m.bits(), "{v}");
        }
    }

    #[test]
    fn privilege_and_allows() {
        assert_eq!(privilege_bits(b"call,all"), 2);
        assert_eq!(privilege_bits(b" Call , CDR "), 2 | 1024);
        assert!(mask_allows(ALL_CLASSES, 2));
        assert!(!mask_allows(0, 0));
        assert!(!mask_allows(2, 2 | 4));
    }
}
