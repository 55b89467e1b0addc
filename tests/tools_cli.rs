//! The operator tools as an operator runs them: `check` and `map` on the
//! command line, and hot reload of the mappings in a running bridge.

mod common;

use std::process::Command;
use std::time::Duration;

use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, bin, body, replay, repo, sink, trace, wait_until};

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
