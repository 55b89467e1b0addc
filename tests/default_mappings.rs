//! The default mapping set (`mappings/`) against every real capture in
//! `tests/traces`, and against the list of documented AMI events.
//!
//! What the default set promises, and what is checked here:
//! - every event of every trace produces at least one message, with no
//!   route error (every template field has a `default:`);
//! - every routing key is non-empty, at most 255 bytes, has no empty word
//!   and no `*` / `#`;
//! - every body is a JSON envelope (`server`, `event`, `seq`,
//!   `received_at`, `fields`);
//! - every event documented in `tests/data/ami_events.json` (a copy of the
//!   shared list; tests must not read outside the repository) is named by
//!   an ordinary route, not left to the fallback;
//! - the presets in `mappings/examples/`, overlays on the default set, keep
//!   the same promises, and publish for every trace exactly what
//!   `tests/data/preset_map.txt` records (what they published as full
//!   copies, before they became overlays).
//!
//! A summary of the routing keys (with counts) is printed on stderr; run
//! with `--nocapture` to see it. In debug builds the big `calls_busy`
//! capture is cut to its first 30 000 events so the test stays fast
//! (`AMI2AMQP_FULL_TRACES=1` takes all of it, as release builds do).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use ami2amqp::ami::{AmiCodec, Frame, Limits, Message};
use ami2amqp::mapping::{EventCtx, Outgoing, Router, load_dir, load_dirs};
use bytes::BytesMut;
use tokio_util::codec::Decoder;

const SERVER: &str = "pbx1";
/// Events taken from one trace at most, in debug builds.
const DEBUG_CAP: usize = 30_000;
/// Bytes decompressed from a `.zst` trace at most, in debug builds (more
/// than 30 000 events of `calls_busy`).
const DEBUG_BYTES: u64 = 16 << 20;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(dir: &Path) -> Router {
    load_dir(dir).unwrap_or_else(|e| panic!("{} does not load:\n{e}", dir.display()))
}

/// A preset: an overlay on the default set.
fn load_preset(dir: &Path) -> Router {
    load_dirs(&[root().join("mappings"), dir.to_path_buf()])
        .unwrap_or_else(|e| panic!("{} does not load:\n{e}", dir.display()))
}

fn traces() -> Vec<PathBuf> {
    let dir = root().join("tests").join("traces");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".ami") || n.ends_with(".ami.zst")
        })
        .collect();
    v.sort();
    assert!(v.len() >= 5, "no traces in {}", dir.display());
    v
}

fn trace_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The events of a trace, in order (at most `cap`).
fn trace_events(path: &Path, cap: usize) -> Vec<Message> {
    let raw = std::fs::read(path).unwrap();
    let data = if path.extension().is_none_or(|e| e != "zst") {
        raw
    } else if cap == usize::MAX {
        zstd::decode_all(&raw[..]).unwrap()
    } else {
        // Only the start is needed (debug builds): decompress a prefix and
        // cut it after the last complete message.
        let mut d = Vec::new();
        zstd::Decoder::new(&raw[..])
            .unwrap()
            .take(DEBUG_BYTES)
            .read_to_end(&mut d)
            .unwrap();
        if d.len() as u64 == DEBUG_BYTES {
            let end = d.windows(4).rposition(|w| w == b"\r\n\r\n").unwrap();
            d.truncate(end + 4);
        }
        d
    };
    let mut codec = AmiCodec::new(Limits::default());
    let mut buf = BytesMut::from(&data[..]);
    let mut out = Vec::new();
    let push = |f: Frame, out: &mut Vec<Message>| match f {
        Frame::Message(m) if m.event_name().is_some() => out.push(m),
        Frame::Message(_) | Frame::Banner(_) => {}
        Frame::Malformed(m) => panic!("{}: malformed input: {m}", path.display()),
    };
    while out.len() < cap {
        match codec.decode(&mut buf) {
            Ok(Some(f)) => push(f, &mut out),
            Ok(None) => break,
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
    if out.len() < cap {
        while let Ok(Some(f)) = codec.decode_eof(&mut buf) {
            push(f, &mut out);
        }
    }
    out.truncate(cap);
    out
}

fn cap() -> usize {
    if cfg!(debug_assertions) && std::env::var_os("AMI2AMQP_FULL_TRACES").is_none() {
        DEBUG_CAP
    } else {
        usize::MAX
    }
}

fn route(r: &Router, m: &Message, seq: u64) -> (Vec<Outgoing>, ami2amqp::mapping::RouteOutcome) {
    let ctx = EventCtx {
        server: SERVER,
        seq,
        received_at: UNIX_EPOCH + Duration::from_millis(1_795_730_181_136),
        message: m,
        instance: "test",
    };
    let mut out = Vec::new();
    let o = r.route(&ctx, &mut out);
    (out, o)
}

/// The body of a message of the default set.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    server: String,
    event: String,
    seq: u64,
    received_at: String,
    #[allow(dead_code)] // parsed to check that it is an object
    fields: BTreeMap<String, serde::de::IgnoredAny>,
}

/// Checks one produced message; returns a description of what is wrong.
fn check_message(o: &Outgoing, event: &str, seq: u64) -> Result<(), String> {
    let k = &o.routing_key;
    if k.is_empty() {
        return Err("empty routing key".into());
    }
    if k.len() > 255 {
        return Err(format!("routing key of {} bytes: {k}", k.len()));
    }
    if k.split('.').any(str::is_empty) {
        return Err(format!("empty word in routing key {k:?}"));
    }
    if k.contains(['*', '#']) {
        return Err(format!("wildcard in routing key {k:?}"));
    }
    if o.exchange.is_empty() {
        return Err("empty exchange".into());
    }
    // A typed parse (cheaper than a `serde_json::Value` in debug builds):
    // every envelope key must be there, `fields` must be an object.
    let body: Envelope = serde_json::from_slice(&o.body).map_err(|e| {
        format!(
            "body is not a JSON envelope ({e}): {}",
            String::from_utf8_lossy(&o.body)
        )
    })?;
    if body.server != SERVER || body.event != event || body.seq != seq {
        return Err(format!(
            "wrong envelope: {}",
            String::from_utf8_lossy(&o.body)
        ));
    }
    if body.received_at.len() != 24 {
        return Err(format!(
            "wrong envelope: {}",
            String::from_utf8_lossy(&o.body)
        ));
    }
    if o.props.message_id.is_empty() {
        return Err("empty message id".into());
    }
    Ok(())
}

/// Lower-cased names of the documented events.
fn documented() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("tests/data/ami_events.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let events = v["events"].as_object().expect("`events` object");
    assert_eq!(events.len(), 185, "tests/data/ami_events.json changed?");
    events
        .keys()
        .map(|k| (k.to_ascii_lowercase(), k.clone()))
        .collect()
}

fn is_fallback_route(name: &str) -> bool {
    name.starts_with("fallback")
}

#[derive(Default)]
struct Stats {
    events: usize,
    messages: usize,
    keys: BTreeMap<String, usize>,
    exchanges: BTreeMap<String, usize>,
}

/// Routes every event of every trace through `r`, asserting the promises.
/// Returns per-trace statistics.
fn route_traces(r: &Router, set: &str, only_small: bool) -> BTreeMap<String, Stats> {
    let documented = documented();
    let mut all = BTreeMap::new();
    let mut problems = Vec::new();
    for path in traces() {
        let name = trace_name(&path);
        if only_small && name.starts_with("calls_busy") {
            continue;
        }
        let mut st = Stats::default();
        let t0 = std::time::Instant::now();
        let events = trace_events(&path, cap());
        let t1 = std::time::Instant::now();
        for (i, m) in events.iter().enumerate() {
            let seq = i as u64 + 1;
            let event = m.event_name().unwrap().into_owned();
            let (out, outcome) = route(r, m, seq);
            st.events += 1;
            let mut fail = |what: String| {
                if problems.len() < 20 {
                    problems.push(format!("{set}: {name} event #{seq} {event}: {what}"));
                }
            };
            // The drop-noise preset publishes nothing for these, on purpose.
            let dropped = set.ends_with("/drop-noise")
                && ["varset", "newexten", "cel"].contains(&event.to_ascii_lowercase().as_str());
            if out.is_empty() && !dropped {
                fail(format!("no message (matched {} routes)", outcome.matched));
            }
            for e in &outcome.errors {
                fail(format!("route error: {e}"));
            }
            for o in &out {
                if let Err(e) = check_message(o, &event, seq) {
                    fail(e);
                }
                if documented.contains_key(&event.to_ascii_lowercase())
                    && is_fallback_route(&o.route)
                {
                    fail("documented event reached the fallback".into());
                }
                st.messages += 1;
                *st.keys.entry(o.routing_key.clone()).or_default() += 1;
                *st.exchanges.entry(o.exchange.to_string()).or_default() += 1;
            }
        }
        eprintln!(
            "{set} {name}: decode {:?}, route+check {:?}",
            t1 - t0,
            t1.elapsed()
        );
        all.insert(name, st);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    all
}

fn print_summary(set: &str, stats: &BTreeMap<String, Stats>) {
    eprintln!("== routing keys of {set}");
    for (trace, st) in stats {
        eprintln!(
            "-- {trace}: {} events -> {} messages, exchanges {:?}",
            st.events, st.messages, st.exchanges
        );
        for (k, n) in &st.keys {
            eprintln!("   {n:>7}  {k}");
        }
    }
}

#[test]
fn default_set_routes_every_trace_event() {
    let r = load(&root().join("mappings"));
    let stats = route_traces(&r, "mappings", false);
    print_summary("mappings/", &stats);

    // Every message of the default set goes to `ami.events`.
    for (trace, st) in &stats {
        assert!(
            st.exchanges.keys().all(|e| e == "ami.events"),
            "{trace}: {:?}",
            st.exchanges
        );
    }

    // A few keys a consumer can rely on.
    let small = &stats["calls_small.ami"].keys;
    for k in [
        "pbx1.call.Newchannel.local",
        "pbx1.call.Hangup.local",
        "pbx1.call.DialBegin.local",
        "pbx1.call.OriginateResponse.success",
        "pbx1.call.OriginateResponse.failure",
        "pbx1.call.BridgeCreate",
        "pbx1.call.DeviceStateChange.inuse",
        "pbx1.dialplan.Newexten.local",
        "pbx1.dialplan.VarSet.local",
        "pbx1.cel.CHAN_START",
        "pbx1.cdr.Cdr.answered",
        "pbx1.cdr.Cdr.no_answer",
        "pbx1.user.LabEvent",
        "pbx1.agent.QueueCallerJoin.testq",
        "pbx1.dtmf.DTMFBegin.local",
        "pbx1.system.FullyBooted",
        "pbx1.security.SuccessfulAuth.ami",
    ] {
        assert!(small.contains_key(k), "calls_small has no {k:?}");
    }
    let actions = &stats["actions.ami"].keys;
    // Undocumented list items reach the fallback; `Privilege: Call` (Status)
    // is still keyed `call`.
    for k in [
        "pbx1.unclassified.QueueMember",
        "pbx1.unclassified.ChannelHungup",
        "pbx1.call.Status",
        "pbx1.agent.QueueParams.testq",
        "pbx1.security.RequestBadFormat.ami",
    ] {
        assert!(actions.contains_key(k), "actions has no {k:?}");
    }
}

#[test]
fn every_documented_event_has_an_exact_name_route() {
    // Which names do the files list, outside fallback and `"*"` routes?
    let mut named = BTreeSet::new();
    for f in ami2amqp::mapping::mapping_files(&root().join("mappings")).unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        let v: toml::Table = toml::from_str(&text).unwrap();
        for r in v["route"].as_array().unwrap() {
            // Fallback routes, and snapshot routes (they name the bridge's
            // own markers, `SnapshotStart` and `SnapshotEnd`).
            if r.get("fallback").and_then(|b| b.as_bool()) == Some(true)
                || r.get("snapshot").and_then(|b| b.as_bool()) == Some(true)
            {
                continue;
            }
            if let Some(ev) = r.get("events").and_then(|e| e.as_array()) {
                for e in ev {
                    let e = e.as_str().unwrap();
                    if e != "*" {
                        named.insert(e.to_ascii_lowercase());
                    }
                }
            }
        }
    }
    let documented = documented();
    let missing: Vec<_> = documented
        .iter()
        .filter(|(k, _)| !named.contains(*k))
        .map(|(_, v)| v)
        .collect();
    assert!(
        missing.is_empty(),
        "documented events without a route: {missing:?}"
    );
    let extra: Vec<_> = named
        .iter()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    assert!(
        extra.is_empty(),
        "routes name undocumented events: {extra:?}"
    );
}

/// The snapshot routes of the default set (`99-snapshot.toml`): markers on
/// `<server>.snapshot.start|end` with the snapshot id in the message id,
/// every list item of the captures (as the bridge passes it on: our
/// `ActionID` out, `SnapshotId` and `SnapshotKind` in) on
/// `<server>.snapshot.<kind>`; live events never reach them, and the
/// ordinary routes never see a marker named by a snapshot route.
#[test]
fn snapshot_routes_key_markers_and_items() {
    let r = load_dir(&root().join("mappings")).unwrap();
    assert!(r.has_snapshot_routes());
    let at = UNIX_EPOCH + Duration::from_millis(1_795_730_181_136);
    let snap = |m: &Message| {
        let ctx = EventCtx {
            server: SERVER,
            seq: 7,
            received_at: at,
            message: m,
            instance: "test",
        };
        let mut out = Vec::new();
        let o = r.route_snapshot(&ctx, &mut out);
        assert!(o.errors.is_empty(), "{:?}", o.errors);
        out
    };
    for (event, key) in [("SnapshotStart", "start"), ("SnapshotEnd", "end")] {
        let m = Message::from_pairs([("Event", event), ("SnapshotId", "pbx1-17-1")]);
        let out = snap(&m);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].routing_key, format!("{SERVER}.snapshot.{key}"));
        assert_eq!(out[0].props.message_id, format!("pbx1-17-1:{event}"));
    }
    // Every list item of the captures, under each kind.
    let items: Vec<Message> = trace_events(&root().join("tests/traces/actions.ami"), usize::MAX)
        .into_iter()
        .filter(|m| m.contains("ActionID") && !m.contains("EventList"))
        .collect();
    assert!(items.len() > 10, "{}", items.len());
    for m in &items {
        for kind in ["channels", "queues", "devices"] {
            let mut b = ami2amqp::ami::MessageBuilder::default();
            for (k, v) in m.iter_bytes() {
                if !k.eq_ignore_ascii_case(b"ActionID") {
                    b.push(k, v);
                }
            }
            b.push(b"SnapshotId", b"pbx1-17-1");
            b.push(b"SnapshotKind", kind.as_bytes());
            let out = snap(&b.build());
            assert_eq!(out.len(), 1, "{m:?}");
            assert_eq!(out[0].routing_key, format!("{SERVER}.snapshot.{kind}"));
        }
        assert!(snap(m).is_empty(), "no SnapshotKind, no snapshot message");
    }
    // A live DeviceStateChange stays with the ordinary routes.
    let live = Message::from_pairs([
        ("Event", "DeviceStateChange"),
        ("Privilege", "call,all"),
        ("Device", "PJSIP/alice"),
        ("State", "INUSE"),
    ]);
    assert!(snap(&live).is_empty());
    assert_eq!(route(&r, &live, 1).0.len(), 1);
}

/// Each documented event, with only `Event:` and with every documented
/// field (values full of `.`, `*`, `#`), must render under an ordinary
/// route: conditional fields never cause a route error.
fn synthetic_events_render(r: &Router, set: &str) {
    let text = std::fs::read_to_string(root().join("tests/data/ami_events.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut problems = Vec::new();
    for (name, e) in v["events"].as_object().unwrap() {
        let fields: Vec<&str> = e["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let bare = Message::from_pairs([("Event", name.as_str())]);
        let mut full = vec![("Event".to_string(), name.clone())];
        for f in &fields {
            let value = if f.ends_with("Channel") {
                "PJSIP/10.0.0.1-0000002a".to_string()
            } else {
                format!("{f}.v*a#l ue")
            };
            full.push((f.to_string(), value));
        }
        let full = Message::from_pairs(full);
        let dropped = set.ends_with("/drop-noise")
            && ["varset", "newexten", "cel"].contains(&name.to_ascii_lowercase().as_str());
        for (what, m) in [("bare", &bare), ("full", &full)] {
            let (out, outcome) = route(r, m, 1);
            if (out.is_empty() && !dropped) || !outcome.errors.is_empty() {
                problems.push(format!("{set}: {name} ({what}): {:?}", outcome.errors));
            }
            for o in &out {
                if is_fallback_route(&o.route) {
                    problems.push(format!("{set}: {name} ({what}) reached the fallback"));
                }
                if let Err(e) = check_message(o, name, 1) {
                    problems.push(format!("{set}: {name} ({what}): {e}"));
                }
            }
        }
    }
    // The documented spelling of `Newexten` is matched too (names are
    // case-insensitive).
    let m = Message::from_pairs([("Event", "NewExten"), ("Channel", "PJSIP/a-01")]);
    let (out, outcome) = route(r, &m, 1);
    if set.ends_with("/drop-noise") {
        assert_eq!((out.len(), outcome.matched), (0, 1), "{set}: dropped");
    } else {
        assert_eq!(out.len(), 1, "{set}");
        assert!(!is_fallback_route(&out[0].route), "{set}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn documented_events_render_with_and_without_their_fields() {
    let r = load(&root().join("mappings"));
    synthetic_events_render(&r, "mappings");
    // Spot checks of the scheme.
    let key = |pairs: &[(&str, &str)]| {
        let m = Message::from_pairs(pairs.iter().copied());
        route(&r, &m, 1).0[0].routing_key.clone()
    };
    assert_eq!(
        key(&[("Event", "Hangup"), ("Channel", "PJSIP/10.0.0.1-00000001")]),
        "pbx1.call.Hangup.pjsip"
    );
    assert_eq!(key(&[("Event", "Hangup")]), "pbx1.call.Hangup.none");
    assert_eq!(
        key(&[("Event", "UserEvent"), ("UserEvent", "a.b*c")]),
        "pbx1.user.a_b_c"
    );
    assert_eq!(
        key(&[("Event", "CEL"), ("EventName", "CHAN_START")]),
        "pbx1.cel.CHAN_START"
    );
    assert_eq!(
        key(&[("Event", "Cdr"), ("Disposition", "NO ANSWER")]),
        "pbx1.cdr.Cdr.no_answer"
    );
    assert_eq!(
        key(&[("Event", "Reload"), ("Module", "res_pjsip.so")]),
        "pbx1.system.Reload.res_pjsip_so"
    );
    assert_eq!(
        key(&[("Event", "QueueMember"), ("Queue", "q")]),
        "pbx1.unclassified.QueueMember"
    );
    assert_eq!(
        key(&[("Event", "CCAvailable"), ("Privilege", "cc,all")]),
        "pbx1.cc.CCAvailable"
    );
    assert_eq!(
        key(&[("Event", "x".repeat(300).as_str())]).len(),
        255,
        "long keys are cut"
    );
}

fn preset_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("mappings/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn presets_route_every_trace_event() {
    let dirs = preset_dirs();
    let names: Vec<String> = dirs.iter().map(|d| trace_name(d)).collect();
    assert_eq!(
        names,
        [
            "cdr-cel-exchange",
            "drop-noise",
            "per-technology",
            "security-exchange"
        ]
    );
    for d in &dirs {
        let set = format!("mappings/examples/{}", trace_name(d));
        let r = load_preset(d);
        let stats = route_traces(&r, &set, true);
        synthetic_events_render(&r, &set);
        let small = &stats["calls_small.ami"];
        match trace_name(d).as_str() {
            "per-technology" => {
                assert!(small.keys.contains_key("pbx1.call.local.Hangup"));
                assert!(small.keys.contains_key("pbx1.call.local.DialBegin"));
                assert!(
                    small
                        .keys
                        .contains_key("pbx1.call.OriginateResponse.success")
                );
                let m = Message::from_pairs([
                    ("Event", "Newchannel"),
                    ("Channel", "Local/100@test-0000000a;2"),
                ]);
                let (out, _) = route(&r, &m, 1);
                assert_eq!(out[0].routing_key, "pbx1.call.local.Newchannel");
                assert_eq!(
                    out[0].props.headers,
                    vec![("x-peer".into(), "100@test".to_string())]
                );
                let m = Message::from_pairs([("Event", "Hangup"), ("Channel", "odd")]);
                assert_eq!(route(&r, &m, 1).0[0].routing_key, "pbx1.call.none.Hangup");
            }
            "cdr-cel-exchange" => {
                assert_eq!(small.exchanges["ami.cdr"], 28 + 134);
                let cdr = Message::from_pairs([
                    ("Event", "Cdr"),
                    ("Privilege", "cdr,all"),
                    ("Source", "100"),
                    ("Disposition", "ANSWERED"),
                ]);
                let (out, _) = route(&r, &cdr, 1);
                assert_eq!(out.len(), 1);
                assert_eq!(&*out[0].exchange, "ami.cdr");
                let body: serde_json::Value = serde_json::from_slice(&out[0].body).unwrap();
                assert_eq!(
                    body["fields"],
                    serde_json::json!({"src": "100", "disposition": "ANSWERED"})
                );
            }
            "drop-noise" => {
                for k in small.keys.keys() {
                    for e in [".VarSet.", ".Newexten.", ".cel."] {
                        assert!(!k.contains(e), "{k}");
                    }
                }
                assert_eq!(small.keys.values().sum::<usize>(), 749 - 144 - 107 - 134);
            }
            "security-exchange" => {
                assert!(small.exchanges.contains_key("ami.security"));
                let m = Message::from_pairs([
                    ("Event", "SomeNewSecurityEvent"),
                    ("Privilege", "security,all"),
                ]);
                let (out, _) = route(&r, &m, 1);
                assert_eq!(out.len(), 1, "fallback `stop` keeps it to one message");
                assert_eq!(&*out[0].exchange, "ami.security");
                assert_eq!(out[0].routing_key, "pbx1.security.SomeNewSecurityEvent");
            }
            other => panic!("unexpected preset {other}"),
        }
    }
}

/// Traces longer than this (decompressed) are cut to it in debug builds.
const DIGEST_PREFIX: u64 = 2 << 20;

/// (set, trace, part): `("default", "calls_small.ami", "all")`.
type DigestKey = (String, String, String);
/// (lines, md5) of what `map` prints.
type MapDigest = (u64, String);
/// The lines of tests/data/preset_map.txt.
type Digests = BTreeMap<DigestKey, MapDigest>;

fn expected_digests() -> Digests {
    let text = std::fs::read_to_string(root().join("tests/data/preset_map.txt")).unwrap();
    let mut out = Digests::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let w: Vec<&str> = l.split(' ').collect();
        assert_eq!(w.len(), 5, "bad line {l:?}");
        let key = (w[0].to_string(), w[1].to_string(), w[2].to_string());
        let old = out.insert(key, (w[3].parse().unwrap(), w[4].to_string()));
        assert!(old.is_none(), "line repeated: {l:?}");
    }
    out
}

/// The trace to map and the name of its part: the whole file, or in debug
/// builds (of a long trace) its first `DIGEST_PREFIX` bytes cut after the
/// last complete message, written to `tmp` (scripts/preset-digests.sh
/// cuts the same bytes).
fn digest_input(trace: &Path, tmp: &Path) -> (PathBuf, String) {
    let raw = std::fs::read(trace).unwrap();
    let mut data = Vec::new();
    if trace.extension().is_some_and(|e| e == "zst") {
        zstd::Decoder::new(&raw[..])
            .unwrap()
            .take(DIGEST_PREFIX + 1)
            .read_to_end(&mut data)
            .unwrap();
    } else {
        data = raw;
    }
    if cap() == usize::MAX || data.len() as u64 <= DIGEST_PREFIX {
        return (trace.to_path_buf(), "all".into());
    }
    data.truncate(DIGEST_PREFIX as usize);
    let end = data.windows(4).rposition(|w| w == b"\r\n\r\n").unwrap();
    data.truncate(end + 4);
    let cut = tmp.join(format!("{}.prefix.ami", trace_name(trace)));
    std::fs::write(&cut, data).unwrap();
    (cut, format!("prefix:{DIGEST_PREFIX}"))
}

/// Lines and MD5 of what `ami2amqp map --server pbx1` prints (the same
/// function, the same bytes as its `main`).
fn map_digest(dirs: &[PathBuf], trace: &Path) -> MapDigest {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    let mut lines = 0;
    ami2amqp::tools::map_traces(dirs, SERVER, &[trace.to_path_buf()], |m| {
        let mut line = serde_json::to_vec(&m.to_json())?;
        line.push(b'\n');
        h.update(&line);
        lines += 1;
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (lines, hex)
}

/// Each preset is an overlay on the default set (only the files it
/// changes). tests/data/preset_map.txt holds what `ami2amqp map` printed
/// for every trace with the presets as full copies (before they shrank), and
/// for the default set: the overlays must print exactly that.
#[test]
fn presets_as_overlays_map_every_trace_as_the_full_copies_did() {
    let expected = expected_digests();
    let mut sets = vec![("default".to_string(), vec![root().join("mappings")])];
    for d in preset_dirs() {
        sets.push((trace_name(&d), vec![root().join("mappings"), d]));
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    for t in traces() {
        let (path, part) = digest_input(&t, tmp.path());
        inputs.push((trace_name(&t), path, part));
    }
    let got: Vec<(DigestKey, MapDigest)> = std::thread::scope(|s| {
        let handles: Vec<_> = sets
            .iter()
            .map(|(set, dirs)| {
                let inputs = &inputs;
                s.spawn(move || {
                    inputs
                        .iter()
                        .map(|(name, path, part)| {
                            let key = (set.clone(), name.clone(), part.clone());
                            (key, map_digest(dirs, path))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // Every set and trace is listed, and nothing else.
    let listed: BTreeSet<(&str, &str)> = expected
        .keys()
        .map(|(s, t, _)| (s.as_str(), t.as_str()))
        .collect();
    let computed: BTreeSet<(&str, &str)> = got
        .iter()
        .map(|((s, t, _), _)| (s.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        listed, computed,
        "tests/data/preset_map.txt vs the presets and traces"
    );
    let mut wrong = Vec::new();
    for (key, digest) in &got {
        match expected.get(key) {
            Some(e) if e == digest => {}
            e => wrong.push(format!("{key:?}: expected {e:?}, mapped {digest:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "`ami2amqp map --mappings mappings [--mappings mappings/examples/SET] TRACE` \
         prints something else than before:\n{}",
        wrong.join("\n")
    );
}
