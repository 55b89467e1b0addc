//! The Debian package, built and installed on this machine: scripts/build-deb.sh
//! packages the test build of the binary (gzip -1), lintian finds no error,
//! `dpkg -i` installs it (user, spool directory, conffiles, unit, man pages,
//! completions), `ami2amqp check` accepts the installed config,
//! `systemd-analyze verify` the unit, `dpkg -r` keeps the configuration and
//! the spool, `dpkg -P` leaves nothing behind.
//!
//! Needs root (it runs dpkg) and the tools of scripts/ensure-deb-tools.sh,
//! which `make test` runs first. It fails, never skips, without them.

use std::path::Path;
use std::process::{Command, Output};

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (run scripts/ensure-deb-tools.sh)"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f", "${Status}", "ami2amqp"])
        .stdout
        .starts_with(b"install ok installed")
}

fn user_exists() -> bool {
    run("getent", &["passwd", "ami2amqp"]).status.success()
}

/// Purges the package when the test ends, whatever happened.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["-P", "ami2amqp"]);
    }
}

#[test]
fn the_package_installs_checks_and_purges_cleanly() {
    let uid = ok("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "this test installs a package with dpkg: run it as root (make test does on CI)"
    );
    // A package left by an interrupted run of this test.
    let _ = run("dpkg", &["-P", "ami2amqp"]);
    let _purge = Purge;
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = tempfile::tempdir().unwrap();
    let built = ok(
        "bash",
        &[
            &format!("{repo}/scripts/build-deb.sh"),
            "--binary",
            env!("CARGO_BIN_EXE_ami2amqp"),
            "--out",
            out.path().to_str().unwrap(),
            "--fast",
        ],
    );
    let deb = built.lines().last().unwrap().trim().to_string();
    assert!(Path::new(&deb).is_file(), "{built}");
    ok("lintian", &["--fail-on", "error", &deb]);

    ok("dpkg", &["-i", &deb]);
    assert!(installed());
    for f in [
        "/usr/bin/ami2amqp",
        "/etc/ami2amqp/ami2amqp.toml",
        "/etc/ami2amqp/mappings/10-call.toml",
        "/etc/default/ami2amqp",
        "/lib/systemd/system/ami2amqp.service",
        "/usr/share/man/man1/ami2amqp.1.gz",
        "/usr/share/man/man1/ami2amqp-run.1.gz",
        "/usr/share/bash-completion/completions/ami2amqp",
        "/usr/share/zsh/vendor-completions/_ami2amqp",
        "/usr/share/fish/vendor_completions.d/ami2amqp.fish",
        "/usr/share/doc/ami2amqp/copyright",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    assert!(user_exists(), "no system user ami2amqp");
    let owner = ok("stat", &["-c", "%U %a", "/var/lib/ami2amqp"]);
    assert_eq!(owner.trim(), "ami2amqp 750");
    let conffiles = ok("dpkg-query", &["-W", "-f", "${Conffiles}", "ami2amqp"]);
    assert!(
        conffiles.contains("/etc/ami2amqp/ami2amqp.toml")
            && conffiles.contains("/etc/ami2amqp/mappings/99-fallback.toml"),
        "{conffiles}"
    );

    // The installed config, as the unit would run it (from /).
    let check = Command::new("/usr/bin/ami2amqp")
        .args(["check", "--config", "/etc/ami2amqp/ami2amqp.toml"])
        .current_dir("/")
        .env("AMI2AMQP_PBX1_SECRET", "s3cret")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("/etc/ami2amqp/mappings: ok"), "{text}");
    ok(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/ami2amqp.service"],
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/ami2amqp.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ami2amqp run --config /etc/ami2amqp/ami2amqp.toml"));
    assert!(unit.contains("LimitNOFILE="));

    // remove: the program goes; configuration, user and spool stay.
    std::fs::write("/var/lib/ami2amqp/left-in-spool", b"x").unwrap();
    ok("dpkg", &["-r", "ami2amqp"]);
    assert!(!Path::new("/usr/bin/ami2amqp").exists());
    assert!(
        Path::new("/etc/ami2amqp/ami2amqp.toml").exists(),
        "remove took the config"
    );
    assert!(
        Path::new("/var/lib/ami2amqp/left-in-spool").exists(),
        "remove took the spool"
    );
    assert!(user_exists(), "remove took the user");

    // purge: nothing of the package is left.
    ok("dpkg", &["-P", "ami2amqp"]);
    for p in [
        "/etc/ami2amqp",
        "/var/lib/ami2amqp",
        "/etc/default/ami2amqp",
    ] {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    assert!(!user_exists(), "the user is left after purge");
    assert!(
        !run("getent", &["group", "ami2amqp"]).status.success(),
        "group left"
    );
}
