//! contrib/grafana/ami2amqp.json and contrib/prometheus/alerts.yml
//! (docs/deploy.md, "Monitoring"):
//!
//! - `promtool check rules` accepts the alert rules and `promtool test
//!   rules` passes contrib/prometheus/alerts_test.yml, which has, for every
//!   alert, cases that fire and cases that must not;
//! - every metric name the alert rules and the dashboard's queries use is
//!   one the bridge exports (src/internal_events/catalog.rs), and the
//!   dashboard shows every metric of the catalog, so neither can drift;
//! - the dashboard is valid JSON of the shape Grafana imports, and its
//!   queries (Grafana variables filled in) are valid PromQL for promtool.
//!
//! promtool comes from `make promtool` (scripts/ensure-promtool.sh, part of
//! `make test`). Without it these tests fail: they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

const ALERTS: &str = "contrib/prometheus/alerts.yml";
const ALERTS_TEST: &str = "contrib/prometheus/alerts_test.yml";
const DASHBOARD: &str = "contrib/grafana/ami2amqp.json";

/// The alerts docs/deploy.md describes: removing or renaming one must be
/// deliberate.
const EXPECTED_ALERTS: &[&str] = &[
    "Ami2amqpDown",
    "Ami2amqpBrokerDisconnected",
    "Ami2amqpServerDisconnected",
    "Ami2amqpSpoolGrowing",
    "Ami2amqpSpoolDropping",
    "Ami2amqpSpoolWriteErrors",
    "Ami2amqpMappingReloadRejected",
    "Ami2amqpActionErrors",
    "Ami2amqpActionRepliesFailing",
    "Ami2amqpFacadeSessionsDropped",
    "Ami2amqpFacadeLoginFailures",
    "Ami2amqpFleetLeasesLost",
];

/// Series Prometheus makes itself (not the bridge's): allowed in queries
/// although the catalog does not list them.
const PROMETHEUS_SERIES: &[&str] = &["up"];

// ---------------------------------------------------------------------------
// promtool

/// $PROMTOOL, else target/promtool/promtool (scripts/ensure-promtool.sh),
/// else `promtool` on PATH; panics when none runs.
fn promtool() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("PROMTOOL") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(repo().join("target/promtool/promtool"));
    candidates.push(PathBuf::from("promtool"));
    for c in &candidates {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.clone();
        }
    }
    panic!(
        "promtool not found (tried $PROMTOOL, target/promtool/promtool, PATH): run `make promtool` \
         (scripts/ensure-promtool.sh)"
    );
}

/// Runs promtool in `dir`; panics with its output unless it succeeds.
fn run_promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

// ---------------------------------------------------------------------------
// The catalog

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of src/internal_events/catalog.rs with its kind, read from
/// the source: its `pub const NAME: &str = "name";` lines and the
/// `counter(NAME, …)` / `gauge(…)` / `histogram(…)` entries of `METRICS`.
fn catalog() -> BTreeMap<String, Kind> {
    let src = read("src/internal_events/catalog.rs");
    let consts: BTreeMap<String, String> =
        regex::Regex::new(r#"pub const ([A-Z0-9_]+): &str = "([a-zA-Z_:][a-zA-Z0-9_:]*)";"#)
            .unwrap()
            .captures_iter(&src)
            .map(|c| (c[1].to_string(), c[2].to_string()))
            .collect();
    let metrics_at = src
        .find("pub const METRICS: &[Metric] = &[")
        .expect("catalog.rs: no METRICS array");
    let entries = &src[metrics_at..];
    let mut out = BTreeMap::new();
    for c in regex::Regex::new(r"\b(counter|gauge|histogram)\(\s*([A-Z0-9_]+)\s*,")
        .unwrap()
        .captures_iter(entries)
    {
        let kind = match &c[1] {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            _ => Kind::Histogram,
        };
        let name = consts
            .get(&c[2])
            .unwrap_or_else(|| panic!("catalog.rs: METRICS names {} which is no const", &c[2]));
        assert!(
            out.insert(name.clone(), kind).is_none(),
            "catalog.rs: {name} twice"
        );
    }
    assert_eq!(
        out.len(),
        consts.len(),
        "catalog.rs: every metric const must have one METRICS entry (read {} consts, {} entries)",
        consts.len(),
        out.len()
    );
    assert!(
        out.len() >= 30,
        "catalog.rs: only {} metrics read",
        out.len()
    );
    out
}

/// The series names a query may use for the catalog's metrics: a
/// histogram only as `_bucket`, `_sum` and `_count`.
fn series_names(catalog: &BTreeMap<String, Kind>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, kind) in catalog {
        match kind {
            Kind::Counter | Kind::Gauge => {
                out.insert(name.clone(), name.clone());
            }
            Kind::Histogram => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"), name.clone());
                }
            }
        }
    }
    for s in PROMETHEUS_SERIES {
        out.insert(s.to_string(), s.to_string());
    }
    out
}

// ---------------------------------------------------------------------------
// Metric names in PromQL

const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
    "inf",
    "nan",
];

/// The metric names a PromQL expression (possibly with Grafana variables)
/// selects: identifiers that are neither functions, keywords, label names
/// nor inside strings, label matchers, ranges or grouping lists. Refuses
/// `__name__` matchers, which would hide a name from this check.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    if expr.contains("__name__") {
        return Err(format!("`__name__` in {expr:?}: name metrics directly"));
    }
    let re = |p: &str| regex::Regex::new(p).unwrap();
    // Strings first (they may hold braces, brackets, `$`), then Grafana
    // variables, label matchers, ranges/subqueries, grouping label lists.
    let s = re(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"#).replace_all(expr, " ");
    let s = re(r"\$\{[^}]*\}|\$\w+").replace_all(&s, " ");
    let s = re(r"\{[^{}]*\}").replace_all(&s, " ");
    let s = re(r"\[[^\[\]]*\]").replace_all(&s, " ");
    let s =
        re(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)").replace_all(&s, " ");
    for bad in ['{', '}', '[', ']', '"', '\'', '`', '$'] {
        if s.contains(bad) {
            return Err(format!("cannot read {expr:?} (unbalanced {bad:?})"));
        }
    }
    let chars: Vec<char> = s.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            // A number: 0.99, 1e3, 0x1f.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if next == Some(&'(') || PROMQL_KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                continue;
            }
            names.insert(word);
        } else {
            i += 1;
        }
    }
    Ok(names)
}

/// Names in `exprs` (labelled by where they come from) that are not series
/// of the catalog, one line each.
fn unknown_names(exprs: &[(String, String)], known: &BTreeMap<String, String>) -> Vec<String> {
    let mut bad = Vec::new();
    for (at, expr) in exprs {
        match metric_names(expr) {
            Err(e) => bad.push(format!("{at}: {e}")),
            Ok(names) => {
                if names.is_empty() {
                    bad.push(format!("{at}: no metric in {expr:?}"));
                }
                for n in names {
                    if !known.contains_key(&n) {
                        bad.push(format!(
                            "{at}: `{n}` is not a metric of src/internal_events/catalog.rs"
                        ));
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).unwrap().into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (instance, job) (rate(a_total{x="y(z)", le=~"[0-9]+"}[5m:30s] offset 1h)) / on (instance) group_left (server) b_total > bool 1e3 and c unless d or up"#
        ),
        ["a_total", "b_total", "c", "d", "up"]
    );
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le) (rate(h_bucket{instance=~"$instance"}[$__rate_interval])))"#
        ),
        ["h_bucket"]
    );
    assert_eq!(names("time() - 0x1F * vector(2.5)"), Vec::<String>::new());
    assert!(metric_names(r#"{__name__="x"}"#).is_err());
    assert!(metric_names("rate(x[5m)").is_err());

    // The check refuses a name the catalog lacks, and a histogram named
    // without its suffix.
    let known = series_names(&catalog());
    let exprs = |e: &str| vec![("t".to_string(), e.to_string())];
    assert!(unknown_names(&exprs("rate(ami_events_total[5m])"), &known).is_empty());
    assert_eq!(
        unknown_names(&exprs("rate(ami_event_total[5m]) + spool_messages"), &known).len(),
        1
    );
    assert_eq!(
        unknown_names(&exprs("rate(publish_latency_seconds[5m])"), &known).len(),
        1
    );
    assert!(unknown_names(&exprs("rate(publish_latency_seconds_count[5m])"), &known).is_empty());
}

// ---------------------------------------------------------------------------
// The alert rules

struct Rule {
    alert: String,
    expr: String,
    /// Keys under `labels:` and `annotations:` (not their values).
    labels: BTreeSet<String>,
    annotations: BTreeSet<String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The rules of alerts.yml, read line by line: that file keeps to plain
/// `key: value` lines and `>-` blocks (checked here; promtool checks the
/// YAML itself).
fn rules() -> Vec<Rule> {
    let text = read(ALERTS);
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut section: Option<(&str, usize)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        i += 1;
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some((_, at)) = section
            && indent(line) <= at
        {
            section = None;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: name.trim().to_string(),
                expr: String::new(),
                labels: BTreeSet::new(),
                annotations: BTreeSet::new(),
            });
            continue;
        }
        assert!(
            !t.starts_with("- record:"),
            "{ALERTS}: recording rules are not expected"
        );
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if let Some(rest) = t.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == ">-" || rest == ">" || rest == "|" || rest == "|-" {
                let base = indent(line);
                let mut block = Vec::new();
                while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > base) {
                    block.push(lines[i].trim());
                    i += 1;
                }
                rule.expr = block.join("\n").trim().to_string();
            } else {
                assert!(
                    !rest.starts_with(['"', '\'', '>', '|']),
                    "{ALERTS}: unsupported expr form {rest:?} in {}",
                    rule.alert
                );
                rule.expr = rest.to_string();
            }
            continue;
        }
        if t == "labels:" || t == "annotations:" {
            section = Some((
                if t == "labels:" {
                    "labels"
                } else {
                    "annotations"
                },
                indent(line),
            ));
            continue;
        }
        if let Some((kind, at)) = section
            && indent(line) > at
            && let Some((key, _)) = t.split_once(':')
            && !key.contains(' ')
            && indent(line) == at + 2
        {
            let set = if kind == "labels" {
                &mut rule.labels
            } else {
                &mut rule.annotations
            };
            set.insert(key.to_string());
        }
    }
    rules
}

#[test]
fn promtool_check_rules_accepts_the_alert_rules() {
    let rules = rules();
    let out = run_promtool(&repo(), &["check", "rules", ALERTS]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "promtool found another number of rules than the {} read here:\n{out}",
        rules.len()
    );
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    let out = run_promtool(
        &repo().join("contrib/prometheus"),
        &["test", "rules", "alerts_test.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_are_the_documented_set_with_severity_and_explanations() {
    let rules = rules();
    let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(names, EXPECTED_ALERTS, "{ALERTS}: alerts");
    let deploy = read("docs/deploy.md");
    let monitoring = deploy
        .split("\n## ")
        .find(|s| s.lines().next().is_some_and(|h| h.contains("Monitoring")))
        .expect("docs/deploy.md: no Monitoring section");
    for r in &rules {
        assert!(!r.expr.is_empty(), "{}: no expr", r.alert);
        assert!(r.labels.contains("severity"), "{}: no severity", r.alert);
        for a in ["summary", "description"] {
            assert!(r.annotations.contains(a), "{}: no {a} annotation", r.alert);
        }
        assert!(
            monitoring.contains(&format!("`{}`", r.alert)),
            "docs/deploy.md's Monitoring section does not describe `{}`",
            r.alert
        );
    }
}

/// Every alert has at least one `promtool test rules` case where it fires
/// and one where it must stay quiet.
#[test]
fn every_alert_has_firing_and_quiet_cases() {
    let text = read(ALERTS_TEST);
    let mut firing: BTreeSet<String> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("alertname:") else {
            continue;
        };
        let name = name.trim().to_string();
        // The case ends at the next `- ` item at its indent or less.
        let at = indent(line);
        let fires = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) >= at)
            .any(|l| l.trim() == "exp_alerts:");
        if fires {
            firing.insert(name);
        } else {
            quiet.insert(name);
        }
    }
    for a in EXPECTED_ALERTS {
        assert!(
            firing.contains(*a),
            "{ALERTS_TEST}: no case where {a} fires"
        );
        assert!(
            quiet.contains(*a),
            "{ALERTS_TEST}: no case where {a} stays quiet"
        );
    }
    let unknown: Vec<_> = firing
        .union(&quiet)
        .filter(|n| !EXPECTED_ALERTS.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{ALERTS_TEST}: tests for unknown alerts {unknown:?}"
    );
}

// ---------------------------------------------------------------------------
// The dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

/// (where, query) of every panel target and query variable; a
/// `label_values(selector, label)` variable contributes its selector.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((
                format!("panel {} ({}) {}", p["id"], p["title"], t["refId"]),
                expr.to_string(),
            ));
        }
    }
    let label_values =
        regex::Regex::new(r"^label_values\(\s*(.+?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$").unwrap();
    for v in d["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        let c = label_values.captures(q).unwrap_or_else(|| {
            panic!(
                "variable {}: expected label_values(selector, label), got {q:?}",
                v["name"]
            )
        });
        out.push((format!("variable {}", v["name"]), c[1].to_string()));
    }
    out
}

#[test]
fn dashboard_json_has_the_shape_grafana_imports() {
    let d = dashboard();
    assert_eq!(d["uid"], "ami2amqp");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name"), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    let builtin = ["__rate_interval", "__interval", "__range"];
    let variable = regex::Regex::new(r"\$\{?(\w+)\}?").unwrap();

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut titles = BTreeSet::new();
    let all = panels(&d);
    assert!(all.len() >= 15, "{} panels", all.len());
    for p in all {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let title = p["title"].as_str().expect("panel title");
        assert!(titles.insert(title), "panel title {title:?} twice");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    panic!("panels {other:?} and {title:?} overlap at x={cx} y={cy}");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat", "gauge", "bargauge", "table"]
                .contains(&p["type"].as_str().unwrap_or("")),
            "{title}: type {}",
            p["type"]
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            p["description"].as_str().is_some_and(|s| s.len() > 20),
            "{title}: no description"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            let expr = t["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty(), "{title}: empty expr");
            assert!(t["legendFormat"].is_string(), "{title}: no legendFormat");
            for c in variable.captures_iter(expr) {
                let v = &c[1];
                assert!(
                    vars.contains_key(v) || builtin.contains(&v),
                    "{title}: unknown variable ${v} in {expr:?}"
                );
            }
        }
    }
}

#[test]
fn alert_and_dashboard_metrics_exist_in_the_catalog() {
    let known = series_names(&catalog());
    let mut exprs: Vec<(String, String)> = rules()
        .into_iter()
        .map(|r| (format!("{ALERTS}: {}", r.alert), r.expr))
        .collect();
    exprs.extend(
        dashboard_queries(&dashboard())
            .into_iter()
            .map(|(at, e)| (format!("{DASHBOARD}: {at}"), e)),
    );
    let bad = unknown_names(&exprs, &known);
    assert!(bad.is_empty(), "unknown metric names:\n{}", bad.join("\n"));
}

/// A metric added to the catalog shows up on the dashboard too.
#[test]
fn dashboard_shows_every_metric_of_the_catalog() {
    let catalog = catalog();
    let known = series_names(&catalog);
    let mut shown = BTreeSet::new();
    for (_, q) in dashboard_queries(&dashboard()) {
        for n in metric_names(&q).unwrap() {
            if let Some(base) = known.get(&n) {
                shown.insert(base.clone());
            }
        }
    }
    let missing: Vec<_> = catalog.keys().filter(|m| !shown.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} has no panel for {missing:?}"
    );
}

/// The dashboard's queries, with Grafana's variables filled in, pass
/// `promtool check rules` as recording rules: valid PromQL.
#[test]
fn dashboard_queries_are_valid_promql() {
    let d = dashboard();
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (at, q)) in dashboard_queries(&d).into_iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "2m")
            .replace("$__interval", "30s")
            .replace("$__range", "6h")
            .replace("$instance", ".*")
            .replace("$server", ".*");
        assert!(!q.contains('$'), "{at}: variable left in {q:?}");
        yaml.push_str(&format!(
            "      # {}\n      - record: dashboard:query_{n}\n        expr: {}\n",
            at.replace('\n', " "),
            serde_json::to_string(&q).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard_rules.yml"), &yaml).unwrap();
    run_promtool(dir.path(), &["check", "rules", "dashboard_rules.yml"]);
}
