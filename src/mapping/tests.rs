//! Tests of loading and routing together: a mapping text in, messages out.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::ami::Message;

fn load(text: &str) -> Result<Router, LoadError> {
    load_str(&[(PathBuf::from("m.toml"), text.to_string())])
}

fn route(r: &Router, m: &Message) -> (Vec<Outgoing>, RouteOutcome) {
    let ctx = EventCtx {
        server: "pbx1",
        seq: 7,
        received_at: UNIX_EPOCH + Duration::from_millis(1_795_730_181_136),
        message: m,
        instance: "i1",
    };
    let mut out = Vec::new();
    let o = r.route(&ctx, &mut out);
    (out, o)
}

fn newchannel() -> Message {
    Message::from_pairs([
        ("Event", "Newchannel"),
        ("Privilege", "call,all"),
        ("Channel", "PJSIP/10.0.0.1-00000001"),
        ("Uniqueid", "1795730181.0"),
        ("Linkedid", "1795730181.0"),
        ("ChanVariable", "LABVAR=1"),
        ("ChanVariable", "LABTAG=x"),
    ])
}

const BASIC: &str = r#"
[[route]]
name = "channel lifecycle"
events = ["Newchannel", "Hangup"]
when = { Channel = '^(?P<tech>[^/]+)/(?P<peer>.+)-[0-9a-f]+$' }
exchange = "ami.events"
routing_key = "{server}.call.{Event}.{tech|lower}.{peer}"
properties = { headers = { "x-linkedid" = "{Linkedid}" } }
"#;

#[test]
fn routes_with_captures_and_safe_keys() {
    let r = load(BASIC).unwrap();
    let (out, o) = route(&r, &newchannel());
    assert_eq!(o.matched, 1);
    assert_eq!(out.len(), 1);
    let m = &out[0];
    assert_eq!(&*m.exchange, "ami.events");
    assert_eq!(m.routing_key, "pbx1.call.Newchannel.pjsip.10_0_0_1");
    assert_eq!(
        m.props.headers,
        vec![("x-linkedid".into(), "1795730181.0".to_string())]
    );
    assert!(m.props.persistent);
    assert_eq!(m.props.kind, "Newchannel");
    assert_eq!(m.props.message_id, "i1:pbx1:7:0");
    assert_eq!(&*m.props.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body["server"], "pbx1");
    assert_eq!(body["event"], "Newchannel");
    assert_eq!(body["seq"], 7);
    assert_eq!(body["received_at"], "2026-11-26T21:56:21.136Z");
    assert_eq!(
        body["fields"]["ChanVariable"],
        serde_json::json!(["LABVAR=1", "LABTAG=x"])
    );
    assert_eq!(body["fields"]["Uniqueid"], "1795730181.0");
}

#[test]
fn event_names_are_case_insensitive_and_unmatched_counted() {
    let r = load(BASIC).unwrap();
    let m = Message::from_pairs([
        ("Event", "NEWCHANNEL"),
        ("Channel", "Local/1@x-0001"),
        ("Linkedid", "1"),
    ]);
    assert_eq!(route(&r, &m).0.len(), 1);
    let other = Message::from_pairs([("Event", "VarSet")]);
    let (out, o) = route(&r, &other);
    assert!(out.is_empty());
    assert_eq!(o.matched, 0);
}

#[test]
fn field_names_are_case_insensitive() {
    let r = load(
        r#"
[[route]]
name = "cel"
events = ["CEL"]
exchange = "x"
routing_key = "{UniqueID}.{Linkedid}"
"#,
    )
    .unwrap();
    let m = Message::from_pairs([("Event", "CEL"), ("UniqueID", "1.1"), ("LinkedID", "1.0")]);
    assert_eq!(route(&r, &m).0[0].routing_key, "1_1.1_0");
}

#[test]
fn missing_field_is_an_error_not_an_empty_word() {
    let r = load(
        r#"
[[route]]
name = "needs queue"
events = ["*"]
exchange = "x"
routing_key = "{server}.{Queue}"
"#,
    )
    .unwrap();
    let (out, o) = route(&r, &newchannel());
    assert!(out.is_empty());
    assert_eq!(o.matched, 1);
    assert_eq!(o.errors.len(), 1);
    assert_eq!(&*o.errors[0].route, "needs queue");
    assert_eq!(o.errors[0].error.name, "Queue");
}

#[test]
fn fan_out_stop_fallback_and_drop() {
    let r = load(
        r#"
[[route]]
name = "drop varset"
events = ["VarSet"]
drop = true
stop = true

[[route]]
name = "a"
events = ["Newchannel"]
exchange = "one"
routing_key = "a"

[[route]]
name = "b"
events_regex = "^New"
exchange = "two"
routing_key = "b"
stop = true

[[route]]
name = "c never"
events = ["*"]
exchange = "three"
routing_key = "c"

[[route]]
name = "catch all"
events = ["*"]
fallback = true
exchange = "rest"
routing_key = "{server}.{Privilege|first|default:none}.{Event}"
"#,
    )
    .unwrap();
    let (out, _) = route(&r, &newchannel());
    let ex: Vec<_> = out.iter().map(|o| &*o.exchange).collect();
    assert_eq!(ex, vec!["one", "two"]);
    // message ids differ per route
    assert_ne!(out[0].props.message_id, out[1].props.message_id);
    // "c never" is an ordinary route that matches everything else
    let (out, _) = route(&r, &Message::from_pairs([("Event", "Hangup")]));
    assert_eq!(
        out.iter().map(|o| &*o.exchange).collect::<Vec<_>>(),
        vec!["three"]
    );
    // drop: matched, nothing published, fallback not used
    let (out, o) = route(&r, &Message::from_pairs([("Event", "VarSet")]));
    assert!(out.is_empty());
    assert_eq!(o.matched, 1);
    let exchanges: Vec<_> = r.exchanges().iter().map(|(e, _)| e.to_string()).collect();
    assert_eq!(exchanges, vec!["one", "rest", "three", "two"]);
}

#[test]
fn fallback_only_when_nothing_matched() {
    let r = load(
        r#"
[[route]]
name = "hangups"
events = ["Hangup"]
exchange = "x"
routing_key = "h"

[[route]]
name = "rest"
events = ["*"]
fallback = true
exchange = "x"
routing_key = "{server}.{Privilege|first|default:none}.{Event}"
"#,
    )
    .unwrap();
    assert_eq!(
        route(&r, &Message::from_pairs([("Event", "Hangup")])).0[0].routing_key,
        "h"
    );
    let (out, _) = route(&r, &newchannel());
    assert_eq!(out[0].routing_key, "pbx1.call.Newchannel");
    let (out, _) = route(&r, &Message::from_pairs([("Event", "QueueMember")]));
    assert_eq!(out[0].routing_key, "pbx1.none.QueueMember");
}

#[test]
fn absent_and_when_conditions() {
    let r = load(
        r#"
[[route]]
name = "no dest"
events = ["DialBegin"]
absent = ["DestChannel"]
when = { Channel = "^Local/" }
exchange = "x"
routing_key = "k"
"#,
    )
    .unwrap();
    let a = Message::from_pairs([("Event", "DialBegin"), ("Channel", "Local/1@t-1;1")]);
    let b = Message::from_pairs([
        ("Event", "DialBegin"),
        ("Channel", "Local/1@t-1;1"),
        ("DestChannel", "y"),
    ]);
    let c = Message::from_pairs([("Event", "DialBegin"), ("Channel", "PJSIP/a-1")]);
    assert_eq!(route(&r, &a).0.len(), 1);
    assert_eq!(route(&r, &b).0.len(), 0);
    assert_eq!(route(&r, &c).0.len(), 0);
}

#[test]
fn body_include_exclude_rename_and_fields_format() {
    let r = load(
        r#"
[[route]]
name = "slim"
events = ["Newchannel"]
exchange = "x"
routing_key = "k"
body = { include = ["channel", "uniqueid", "ChanVariable"], rename = { Uniqueid = "id" } }

[[route]]
name = "flat"
events = ["Newchannel"]
exchange = "y"
routing_key = "k"
body = { format = "fields", exclude = ["ChanVariable", "Privilege"] }
properties = { persistent = false, priority = 3, expiration_ms = 60000, content_type = "application/vnd.ami+json", type = "ami.{Event|lower}", message_id = "{Uniqueid}-{seq}" }
"#,
    )
    .unwrap();
    let (out, _) = route(&r, &newchannel());
    let b0: serde_json::Value = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(
        b0["fields"],
        serde_json::json!({"Channel": "PJSIP/10.0.0.1-00000001", "id": "1795730181.0", "ChanVariable": ["LABVAR=1", "LABTAG=x"]})
    );
    let b1: serde_json::Value = serde_json::from_slice(&out[1].body).unwrap();
    assert_eq!(
        b1,
        serde_json::json!({"Event": "Newchannel", "Channel": "PJSIP/10.0.0.1-00000001", "Uniqueid": "1795730181.0", "Linkedid": "1795730181.0"})
    );
    let p = &out[1].props;
    assert!(!p.persistent);
    assert_eq!(p.priority, Some(3));
    assert_eq!(p.expiration_ms, Some(60000));
    assert_eq!(&*p.content_type, "application/vnd.ami+json");
    assert_eq!(p.kind, "ami.newchannel");
    assert_eq!(p.message_id, "1795730181.0-7");
}

#[test]
fn non_utf8_values_reach_json_as_latin1() {
    let r = load(BASIC).unwrap();
    let m = Message::from_pairs([
        (&b"Event"[..], &b"Newchannel"[..]),
        (b"Channel", b"SIP/a-0001"),
        (b"Linkedid", b"1"),
        (b"CallerIDName", b"Jos\xe9"),
    ]);
    let (out, _) = route(&r, &m);
    let b: serde_json::Value = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(b["fields"]["CallerIDName"], "José");
}

#[test]
fn snapshot_routes_are_a_tier_of_their_own() {
    let r = load(
        r#"
[[route]]
name = "everything"
events = ["*"]
exchange = "x"
routing_key = "live.{Event}"

[[route]]
name = "snapshot items"
events = ["*"]
snapshot = true
when = { SnapshotKind = '.' }
exchange = "x"
routing_key = "{server}.snapshot.{SnapshotKind}"
"#,
    )
    .unwrap();
    assert!(r.has_snapshot_routes());
    let item = Message::from_pairs([
        ("Event", "CoreShowChannel"),
        ("Channel", "PJSIP/a-1"),
        ("SnapshotId", "pbx1-1-1"),
        ("SnapshotKind", "channels"),
    ]);
    // The ordinary routes take live events only, the snapshot routes
    // snapshot items only, whatever the event.
    let (out, _) = route(&r, &newchannel());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].routing_key, "live.Newchannel");
    let ctx = EventCtx {
        server: "pbx1",
        seq: 8,
        received_at: UNIX_EPOCH,
        message: &item,
        instance: "i1",
    };
    let mut out = Vec::new();
    let o = r.route_snapshot(&ctx, &mut out);
    assert_eq!((o.matched, out.len()), (1, 1));
    assert_eq!(out[0].routing_key, "pbx1.snapshot.channels");
    let ctx = EventCtx {
        message: &newchannel(),
        ..ctx
    };
    let mut out = Vec::new();
    assert_eq!(r.route_snapshot(&ctx, &mut out).matched, 0);
    assert!(!load("").unwrap().has_snapshot_routes());
    let e = errors(
        r#"
[[route]]
name = "both"
events = ["*"]
snapshot = true
fallback = true
exchange = "x"
routing_key = "k"
"#,
    );
    assert_eq!(
        e,
        [
            "m.toml:3:8: route \"both\": `fallback` and `snapshot` exclude each other (a snapshot route only sees snapshot items and markers)"
        ]
    );
}

fn errors(text: &str) -> Vec<String> {
    load(text)
        .unwrap_err()
        .0
        .iter()
        .map(|d| d.to_string())
        .collect()
}

#[test]
fn diagnostics_name_file_line_and_column() {
    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting-key = \"k\"\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("m.toml:5:1: unknown field `routing-key`"),
        "{e:?}"
    );

    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nwhen = { Channel = '^(' }\nexchange = \"e\"\nrouting_key = \"k\"\n",
    );
    assert!(
        e[0].starts_with("m.toml:4:20: route \"x\", `when.Channel`: invalid regex"),
        "{e:?}"
    );

    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"{server}.{Event|lowr}\"\n",
    );
    assert!(
        e[0].starts_with("m.toml:5:26: route \"x\", `routing_key`: unknown filter `lowr`"),
        "{e:?}"
    );

    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"k\"\n[[route]]\nname = \"X\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"k\"\n",
    );
    assert!(
        e[0].starts_with("m.toml:7:8: duplicate route name \"X\" (first defined at m.toml:2)"),
        "{e:?}"
    );

    let e = errors("[[route]]\nname = \"x\"\nexchange = \"e\"\nrouting_key = \"k\"\n");
    assert!(e[0].contains("says nothing about which events"), "{e:?}");

    let e = errors("[[route]]\nname = \"x\"\nevents = [\"A\"]\n");
    assert!(
        e.iter().any(|l| l.contains("`exchange` is missing")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.contains("`routing_key` is missing")),
        "{e:?}"
    );

    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nexchange_type = \"direct\"\nrouting_key = \"k\"\n[[route]]\nname = \"y\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"k\"\n",
    );
    assert!(e[0].contains("declared `topic` here but `direct`"), "{e:?}");

    let e = errors("[[route\nname = \"x\"\n");
    assert!(e[0].starts_with("m.toml:1:"), "{e:?}");
}

#[test]
fn all_errors_are_reported_at_once() {
    let e = errors(
        "[[route]]\nname = \"a\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"{x|bad}\"\n[[route]]\nname = \"b\"\nevents_regex = \"(\"\nexchange = \"e\"\nrouting_key = \"k\"\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn duplicate_names_across_files() {
    let a = (
        PathBuf::from("10-a.toml"),
        "[[route]]\nname = \"same\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"k\"\n"
            .to_string(),
    );
    let b = (PathBuf::from("20-b.toml"), a.1.clone());
    let e = load_str(&[a, b]).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].file, PathBuf::from("20-b.toml"));
    assert!(e.0[0].message.contains("first defined at 10-a.toml:2"));
}

#[test]
fn wildcards_in_the_key_template_are_rejected() {
    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"a.*.{Event}\"\n",
    );
    assert!(
        e[0].starts_with("m.toml:5:18: route \"x\", `routing_key`: `*` and `#`"),
        "{e:?}"
    );
    // inside a hole they are a filter argument, not a wildcard
    assert!(load("[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"{Event|replace:a:*}\"\n").is_ok());
}

#[test]
fn rename_never_writes_a_key_twice() {
    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"k\"\nbody = { include = [\"Uniqueid\", \"Linkedid\"], rename = { Uniqueid = \"Linkedid\" } }\n",
    );
    assert!(e[0].contains("already a field name"), "{e:?}");
    let r = load("[[route]]\nname = \"x\"\nevents = [\"*\"]\nexchange = \"e\"\nrouting_key = \"k\"\nbody = { rename = { Uniqueid = \"Linkedid\" } }\n").unwrap();
    let (out, _) = route(&r, &newchannel());
    let text = String::from_utf8(out[0].body.clone()).unwrap();
    assert_eq!(text.matches("\"Linkedid\"").count(), 1, "{text}");
}

#[test]
fn template_errors_point_into_multiline_and_escaped_strings() {
    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"\"\"\n{Event|bad}\"\"\"\n",
    );
    assert!(e[0].starts_with("m.toml:6:2:"), "{e:?}");
    let e = errors(
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"\\u0041.{Event|bad}\"\n",
    );
    assert!(e[0].starts_with("m.toml:5:24:"), "{e:?}");
}

#[test]
fn dry_run_view_keeps_field_order() {
    let r = load(BASIC).unwrap();
    let (out, _) = route(&r, &newchannel());
    let v = out[0].to_json();
    let keys: Vec<&String> = v["body"]["fields"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        vec![
            "Event",
            "Privilege",
            "Channel",
            "Uniqueid",
            "Linkedid",
            "ChanVariable"
        ]
    );
}

mod overlays {
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    use crate::mapping::load::{MappingFile, load_dirs, merge_overlays, overlay_files};

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn later_directories_replace_same_names_and_add_new_ones_in_name_order() {
        let merged = merge_overlays(&[
            vec![
                p("m/10-call.toml"),
                p("m/60-security.toml"),
                p("m/99-fallback.toml"),
            ],
            vec![p("o/60-security.toml"), p("o/95-ops.toml")],
        ]);
        let f = |path: &str, replaces: Option<&str>| MappingFile {
            path: p(path),
            replaces: replaces.map(p),
        };
        assert_eq!(
            merged,
            [
                f("m/10-call.toml", None),
                f("o/60-security.toml", Some("m/60-security.toml")),
                f("o/95-ops.toml", None),
                f("m/99-fallback.toml", None),
            ]
        );
    }

    proptest! {
        /// The merge is "the last directory naming a file wins", in name
        /// order: checked against a direct definition of that.
        #[test]
        fn merge_takes_each_name_from_the_last_directory_that_has_it(
            dirs in prop::collection::vec(prop::collection::btree_set(0u8..12, 0..8), 1..5)
        ) {
            let listings: Vec<Vec<PathBuf>> = dirs
                .iter()
                .enumerate()
                .map(|(d, names)| names.iter().map(|n| p(&format!("d{d}/{n:02}.toml"))).collect())
                .collect();
            let merged = merge_overlays(&listings);
            let mut names: Vec<u8> = dirs.iter().flatten().copied().collect();
            names.sort();
            names.dedup();
            prop_assert_eq!(merged.len(), names.len());
            for (m, n) in merged.iter().zip(&names) {
                let holders: Vec<usize> = (0..dirs.len()).filter(|d| dirs[*d].contains(n)).collect();
                let last = holders[holders.len() - 1];
                prop_assert_eq!(&m.path, &p(&format!("d{last}/{n:02}.toml")));
                let before = holders.len().checked_sub(2).map(|i| p(&format!("d{}/{n:02}.toml", holders[i])));
                prop_assert_eq!(&m.replaces, &before);
            }
        }
    }

    const ROUTE: &str =
        "[[route]]\nname = \"NAME\"\nevents = [\"*\"]\nexchange = \"x\"\nrouting_key = \"KEY\"\n";

    fn write(dir: &Path, file: &str, name: &str, key: &str) {
        let text = ROUTE.replace("NAME", name).replace("KEY", key);
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn an_overlay_set_loads_replaced_and_added_files_and_names_the_real_file_in_errors() {
        let base = tempfile::tempdir().unwrap();
        let over = tempfile::tempdir().unwrap();
        write(base.path(), "10-a.toml", "a", "base.a");
        write(base.path(), "20-b.toml", "b", "base.b");
        write(over.path(), "10-a.toml", "a", "over.a");
        write(over.path(), "15-c.toml", "c", "over.c");
        let dirs = [base.path().to_path_buf(), over.path().to_path_buf()];
        let r = load_dirs(&dirs).unwrap();
        let files: Vec<PathBuf> = overlay_files(&dirs)
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            files,
            [
                over.path().join("10-a.toml"),
                over.path().join("15-c.toml"),
                base.path().join("20-b.toml")
            ]
        );
        assert_eq!(r.files(), &files[..]);
        assert_eq!(r.len(), 3, "the replaced file's route is gone");
        // A file of only comments switches the earlier file off.
        std::fs::write(over.path().join("20-b.toml"), "# not wanted here\n").unwrap();
        assert_eq!(load_dirs(&dirs).unwrap().len(), 2);
        std::fs::remove_file(over.path().join("20-b.toml")).unwrap();

        // An error in the overlay is reported at the overlay's file.
        std::fs::write(over.path().join("15-c.toml"), "[[route]]\nname = 1\n").unwrap();
        let e = load_dirs(&dirs).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2:8:", over.path().join("15-c.toml").display())),
            "{e}"
        );
        // A route name defined again by an added file: both real files named
        // (the added 15-c.toml loads before the base's 20-b.toml).
        write(over.path(), "15-c.toml", "b", "over.b");
        let e = load_dirs(&dirs).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2:8:", base.path().join("20-b.toml").display())),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "first defined at {}:2",
                over.path().join("15-c.toml").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn directory_problems_are_all_reported() {
        let base = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        write(base.path(), "10-a.toml", "a", "k");
        let missing = base.path().join("nope");
        let dirs = [
            base.path().to_path_buf(),
            empty.path().to_path_buf(),
            missing.clone(),
            base.path().join("."),
        ];
        let e = overlay_files(&dirs).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(
            lines[0].ends_with("no .toml mapping files in this directory"),
            "{e}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "{}: cannot read the mappings directory",
                missing.display()
            )),
            "{e}"
        );
        assert!(
            lines[2].ends_with("listed twice in the mappings directories"),
            "{e}"
        );
        assert!(overlay_files(&[]).is_err());
    }
}

/// A route with a mistake in every section reports all of them, in the
/// order of the sections (compile_route checks them one after another).
#[test]
fn route_errors_come_in_section_order() {
    let e = load(
        r#"
[[route]]
name = "all wrong"
events = []
when = { Channel = "(" }
properties = { type = "{unclosed", priority = 12 }
body = { rename = { A = "X", B = "X" } }
"#,
    )
    .unwrap_err();
    let got: Vec<&str> = e.0.iter().map(|d| d.message.as_str()).collect();
    let want = [
        "`events`: the list is empty",
        "`when.Channel`",
        "`exchange` is missing",
        "`routing_key` is missing",
        "`properties.type`",
        "`properties.priority` is 12",
        "`body.rename` maps \"B\" to \"X\"",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(g.contains(w), "expected {w:?} in {g:?}; all: {got:#?}");
    }
}

#[test]
fn json_lines_are_to_json_byte_for_byte() {
    let r = load(BASIC).unwrap();
    let (out, _) = route(&r, &newchannel());
    let mut m = out[0].clone();
    let want = |m: &crate::mapping::Outgoing| {
        let mut v = serde_json::to_vec(&m.to_json()).unwrap();
        v.push(b'\n');
        v
    };
    let mut line = Vec::new();
    m.write_json_line(&mut line).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&line),
        String::from_utf8_lossy(&want(&m))
    );
    // Bodies that are not compact JSON take the Value path.
    for body in [
        &b"not json"[..],
        b"{ \"a\" : 1 }",
        b"{\"a\":\"x y\\\" z\"}",
        b"\xff\xfe",
    ] {
        m.body = body.to_vec();
        line.clear();
        m.write_json_line(&mut line).unwrap();
        assert_eq!(line, want(&m), "{}", String::from_utf8_lossy(body));
    }
}
