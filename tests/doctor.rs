//! `ami2amqp doctor` against a replayed Asterisk and the real broker: all
//! fine, then one deliberate fault at a time (unknown host, closed port,
//! wrong AMI secret, wrong broker password, broker down), each reported on
//! its own `FAIL` line with exit status 1.

mod common;

use std::process::Command;

use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, free_port, replay, trace};

fn doctor(setup: &BridgeSetup) -> (bool, String) {
    let (ok, out, _) = common::procs::with_config("doctor", &setup.config);
    (ok, out)
}

/// A replay that wants the bridge's own login (user bridge, secret bridgepass).
fn asterisk() -> (common::procs::Proc, String) {
    replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--responses",
        trace("actions.sent").to_str().unwrap(),
        "--rate",
        "100",
        "--loop",
        "0",
        trace("calls_small.ami").to_str().unwrap(),
    ])
}

fn has_line(out: &str, status: &str, part: &str, check: &str) -> bool {
    out.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(status) && w.next() == Some(part) && w.next() == Some(check)
    })
}

#[test]
fn everything_reachable_passes() {
    let (_r, addr) = asterisk();
    let allow =
        "\n[[actions.allow]]\nuser = \"crm\"\nactions = [\"Originate\", \"NoSuchAction2\"]\n";
    let s = BridgeSetup::new(&addr, &shared_amqp_url(), allow);
    let (ok, out) = doctor(&s);
    assert!(ok, "{out}");
    let server = s.server.as_str();
    for check in ["dns", "tcp", "login", "actions", "events"] {
        assert!(has_line(&out, "ok", server, check), "no ok {check}:\n{out}");
    }
    assert!(has_line(&out, "ok", "broker", "login"), "{out}");
    assert!(
        out.contains("grants \"NoSuchAction2\", but this AMI user may not run it"),
        "{out}"
    );
    // The run's events exchange does not exist yet: a warning, not a failure.
    assert!(
        out.contains("missing (events): the bridge declares it at start"),
        "{out}"
    );
    assert!(out.ends_with("0 check(s) failed, 2 warning(s)\n"), "{out}");
}

#[test]
fn the_snapshot_kinds_are_checked_against_the_users_actions() {
    let (_r, addr) = asterisk();
    let s = BridgeSetup::new(&addr, &shared_amqp_url(), "");
    s.with_snapshots();
    let (ok, out) = doctor(&s);
    assert!(ok, "{out}");
    // The recorded ListCommands (user with write = all) lists all six.
    assert!(
        out.contains("this user may list every snapshot kind: channels (CoreShowChannels), bridges (BridgeList), queues (QueueStatus), devices (DeviceStateList), extensions (ExtensionStateList), presence (PresenceStateList)"),
        "{out}"
    );
    assert!(has_line(&out, "ok", &s.server, "snapshot"), "{out}");
}

#[test]
fn each_fault_is_one_fail_line() {
    let (_r, addr) = asterisk();
    let url = shared_amqp_url();

    let s = BridgeSetup::new("nosuchhost.invalid:5038", &url, "");
    let (ok, out) = doctor(&s);
    assert!(!ok && has_line(&out, "FAIL", &s.server, "dns"), "{out}");

    let closed = format!("127.0.0.1:{}", free_port());
    let s = BridgeSetup::new(&closed, &url, "");
    let (ok, out) = doctor(&s);
    assert!(!ok && has_line(&out, "FAIL", &s.server, "tcp"), "{out}");
    assert!(
        has_line(&out, "ok", "broker", "login"),
        "the broker is still checked:\n{out}"
    );

    let s = BridgeSetup::new(&addr, &url, "");
    std::fs::write(
        &s.config,
        std::fs::read_to_string(&s.config)
            .unwrap()
            .replace("secret = \"bridgepass\"", "secret = \"wrong\""),
    )
    .unwrap();
    let (ok, out) = doctor(&s);
    assert!(!ok && has_line(&out, "FAIL", &s.server, "login"), "{out}");
    assert!(out.contains("uthentication failed"), "{out}");

    let bad = url.replacen("guest:guest", "guest:wrong", 1);
    let s = BridgeSetup::new(&addr, &bad, "");
    let (ok, out) = doctor(&s);
    assert!(!ok && has_line(&out, "FAIL", "broker", "login"), "{out}");
    assert!(
        !out.contains("guest:wrong"),
        "the password is shown:\n{out}"
    );

    let down = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let s = BridgeSetup::new(&addr, &down, "");
    let (ok, out) = doctor(&s);
    assert!(!ok && has_line(&out, "FAIL", "broker", "tcp"), "{out}");
    assert!(has_line(&out, "ok", &s.server, "login"), "{out}");
}

/// A broker user without configure permission: the bridge could not
/// declare its exchanges at connect, and doctor says so on a FAIL line.
#[test]
fn a_broker_user_without_configure_permission_fails() {
    let (_r, addr) = asterisk();
    let user = common::procs::unique("doctor");
    let ctl = |args: &[&str]| {
        let o = Command::new("rabbitmqctl")
            .args(args)
            .env(
                "PATH",
                format!(
                    "{}:/usr/sbin:/sbin",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .expect("rabbitmqctl (the system RabbitMQ's)");
        assert!(
            o.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    struct DeleteUser(String);
    impl Drop for DeleteUser {
        fn drop(&mut self) {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_user", &self.0])
                .env(
                    "PATH",
                    format!(
                        "{}:/usr/sbin:/sbin",
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .output();
        }
    }
    ctl(&["add_user", &user, "pw"]);
    let _gone = DeleteUser(user.clone());
    ctl(&["set_permissions", "-p", "/", &user, "^$", ".*", ".*"]);
    let url = shared_amqp_url().replacen("guest:guest", &format!("{user}:pw"), 1);
    let s = BridgeSetup::new(&addr, &url, "[actions]\nenabled = false\n");
    // The events exchange exists, declared as the bridge declares it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(&shared_amqp_url(), Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        common::procs::declare_exchange(&ch, &s.exchange)
            .await
            .unwrap();
        let _ = conn.close(200, "".into()).await;
    });
    let (ok, out) = doctor(&s);
    assert!(!ok, "{out}");
    let check = format!("exchange {}", s.exchange);
    assert!(
        out.lines().any(|l| l.starts_with("FAIL")
            && l.contains(&check)
            && l.contains("no configure permission")),
        "{out}"
    );
}
