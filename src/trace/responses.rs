//! Canned answers for actions, taken from a recorded session.
//!
//! A client that *sends* actions (the bridge's RPC path, a legacy AMI app)
//! needs answers that look like a real Asterisk's: `CoreShowChannels` with
//! its event list, `Command` with `Output:` lines, `Getvar` with the value,
//! errors with Asterisk's own wording. Writing those by hand invites
//! mistakes, so the replay answers with what a real server answered when the
//! same request was recorded.
//!
//! ## Where the answers come from
//!
//! A recording is a pair of files: `NAME.sent` (what the client sent) and
//! `NAME.ami` (what the server sent). Each request is paired with the
//! response carrying the same `ActionID` (a request without one takes the
//! next response without one: Asterisk answers a connection's actions in
//! order). When the response opens an event list (`EventList: start`), the
//! answer also holds the events that follow with the same `ActionID`, up to
//! and including the one with `EventList: Complete`; events of other
//! sessions interleaved with the list are left out.
//!
//! ## Choosing an answer
//!
//! Answers are indexed by the lowercase action name. When several recorded
//! requests share a name (`Command` for `core show version` and for
//! `core show channels`), the one whose other fields best match the incoming
//! request wins: +2 per recorded field the request carries with the same
//! value, −1 per recorded field that is missing or different, −1 per request
//! field the recording lacks; ties go to the earliest recording.
//!
//! The answer is sent as recorded, byte for byte, except the `ActionID`
//! lines: they carry the client's `ActionID`, or are removed when the client
//! sent none (as Asterisk does). Recorded answers to the built-in actions
//! (`Login`, `Challenge`, `Ping`, `Logoff`, `Events`) are ignored; the
//! replay implements those itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ami_proto::{EventLists, ListStep};
use bytes::Bytes;

use super::TraceError;
use super::file::{Frames, TraceFrame, load};
use crate::ami::{Kind, Message};

/// Actions the replay answers itself; recorded answers to them are unused.
pub const BUILTIN_ACTIONS: &[&str] = &["login", "challenge", "ping", "logoff", "events"];

/// One recorded request and what the server answered.
#[derive(Clone, Debug)]
struct Canned {
    /// The request's fields except `Action` and `ActionID`: lowercase key,
    /// raw value.
    fields: Vec<(String, Vec<u8>)>,
    /// The response and its list events, each with its exact bytes.
    reply: Vec<Bytes>,
}

/// Canned answers, by lowercase action name.
#[derive(Clone, Debug, Default)]
pub struct CannedResponses {
    source: PathBuf,
    by_action: HashMap<String, Vec<Canned>>,
}

/// `NAME.sent` (or `NAME.sent.zst`) → the recorded server side,
/// `NAME.ami` or `NAME.ami.zst`, whichever exists.
pub fn server_side_of(sent: &Path) -> Option<PathBuf> {
    let name = sent.file_name()?.to_str()?;
    let name = name.strip_suffix(".zst").unwrap_or(name);
    let base = name.strip_suffix(".sent").unwrap_or(name);
    ["ami", "ami.zst"]
        .iter()
        .map(|ext| sent.with_file_name(format!("{base}.{ext}")))
        .find(|p| p.exists())
}

fn non_empty_id(m: &Message) -> Option<&[u8]> {
    m.get_bytes("ActionID").filter(|v| !v.is_empty())
}

/// The events of the list `response` opens (none when it opens none),
/// taken from what the server sent after it, up to the one that closes it.
fn list_of(response: &Message, after: &[(Message, Bytes)]) -> Vec<Bytes> {
    let mut lists = EventLists::new();
    let ListStep::Opened(id) = lists.observe(response) else {
        return Vec::new();
    };
    let mut items = Vec::new();
    for (ev, bytes) in after {
        if let ListStep::Item { id: of, last } = lists.observe(ev)
            && of == id
        {
            items.push(bytes.clone());
            if last {
                break;
            }
        }
    }
    items
}

impl CannedResponses {
    /// Loads the pair around `sent` (see [`server_side_of`]).
    pub fn load(sent: &Path) -> Result<Self, TraceError> {
        let ami = server_side_of(sent).ok_or_else(|| TraceError::Invalid {
            path: sent.to_path_buf(),
            message: "no recorded server side next to it (expected NAME.ami or NAME.ami.zst)"
                .into(),
        })?;
        let mut c = CannedResponses::from_bytes(load(sent)?, load(&ami)?);
        c.source = sent.to_path_buf();
        Ok(c)
    }

    /// Pairs requests (`sent`) with answers (`ami`), see the module docs.
    pub fn from_bytes(sent: Bytes, ami: Bytes) -> Self {
        let requests: Vec<Message> = Frames::new(sent)
            .filter_map(|f| match f {
                TraceFrame::Message { message, .. } if message.kind() == Kind::Action => {
                    Some(message)
                }
                _ => None,
            })
            .collect();
        let server: Vec<(Message, Bytes)> = Frames::new(ami)
            .filter_map(|f| match f {
                TraceFrame::Message { message, bytes, .. } => Some((message, bytes)),
                _ => None,
            })
            .collect();

        let mut claimed = vec![false; requests.len()];
        let mut out = CannedResponses::default();
        for (i, (resp, resp_bytes)) in server.iter().enumerate() {
            if resp.kind() != Kind::Response {
                continue;
            }
            let id = non_empty_id(resp);
            let Some(r) =
                (0..requests.len()).find(|&r| !claimed[r] && non_empty_id(&requests[r]) == id)
            else {
                continue;
            };
            claimed[r] = true;
            let request = &requests[r];
            let Some(action) = request.get("Action").map(|a| a.trim().to_ascii_lowercase()) else {
                continue;
            };
            if BUILTIN_ACTIONS.contains(&action.as_str()) {
                continue;
            }
            let mut reply = vec![resp_bytes.clone()];
            reply.extend(list_of(resp, &server[i + 1..]));
            let fields = request
                .iter_bytes()
                .filter(|(k, _)| {
                    !k.eq_ignore_ascii_case(b"Action") && !k.eq_ignore_ascii_case(b"ActionID")
                })
                .map(|(k, v)| (String::from_utf8_lossy(k).to_ascii_lowercase(), v.to_vec()))
                .collect();
            out.by_action
                .entry(action)
                .or_default()
                .push(Canned { fields, reply });
        }
        out
    }

    /// Number of canned answers.
    pub fn len(&self) -> usize {
        self.by_action.values().map(Vec::len).sum()
    }

    /// Action names with answers (lowercase, sorted).
    pub fn actions(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_action.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The answer to `request`, with its `ActionID` rewritten, or `None`
    /// when nothing was recorded for that action.
    pub fn answer(&self, request: &Message) -> Option<Vec<u8>> {
        let action = request.get("Action")?.trim().to_ascii_lowercase();
        let candidates = self.by_action.get(&action)?;
        let incoming: Vec<(String, &[u8])> = request
            .iter_bytes()
            .filter(|(k, _)| {
                !k.eq_ignore_ascii_case(b"Action") && !k.eq_ignore_ascii_case(b"ActionID")
            })
            .map(|(k, v)| (String::from_utf8_lossy(k).to_ascii_lowercase(), v))
            .collect();
        let best = candidates
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (score(&c.fields, &incoming), std::cmp::Reverse(*i)))
            .map(|(_, c)| c)?;
        let id = non_empty_id(request);
        let mut out = Vec::with_capacity(best.reply.iter().map(|b| b.len() + 32).sum());
        for msg in &best.reply {
            out.extend_from_slice(&rewrite_action_id(msg, id));
        }
        Some(out)
    }
}

/// How well a recorded request's fields match an incoming one (see the
/// module docs).
fn score(recorded: &[(String, Vec<u8>)], incoming: &[(String, &[u8])]) -> i64 {
    let mut s = 0;
    for (k, v) in recorded {
        match incoming.iter().find(|(ik, _)| ik == k) {
            Some((_, iv)) if iv.trim_ascii() == v.trim_ascii() => s += 2,
            _ => s -= 1,
        }
    }
    for (k, _) in incoming {
        if !recorded.iter().any(|(rk, _)| rk == k) {
            s -= 1;
        }
    }
    s
}

fn is_key_line(line: &[u8], key: &[u8]) -> bool {
    line.len() > key.len() && line[..key.len()].eq_ignore_ascii_case(key) && line[key.len()] == b':'
}

/// Replaces the first `ActionID` line of one message's bytes with `id`, or
/// removes it when `id` is `None`. A message without an `ActionID` line
/// gets one after its first line when `id` is given. Everything else stays
/// byte for byte.
pub fn rewrite_action_id(msg: &[u8], id: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + id.map_or(0, |i| i.len() + 12));
    let mut rest = msg;
    let mut replaced = false;
    let mut first_line_end = None;
    while !rest.is_empty() {
        let n = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(n);
        if !replaced && is_key_line(line, b"ActionID") {
            replaced = true;
            if let Some(id) = id {
                let ending: &[u8] = if line.ends_with(b"\r\n") {
                    b"\r\n"
                } else if line.ends_with(b"\n") {
                    b"\n"
                } else {
                    b""
                };
                out.extend_from_slice(b"ActionID: ");
                out.extend_from_slice(id);
                out.extend_from_slice(ending);
            }
        } else {
            out.extend_from_slice(line);
        }
        if first_line_end.is_none() {
            first_line_end = Some(out.len());
        }
        rest = tail;
    }
    if let (false, Some(id), Some(at)) = (replaced, id, first_line_end) {
        let mut line = b"ActionID: ".to_vec();
        line.extend_from_slice(id);
        line.extend_from_slice(b"\r\n");
        out.splice(at..at, line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions() -> CannedResponses {
        CannedResponses::load(Path::new("tests/traces/actions.sent")).expect("load")
    }

    fn req(pairs: &[(&str, &str)]) -> Message {
        Message::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn rewrite_replace_remove_insert() {
        let m = b"Response: Success\r\nActionID: old\r\nMessage: x\r\n\r\n";
        assert_eq!(
            rewrite_action_id(m, Some(b"new")),
            b"Response: Success\r\nActionID: new\r\nMessage: x\r\n\r\n"
        );
        assert_eq!(
            rewrite_action_id(m, None),
            b"Response: Success\r\nMessage: x\r\n\r\n"
        );
        let n = b"Response: Success\r\nPing: Pong\r\n\r\n";
        assert_eq!(
            rewrite_action_id(n, Some(b"a")),
            b"Response: Success\r\nActionID: a\r\nPing: Pong\r\n\r\n"
        );
        assert_eq!(rewrite_action_id(n, None), n);
    }

    #[test]
    fn core_show_channels_list_is_complete() {
        let c = actions();
        let a = c
            .answer(&req(&[("Action", "CoreShowChannels"), ("ActionID", "x-1")]))
            .expect("answer");
        let frames = crate::ami::codec::decode_all(&a, crate::ami::Limits::default());
        assert_eq!(frames.len(), 10, "response + 8 channels + complete");
        for f in &frames {
            let crate::ami::Frame::Message(m) = f else {
                panic!("{f:?}")
            };
            assert_eq!(m.action_id().as_deref(), Some("x-1"));
        }
    }

    #[test]
    fn best_match_by_fields() {
        let c = actions();
        let a = c
            .answer(&req(&[
                ("Action", "Command"),
                ("Command", "core show channels concise"),
            ]))
            .expect("answer");
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("!test!800!4!Up!Wait!60!"), "{text}");
        assert!(!text.contains("ActionID"), "{text}");
        let g = c
            .answer(&req(&[
                ("Action", "getvar"),
                ("ActionID", "g"),
                ("Variable", "LABGLOBAL"),
            ]))
            .expect("answer");
        assert!(String::from_utf8_lossy(&g).contains("Value: lab\r\n"));
        assert!(c.answer(&req(&[("Action", "Ping")])).is_none());
        assert!(c.answer(&req(&[("Action", "Nope")])).is_none());
    }
}
