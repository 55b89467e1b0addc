//! `ami2amqp run` against a hostile fake Asterisk (tests/common/fake_ami.rs):
//! what it sends must not grow the bridge's metrics, logs, memory or CPU
//! without bound (issue 10, items 11–14 and 18).

mod common;
#[path = "common/fake_ami.rs"]
mod fake_ami;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, wait_until};
use fake_ami::Script;

/// The value of every series of `metric` in a Prometheus text page, with
/// its labels.
fn series(page: &str, metric: &str) -> Vec<(String, f64)> {
    let prefix = format!("{metric}{{");
    page.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn total(page: &str, metric: &str) -> f64 {
    series(page, metric).iter().map(|(_, v)| v).sum()
}

fn metrics(setup: &BridgeSetup) -> String {
    setup
        .http_get("/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// A field of /proc/PID/status in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = s.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Sends, once logged in: thousands of distinct event names, a few
/// documented ones, and messages without `Event:`.
struct ManyNames;
impl Script for ManyNames {
    fn after_login(&self, _: usize, s: &mut TcpStream) {
        let mut out = Vec::new();
        for i in 0..5000 {
            write!(out, "Event: Junk{i}\r\nPrivilege: call,all\r\n\r\n").unwrap();
        }
        for _ in 0..3 {
            out.extend_from_slice(b"Event: Newchannel\r\nChannel: PJSIP/1-0001\r\n\r\n");
        }
        for i in 0..50 {
            write!(out, "Foo: bar{i}\r\nBaz: qux\r\n\r\n").unwrap();
        }
        let _ = s.write_all(&out);
    }
}

/// Items 11 and 18: 5000 distinct event names make a handful of
/// `ami_events_total` series (`other` for the unknown ones), and messages
/// without `Event:` are counted.
#[test]
fn distinct_event_names_make_a_bounded_number_of_series() {
    let ami = fake_ami::start(ManyNames);
    let setup = BridgeSetup::new(&ami.addr, &shared_amqp_url(), "");
    let _bridge = setup.start();
    assert!(
        wait_until(Duration::from_secs(30), || total(
            &metrics(&setup),
            "ami_events_total"
        ) >= 5003.0),
        "events not counted; log:\n{}",
        setup.log()
    );
    let page = metrics(&setup);
    let events = series(&page, "ami_events_total");
    assert!(events.len() <= 10, "{} series: {events:?}", events.len());
    let other = events
        .iter()
        .find(|(l, _)| l.contains("event=\"other\""))
        .map(|x| x.1);
    assert_eq!(other, Some(5000.0), "{events:?}");
    assert!(
        events
            .iter()
            .any(|(l, v)| l.contains("event=\"Newchannel\"") && *v == 3.0),
        "{events:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || series(
            &metrics(&setup),
            "ami_ignored_messages_total"
        )
        .iter()
        .any(|(l, v)| l.contains("kind=\"no_event\"") && *v == 50.0)),
        "{:?}",
        series(&metrics(&setup), "ami_ignored_messages_total")
    );
}

/// Sends, once logged in: 1,000,000 bytes of junk (200,000 malformed
/// messages with CR/LF in them), then a legacy `Follows` block of 2 MiB
/// whose output is full of blank lines and junk.
struct Junk;
impl Script for Junk {
    fn after_login(&self, _: usize, s: &mut TcpStream) {
        let mut out = b"x\r\n\r\n".repeat(200_000);
        out.extend_from_slice(b"Response: Follows\r\nActionID: nobody\r\n");
        for _ in 0..100_000 {
            out.extend_from_slice(b"\n\nnot key value\n");
        }
        out.extend_from_slice(b"--END COMMAND--\r\n\r\n");
        let _ = s.write_all(&out);
    }
}

/// Item 12: malformed input is counted in full but logged a few times
/// (rate-limited), with control characters escaped.
#[test]
fn junk_from_ami_makes_few_log_lines() {
    let ami = fake_ami::start(Junk);
    let setup = BridgeSetup::new(&ami.addr, &shared_amqp_url(), "");
    let _bridge = setup.start();
    assert!(
        wait_until(Duration::from_secs(60), || total(
            &metrics(&setup),
            "ami_parse_errors_total"
        ) >= 200_001.0),
        "parse errors: {}; log:\n{}",
        total(&metrics(&setup), "ami_parse_errors_total"),
        setup.log().chars().take(5000).collect::<String>()
    );
    let log = setup.log();
    let warnings = log.lines().filter(|l| l.contains("malformed")).count();
    assert!(
        (1..=10).contains(&warnings),
        "{warnings} warnings, {} bytes of log",
        log.len()
    );
    assert!(log.len() < 100_000, "{} bytes of log", log.len());
    assert!(!log.contains('\r'), "raw CR in the log");
    // Nothing of the Follows output was read as messages.
    assert_eq!(total(&metrics(&setup), "ami_parse_errors_total"), 200_001.0);
}

/// Floods events before answering `Login` on the first sessions.
struct FloodBeforeLogin;
impl Script for FloodBeforeLogin {
    fn before_login_answer(&self, session: usize, s: &mut TcpStream) {
        if session >= 2 {
            return;
        }
        let mut event = b"Event: Flood\r\nPrivilege: call,all\r\nData: ".to_vec();
        event.extend_from_slice(&[b'v'; 1000]);
        event.extend_from_slice(b"\r\n\r\n");
        let chunk = event.repeat(1000); // ~1 MB
        for _ in 0..150 {
            if s.write_all(&chunk).is_err() {
                return; // the bridge gave up on the login: good
            }
        }
    }
}

/// Item 14: the byte budget holds during login: 150 MB of events before
/// the answer to `Login` do not become 150 MB of memory.
#[test]
fn events_before_the_login_answer_are_bounded() {
    let ami = fake_ami::start(FloodBeforeLogin);
    let extra = "[bridge]\nmax_buffered_bytes = 4194304\n";
    let setup = BridgeSetup::new(&ami.addr, &shared_amqp_url(), extra);
    let bridge = setup.start();
    // The two flooded sessions (events, action-1) end, then the later
    // ones log in normally.
    assert!(
        wait_until(Duration::from_secs(60), || setup
            .http_get("/healthz")
            .is_some_and(|(c, _)| c == 200)),
        "never healthy; log:\n{}",
        setup.log()
    );
    let hwm_mb = status_kb(bridge.pid(), "VmHWM:") / 1024;
    eprintln!("VmHWM of the bridge: {hwm_mb} MB");
    assert!(
        hwm_mb > 0 && hwm_mb < 100,
        "peak resident memory {hwm_mb} MB"
    );
    assert!(
        setup.log().contains("before answering the login"),
        "{}",
        setup.log()
    );
}

/// Item 13: at the file-descriptor limit the metrics listener backs off
/// instead of spinning on `accept`, and answers again once connections
/// close.
#[test]
fn metrics_listener_at_the_fd_limit_does_not_spin() {
    struct Quiet;
    impl Script for Quiet {}
    let ami = fake_ami::start(Quiet);
    let setup = BridgeSetup::new(&ami.addr, &shared_amqp_url(), "");
    let bridge = setup.start();
    let pid = bridge.pid();
    assert!(
        wait_until(Duration::from_secs(30), || setup
            .http_get("/healthz")
            .is_some_and(|(c, _)| c == 200)),
        "never healthy; log:\n{}",
        setup.log()
    );
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(open > 0);
    let limit = open + 4;
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit");
    assert!(st.success());
    // Idle connections: a few are accepted, the rest wait in the backlog
    // and make every accept fail with EMFILE.
    let held: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&setup.metrics).ok())
        .collect();
    assert!(held.len() > 10);
    let before = cpu_time(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time(pid) - before;
    let wall = t0.elapsed();
    eprintln!("bridge CPU {used:?} in {wall:?} at the fd limit");
    assert!(
        used < wall / 4,
        "bridge used {used:?} of CPU in {wall:?} at the fd limit"
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(15), || setup
            .http_get("/healthz")
            .is_some_and(|(c, _)| c == 200)),
        "/healthz does not answer after the connections closed"
    );
    let log = setup.log();
    let lines = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!((1..=5).contains(&lines), "{lines} accept warnings");
}
