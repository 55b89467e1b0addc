//! docs/mapping.md and the presets in mappings/examples/ say true things.
//!
//! - Every ` ```toml ` block of docs/mapping.md is a complete mapping file
//!   that loads on its own (` ```toml,ignore ` blocks are skipped).
//! - A ` ```toml,error ` block must fail to load, as `mappings/95-ops.toml`,
//!   with exactly the diagnostics of the ` ```text ` block that follows it.
//! - The ` ```text,filters ` table gives, per row, a template, the value of
//!   its field, and how it renders as text and in a routing key.
//! - Every key of the format (as serde lists them) and every filter has a
//!   row in the guide's tables.
//! - The walkthrough's rule, added to the default set, publishes what the
//!   guide says it does on `tests/traces/calls_small.ami`.
//! - Every preset directory loads (each file alone, and as an overlay on the
//!   default set) and holds no copy of a default file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use ami2amqp::ami::decode_all;
use ami2amqp::ami::{Frame, Limits, Message};
use ami2amqp::mapping::{EventCtx, load_dirs, load_str};
use ami2amqp::mapping::{FILTERS, Lookup, Template};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn guide() -> String {
    std::fs::read_to_string(root().join("docs/mapping.md")).unwrap()
}

/// A fenced block: its info string, its text, the line of its opening fence.
#[derive(Debug)]
struct Block {
    info: String,
    text: String,
    line: usize,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, l) in md.lines().enumerate() {
        match open.as_mut() {
            None => {
                if let Some(info) = l.strip_prefix("```") {
                    open = Some(Block {
                        info: info.trim().to_string(),
                        text: String::new(),
                        line: i + 1,
                    });
                }
            }
            Some(b) => {
                if l.trim_end() == "```" {
                    out.push(open.take().unwrap());
                } else {
                    assert!(
                        !l.starts_with("```"),
                        "docs/mapping.md:{}: text after a closing fence",
                        i + 1
                    );
                    b.text.push_str(l);
                    b.text.push('\n');
                }
            }
        }
    }
    assert!(
        open.is_none(),
        "docs/mapping.md: a code block is never closed"
    );
    out
}

fn load_one(name: &str, text: &str) -> Result<ami2amqp::mapping::Router, String> {
    load_str(&[(PathBuf::from(name), text.to_string())]).map_err(|e| e.to_string())
}

#[test]
fn every_toml_block_of_the_guide_loads() {
    let md = guide();
    let all = blocks(&md);
    let mut loaded = 0;
    let mut problems = Vec::new();
    for (i, b) in all.iter().enumerate() {
        let where_ = format!("docs/mapping.md:{}", b.line);
        match b.info.as_str() {
            "toml" => match load_one(&where_, &b.text) {
                Ok(r) => {
                    assert!(!r.is_empty(), "{where_}: a block without routes");
                    loaded += 1;
                }
                Err(e) => problems.push(format!("{where_}: does not load:\n{e}")),
            },
            "toml,ignore" => {}
            "toml,error" => {
                let expected = all
                    .get(i + 1)
                    .filter(|n| n.info == "text")
                    .unwrap_or_else(|| {
                        panic!("{where_}: a toml,error block must be followed by a text block")
                    });
                match load_one("mappings/95-ops.toml", &b.text) {
                    Ok(_) => problems.push(format!("{where_}: loads, but should not")),
                    Err(e) => {
                        if e.trim_end() != expected.text.trim_end() {
                            problems.push(format!(
                                "{where_}: the diagnostics differ from the guide's.\n--- guide:\n{}--- actual:\n{e}",
                                expected.text
                            ));
                        }
                    }
                }
            }
            other if other.starts_with("toml") => {
                problems.push(format!("{where_}: unknown block type {other:?}"))
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(
        loaded >= 10,
        "only {loaded} toml blocks in docs/mapping.md?"
    );
}

/// A single-name environment for a template.
struct One(Option<String>);

impl Lookup for One {
    fn lookup(&self, _name: &str) -> Option<Cow<'_, str>> {
        self.0.as_deref().map(Cow::Borrowed)
    }
}

#[test]
fn the_filter_examples_are_right() {
    let md = guide();
    let b = blocks(&md)
        .into_iter()
        .find(|b| b.info == "text,filters")
        .expect("a text,filters block");
    let cell = |s: &str| -> Option<String> {
        match s {
            "(missing)" | "(error)" => None,
            "(empty)" => Some(String::new()),
            s => Some(s.to_string()),
        }
    };
    let sep = regex::Regex::new(r"\s{2,}").unwrap();
    let mut rows = 0;
    let mut problems = Vec::new();
    for (i, l) in b.text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = sep.split(l.trim()).collect();
        assert_eq!(cols.len(), 4, "filters table line {}: {l:?}", i + 1);
        let t = Template::parse(cols[0]).unwrap_or_else(|e| panic!("{}: {e}", cols[0]));
        let env = One(cell(cols[1]));
        let mut text = String::new();
        let text = t.render(&env, &mut text).ok().map(|_| text);
        let mut key = String::new();
        let key = t.render_key(&env, &mut key).ok().map(|_| key);
        if text != cell(cols[2]) || key != cell(cols[3]) {
            problems.push(format!("{l}\n    actual: text {text:?}, key {key:?}"));
        }
        rows += 1;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(rows >= 15);
}

/// The keys serde accepts in a table, from its "unknown field" message.
fn accepted_keys(text: &str) -> Vec<String> {
    let e = load_one("x.toml", text).unwrap_err();
    let list = e
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected error: {e}"));
    list.split(", ")
        .map(|k| k.trim().trim_matches('`').to_string())
        .collect()
}

#[test]
fn every_key_and_filter_is_documented() {
    let md = guide();
    let route =
        "[[route]]\nname = \"x\"\nevents = [\"A\"]\nexchange = \"e\"\nrouting_key = \"k\"\n";
    let sets = [
        ("route", accepted_keys(&format!("{route}bogus = 1\n"))),
        (
            "body",
            accepted_keys(&format!("{route}body = {{ bogus = 1 }}\n")),
        ),
        (
            "properties",
            accepted_keys(&format!("{route}properties = {{ bogus = 1 }}\n")),
        ),
    ];
    let mut missing = Vec::new();
    for (table, keys) in &sets {
        assert!(keys.len() >= 4, "{table}: {keys:?}");
        for k in keys {
            if !md.contains(&format!("| `{k}` |")) {
                missing.push(format!("{table}.{k}"));
            }
        }
    }
    for f in FILTERS.split(", ") {
        if !md.contains(&format!("| `{f}` |")) {
            missing.push(format!("filter {f}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/mapping.md has no table row for: {missing:?}"
    );
}

fn events_of(path: &Path) -> Vec<Message> {
    decode_all(&std::fs::read(path).unwrap(), Limits::default())
        .into_iter()
        .filter_map(|f| match f {
            Frame::Message(m) if m.event_name().is_some() => Some(m),
            _ => None,
        })
        .collect()
}

fn ctx(m: &Message, seq: u64) -> EventCtx<'_> {
    EventCtx {
        server: "pbx1",
        seq,
        received_at: UNIX_EPOCH + Duration::from_millis(1_795_730_181_136),
        message: m,
        instance: "dryrun",
    }
}

#[test]
fn the_first_example_and_the_walkthrough_do_what_the_guide_says() {
    let md = guide();
    let all = blocks(&md);
    let find = |needle: &str| {
        all.iter()
            .find(|b| b.info == "toml" && b.text.contains(needle))
            .unwrap_or_else(|| panic!("no toml block with {needle:?}"))
    };

    // Section 2.
    let first = load_one("first.toml", &find("name = \"channel lifecycle\"").text).unwrap();
    let m = Message::from_pairs([
        ("Event", "Hangup"),
        ("Privilege", "call,all"),
        ("Channel", "PJSIP/alice-00000001"),
        ("Uniqueid", "1795730181.0"),
        ("Cause", "16"),
    ]);
    let mut out = Vec::new();
    first.route(&ctx(&m, 7), &mut out);
    assert_eq!(out[0].routing_key, "pbx1.call.Hangup.pjsip");
    let body: serde_json::Value = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(body["received_at"], "2026-11-26T21:56:21.136Z");
    assert!(md.contains(&String::from_utf8(out[0].body.clone()).unwrap()[..60]));

    // Section 12: the default set plus the walkthrough's file.
    let ops = &find("name = \"ops: failed calls\"").text;
    let mut sources: Vec<(PathBuf, String)> =
        ami2amqp::mapping::mapping_files(&root().join("mappings"))
            .unwrap()
            .into_iter()
            .map(|p| {
                let t = std::fs::read_to_string(&p).unwrap();
                (p, t)
            })
            .collect();
    // In name order, as in a directory: before 99-fallback.toml.
    sources.push((root().join("mappings/95-ops.toml"), ops.clone()));
    sources.sort();
    let set = load_str(&sources).unwrap();
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = Vec::new();
    let mut total = 0;
    let events = events_of(&root().join("tests/traces/calls_small.ami"));
    for (i, m) in events.iter().enumerate() {
        let mut out = Vec::new();
        let o = set.route(&ctx(m, i as u64 + 1), &mut out);
        assert!(o.errors.is_empty(), "{:?}", o.errors);
        total += out.len();
        for x in out.iter().filter(|x| &*x.exchange == "ops") {
            *keys.entry(x.routing_key.clone()).or_default() += 1;
            ids.push(x.props.message_id.clone());
        }
    }
    assert_eq!(
        keys,
        BTreeMap::from([
            ("pbx1.failed.call_rejected.local".to_string(), 2),
            (
                "pbx1.failed.circuit/channel_congestion.local".to_string(),
                2
            ),
            ("pbx1.failed.user_busy.local".to_string(), 2),
        ])
    );
    assert_eq!(
        total,
        events.len() + 6,
        "the default messages are unchanged"
    );
    assert_eq!(ids[0], "dryrun:pbx1:180:52");
    assert!(md.contains(&ids[0]), "the guide quotes the first id");
    for k in keys.keys() {
        assert!(md.contains(k.as_str()), "the guide does not show {k}");
    }
}

fn preset_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("mappings/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    assert!(v.len() >= 3, "{v:?}");
    v
}

#[test]
fn every_preset_loads_as_an_overlay_on_the_default_set() {
    for d in preset_dirs() {
        let dirs = [root().join("mappings"), d.clone()];
        let r = load_dirs(&dirs).unwrap_or_else(|e| panic!("{}:\n{e}", d.display()));
        assert!(r.len() > 40, "{}: {} routes", d.display(), r.len());
        for f in ami2amqp::mapping::mapping_files(&d).unwrap() {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(
                text.starts_with("# Preset \""),
                "{}: the first line must say which preset this is",
                f.display()
            );
            load_one(&f.display().to_string(), &text)
                .unwrap_or_else(|e| panic!("{} alone:\n{e}", f.display()));
        }
    }
}

/// A preset holds only the files it changes: none of its files has the
/// same routes as the default file it replaces.
#[test]
fn presets_hold_no_copy_of_a_default_file() {
    let parse =
        |p: &Path| -> toml::Table { toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let mut files = 0;
    for d in preset_dirs() {
        for f in ami2amqp::mapping::mapping_files(&d).unwrap() {
            files += 1;
            let default = root().join("mappings").join(f.file_name().unwrap());
            if default.exists() {
                assert!(
                    parse(&f) != parse(&default),
                    "{} is a copy of {}: delete it, the overlay takes the default file",
                    f.display(),
                    default.display()
                );
            }
        }
    }
    assert!(files >= 3, "{files}");
}

#[test]
fn the_quoted_route_error_is_the_real_one() {
    let md = guide();
    let quoted = blocks(&md)
        .into_iter()
        .find(|b| b.info == "text" && b.text.starts_with("route \"needs queue\""))
        .expect("the guide quotes a route error");
    let r = load_one(
        "x.toml",
        "[[route]]\nname = \"needs queue\"\nevents = [\"*\"]\nexchange = \"x\"\nrouting_key = \"{server}.{Queue}\"\n",
    )
    .unwrap();
    let m = Message::from_pairs([("Event", "Hangup")]);
    let mut out = Vec::new();
    let o = r.route(&ctx(&m, 1), &mut out);
    assert!(out.is_empty());
    assert_eq!(o.matched, 1, "a failed route counts as matched");
    assert_eq!(o.errors[0].to_string(), quoted.text.trim_end());
}
