//! The boundaries ARCHITECTURE.md promises, checked on the source tree.
//!
//! - The code map is complete: every module file of the main crate and of
//!   `ami-proto` is named in ARCHITECTURE.md (a new file without a line
//!   there fails here, so the map cannot silently go stale).
//! - `ami-proto` is the protocol without the bridge: no dependency on the
//!   main crate, no sockets, no runtime, no logging, no AMQP.
//! - The trace tools (`src/trace/`) sit behind one boundary: they use only
//!   the AMI layer (and the shared helpers), and only the command line and
//!   the operator tools use them; the bridge's run path never does.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Files that are not modules of their own in the map: crate roots, module
/// roots (named by their directory) and unit-test files.
fn is_mapped_module(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !matches!(name, "lib.rs" | "mod.rs" | "tests.rs" | "model_tests.rs")
}

#[test]
fn the_code_map_names_every_module() {
    let arch = read(&root().join("ARCHITECTURE.md"));
    let mut missing = Vec::new();
    for base in ["src", "crates/ami-proto/src"] {
        let dir = root().join(base);
        for f in rust_files(&dir).into_iter().filter(|f| is_mapped_module(f)) {
            let rel = f.strip_prefix(&dir).expect("under dir");
            let name = rel.file_name().and_then(|n| n.to_str()).expect("name");
            let parent = rel.parent().and_then(|p| p.to_str()).unwrap_or("");
            // A file is named either by its file name (`spool.rs`) or, for
            // files in a directory, by its path there (`spool/config.rs`).
            let by_path = format!("{parent}/{name}");
            if !(arch.contains(&format!("`{name}`"))
                || arch.contains(&by_path)
                || arch.contains(&format!("{name}`")))
            {
                missing.push(format!("{base}/{}", rel.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name: {missing:?}"
    );
}

#[test]
fn ami_proto_has_no_io_and_knows_nothing_of_the_bridge() {
    let manifest = read(&root().join("crates/ami-proto/Cargo.toml"));
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .expect("a [dependencies] table");
    let names: Vec<&str> = deps
        .lines()
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .collect();
    assert!(names.contains(&"bytes"), "the table was read: {names:?}");
    for banned in ["ami2amqp", "tokio", "lapin", "tracing", "metrics"] {
        assert!(!names.contains(&banned), "ami-proto depends on {banned}");
    }
    for f in rust_files(&root().join("crates/ami-proto/src")) {
        let text = read(&f);
        for banned in ["std::net", "tokio::", "tracing::", "lapin", "ami2amqp"] {
            assert!(
                !text.contains(banned),
                "{} uses {banned}: the protocol crate has no I/O and no bridge",
                f.display()
            );
        }
    }
}

#[test]
fn the_trace_tools_sit_behind_one_boundary() {
    let src = root().join("src");
    for f in rust_files(&src.join("trace")) {
        let text = read(&f);
        for used in text.match_indices("crate::").map(|(i, _)| &text[i + 7..]) {
            let module: String = used
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(
                matches!(module.as_str(), "ami" | "trace" | "support" | "logs"),
                "{} uses crate::{module}: the trace tools build on the AMI layer only",
                f.display()
            );
        }
    }
    for f in rust_files(&src) {
        if f.starts_with(src.join("trace")) {
            continue;
        }
        let name = f
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        let uses = read(&f).contains("crate::trace");
        assert!(
            !uses || name == "main.rs" || name == "tools.rs",
            "{name} uses the trace tools; only the command line and tools.rs may"
        );
    }
}
