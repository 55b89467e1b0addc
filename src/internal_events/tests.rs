//! The metric catalog against itself, the docs, the source and the
//! recorder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::catalog::{Kind, METRICS, describe};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rows of the first table under the heading `heading` of a Markdown
/// file: every backquoted name of the first column, with the second
/// column (trimmed).
fn metric_table(file: &str, heading: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("{file}: no section {heading:?}"));
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        for name in cols[1].split('`').skip(1).step_by(2) {
            let second = cols.get(2).copied().unwrap_or_default().to_string();
            assert!(
                rows.insert(name.to_string(), second).is_none(),
                "{file}: {name} twice"
            );
        }
    }
    assert!(
        !rows.is_empty(),
        "{file}: no metric table under {heading:?}"
    );
    rows
}

#[test]
fn every_metric_is_declared_once_with_a_valid_name_and_a_help_text() {
    let mut seen = BTreeSet::new();
    for m in METRICS {
        assert!(seen.insert(m.name), "{} declared twice", m.name);
        assert!(
            !m.name.is_empty()
                && m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && !m.name.starts_with('_'),
            "{:?} is not a Prometheus name of ours",
            m.name
        );
        assert!(
            m.help.len() > 10 && !m.help.contains('\n'),
            "{}: help {:?}",
            m.name,
            m.help
        );
        assert_eq!(
            m.name.ends_with("_total"),
            m.kind == Kind::Counter,
            "{}: counters, and only they, end in _total",
            m.name
        );
    }
}

#[test]
fn the_readme_lists_every_declared_metric_and_no_other() {
    let documented = metric_table("README.md", "Metrics and health");
    let declared: BTreeMap<String, String> = METRICS
        .iter()
        .map(|m| (m.name.to_string(), m.kind.as_str().to_string()))
        .collect();
    let missing: Vec<_> = declared
        .keys()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    let unknown: Vec<_> = documented
        .keys()
        .filter(|n| !declared.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "declared, not in README.md's table: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "in README.md's table, not declared: {unknown:?}"
    );
    for (name, kind) in &declared {
        assert_eq!(
            &documented[name], kind,
            "README.md gives {name} another type"
        );
    }
}

#[test]
fn the_action_docs_list_every_action_metric_and_no_other() {
    let documented: BTreeSet<String> = metric_table("docs/actions.md", "Monitoring")
        .into_keys()
        .collect();
    let declared: BTreeSet<String> = METRICS
        .iter()
        .map(|m| m.name.to_string())
        .filter(|n| n.starts_with("actions_"))
        .collect();
    assert_eq!(documented, declared);
}

/// `counter!("name")`-style calls with a literal name, anywhere in `dir`.
fn literal_metric_names(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            literal_metric_names(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                let squeezed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
                if !squeezed.starts_with("//")
                    && ["counter!(\"", "gauge!(\"", "histogram!(\""]
                        .iter()
                        .any(|m| squeezed.contains(m))
                {
                    found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
}

#[test]
fn call_sites_name_metrics_by_their_catalog_constant() {
    let mut found = Vec::new();
    literal_metric_names(&root().join("src"), &mut found);
    literal_metric_names(&root().join("crates"), &mut found);
    assert!(
        found.is_empty(),
        "metric names written out instead of internal_events::catalog's constants:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_recorder_gets_a_help_line_for_every_metric() {
    let recorder = crate::metrics::builder().unwrap().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        for m in METRICS {
            match m.kind {
                Kind::Counter => metrics::counter!(m.name).increment(1),
                Kind::Gauge => metrics::gauge!(m.name).set(1.0),
                Kind::Histogram => metrics::histogram!(m.name).record(1.0),
            }
        }
    });
    let page = handle.render();
    for m in METRICS {
        let help = format!("# HELP {} {}\n", m.name, m.help);
        assert!(page.contains(&help), "no {help:?} in\n{page}");
        let kind = format!("# TYPE {} {}\n", m.name, m.kind.as_str());
        assert!(page.contains(&kind), "no {kind:?} in\n{page}");
    }
}

/// Each event increments the metric, with the labels, that its call site
/// incremented before the events were gathered here (README.md's table).
#[test]
fn events_count_under_their_documented_names_and_labels() {
    use super::{actions::*, ami::*, amqp::*, mapping::*, spool::*};
    let recorder = crate::metrics::builder().unwrap().build_recorder();
    let handle = recorder.handle();
    let io = std::io::Error::other("disk says no");
    let malformed = ami_proto::Malformed {
        kind: ami_proto::MalformedKind::NotKeyValue { line: 2 },
        excerpt: Default::default(),
        action_id: None,
    };
    let response = ami_proto::Message::from_pairs([("Response", "Success")]);
    let no_event = ami_proto::Message::from_pairs([("Foo", "Bar")]);
    let mut since_logged = 0;
    metrics::with_local_recorder(&recorder, || {
        ReplyChannelReopened.emit();
        ReplyToRefused {
            user: "u",
            reply_to: "q",
        }
        .emit();
        let denied = ActionDenied {
            user: "u",
            server: "pbx",
            action: "Originate",
            reason: "no",
        };
        denied.emit();
        ActionAllowed.emit();
        ActionBusy.emit();
        ReplyTooLarge.emit();
        let answered = ActionAnswered {
            server: "pbx",
            action: "Ping".into(),
            result: "timeout",
            error: Some("slow"),
        };
        answered.emit();
        ReplyFailed {
            server: "pbx",
            reply_to: "q",
            error: "closed",
        }
        .emit();
        AmiDisconnected {
            server: "pbx",
            role: "action-1",
            address: "a:5038",
            reason: "eof",
        }
        .emit();
        let role = "events";
        AmiMalformed {
            server: "pbx",
            role,
            error: &malformed,
        }
        .emit();
        AmiIgnored {
            server: "pbx",
            role,
            message: &response,
            kind: response.kind(),
        }
        .emit();
        AmiIgnored {
            server: "pbx",
            role,
            message: &no_event,
            kind: no_event.kind(),
        }
        .emit();
        let spooled = AmqpUnavailable {
            url: "amqp://h",
            reason: "refused",
            spooled_messages: 1,
            spooled_bytes: 2,
        };
        spooled.emit();
        UndecodableRecord { error: &"bad" }.emit();
        SpoolFullRefused {
            records: 3,
            max_bytes: 9,
            since_logged: &mut since_logged,
        }
        .emit();
        SpoolRefusedWhileHeld {
            records: 2,
            reason: "disk_full",
            held: 1,
        }
        .emit();
        SpoolWriteFailed {
            error: &io,
            reason: "disk_full",
            held: 1,
            first: true,
        }
        .emit();
        SpoolLostAtShutdown {
            records: 4,
            reason: "write_error",
        }
        .emit();
        SpoolDroppedOldest {
            records: 5,
            bytes: 10,
            reason: "full_drop_oldest",
        }
        .emit();
        SpoolSegmentMissing {
            segment: Path::new("/s/0.seg"),
            error: &io,
        }
        .emit();
        SpoolRollFailed { error: &io }.emit();
        SpoolSyncFailed {
            what: "fdatasync",
            error: &io,
        }
        .emit();
        MappingReloaded {
            dirs: &"m",
            routes: 3,
        }
        .emit();
        MappingReloadRejected {
            dirs: &"m",
            error: &"bad",
        }
        .emit();
        let e = MappingError {
            server: "pbx",
            event: "Hangup",
            seq: 1,
            route: "r1",
            error: &"x",
            total: 1,
        };
        e.emit();
    });
    let page = handle.render();
    let series: BTreeSet<&str> = page
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for want in [
        "actions_reply_channel_reopened_total 1",
        "actions_dropped_total{reason=\"reply_to\"} 1",
        "actions_authz_total{decision=\"deny\"} 1",
        "actions_authz_total{decision=\"allow\"} 1",
        "actions_busy_total 1",
        "actions_too_large_total 1",
        "actions_total{server=\"pbx\",action=\"Ping\",result=\"timeout\"} 1",
        "actions_reply_failures_total 1",
        "ami_reconnects_total{server=\"pbx\",role=\"action-1\"} 1",
        "ami_parse_errors_total{server=\"pbx\"} 1",
        "ami_ignored_messages_total{server=\"pbx\",kind=\"response\"} 1",
        "ami_ignored_messages_total{server=\"pbx\",kind=\"no_event\"} 1",
        "amqp_reconnects_total 1",
        "spool_corrupt_records_total 1",
        "spool_dropped_total{reason=\"full_refuse_new\"} 3",
        "spool_dropped_total{reason=\"disk_full\"} 2",
        "spool_dropped_total{reason=\"shutdown\"} 4",
        "spool_dropped_total{reason=\"full_drop_oldest\"} 5",
        "spool_write_errors_total 2",
        "spool_missing_segments_total 1",
        "spool_sync_errors_total 1",
        "mapping_reloads_total{result=\"applied\"} 1",
        "mapping_reloads_total{result=\"rejected\"} 1",
        "mapping_errors_total{route=\"r1\"} 1",
    ] {
        assert!(series.contains(want), "no {want:?} in\n{page}");
    }
    assert_eq!(series.len(), 24, "{page}");
    assert!(since_logged == 0 || since_logged == 3, "{since_logged}");
}
