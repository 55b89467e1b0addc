//! The operator tools as an operator runs them: `check` and `map` on the
//! command line, and hot reload of the mappings in a running bridge.

mod common;

use std::process::Command;
use std::time::Duration;

use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, Proc, bin, body, replay, repo, sink, trace, unique, wait_until};

fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin())
        .args(args)
        .output()
        .expect("run ami2amqp");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_default_set_and_pinpoints_errors() {
    let m = repo().join("mappings");
    let (code, out, _) = run(&["check", "--mappings", m.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok ("), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-bad.toml"),
        "[[route]]\nname = \"x\"\nevents = [\"Hangup\"]\nexchange = \"e\"\nrouting_key = \"{server}.{Channel|lowr}\"\n\n[[route]]\nname = \"y\"\nevents = [\"Hangup\"]\nwhen = { Channel = \"(\" }\nexchange = \"e\"\nrouting_key = \"k\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check", "--mappings", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let f = dir.path().join("10-bad.toml").display().to_string();
    assert!(
        out.contains(&format!("{f}:5:")) && out.contains("unknown filter `lowr`"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{f}:10:20:")) && out.contains("invalid regex"),
        "{out}"
    );

    // A config file: its errors, then its mappings directory.
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[[server]]\nname = \"pbx1\"\naddress = \"127.0.0.1:5038\"\nusername = \"u\"\nsecert = \"typo\"\n").unwrap();
    let (code, out, _) = run(&[
        "check",
        "--config",
        cfg.to_str().unwrap(),
        "--mappings",
        m.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("{}:5:1: unknown field `secert`", cfg.display())),
        "{out}"
    );
}

#[test]
fn the_example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    // The example reads its secret from a file: provide one.
    let example = std::fs::read_to_string(repo().join("contrib/ami2amqp.toml")).unwrap();
    let secret = dir.path().join("pbx1.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let text = example
        .replace("/etc/ami2amqp/pbx1.secret", secret.to_str().unwrap())
        .replace(
            "/etc/ami2amqp/mappings",
            repo().join("mappings").to_str().unwrap(),
        );
    let cfg = dir.path().join("ami2amqp.toml");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn map_prints_every_message_deterministically_and_a_summary() {
    let m = repo().join("mappings");
    let t = trace("calls_small.ami");
    let args = [
        "map",
        "--mappings",
        m.to_str().unwrap(),
        "--server",
        "pbx9",
        t.to_str().unwrap(),
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 749, "one message per event of calls_small");
    for l in &lines {
        assert!(
            l["routing_key"].as_str().unwrap().starts_with("pbx9."),
            "{l}"
        );
        assert_eq!(l["exchange"], "ami.events");
        assert!(
            l["properties"]["message_id"]
                .as_str()
                .unwrap()
                .starts_with("dryrun:pbx9:")
        );
        assert!(l["body"]["fields"].is_object());
    }
    let (_, again, _) = run(&args);
    assert_eq!(out, again, "the dry run is deterministic");

    let (code, out, _) = run(&[
        "map",
        "--mappings",
        m.to_str().unwrap(),
        "--summary",
        t.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("events: 749  messages: 749  unmatched: 0  mapping errors: 0"),
        "{out}"
    );
    assert!(out.contains("pbx1.dialplan.VarSet.local"), "{out}");

    // An invalid set: the errors, exit 1.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), "[[route]]\nname = 1\n").unwrap();
    let (code, _, err) = run(&[
        "map",
        "--mappings",
        dir.path().to_str().unwrap(),
        t.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("a.toml:2:8"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_bridge_reloads_valid_mappings_and_keeps_the_old_set_on_errors() {
    let url = shared_amqp_url();
    let (_r, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--rate",
        "40",
        "--loop",
        "0",
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let setup = BridgeSetup::new(&addr, &url, "");
    let mut all = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    let _bridge = setup.start();
    let first = all.collect(5, Duration::from_secs(15)).await;
    assert_eq!(first.len(), 5, "{}", setup.log());
    assert!(
        first
            .iter()
            .all(|d| !d.routing_key.as_str().contains(".v2."))
    );

    // A broken edit is rejected; events keep flowing with the old set.
    let f = setup.mappings.join("10-call.toml");
    let good = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        format!("{good}\n[[route]]\nname = \"broken\"\nevents = [\"X\"]\n"),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || setup
            .log()
            .contains("NOT reloaded")),
        "{}",
        setup.log()
    );
    let more = all.collect(3, Duration::from_secs(10)).await;
    assert_eq!(more.len(), 3);

    // A valid edit is applied: every key of every file gains a `v2` word.
    for e in std::fs::read_dir(&setup.mappings).unwrap() {
        let p = e.unwrap().path();
        let t = std::fs::read_to_string(&p).unwrap();
        let t = if p == f { good.clone() } else { t };
        std::fs::write(
            &p,
            t.replace("routing_key = \"{server}.", "routing_key = \"{server}.v2."),
        )
        .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || setup
            .log()
            .contains("mapping set reloaded")),
        "{}",
        setup.log()
    );
    // Drain what was routed before the swap, then everything is v2.
    let mut saw_v2 = false;
    for d in all.collect(200, Duration::from_secs(10)).await {
        let k = d.routing_key.as_str().to_string();
        if k.ends_with(".bridge.status") {
            continue;
        }
        if saw_v2 {
            assert!(k.contains(".v2."), "after the swap every key is v2: {k}");
        }
        saw_v2 |= k.contains(".v2.");
        let _ = body(&d);
    }
    assert!(saw_v2, "no message routed by the new set\n{}", setup.log());

    // A route to an exchange the broker does not have yet. `tail`, started
    // first, waits for it; the bridge declares it before its first publish
    // there (no 404 closing the channel, no reconnect).
    let extra = format!("{}.extra", setup.exchange);
    setup.cleanup.exchange(&extra);
    let tail = std::process::Command::new(env!("CARGO_BIN_EXE_ami2amqp"))
        .args([
            "tail",
            "--amqp",
            &url,
            "--exchange",
            &extra,
            "--count",
            "3",
            "--duration",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(
        setup.mappings.join("98-extra.toml"),
        format!(
            "[[route]]\nname = \"extra\"\nevents = [\"*\"]\nexchange = \"{extra}\"\nrouting_key = \"{{server}}.extra.{{Event}}\"\n"
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || tail.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}\n{}", setup.log());
    assert!(stderr.contains("does not exist yet"), "{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains(".extra.")).count(),
        3,
        "{stdout}"
    );
    let log = setup.log();
    assert!(
        log.contains("declaring an exchange the mappings added"),
        "{log}"
    );
    assert!(!log.contains("AMQP unavailable"), "{log}");
}

/// A valid config in `dir` with `edit` applied (`(from, to)` replacements
/// of the base text, then `extra` appended); returns its path.
fn config_with(dir: &std::path::Path, edits: &[(&str, &str)], extra: &str) -> std::path::PathBuf {
    let base = format!(
        "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\n[[server]]\nname = \"pbx1\"\naddress = \"127.0.0.1:5038\"\nusername = \"bridge\"\nsecret = \"s3cret\"\n\n[mappings]\ndir = \"{}\"\n\n[spool]\ndir = \"{}\"\n",
        repo().join("mappings").display(),
        dir.join("spool").display()
    );
    let mut text = base.clone();
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} not in the base config");
        text = text.replacen(from, to, 1);
    }
    text.push_str(extra);
    let path = dir.join(format!("c{}.toml", unique("")));
    std::fs::write(&path, text).unwrap();
    path
}

/// Edits of the base config, text appended, the message `check` prints.
type Case<'a> = (Vec<(&'a str, &'a str)>, String, &'a str);

#[test]
fn check_refuses_what_run_cannot_use_with_the_key_and_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("\"{}\"", "p".repeat(260));
    // (edits, extra, the line `check` must print after "<file>:")
    let cases: Vec<Case> = vec![
        (
            vec![],
            "[bridge]\nmax_line_bytes = 0\n".into(),
            ":16:18: bridge.max_line_bytes: 0 is out of range",
        ),
        (
            vec![("guest:guest@127.0.0.1:5672", "u:pw@ss@127.0.0.1:notaport")],
            String::new(),
            ":2:7: amqp.url: cannot be used: invalid port number",
        ),
        (
            vec![("\"pbx1\"", long.as_str())],
            String::new(),
            ":5:8: server[0].name: server name",
        ),
        (
            vec![("127.0.0.1:5038", "pbx:notaport")],
            String::new(),
            ":6:11: server[0].address: \"pbx:notaport\" has port \"notaport\"",
        ),
        (
            vec![],
            "[actions]\nprefetch = 0\n".into(),
            ": actions.prefetch: 0 is out of range",
        ),
        (
            vec![("/%2f\"\n", "/%2f\"\nconfirm_window = 0\n")],
            String::new(),
            ": amqp.confirm_window: 0 is out of range",
        ),
        (
            vec![(
                "secret = \"s3cret\"",
                "secret = \"s3cret\"\naction_timeout_s = 0",
            )],
            String::new(),
            ": server[0].action_timeout_s: 0 is out of range",
        ),
        (
            vec![(
                "secret = \"s3cret\"",
                "secret = \"s3cret\"\nreconnect_initial_ms = 0",
            )],
            String::new(),
            ": server[0].reconnect_initial_ms: 0 is out of range",
        ),
        (
            vec![],
            "[bridge]\nmax_buffered_bytes = 1000000000000\n".into(),
            ": bridge.max_buffered_bytes: 1000000000000 is out of range",
        ),
        (
            vec![],
            "segment_bytes = 4294967296\n".into(),
            ": spool.segment_bytes: 4294967296 is out of range",
        ),
        (
            vec![],
            "[metrics]\nlisten = \"localhost\"\n".into(),
            ": metrics.listen: \"localhost\" must be host:port",
        ),
        (
            vec![],
            format!("[actions]\nqueue_prefix = \"{}\"\n", "q".repeat(252)),
            ": server[0].name: the action queue name (actions.queue_prefix + name) would be 256 bytes",
        ),
    ];
    for (edits, extra, want) in cases {
        let cfg = config_with(dir.path(), &edits, &extra);
        let (code, out, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 1, "{edits:?} {extra}: {out}{err}");
        // `<file>:<line>:<col>: <key>: …`: every key here is in the file.
        let file = cfg.display().to_string();
        let found = out.lines().any(|l| {
            let Some(rest) = l.strip_prefix(&file) else {
                return false;
            };
            let mut pos = rest.split(':').skip(1);
            let numbers = pos.next().is_some_and(|n| n.parse::<u32>().is_ok())
                && pos.next().is_some_and(|n| n.parse::<u32>().is_ok());
            numbers && rest.contains(want)
        });
        assert!(found, "want {file}:L:C{want:?} in:\n{out}");
        assert!(!out.contains("pw@ss") && !out.contains("s3cret"), "{out}");
    }
}

#[test]
fn run_refuses_at_start_what_check_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), &[], "[bridge]\nmax_line_bytes = 0\n");
    let log = dir.path().join("run.log");
    let child = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        name: "run".into(),
    };
    // Before: the bridge started and looped on its zero-length lines.
    let code = p.wait_timeout(Duration::from_secs(10));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("bridge.max_line_bytes: 0 is out of range"),
        "{err}"
    );
}

#[test]
fn check_warns_about_a_secret_file_everybody_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pbx1.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let to = format!("secret_file = \"{}\"", secret.display());
    let cfg = config_with(dir.path(), &[("secret = \"s3cret\"", &to)], "");
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, out, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "a warning does not fail the check: {out}{err}");
        let want = format!(
            "warning: {}:8:15: server[0].secret_file: {} is accessible by every user (mode {mode:03o})",
            cfg.display(),
            secret.display()
        );
        assert_eq!(out.contains(&want), warned, "{want}\n{out}");
    }
}

#[test]
fn help_never_shows_secrets_from_the_environment() {
    for sub in ["action", "tail", "record", "replay"] {
        let o = Command::new(bin())
            .args([sub, "--help"])
            .env("AMQP_URL", "amqp://u:hunter2-amqp@127.0.0.1:5672/%2f")
            .env("AMI2AMQP_SECRET", "hunter2-ami")
            .env("AMI2AMQP_REPLAY_SECRET", "hunter2-replay")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{sub}: {help}");
        assert!(
            !help.contains("hunter2"),
            "{sub} --help shows a secret:\n{help}"
        );
        assert!(
            help.contains("visible to every user in `ps`"),
            "{sub} --help says the flag form shows in ps:\n{help}"
        );
    }
}

/// A broker user on the shared node, deleted on drop.
struct BrokerUser(String);

impl BrokerUser {
    fn add(name: &str, password: &str) -> BrokerUser {
        let ctl = |args: &[&str]| {
            let o = Command::new("rabbitmqctl").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ctl(&["add_user", name, password]);
        let user = BrokerUser(name.to_string());
        ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

/// The password as lapin's `trace` output prints the SASL response: a
/// list of byte values.
fn as_byte_list(s: &str) -> String {
    s.bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_with_raw_at_signs_work_and_never_show() {
    let shared = shared_amqp_url();
    let host = shared
        .rsplit_once('@')
        .map_or("127.0.0.1:5672/%2f", |x| x.1);
    let user = unique("us@er");
    let password = unique("pw@ss");
    let _account = BrokerUser::add(&user, &password);
    // Raw `@`s, as an operator pastes them: lapin splits at the last one.
    let url = format!("amqp://{user}:{password}@{host}");
    let (_r, addr) = replay(&[
        "--rate",
        "5",
        "--loop",
        "0",
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let ex = unique("ami.actions.test.");
    let actions = format!(
        "\n[actions]\nexchange = \"{ex}\"\nqueue_prefix = \"{ex}.\"\nunrouted = \"{ex}.unrouted\"\nexpired = \"{ex}.expired\"\n\n[[actions.allow]]\nuser = \"{user}\"\nactions = [\"Ping\"]\n"
    );
    let setup = BridgeSetup::new(&addr, &url, &actions);
    let log = setup.dir.path().join("trace.log");
    let _bridge = Proc {
        child: Command::new(bin())
            .args(["--log-level", "trace", "run", "--config"])
            .arg(&setup.config)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        name: "bridge".into(),
    };
    // `action` with the URL from a file, traced too; before, it sent
    // user_id=us (the raw URL cut at its first `@`) and the broker
    // refused the publish.
    let url_file = setup.dir.path().join("amqp.url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let mut last = (String::new(), String::new());
    let ok = wait_until(Duration::from_secs(30), || {
        let o = Command::new(bin())
            .args(["--log-level", "trace", "action", "--amqp-file"])
            .arg(&url_file)
            .args([
                "--exchange",
                &ex,
                "--server",
                &setup.server,
                "--timeout",
                "2",
                "Ping",
            ])
            .env_remove("AMQP_URL")
            .output()
            .unwrap();
        last = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        o.status.success() && last.0.contains("response: Success")
    });
    let bridge_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        ok,
        "action never succeeded: {}{}\n{}",
        last.0,
        last.1,
        bridge_log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The same user percent-encoded, from AMQP_URL: lapin decodes it, and
    // so must the user_id (before: user_id=us%40er…, refused).
    let encoded = url.replacen(&user, &user.replace('@', "%40"), 1);
    let o = Command::new(bin())
        .args([
            "action",
            "--exchange",
            &ex,
            "--server",
            &setup.server,
            "--timeout",
            "5",
            "Ping",
        ])
        .env("AMQP_URL", &encoded)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("response: Success"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bytes = as_byte_list(&password);
    for (what, text) in [("bridge log", &bridge_log), ("action stderr", &last.1)] {
        assert!(
            !text.contains(&password) && !text.contains(&bytes),
            "the password is in the {what}"
        );
        assert!(!text.contains("pw%40ss"), "the password is in the {what}");
    }
    let shown = format!("{}:***@", user.replace('@', "%40"));
    assert!(
        bridge_log.contains(&shown),
        "no redacted URL {shown} in the log"
    );
    assert!(
        bridge_log.contains("TRACE"),
        "the bridge did not log at trace level"
    );
}

#[test]
fn every_toml_block_of_docs_config_md_passes_check() {
    let doc = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pbx1.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    // The TLS examples name CA files: real ones, made here.
    let ca = common::certs::TestCa::new(dir.path(), "ca");
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|x| x.0))
        .collect();
    assert!(blocks.len() >= 8, "{}", blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        let text = b
            .replace("/etc/ami2amqp/pbx1.secret", secret.to_str().unwrap())
            .replace(
                "/etc/ami2amqp/mappings",
                repo().join("mappings").to_str().unwrap(),
            )
            .replace("/etc/ami2amqp/rabbit-ca.pem", ca.cert.to_str().unwrap())
            .replace("/etc/ami2amqp/asterisk-ca.pem", ca.cert.to_str().unwrap());
        let cfg = dir.path().join(format!("block{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let o = Command::new(bin())
            .args(["check", "--config", cfg.to_str().unwrap(), "--mappings"])
            .arg(repo().join("mappings"))
            .env("PBX1_SECRET", "a")
            .env("PBX2_SECRET", "b")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "block {i}:\n{b}\n{out}");
    }
}

/// `ami2amqp` run in the repository (for relative paths, as the docs show).
fn run_in_repo(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run ami2amqp");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_and_map_load_overlay_directories_in_order() {
    // The preset as docs/mapping.md shows it.
    let doc = std::fs::read_to_string(repo().join("docs/mapping.md")).unwrap();
    let cmd =
        "$ ami2amqp check --mappings mappings --mappings mappings/examples/security-exchange\n";
    let quoted = doc
        .split(cmd)
        .nth(1)
        .and_then(|b| b.split_once("```"))
        .expect("quoted")
        .0;
    let (code, out, err) = run_in_repo(&[
        "check",
        "--mappings",
        "mappings",
        "--mappings",
        "mappings/examples/security-exchange",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, quoted, "docs/mapping.md quotes another output");

    // An overlay of our own: 10-call.toml replaced, 95-extra.toml added.
    let m = repo().join("mappings");
    let over = tempfile::tempdir().unwrap();
    let route = |name: &str, key: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nevents = [\"Hangup\"]\nexchange = \"ami.events\"\nrouting_key = \"{key}\"\n"
        )
    };
    let replaced = over.path().join("10-call.toml");
    let added = over.path().join("95-extra.toml");
    std::fs::write(&replaced, route("own hangup", "{server}.own.Hangup")).unwrap();
    std::fs::write(&added, route("extra hangup", "{server}.extra.Hangup")).unwrap();
    let dirs = [
        "--mappings",
        m.to_str().unwrap(),
        "--mappings",
        over.path().to_str().unwrap(),
    ];
    let (code, out, err) = run(&[&["check"], &dirs[..]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" in 12 file(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "  {} replaces {}\n",
            replaced.display(),
            m.join("10-call.toml").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("  {} added\n", added.display())),
        "{out}"
    );

    let t = trace("calls_small.ami");
    let (code, out, err) =
        run(&[&["map"], &dirs[..], &["--summary", t.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pbx1.own.Hangup"), "{out}");
    assert!(out.contains("pbx1.extra.Hangup"), "{out}");
    assert!(
        !out.contains("pbx1.call.Hangup."),
        "10-call.toml is replaced: {out}"
    );
    assert!(
        out.contains("pbx1.system.FullyBooted"),
        "the other files stay: {out}"
    );

    // An error in the overlay: its own path, line and column.
    std::fs::write(&added, "[[route]]\nname = 1\n").unwrap();
    let (code, out, _) = run(&[&["check"], &dirs[..]].concat());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("{}:2:8: ", added.display())),
        "{out}"
    );
    let (code, _, err) = run(&[&["map"], &dirs[..], &[t.to_str().unwrap()]].concat());
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:2:8: ", added.display())), "{err}");
}

#[test]
fn the_config_names_overlay_directories_with_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let m = repo().join("mappings");
    let preset = m.join("examples/per-technology");
    let dirs = format!("dirs = [\"{}\", \"{}\"]", m.display(), preset.display());
    let cfg = config_with(
        dir.path(),
        &[(&format!("dir = \"{}\"", m.display()), &dirs)],
        "",
    );
    let (code, out, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{} + {}: ok (", m.display(), preset.display())),
        "{out}"
    );
    assert!(
        out.contains("per-technology/10-call.toml replaces "),
        "{out}"
    );

    // `dir` and `dirs` together: refused where `dirs` is written.
    let both = format!("dir = \"{}\"\n{dirs}", m.display());
    let cfg = config_with(
        dir.path(),
        &[(&format!("dir = \"{}\"", m.display()), &both)],
        "",
    );
    let (code, out, _) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}:12:8: mappings.dirs: give `dir` or `dirs`, not both",
            cfg.display()
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_bridge_reloads_when_a_file_of_a_later_directory_changes() {
    let url = shared_amqp_url();
    let (_r, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--rate",
        "40",
        "--loop",
        "0",
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let setup = BridgeSetup::new(&addr, &url, "");
    let over = setup.dir.path().join("overlay");
    std::fs::create_dir(&over).unwrap();
    std::fs::write(over.join("50-local.toml"), "# nothing yet\n").unwrap();
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let one = format!("dir = \"{}\"", setup.mappings.display());
    assert!(text.contains(&one), "{text}");
    let two = format!(
        "dirs = [\"{}\", \"{}\"]",
        setup.mappings.display(),
        over.display()
    );
    std::fs::write(&setup.config, text.replace(&one, &two)).unwrap();

    let mut all = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    let _bridge = setup.start();
    let first = all.collect(5, Duration::from_secs(15)).await;
    assert_eq!(first.len(), 5, "{}", setup.log());
    assert!(
        first
            .iter()
            .all(|d| !d.routing_key.as_str().contains(".local.first."))
    );

    // A file added to the second directory takes every event first.
    std::fs::write(
        over.join("05-first.toml"),
        format!(
            "[[route]]\nname = \"local first\"\nevents = [\"*\"]\nexchange = \"{}\"\nrouting_key = \"{{server}}.local.first.{{Event}}\"\nstop = true\n",
            setup.exchange
        ),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || setup
            .log()
            .contains("mapping set reloaded")),
        "{}",
        setup.log()
    );
    let mut saw = false;
    for d in all.collect(100, Duration::from_secs(10)).await {
        let k = d.routing_key.as_str().to_string();
        if k.ends_with(".bridge.status") {
            continue;
        }
        if saw {
            assert!(k.contains(".local.first."), "after the swap: {k}");
        }
        saw |= k.contains(".local.first.");
    }
    assert!(
        saw,
        "no message routed by the overlay's file\n{}",
        setup.log()
    );
}

/// `check --explain-filters`: push-down's plan per server, with why.
#[test]
fn check_explains_the_push_down_filters() {
    let m = repo().join("mappings");
    let drop = repo().join("mappings/examples/drop-noise");
    let (code, out, err) = run(&[
        "check",
        "--mappings",
        m.to_str().unwrap(),
        "--mappings",
        drop.to_str().unwrap(),
        "--explain-filters",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "  Events: on (configured: on)\n",
        "  Filter: !^Event: ([Cc][Ee][Ll]|[Nn][Ee][Ww][Ee][Xx][Tt][Ee][Nn]|[Vv][Aa][Rr][Ss][Ee][Tt])[[:space:]]\n",
        "  filtered at the source: CEL, NewExten, VarSet\n",
        "  kept: any other name (open set)\n",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }

    // Per [[server]] of a config: off unless push_down = true, and off
    // with action_connections = 0; never wider than the configured mask.
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("m");
    std::fs::create_dir(&maps).unwrap();
    std::fs::write(
        maps.join("10-cdr.toml"),
        "[[route]]\nname = \"cdr\"\nevents = [\"Cdr\", \"Hangup\"]\nexchange = \"e\"\nrouting_key = \"k\"\n",
    )
    .unwrap();
    let mappings_line = format!("dir = \"{}\"", repo().join("mappings").display());
    let to = format!("dir = \"{}\"", maps.display());
    for (extra, want) in [
        (
            "",
            "  push_down: off\n  Events: on (configured: on)\n  filters: none\n  note: push_down = false\n",
        ),
        (
            "push_down = true\nevents = [\"cdr\", \"user\"]\n",
            "  push_down: on\n  Events: cdr (configured: cdr,user)\n",
        ),
        (
            "push_down = true\n",
            "  Events: call,cdr (configured: on)\n",
        ),
        (
            "push_down = true\naction_connections = 0\n",
            "  push_down: off\n",
        ),
    ] {
        let server = format!("secret = \"s3cret\"\n{extra}");
        let c = config_with(
            dir.path(),
            &[("secret = \"s3cret\"\n", &server), (&mappings_line, &to)],
            "",
        );
        let (code, out, err) = run(&[
            "check",
            "--explain-filters",
            "--config",
            c.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("server pbx1:\n"), "{out}");
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    // Off with the AMI facade, whose clients receive every event.
    let c = config_with(
        dir.path(),
        &[
            (
                "secret = \"s3cret\"\n",
                "secret = \"s3cret\"\npush_down = true\n",
            ),
            (&mappings_line, &to),
        ],
        "\n[facade]\nlisten = \"127.0.0.1:15038\"\n",
    );
    let (code, out, err) = run(&[
        "check",
        "--explain-filters",
        "--config",
        c.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  push_down: off\n") && out.contains("note: off: the AMI facade is on"),
        "{out}"
    );
}
