//! The AMI message model: an ordered multimap of `Key: Value` lines.
//!
//! AMI messages look like HTTP headers, but they are not a map. Keys repeat
//! (`ChanVariable`, `Variable`, `Output`), their order carries meaning (the
//! `Event` or `Response` line comes first), values contain `: ` themselves,
//! and the bytes are whatever the channel driver put there — a caller name
//! can arrive in Latin-1. So a [`Message`] keeps the exact bytes of the
//! message in one shared buffer and an index of where each key and value
//! starts and ends. Decoding therefore costs one small `Vec` per message and
//! no copy of the payload, which is what lets the decoder run at well over a
//! million events per second on one core.
//!
//! Keys are compared case-insensitively (ASCII), as Asterisk does on its
//! side: CEL events say `UniqueID` where channel events say `Uniqueid`.
//!
//! ## Bytes that are not UTF-8
//!
//! Values are bytes. [`Message::get`] returns them as text through
//! [`bytes_to_text`]: valid UTF-8 is taken as is, anything else is read as
//! Latin-1 (ISO-8859-1), where every byte is one character. That choice
//! never fails, never loses a byte (each byte becomes exactly one code
//! point U+0000..U+00FF) and is what a Latin-1 caller name on an old phone
//! actually meant. This is the text that reaches JSON bodies.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Where one `Key: Value` line sits inside [`Message::raw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    key_start: u32,
    key_len: u32,
    value_start: u32,
    value_len: u32,
}

/// One AMI message (event, response or action) with its headers in order.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    raw: Bytes,
    spans: Vec<Span>,
}

/// What kind of message this is, decided by its first relevant header.
///
/// `Event` wins over `Response`: `OriginateResponse` is an event that also
/// carries a `Response:` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Event,
    Response,
    Action,
    Other,
}

impl Message {
    /// Roughly the memory this message holds: its bytes plus its header
    /// index (what a buffer budget must count; the index of a typical event
    /// is ~300 bytes beside its ~450 raw bytes).
    pub fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.raw.len()
            + self.spans.capacity() * std::mem::size_of::<Span>()
    }

    /// An empty message, to be filled with [`Message::push`].
    pub fn new() -> Self {
        Message {
            raw: Bytes::new(),
            spans: Vec::new(),
        }
    }

    /// Builds a message from pairs, in order.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut b = MessageBuilder::default();
        for (k, v) in pairs {
            b.push(k.as_ref(), v.as_ref());
        }
        b.build()
    }

    /// Used by the decoder: `raw` holds the message bytes, `spans` the
    /// positions found while scanning it.
    pub(crate) fn from_parts(raw: Bytes, spans: Vec<(usize, usize, usize, usize)>) -> Self {
        let spans = spans
            .into_iter()
            .map(|(ks, kl, vs, vl)| Span {
                key_start: ks as u32,
                key_len: kl as u32,
                value_start: vs as u32,
                value_len: vl as u32,
            })
            .collect();
        Message { raw, spans }
    }

    /// Appends a header (copies the message; meant for building actions).
    pub fn push(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let mut b = MessageBuilder::default();
        for (k, v) in self.iter_bytes() {
            b.push(k, v);
        }
        b.push(key.as_ref(), value.as_ref());
        *self = b.build();
    }

    /// Number of `Key: Value` lines.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn key_bytes_at(&self, s: &Span) -> &[u8] {
        &self.raw[s.key_start as usize..(s.key_start + s.key_len) as usize]
    }

    fn value_bytes_at(&self, s: &Span) -> &[u8] {
        &self.raw[s.value_start as usize..(s.value_start + s.value_len) as usize]
    }

    /// The headers as raw bytes, in wire order.
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(move |s| (self.key_bytes_at(s), self.value_bytes_at(s)))
    }

    /// The headers as text (see the module docs for non-UTF-8 bytes).
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
        self.iter_bytes()
            .map(|(k, v)| (bytes_to_text(k), bytes_to_text(v)))
    }

    /// The first value of `key` (case-insensitive) as raw bytes.
    pub fn get_bytes(&self, key: &str) -> Option<&[u8]> {
        let key = key.as_bytes();
        self.spans
            .iter()
            .find(|s| self.key_bytes_at(s).eq_ignore_ascii_case(key))
            .map(|s| self.value_bytes_at(s))
    }

    /// The first value of `key` (case-insensitive) as text.
    pub fn get(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get_bytes(key).map(bytes_to_text)
    }

    /// Every value of `key` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        let k = key.as_bytes();
        self.spans
            .iter()
            .filter(move |s| self.key_bytes_at(s).eq_ignore_ascii_case(k))
            .map(move |s| bytes_to_text(self.value_bytes_at(s)))
    }

    /// True when `key` is present (case-insensitive).
    pub fn contains(&self, key: &str) -> bool {
        self.get_bytes(key).is_some()
    }

    /// Event, response or action, decided by the first of those headers
    /// present; `Event` beats `Response` (see [`Kind`]).
    pub fn kind(&self) -> Kind {
        if self.contains("Event") {
            Kind::Event
        } else if self.contains("Response") {
            Kind::Response
        } else if self.contains("Action") {
            Kind::Action
        } else {
            Kind::Other
        }
    }

    /// The `Event` header, if this is an event.
    pub fn event_name(&self) -> Option<Cow<'_, str>> {
        self.get("Event")
    }

    /// The `ActionID` header.
    pub fn action_id(&self) -> Option<Cow<'_, str>> {
        self.get("ActionID")
    }

    /// The exact bytes the message was decoded from (or built into). For a
    /// decoded message this is the wire text without the blank line that
    /// ended it.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The message in wire form: `Key: Value\r\n` lines and a blank line.
    pub fn encode(&self, dst: &mut BytesMut) {
        let need: usize = self
            .spans
            .iter()
            .map(|s| (s.key_len + s.value_len) as usize + 4)
            .sum::<usize>()
            + 2;
        dst.reserve(need);
        for (k, v) in self.iter_bytes() {
            dst.put_slice(k);
            dst.put_slice(b": ");
            dst.put_slice(v);
            dst.put_slice(b"\r\n");
        }
        dst.put_slice(b"\r\n");
    }

    /// The message in wire form as a new buffer.
    pub fn to_wire(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

impl Default for Message {
    fn default() -> Self {
        Message::new()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for (k, v) in self.iter() {
            l.entry(&format_args!("{k}: {v}"));
        }
        l.finish()
    }
}

/// Builds a [`Message`] line by line into one buffer.
#[derive(Default)]
pub struct MessageBuilder {
    buf: BytesMut,
    spans: Vec<(usize, usize, usize, usize)>,
}

impl MessageBuilder {
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        let ks = self.buf.len();
        self.buf.put_slice(key);
        self.buf.put_slice(b": ");
        let vs = self.buf.len();
        self.buf.put_slice(value);
        self.buf.put_slice(b"\r\n");
        self.spans.push((ks, key.len(), vs, value.len()));
        self
    }

    pub fn build(self) -> Message {
        Message::from_parts(self.buf.freeze(), self.spans)
    }
}

/// Bytes to text: UTF-8 when valid, otherwise Latin-1 (one byte, one
/// character). Never fails and never drops a byte.
pub fn bytes_to_text(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(b.iter().map(|&c| c as char).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_repeats() {
        let m = Message::from_pairs([
            ("Event", "Newchannel"),
            ("ChanVariable", "LABVAR=1"),
            ("ChanVariable", "LABTAG=x"),
        ]);
        assert_eq!(m.len(), 3);
        let all: Vec<_> = m.get_all("chanvariable").collect();
        assert_eq!(all, vec!["LABVAR=1", "LABTAG=x"]);
        assert_eq!(m.kind(), Kind::Event);
    }

    #[test]
    fn case_insensitive_lookup() {
        let m = Message::from_pairs([("UniqueID", "1.0")]);
        assert_eq!(m.get("Uniqueid").as_deref(), Some("1.0"));
        assert_eq!(m.get("UNIQUEID").as_deref(), Some("1.0"));
        assert!(m.get("Linkedid").is_none());
    }

    #[test]
    fn event_beats_response() {
        let m = Message::from_pairs([("Event", "OriginateResponse"), ("Response", "Success")]);
        assert_eq!(m.kind(), Kind::Event);
        let r = Message::from_pairs([("Response", "Success")]);
        assert_eq!(r.kind(), Kind::Response);
        let a = Message::from_pairs([("Action", "Ping")]);
        assert_eq!(a.kind(), Kind::Action);
    }

    #[test]
    fn latin1_fallback_is_lossless() {
        let m = Message::from_pairs([(b"CallerIDName".as_slice(), b"Jos\xe9".as_slice())]);
        assert_eq!(m.get("CallerIDName").as_deref(), Some("José"));
        let back: Vec<u8> = m
            .get("CallerIDName")
            .unwrap()
            .chars()
            .map(|c| c as u32 as u8)
            .collect();
        assert_eq!(back, b"Jos\xe9");
        // valid UTF-8 stays UTF-8
        let u = Message::from_pairs([("CallerIDName", "José")]);
        assert_eq!(u.get("CallerIDName").as_deref(), Some("José"));
    }

    #[test]
    fn encode_and_push() {
        let mut m = Message::from_pairs([("Action", "Ping")]);
        m.push("ActionID", "a-1");
        assert_eq!(&m.to_wire()[..], b"Action: Ping\r\nActionID: a-1\r\n\r\n");
    }
}
