//! Every real capture in `tests/traces` decodes cleanly and agrees with the
//! independent parse recorded in `tests/traces/SUMMARY.txt`.
//!
//! SUMMARY.txt is read here, not copied: each `== NAME.ami bytes=… messages=…
//! events=… banner='…'` block gives the expected totals, the `responses:` and
//! `events:` lines the per-kind counts, and the last line a few more figures
//! (`values_with_colon`, `bare_LF`, `Output_lines`, …).
//!
//! Definitions, as checked against the decoder:
//! - `messages` counts every `Key: Value` message of the file, events and
//!   responses alike, but not the banner line (`messages == events + sum of
//!   responses` in every block);
//! - `events` counts messages with an `Event` header — `OriginateResponse`
//!   carries a `Response:` header too, but counts as an event, not a response;
//! - `responses: {...}` counts the non-event messages by `Response` value;
//! - `duplicate keys (msg, key)=count` lists (at most a dozen) pairs of event
//!   name and key with the number of such events in which the key appears
//!   more than once;
//! - `values_with_colon` counts header lines whose value contains `:`;
//!   `bare_LF` counts lines ended by LF without CR (`-1`: not computed);
//!   `Output_lines` counts `Output` headers; `legacy_Follows` counts
//!   `Response: Follows` messages; `END_COMMAND` counts `--END COMMAND--`
//!   markers; `unterminated_tail` says the file ends inside a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ami2amqp::ami::decode_all;
use ami2amqp::ami::{AmiCodec, Frame, Kind, Limits, Message};
use bytes::BytesMut;
use tokio_util::codec::Decoder;

fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("traces")
}

/// Reads a trace, decompressing `.zst` files.
fn read_trace(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "zst") {
        zstd::stream::decode_all(&raw[..])
            .unwrap_or_else(|e| panic!("decompressing {}: {e}", path.display()))
    } else {
        raw
    }
}

/// One `== NAME ...` block of SUMMARY.txt.
#[derive(Debug, Default)]
struct Expected {
    name: String,
    bytes: usize,
    messages: usize,
    events: usize,
    banner: String,
    responses: BTreeMap<String, usize>,
    event_counts: BTreeMap<String, usize>,
    duplicate_keys: Vec<(String, String, usize)>,
    figures: BTreeMap<String, i64>,
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let pat = format!("{name}=");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("SUMMARY: no {name}= in {line:?}"))
        + pat.len();
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('\'') {
        &q[..q.find('\'').expect("closing quote")]
    } else {
        rest.split_whitespace().next().unwrap_or("")
    }
}

fn parse_summary() -> Vec<Expected> {
    let text = std::fs::read_to_string(traces_dir().join("SUMMARY.txt")).expect("SUMMARY.txt");
    let mut out: Vec<Expected> = Vec::new();
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("== ") {
            out.push(Expected {
                name: head.split_whitespace().next().unwrap().to_string(),
                bytes: field(head, "bytes").parse().unwrap(),
                messages: field(head, "messages").parse().unwrap(),
                events: field(head, "events").parse().unwrap(),
                banner: field(head, "banner").to_string(),
                ..Expected::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        let t = line.trim();
        if let Some(r) = t.strip_prefix("responses:") {
            // {'Success': 36, 'Error': 10}
            let r = r.trim().trim_start_matches('{').trim_end_matches('}');
            for item in r.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = item.split_once(':').expect("responses item");
                cur.responses.insert(
                    k.trim().trim_matches('\'').to_string(),
                    v.trim().parse().unwrap(),
                );
            }
        } else if let Some(e) = t.strip_prefix("events:") {
            for item in e.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = item.rsplit_once('=').expect("events item");
                cur.event_counts.insert(k.to_string(), v.parse().unwrap());
            }
        } else if let Some(d) = t.strip_prefix("duplicate keys (msg, key)=count:") {
            for item in d.split(", ").map(str::trim).filter(|s| !s.is_empty()) {
                let (mk, v) = item.rsplit_once('=').expect("duplicate item");
                let (m, k) = mk.split_once('/').expect("msg/key");
                cur.duplicate_keys
                    .push((m.to_string(), k.to_string(), v.parse().unwrap()));
            }
        } else if t.starts_with("values_with_colon=") {
            for item in t.split_whitespace() {
                let (k, v) = item.split_once('=').expect("figure");
                cur.figures.insert(k.to_string(), v.parse().unwrap());
            }
        }
    }
    assert!(!out.is_empty(), "SUMMARY.txt has no `== NAME` blocks");
    out
}

/// The `.ami` / `.ami.zst` file of a SUMMARY block.
fn trace_path(name: &str) -> PathBuf {
    let plain = traces_dir().join(name);
    if plain.exists() {
        return plain;
    }
    let zst = traces_dir().join(format!("{name}.zst"));
    assert!(
        zst.exists(),
        "SUMMARY names {name}, but neither it nor {name}.zst is in tests/traces"
    );
    zst
}

fn count_lines_starting(data: &[u8], prefix: &[u8]) -> usize {
    data.split(|&b| b == b'\n')
        .filter(|l| l.starts_with(prefix))
        .count()
}

fn bare_lf_lines(data: &[u8]) -> usize {
    data.iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || data[i - 1] != b'\r'))
        .count()
}

fn count_occurrences(data: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(data, needle).count()
}

/// Decodes one trace and compares it with its SUMMARY block. Returns the
/// number of decoded messages so the caller can report.
fn check_trace(exp: &Expected) {
    let path = trace_path(&exp.name);
    let data = read_trace(&path);
    let name = &exp.name;
    assert_eq!(data.len(), exp.bytes, "{name}: byte count");
    assert_eq!(
        exp.figures.len(),
        6,
        "{name}: SUMMARY figures line: {:?}",
        exp.figures
    );

    let frames = decode_all(&data, Limits::default());

    let malformed: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Malformed(m) => Some(m),
            _ => None,
        })
        .collect();
    assert!(
        malformed.is_empty(),
        "{name}: {} malformed frames, first: {:?}",
        malformed.len(),
        malformed.first()
    );

    let banners: Vec<&String> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Banner(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(banners, vec![&exp.banner], "{name}: banners");
    assert_eq!(banners[0], "Asterisk Call Manager/11.0.0", "{name}: banner");
    assert!(
        matches!(frames.first(), Some(Frame::Banner(_))),
        "{name}: the banner is the first frame"
    );

    let msgs: Vec<&Message> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(
        msgs.len(),
        exp.messages,
        "{name}: messages (banner excluded)"
    );

    let mut events = 0usize;
    let mut event_counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut responses: BTreeMap<String, usize> = BTreeMap::new();
    let mut dups: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut values_with_colon = 0i64;
    let mut output_lines = 0i64;
    let mut follows = 0i64;
    for m in &msgs {
        assert!(!m.is_empty(), "{name}: empty message");
        for (_, v) in m.iter_bytes() {
            if v.contains(&b':') {
                values_with_colon += 1;
            }
        }
        output_lines += m.iter_bytes().filter(|(k, _)| *k == b"Output").count() as i64;
        match m.kind() {
            Kind::Event => {
                events += 1;
                let ev = m.event_name().unwrap().into_owned();
                // keys that occur more than once in this event
                let mut seen: BTreeMap<&[u8], usize> = BTreeMap::new();
                for (k, _) in m.iter_bytes() {
                    *seen.entry(k).or_default() += 1;
                }
                for (k, n) in seen {
                    if n > 1 {
                        let k = String::from_utf8_lossy(k).into_owned();
                        *dups.entry((ev.clone(), k)).or_default() += 1;
                    }
                }
                *event_counts.entry(ev).or_default() += 1;
            }
            Kind::Response => {
                let r = m.get("Response").unwrap().into_owned();
                if r.eq_ignore_ascii_case("Follows") {
                    follows += 1;
                }
                *responses.entry(r).or_default() += 1;
            }
            other => panic!("{name}: unexpected {other:?} message from the server: {m:?}"),
        }
    }
    assert_eq!(events, exp.events, "{name}: events");
    assert_eq!(event_counts, exp.event_counts, "{name}: per-event counts");
    assert_eq!(responses, exp.responses, "{name}: responses");
    assert_eq!(
        exp.messages,
        exp.events + exp.responses.values().sum::<usize>(),
        "{name}: SUMMARY's messages = events + responses"
    );
    for (ev, key, n) in &exp.duplicate_keys {
        assert_eq!(
            dups.get(&(ev.clone(), key.clone())).copied().unwrap_or(0),
            *n,
            "{name}: events {ev} with repeated {key}"
        );
    }

    // Raw-text cross-checks, independent of the decoder.
    assert_eq!(
        count_lines_starting(&data, b"Event:"),
        events,
        "{name}: lines starting with `Event:` vs decoded events"
    );
    let fig = |k: &str| -> i64 {
        *exp.figures
            .get(k)
            .unwrap_or_else(|| panic!("{name}: SUMMARY has no {k}="))
    };
    assert_eq!(
        values_with_colon,
        fig("values_with_colon"),
        "{name}: values_with_colon"
    );
    assert_eq!(output_lines, fig("Output_lines"), "{name}: Output_lines");
    assert_eq!(follows, fig("legacy_Follows"), "{name}: legacy_Follows");
    assert_eq!(
        count_occurrences(&data, b"--END COMMAND--") as i64,
        fig("END_COMMAND"),
        "{name}: END_COMMAND"
    );
    if fig("bare_LF") >= 0 {
        assert_eq!(
            bare_lf_lines(&data) as i64,
            fig("bare_LF"),
            "{name}: bare_LF"
        );
    }
    assert_eq!(
        fig("unterminated_tail"),
        0,
        "{name}: SUMMARY says the trace is cut off"
    );
    assert!(
        data.ends_with(b"\r\n\r\n"),
        "{name}: ends with a blank line"
    );
}

#[test]
fn every_trace_matches_summary() {
    let expected = parse_summary();
    // Every .ami / .ami.zst in the folder has a SUMMARY block, and vice versa.
    let mut on_disk: Vec<String> = std::fs::read_dir(traces_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| {
            if n.ends_with(".ami") {
                Some(n)
            } else {
                n.strip_suffix(".ami.zst").map(|s| format!("{s}.ami"))
            }
        })
        .collect();
    on_disk.sort();
    let mut in_summary: Vec<String> = expected.iter().map(|e| e.name.clone()).collect();
    in_summary.sort();
    assert_eq!(on_disk, in_summary, "traces on disk vs SUMMARY.txt blocks");
    let dup_entries: usize = expected.iter().map(|e| e.duplicate_keys.len()).sum();
    assert!(
        dup_entries >= 50,
        "SUMMARY's duplicate-key lines were not parsed ({dup_entries})"
    );

    for exp in &expected {
        check_trace(exp);
    }
}

/// The client side of each capture: every request parses as an action.
#[test]
fn sent_files_parse_as_actions() {
    let mut files = 0;
    for entry in std::fs::read_dir(traces_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "sent") {
            continue;
        }
        files += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = read_trace(&path);
        let frames = decode_all(&data, Limits::asterisk_request());
        let mut actions = 0;
        for f in &frames {
            match f {
                Frame::Message(m) => {
                    assert_eq!(m.kind(), Kind::Action, "{name}: not an action: {m:?}");
                    assert!(!m.get("Action").unwrap().is_empty(), "{name}: empty Action");
                    actions += 1;
                }
                other => panic!("{name}: unexpected frame {other:?}"),
            }
        }
        // Header names are case-insensitive (actions.sent has `action: ping`).
        let action_lines = data
            .split(|&b| b == b'\n')
            .filter(|l| l.len() >= 7 && l[..7].eq_ignore_ascii_case(b"Action:"))
            .count();
        assert_eq!(actions, action_lines, "{name}: actions vs `Action:` lines");
        assert!(actions > 0, "{name}: no actions");
    }
    assert!(
        files >= 10,
        "expected the .sent files of every capture, found {files}"
    );
}

/// The lowercase and LF-only requests of actions.sent decode like the others.
#[test]
fn sent_lowercase_and_lf_only_requests() {
    let data = read_trace(&traces_dir().join("actions.sent"));
    let frames = decode_all(&data, Limits::asterisk_request());
    let by_id = |id: &str| -> &Message {
        frames
            .iter()
            .find_map(|f| match f {
                Frame::Message(m) if m.action_id().as_deref() == Some(id) => Some(m),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no action {id}"))
    };
    let lf = by_id("act-lf-only");
    assert_eq!(lf.get("Action").as_deref(), Some("Ping"));
    assert_eq!(lf.len(), 2);
    let lower = by_id("act-lowercase-keys");
    assert_eq!(lower.get("ACTION").as_deref(), Some("ping"));
    assert_eq!(lower.kind(), Kind::Action);
}

/// A socket delivers a trace in arbitrary pieces: the frames must not depend
/// on where the reads were cut.
#[test]
fn traces_decode_the_same_in_chunks() {
    for name in [
        "calls_small.ami",
        "actions.ami",
        "login_md5.ami",
        "prelogin.ami",
    ] {
        let data = read_trace(&traces_dir().join(name));
        let whole = decode_all(&data, Limits::default());
        for chunk in [1usize, 2, 3, 7, 61, 1000, 4096, 65536] {
            let mut codec = AmiCodec::new(Limits::default());
            let mut buf = BytesMut::new();
            let mut got = Vec::with_capacity(whole.len());
            for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got.len(), whole.len(), "{name} in chunks of {chunk}");
            assert!(got == whole, "{name} in chunks of {chunk}: frames differ");
        }
    }
}

/// Nothing is lost or reordered: re-encoding the decoded frames reproduces
/// the capture byte for byte (Asterisk writes `Key: Value` with one space).
#[test]
fn calls_small_reencodes_byte_for_byte() {
    let data = read_trace(&traces_dir().join("calls_small.ami"));
    let frames = decode_all(&data, Limits::default());
    let mut out = BytesMut::new();
    for f in &frames {
        match f {
            Frame::Banner(b) => {
                out.extend_from_slice(b.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Frame::Message(m) => m.encode(&mut out),
            Frame::Malformed(m) => panic!("{m:?}"),
        }
    }
    assert!(
        out[..] == data[..],
        "re-encoded calls_small.ami differs from the capture"
    );
}
