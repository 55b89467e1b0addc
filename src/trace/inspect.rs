//! `inspect`: what is in a trace.
//!
//! Before replaying a capture into the bridge (or writing a mapping for it)
//! one wants to know what it holds: how many events of which name, which
//! responses, whether anything failed to decode, and which fields each event
//! actually carried. The last point matters because Asterisk's documentation
//! and its wire format disagree (`CallerIDnum` vs `CallerIDNum`, undocumented
//! events): the field list is the union of the header names seen on each
//! event name, in first-seen order and exactly as spelled on the wire.
//!
//! Counting uses the same codec as the bridge, so the numbers are what the
//! bridge would see. An event is any message with an `Event:` header (so an
//! `OriginateResponse`, which also has `Response:`, counts as an event, not
//! as a response).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::TraceError;
use super::file::stream_trace;
use crate::ami::{Frame, Kind, Limits, bytes_to_text};

/// Per event name: how often it came and which fields it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventStats {
    pub name: String,
    pub count: u64,
    /// Union of header names, in first-seen order.
    pub fields: Vec<String>,
}

/// The counts of one trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    pub trace: String,
    pub banner: Option<String>,
    pub bytes: u64,
    /// Decoded messages (events, responses and anything else; not the
    /// banner, not malformed input).
    pub messages: u64,
    /// Events in first-seen order.
    pub events: Vec<EventStats>,
    /// `Response:` values in first-seen order, with counts.
    pub responses: Vec<(String, u64)>,
    pub malformed: u64,
}

impl Inspection {
    /// Total number of events.
    pub fn event_count(&self) -> u64 {
        self.events.iter().map(|e| e.count).sum()
    }

    /// The `--json` form: one object with keys `trace`, `banner`,
    /// `messages`, `events` (name → count), `responses` (value → count),
    /// `malformed` and `fields` (event name → field names).
    pub fn to_json(&self) -> Value {
        let mut events = Map::new();
        let mut fields = Map::new();
        for e in &self.events {
            events.insert(e.name.clone(), json!(e.count));
            fields.insert(e.name.clone(), json!(e.fields));
        }
        let mut responses = Map::new();
        for (r, n) in &self.responses {
            responses.insert(r.clone(), json!(n));
        }
        json!({
            "trace": self.trace,
            "banner": self.banner,
            "messages": self.messages,
            "events": events,
            "responses": responses,
            "malformed": self.malformed,
            "fields": fields,
        })
    }

    /// The human form: a summary and a table of events, most frequent
    /// first, with the fields each carried.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.trace);
        let _ = writeln!(
            s,
            "  banner     {}",
            self.banner.as_deref().unwrap_or("(none)")
        );
        let _ = writeln!(s, "  bytes      {}", self.bytes);
        let _ = writeln!(
            s,
            "  messages   {} ({} events, {} responses)",
            self.messages,
            self.event_count(),
            self.responses.iter().map(|(_, n)| n).sum::<u64>()
        );
        let _ = writeln!(s, "  malformed  {}", self.malformed);
        let responses: Vec<String> = self
            .responses
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  responses  {}",
            if responses.is_empty() {
                "(none)".to_string()
            } else {
                responses.join(", ")
            }
        );
        if !self.events.is_empty() {
            let mut events: Vec<&EventStats> = self.events.iter().collect();
            events.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
            let width = events
                .iter()
                .map(|e| e.name.len())
                .max()
                .unwrap_or(5)
                .max(5);
            let _ = writeln!(s, "  {:>8}  {:<width$}  fields", "count", "event");
            for e in events {
                let _ = writeln!(
                    s,
                    "  {:>8}  {:<width$}  {}",
                    e.count,
                    e.name,
                    e.fields.join(", ")
                );
            }
        }
        s
    }
}

/// Counts what the trace at `path` holds (plain or zstd), reading it a
/// chunk at a time: memory does not grow with the file.
pub fn inspect(path: &Path) -> Result<Inspection, TraceError> {
    let read_err = |source| TraceError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut frames = stream_trace(path, Limits::default()).map_err(read_err)?;
    let mut out = inspect_frames(&mut frames).map_err(read_err)?;
    out.bytes = frames.bytes_read();
    out.trace = path.display().to_string();
    Ok(out)
}

/// [`inspect`] on bytes already in memory (`trace` is left empty).
pub fn inspect_bytes(data: bytes::Bytes) -> Inspection {
    let frames = ami_proto::DecodeAll::new(&data, Limits::default()).map(Ok);
    let mut out = inspect_frames(frames).unwrap_or_default();
    out.bytes = data.len() as u64;
    out
}

/// The counting itself, over decoded frames.
fn inspect_frames(
    frames: impl Iterator<Item = std::io::Result<Frame>>,
) -> std::io::Result<Inspection> {
    let mut out = Inspection::default();
    let mut event_index: HashMap<String, usize> = HashMap::new();
    // Per event: the field names already listed, to keep the union small.
    let mut seen_fields: Vec<HashSet<Vec<u8>>> = Vec::new();
    let mut response_index: HashMap<String, usize> = HashMap::new();

    for frame in frames {
        match frame? {
            Frame::Banner(line) => {
                if out.banner.is_none() {
                    out.banner = Some(line);
                }
            }
            Frame::Malformed(_) => out.malformed += 1,
            Frame::Message(message) => {
                out.messages += 1;
                match message.kind() {
                    Kind::Event => {
                        let name = message
                            .event_name()
                            .map(|n| n.into_owned())
                            .unwrap_or_default();
                        let i = match event_index.get(&name) {
                            Some(&i) => i,
                            None => {
                                event_index.insert(name.clone(), out.events.len());
                                out.events.push(EventStats {
                                    name,
                                    count: 0,
                                    fields: Vec::new(),
                                });
                                seen_fields.push(HashSet::new());
                                out.events.len() - 1
                            }
                        };
                        let stats = &mut out.events[i];
                        stats.count += 1;
                        let seen = &mut seen_fields[i];
                        for (k, _) in message.iter_bytes() {
                            if !seen.contains(k) {
                                seen.insert(k.to_vec());
                                stats.fields.push(bytes_to_text(k).into_owned());
                            }
                        }
                    }
                    Kind::Response => {
                        let r = message
                            .get("Response")
                            .map(|r| r.into_owned())
                            .unwrap_or_default();
                        match response_index.get(&r) {
                            Some(&i) => out.responses[i].1 += 1,
                            None => {
                                response_index.insert(r.clone(), out.responses.len());
                                out.responses.push((r, 1));
                            }
                        }
                    }
                    Kind::Action | Kind::Other => {}
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_login_plain() {
        let i = inspect(Path::new("tests/traces/login_plain.ami")).expect("inspect");
        assert_eq!(i.banner.as_deref(), Some("Asterisk Call Manager/11.0.0"));
        assert_eq!(i.messages, 5);
        assert_eq!(i.event_count(), 2);
        assert_eq!(
            i.responses,
            vec![("Success".into(), 2), ("Goodbye".into(), 1)]
        );
        assert_eq!(i.malformed, 0);
        let fb = &i.events[0];
        assert_eq!(fb.name, "FullyBooted");
        assert_eq!(
            fb.fields,
            vec!["Event", "Privilege", "Uptime", "LastReload", "Status"]
        );
        let j = i.to_json();
        assert_eq!(j["events"]["SuccessfulAuth"], 1);
        assert_eq!(j["responses"]["Success"], 2);
        assert!(i.to_table().contains("FullyBooted"));
    }

    #[test]
    fn originate_response_is_an_event() {
        let i = inspect_bytes(bytes::Bytes::from_static(
            b"Event: OriginateResponse\r\nResponse: Success\r\n\r\nBad line\r\n\r\n",
        ));
        assert_eq!(i.event_count(), 1);
        assert!(i.responses.is_empty());
        assert_eq!(i.malformed, 1);
    }
}
