//! docs/config.md against the code: `ami2amqp config example` (generated
//! from the config structs' defaults and doc comments) prints every key;
//! the page's "every key" block and its per-section key tables must list
//! exactly those keys, the tables with the same defaults. And the example
//! itself is a file `check` accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ami2amqp(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ami2amqp"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run ami2amqp");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `(section, key)`: its value as written, `None` for a key shown
/// commented out (`# key = …`: not set by default).
type Keys = BTreeMap<(String, String), Option<String>>;

/// The keys of a TOML text as the example and the doc's block write them:
/// `[section]` / `[[section]]` headers, `key = value` lines and commented
/// `# key = …` lines (several tables of one array are merged).
fn keys_of(text: &str) -> Keys {
    let mut out = Keys::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(h) = line.strip_prefix('[') {
            section = h.trim_matches(['[', ']']).to_string();
            continue;
        }
        let (commented, l) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        let Some((k, v)) = l.split_once(" = ") else {
            continue;
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        let v = v.split("  #").next().unwrap_or(v).trim().to_string();
        let entry = (section.clone(), k.to_string());
        let value = (!commented).then_some(v);
        out.entry(entry).or_insert(value);
    }
    out
}

fn doc() -> String {
    std::fs::read_to_string(repo().join("docs/config.md")).unwrap()
}

fn example() -> String {
    let (ok, out, err) = ami2amqp(&["config", "example"], &[]);
    assert!(ok, "{err}");
    out
}

/// The "Every key, with its default" block of docs/config.md.
fn every_key_block(doc: &str) -> &str {
    let at = doc
        .find("## Every key, with its default")
        .expect("the section");
    let rest = &doc[at..];
    let start = rest.find("```toml\n").expect("its block") + "```toml\n".len();
    let len = rest[start..].find("```").expect("the block's end");
    &rest[start..start + len]
}

/// `(section, key)` → the default column of the `| key | type | default |
/// meaning |` tables under each `## \`[section]\`` heading.
fn key_tables(doc: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut in_table = false;
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            if h == "Top-level keys" {
                section = Some(String::new());
                continue;
            }
            section = h.strip_prefix("`[").map(|s| {
                s.trim_end_matches(['`', ']'])
                    .trim_start_matches('[')
                    .to_string()
            });
            continue;
        }
        if line.starts_with("| key | type | default |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let (true, Some(s), [_, key, _, default, ..]) = (in_table, &section, cells.as_slice())
            && let Some(key) = key.strip_prefix('`').and_then(|k| k.strip_suffix('`'))
        {
            out.insert((s.clone(), key.to_string()), default_of(default));
        }
    }
    out
}

/// The first `code` of a default cell (`` `1073741824` (1 GiB) ``), or the
/// cell itself (`**required**`, `—`, `(none)`).
fn default_of(cell: &str) -> String {
    match cell.split_once('`') {
        Some((_, rest)) => rest.split('`').next().unwrap_or("").to_string(),
        None => cell.to_string(),
    }
}

#[test]
fn the_every_key_block_lists_exactly_the_keys_of_the_example() {
    let example_keys = keys_of(&example());
    let doc = doc();
    let block_keys = keys_of(every_key_block(&doc));
    // "Every key written out at its default value", but for the servers
    // and the two keys whose default the block spells out differently.
    let own = [("amqp", "url"), ("mappings", "dir")];
    for ((section, key), value) in &example_keys {
        let written = block_keys.get(&(section.clone(), key.clone()));
        if let (Some(v), Some(Some(w))) = (value, written)
            && section != "server"
            && section != "facade.user"
            && !own.contains(&(section.as_str(), key.as_str()))
        {
            assert_eq!(w, v, "{section}.{key} in the every-key block");
        }
    }
    let example: BTreeSet<_> = example_keys.into_keys().collect();
    let block: BTreeSet<_> = block_keys.into_keys().collect();
    let missing: Vec<_> = example.difference(&block).collect();
    let unknown: Vec<_> = block.difference(&example).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/config.md's every-key block lacks {missing:?} and has keys the config does not: {unknown:?}"
    );
    assert!(example.len() > 40, "{example:?}");
}

#[test]
fn the_key_tables_give_every_key_with_the_defaults_of_the_example() {
    let example = keys_of(&example());
    let tables = key_tables(&doc());
    let names: BTreeSet<_> = example.keys().collect();
    let documented: BTreeSet<_> = tables.keys().collect();
    let missing: Vec<_> = names.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&names).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/config.md's key tables lack {missing:?} and list keys the config does not have: {unknown:?}"
    );
    // The example's server is an example: its required keys and secret
    // have no default.
    let example_values = ["name", "address", "username", "secret_env"];
    for ((section, key), value) in &example {
        let doc_default = &tables[&(section.clone(), key.clone())];
        match value {
            // The example's facade user is an example too.
            Some(_) if section == "facade.user" => {
                let want = match key.as_str() {
                    "name" => "**required**",
                    "secret_env" => "—",
                    _ => "[]",
                };
                assert_eq!(doc_default, want, "facade.user.{key}");
            }
            Some(_) if section == "server" && example_values.contains(&key.as_str()) => {
                let want = if key == "secret_env" {
                    "—"
                } else {
                    "**required**"
                };
                assert_eq!(doc_default, want, "server.{key}");
            }
            Some(v) => assert_eq!(doc_default, v, "{section}.{key}: docs/config.md's default"),
            None => {}
        }
    }
}

#[test]
fn the_example_is_a_file_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("example.toml");
    std::fs::write(&f, example()).unwrap();
    let mappings = repo().join("mappings");
    let (ok, out, err) = ami2amqp(
        &[
            "check",
            "--config",
            f.to_str().unwrap(),
            "--mappings",
            mappings.to_str().unwrap(),
        ],
        &[("AMI2AMQP_PBX1_SECRET", "s3cret")],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("ok (1 server(s))"), "{out}");
    // Without the secret's variable: the one thing to fill in.
    let (ok, out, _) = ami2amqp(
        &[
            "check",
            "--config",
            f.to_str().unwrap(),
            "--mappings",
            mappings.to_str().unwrap(),
        ],
        &[],
    );
    if std::env::var_os("AMI2AMQP_PBX1_SECRET").is_none() {
        assert!(!ok && out.contains("AMI2AMQP_PBX1_SECRET"), "{out}");
    }
}

#[test]
fn help_explains_config_example() {
    let (ok, out, _) = ami2amqp(&["--help"], &[]);
    assert!(ok && out.contains("config"), "{out}");
    let (ok, out, _) = ami2amqp(&["config", "example", "--help"], &[]);
    assert!(
        ok && out.contains("[[server]]") && out.contains("default"),
        "{out}"
    );
}
