//! The AMI facade on the wire: raw sockets against `ami2amqp run` with a
//! `[facade]` section, the backend a replayed real trace (`ami2amqp
//! replay`, answering actions with recorded responses) or, for the async
//! Originate, a small scripted server. Each test names the F-items of
//! docs/facade.md it checks.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ami2amqp::ami::{Frame, Limits, decode_all};
use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, Proc, free_port, replay, trace, unique, wait_until};

/// A raw AMI client.
struct Ami {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Ami {
    fn connect(addr: &str) -> Ami {
        let s = TcpStream::connect(addr).expect("connect to the facade");
        Ami { s, buf: Vec::new() }
    }

    fn send(&mut self, fields: &[(&str, &str)]) {
        let mut m = String::new();
        for (k, v) in fields {
            m.push_str(&format!("{k}: {v}\r\n"));
        }
        m.push_str("\r\n");
        self.send_raw(m.as_bytes());
    }

    fn send_raw(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    /// Reads more bytes; false at EOF, error or timeout.
    fn fill(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.s.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The first line (the banner), with its CRLF.
    fn banner(&mut self) -> String {
        self.try_banner().expect("no banner")
    }

    fn try_banner(&mut self) -> Option<String> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8(line).ok();
            }
            if !self.fill(until) {
                return None;
            }
        }
    }

    /// The next whole message (with its blank line), or None.
    fn read(&mut self, t: Duration) -> Option<String> {
        let until = Instant::now() + t;
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let m: Vec<u8> = self.buf.drain(..i + 4).collect();
                return Some(String::from_utf8_lossy(&m).into_owned());
            }
            if !self.fill(until) {
                return None;
            }
        }
    }

    /// The next message that `pred` accepts (others skipped).
    fn read_where(&mut self, t: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let until = Instant::now() + t;
        loop {
            let m = self.read(until.saturating_duration_since(Instant::now()))?;
            if pred(&m) {
                return Some(m);
            }
        }
    }

    /// The next response (events skipped).
    fn response(&mut self) -> String {
        self.read_where(Duration::from_secs(10), |m| m.starts_with("Response:"))
            .expect("a response")
    }

    /// True when the peer closes within `t` (what arrives first is read).
    fn closed_within(&mut self, t: Duration) -> bool {
        let until = Instant::now() + t;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    fn login(addr: &str, user: &str, secret: &str, events: Option<&str>) -> (Ami, String) {
        let mut a = Ami::connect(addr);
        let banner = a.banner();
        let mut f = vec![
            ("Action", "Login"),
            ("Username", user),
            ("Secret", secret),
            ("ActionID", "login-1"),
        ];
        if let Some(e) = events {
            f.push(("Events", e));
        }
        a.send(&f);
        let r = a.read(Duration::from_secs(10)).expect("login response");
        (a, format!("{banner}{r}"))
    }
}

/// A bridge with a facade in front of a replayed trace.
struct Setup {
    setup: BridgeSetup,
    bridge: Proc,
    replay: Option<Proc>,
    replay_args: Vec<String>,
    ami_addr: String,
    facade: String,
}

const USERS: &str = r#"
[[facade.user]]
name = "all"
secret = "allpass"
read = ["all"]
write = ["all"]

[[facade.user]]
name = "Calls"
secret = "callpass"
read = ["call"]
write = []
"#;

fn replay_args(extra: &[&str], traces: &[PathBuf]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--responses".into(),
        trace("actions.sent").display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(traces.iter().map(|p| p.display().to_string()));
    a
}

impl Setup {
    fn start(replay_extra: &[&str], traces: &[PathBuf], facade_extra: &str) -> Setup {
        let args = replay_args(replay_extra, traces);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (replay, ami_addr) = replay(&argv);
        let facade = format!("127.0.0.1:{}", free_port());
        let extra = format!(
            "[actions]\nenabled = false\n\n[facade]\nlisten = \"{facade}\"\n{facade_extra}\n{USERS}"
        );
        let setup = BridgeSetup::new(&ami_addr, &shared_amqp_url(), &extra);
        let bridge = setup.start();
        let s = Setup {
            setup,
            bridge,
            replay: Some(replay),
            replay_args: args,
            ami_addr,
            facade,
        };
        s.wait_ready();
        s
    }

    /// A bridge with a facade in front of `calls_small` looping at 20
    /// events/s (for tests about actions, not events).
    fn looping(facade_extra: &str) -> Setup {
        Setup::start(
            &["--rate", "20", "--loop", "0"],
            &[trace("calls_small.ami")],
            facade_extra,
        )
    }

    /// Until a login succeeds (the facade refuses clients while its
    /// server is down).
    fn wait_ready(&self) {
        let ok = wait_until(Duration::from_secs(20), || {
            let Ok(mut s) = TcpStream::connect(&self.facade) else {
                return false;
            };
            let _ = s.write_all(b"Action: Login\r\nUsername: all\r\nSecret: allpass\r\n\r\n");
            let mut a = Ami { s, buf: Vec::new() };
            a.read(Duration::from_secs(2))
                .is_some_and(|m| m.contains("Authentication accepted"))
        });
        assert!(ok, "facade not ready:\n{}", self.setup.log());
    }

    fn metrics(&self) -> String {
        self.setup
            .http_get("/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn restart_replay(&mut self) {
        let mut args = vec!["--listen".to_string(), self.ami_addr.clone()];
        args.extend(self.replay_args.iter().cloned());
        let child = std::process::Command::new(common::procs::bin())
            .arg("replay")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("restart replay");
        self.replay = Some(Proc {
            child,
            name: "replay".into(),
        });
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.bridge.signal("TERM");
        let _ = self.bridge.wait_timeout(Duration::from_secs(5));
    }
}

/// The events of a trace that a facade broadcasts (those with `Privilege:`).
fn broadcast_events(trace: &Path) -> Vec<String> {
    let bytes = std::fs::read(trace).unwrap();
    decode_all(&bytes, Limits::default())
        .into_iter()
        .filter_map(|f| match f {
            Frame::Message(m) if m.contains("Privilege") => Some(format!(
                "{}/{}",
                m.get("Event")?,
                m.get("Uniqueid").unwrap_or_default()
            )),
            _ => None,
        })
        .collect()
}

fn key_of(m: &str) -> String {
    let field = |k: &str| {
        m.lines()
            .find_map(|l| {
                let (key, v) = l.split_once(": ")?;
                key.eq_ignore_ascii_case(k).then(|| v.to_string())
            })
            .unwrap_or_default()
    };
    format!("{}/{}", field("Event"), field("Uniqueid"))
}

/// `got` appears in the looped `expected` stream as one contiguous run.
fn contiguous_in_loop(got: &[String], expected: &[String]) -> bool {
    if got.is_empty() {
        return false;
    }
    (0..expected.len()).any(|k| {
        got.iter()
            .enumerate()
            .all(|(i, g)| *g == expected[(k + i) % expected.len()])
    })
}

/// Reads the FullyBooted the facade sends right after a login.
fn skip_boot(a: &mut Ami) {
    let m = a.read(Duration::from_secs(5)).expect("FullyBooted");
    assert!(m.starts_with("Event: FullyBooted\r\n"), "{m:?}");
}

/// Where `got` leaves the looped `expected` stream, for a failure message.
fn explain(got: &[String], expected: &[String]) -> String {
    let best = (0..expected.len())
        .map(|k| {
            let n = got
                .iter()
                .enumerate()
                .take_while(|(i, g)| **g == expected[(k + i) % expected.len()])
                .count();
            (n, k)
        })
        .max();
    let Some((n, k)) = best else {
        return "nothing expected".into();
    };
    let e: Vec<_> = (0..5)
        .map(|i| &expected[(k + n + i) % expected.len()])
        .collect();
    let g: Vec<_> = got.iter().skip(n).take(5).collect();
    format!("the first {n} match the trace from event {k}; then got {g:?}, expected {e:?}")
}

fn with_banner(version: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("facade-trace-"));
    std::fs::create_dir_all(&dir).unwrap();
    let t = std::fs::read(trace("calls_small.ami")).unwrap();
    let at = t.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut out = format!("Asterisk Call Manager/{version}\r\n").into_bytes();
    out.extend_from_slice(&t[at..]);
    let p = dir.join("calls_small.ami");
    std::fs::write(&p, out).unwrap();
    p
}

/// F1, F8, F10, F12, F13: the banner is the backend's, login, FullyBooted,
/// Ping and Logoff as Asterisk writes them.
#[test]
fn banner_login_fullybooted_ping_logoff() {
    let t = with_banner("9.8.7");
    let s = Setup::start(&["--rate", "50"], std::slice::from_ref(&t), "");
    let (mut a, login) = Ami::login(&s.facade, "ALL", "allpass", Some("system"));
    assert!(
        login.starts_with(
            "Asterisk Call Manager/9.8.7\r\nResponse: Success\r\nActionID: login-1\r\nMessage: Authentication accepted\r\n\r\n"
        ),
        "{login:?}"
    );
    let booted = a.read(Duration::from_secs(5)).unwrap();
    assert!(
        booted.starts_with("Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: "),
        "{booted:?}"
    );
    assert!(
        booted.ends_with("Status: Fully Booted\r\n\r\n"),
        "{booted:?}"
    );
    a.send(&[("Action", "Ping"), ("ActionID", "p/1#x")]);
    let pong = a.response();
    assert!(
        pong.starts_with("Response: Success\r\nActionID: p/1#x\r\nPing: Pong\r\nTimestamp: "),
        "{pong:?}"
    );
    a.send(&[("Action", "Logoff"), ("ActionID", "bye")]);
    let bye = a.response();
    assert_eq!(
        bye,
        "Response: Goodbye\r\nActionID: bye\r\nMessage: Thanks for all the fish.\r\n\r\n"
    );
    assert!(a.closed_within(Duration::from_secs(2)));
    // Events: off: no FullyBooted, no events.
    let (mut off, _) = Ami::login(&s.facade, "all", "allpass", Some("off"));
    assert_eq!(off.read(Duration::from_millis(500)), None);
    let _ = std::fs::remove_dir_all(t.parent().unwrap());
}

/// F6, F7, F8: nothing but Login/Challenge/Logoff before login; MD5 login;
/// a failed login waits a second, says so and closes.
#[test]
fn challenge_md5_and_failed_logins() {
    let s = Setup::start(&["--rate", "50"], &[trace("calls_small.ami")], "");
    let mut a = Ami::connect(&s.facade);
    a.banner();
    a.send(&[("Action", "Ping"), ("ActionID", "1")]);
    assert_eq!(
        a.read(Duration::from_secs(5)).unwrap(),
        "Response: Error\r\nActionID: 1\r\nMessage: Permission denied\r\n\r\n"
    );
    a.send(&[
        ("Action", "Challenge"),
        ("AuthType", "md5"),
        ("ActionID", "c"),
    ]);
    let c = a.read(Duration::from_secs(5)).unwrap();
    let challenge = c
        .lines()
        .find_map(|l| l.strip_prefix("Challenge: "))
        .unwrap_or_else(|| panic!("{c:?}"))
        .to_string();
    assert!(challenge.bytes().all(|b| b.is_ascii_digit()), "{c:?}");
    let key = ami_proto::md5_key(&challenge, "callpass");
    a.send(&[
        ("Action", "Login"),
        ("AuthType", "MD5"),
        ("Username", "calls"),
        ("Key", &key),
    ]);
    assert_eq!(
        a.read(Duration::from_secs(5)).unwrap(),
        "Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
    );
    let mut b = Ami::connect(&s.facade);
    b.banner();
    let t0 = Instant::now();
    b.send(&[
        ("Action", "Login"),
        ("Username", "all"),
        ("Secret", "wrong"),
        ("ActionID", "9"),
    ]);
    assert_eq!(
        b.read(Duration::from_secs(5)).unwrap(),
        "Response: Error\r\nActionID: 9\r\nMessage: Authentication failed\r\n\r\n"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(b.closed_within(Duration::from_secs(2)));
    assert!(
        s.metrics()
            .contains("facade_dropped_sessions_total{reason=\"login_failed\"} 1"),
        "{}",
        s.metrics()
    );
}

/// F9, F14, F16, F17: every client gets the events its classes allow, in
/// the server's order; Filter narrows one session only.
#[test]
fn events_in_order_by_class_and_filter() {
    let t = trace("calls_small.ami");
    let expected = broadcast_events(&t);
    let s = Setup::start(&["--rate", "400", "--loop", "0"], &[t], "");
    let (mut all, _) = Ami::login(&s.facade, "all", "allpass", None);
    let (mut calls, _) = Ami::login(&s.facade, "calls", "callpass", None);
    let (mut filtered, _) = Ami::login(&s.facade, "all", "allpass", None);
    filtered.send(&[
        ("Action", "Filter"),
        ("Operation", "Add"),
        ("Filter", "Event: Newchannel"),
        ("ActionID", "f"),
    ]);
    assert_eq!(
        filtered.response(),
        "Response: Success\r\nActionID: f\r\nMessage: Success\r\n\r\n"
    );
    skip_boot(&mut all);
    let mut got = Vec::new();
    while got.len() < 600 {
        let m = all
            .read(Duration::from_secs(10))
            .expect("events keep coming");
        assert!(m.starts_with("Event: "), "{m:?}");
        got.push(key_of(&m));
    }
    assert!(
        contiguous_in_loop(&got, &expected),
        "{}",
        explain(&got, &expected)
    );
    for _ in 0..200 {
        let m = calls.read(Duration::from_secs(10)).expect("call events");
        let p = m
            .lines()
            .find_map(|l| l.strip_prefix("Privilege: "))
            .unwrap();
        assert!(
            p.split(',').all(|c| c == "call" || c == "all"),
            "a call-only user got {m:?}"
        );
    }
    for _ in 0..20 {
        let m = filtered
            .read(Duration::from_secs(10))
            .expect("filtered events");
        assert!(m.starts_with("Event: Newchannel\r\n"), "{m:?}");
    }
}

/// F20, F21: two clients with the same ActionID at once each get only
/// their own answer, list items included; no ActionID, no ActionID line.
#[test]
fn same_action_id_from_two_clients_never_crosses() {
    let s = Setup::looping("");
    let (mut a, _) = Ami::login(&s.facade, "all", "allpass", Some("off"));
    let (mut b, _) = Ami::login(&s.facade, "all", "allpass", Some("off"));
    for _ in 0..5 {
        a.send(&[("Action", "CoreShowChannels"), ("ActionID", "1")]);
        b.send(&[
            ("Action", "Getvar"),
            ("Variable", "LABVAR"),
            ("ActionID", "1"),
        ]);
        let ra = a.response();
        assert!(
            ra.contains("EventList: start") && ra.contains("ActionID: 1\r\n"),
            "{ra:?}"
        );
        let mut items = 0;
        loop {
            let m = a.read(Duration::from_secs(5)).expect("list items");
            assert!(m.starts_with("Event: CoreShowChannel"), "{m:?}");
            assert!(m.contains("\r\nActionID: 1\r\n"), "{m:?}");
            if m.contains("EventList: Complete") {
                break;
            }
            items += 1;
        }
        assert!(items > 0);
        let rb = b.response();
        assert!(
            rb.starts_with("Response: ") && rb.contains("ActionID: 1\r\n"),
            "{rb:?}"
        );
        assert!(!rb.contains("EventList"), "{rb:?}");
        assert_eq!(b.read(Duration::from_millis(200)), None, "b got a's list");
    }
    a.send(&[("Action", "CoreSettings")]);
    let r = a.response();
    assert!(!r.contains("ActionID"), "{r:?}");
}

/// F19, F23, F26: write classes from ListCommands; unknown servers are an
/// error, never a fallback; Asterisk's own errors are relayed.
#[test]
fn permissions_servers_and_asterisk_errors() {
    let s = Setup::looping("");
    let (mut c, _) = Ami::login(&s.facade, "calls", "callpass", Some("off"));
    c.send(&[
        ("Action", "Originate"),
        ("Channel", "Local/1@x"),
        ("ActionID", "o"),
    ]);
    assert_eq!(
        c.response(),
        "Response: Error\r\nActionID: o\r\nMessage: Permission denied\r\n\r\n"
    );
    // CoreSettings needs system/reporting: denied too; ListCommands has
    // authority 0: allowed.
    c.send(&[("Action", "ListCommands"), ("ActionID", "l")]);
    assert!(
        c.response()
            .starts_with("Response: Success\r\nActionID: l\r\n")
    );
    let (mut a, _) = Ami::login(&s.facade, "all", "allpass", Some("off"));
    a.send(&[("Action", "Ping"), ("Server", "nope"), ("ActionID", "s")]);
    // Ping is answered by the facade itself, whatever Server says.
    assert!(a.response().contains("Ping: Pong"));
    a.send(&[
        ("Action", "CoreSettings"),
        ("Server", "nope"),
        ("ActionID", "s"),
    ]);
    assert_eq!(
        a.response(),
        "Response: Error\r\nActionID: s\r\nMessage: Unknown server nope\r\n\r\n"
    );
    a.send(&[("Action", "NoSuchAction"), ("ActionID", "n")]);
    let r = a.response();
    assert!(r.contains("Invalid/unknown command: NoSuchAction"), "{r:?}");
    let m = s.metrics();
    assert!(
        m.contains("facade_actions_total{user=\"Calls\",result=\"denied\"} 1"),
        "{m}"
    );
}

/// `[[actions.allow]]` entries naming `ami:<user>` narrow what that facade
/// user may run, with the AMQP path's engine; other users are untouched.
#[test]
fn allow_list_entries_narrow_a_facade_user() {
    let allow = "\n[[actions.allow]]\nuser = \"ami:all\"\nactions = [\"CoreSettings\"]\n";
    let s = Setup::looping(allow);
    let (mut a, _) = Ami::login(&s.facade, "all", "allpass", Some("off"));
    a.send(&[("Action", "CoreSettings"), ("ActionID", "ok")]);
    assert!(
        a.response()
            .starts_with("Response: Success\r\nActionID: ok\r\n")
    );
    a.send(&[("Action", "CoreShowChannels"), ("ActionID", "no")]);
    assert_eq!(
        a.response(),
        "Response: Error\r\nActionID: no\r\nMessage: Permission denied\r\n\r\n"
    );
    // Ping is the facade's own: the allow-list does not apply.
    a.send(&[("Action", "Ping"), ("ActionID", "p")]);
    assert!(a.response().contains("Ping: Pong"));
    // "Calls" has no entry: only its write classes apply (none: denied;
    // ListCommands has authority 0: allowed).
    let (mut c, _) = Ami::login(&s.facade, "calls", "callpass", Some("off"));
    c.send(&[("Action", "ListCommands"), ("ActionID", "l")]);
    assert!(
        c.response()
            .starts_with("Response: Success\r\nActionID: l\r\n")
    );
}

/// F3: hostile input gets Asterisk's error replies; the session and the
/// bridge live on.
#[test]
fn hostile_input_gets_asterisk_errors() {
    let s = Setup::looping("");
    let (mut a, _) = Ami::login(&s.facade, "all", "allpass", Some("off"));
    let long = format!("Action: Ping\r\nX: {}\r\n\r\n", "a".repeat(2000));
    a.send_raw(long.as_bytes());
    assert_eq!(
        a.response(),
        "Response: Error\r\nMessage: Failed to parse message: line too long\r\n\r\n"
    );
    let mut many = String::from("Action: Ping\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    a.send_raw(many.as_bytes());
    assert_eq!(
        a.response(),
        "Response: Error\r\nMessage: Too many lines in message or allocation failure\r\n\r\n"
    );
    a.send_raw(b"Foo: bar\r\n\r\n");
    assert_eq!(
        a.response(),
        "Response: Error\r\nMessage: Missing action in request\r\n\r\n"
    );
    a.send_raw(b"Action: Ping\nActionID: lf\n\n");
    assert!(
        a.response()
            .starts_with("Response: Success\r\nActionID: lf\r\n")
    );
    let mut junk = Ami::connect(&s.facade);
    junk.banner();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    junk.send_raw(&bytes);
    a.send(&[("Action", "Ping"), ("ActionID", "alive")]);
    assert!(a.response().contains("ActionID: alive"));
}

/// F18: a client that stops reading is dropped; ten others and the bus
/// get everything, in order.
#[test]
fn a_client_that_stops_reading_is_dropped_and_nobody_waits() {
    let t = trace("calls_small.ami");
    let expected = broadcast_events(&t);
    let s = Setup::start(
        &["--loop", "0", "--rate", "1000"],
        &[t],
        "queue_events = 1024\n",
    );
    let (stalled, _) = Ami::login(&s.facade, "all", "allpass", None);
    let mut readers: Vec<Ami> = (0..10)
        .map(|_| Ami::login(&s.facade, "all", "allpass", None).0)
        .collect();
    readers.iter_mut().for_each(skip_boot);
    let mut got = vec![Vec::new(); readers.len()];
    let until = Instant::now() + Duration::from_secs(30);
    while got.iter().any(|g| g.len() < 3000) && Instant::now() < until {
        for (r, g) in readers.iter_mut().zip(got.iter_mut()) {
            for _ in 0..100 {
                let Some(m) = r.read(Duration::from_secs(5)) else {
                    break;
                };
                g.push(key_of(&m));
            }
        }
    }
    for g in &got {
        assert!(g.len() >= 3000, "a reader got only {}", g.len());
        assert!(
            contiguous_in_loop(g, &expected),
            "{}",
            explain(g, &expected)
        );
    }
    let dropped = wait_until(Duration::from_secs(10), || {
        s.metrics()
            .contains("facade_dropped_sessions_total{reason=")
    });
    assert!(dropped, "{}", s.metrics());
    drop(stalled);
    let m = s.metrics();
    let confirmed: f64 = m
        .lines()
        .filter(|l| l.starts_with("amqp_confirmed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Most events of the trace map to a message (the rest are unmatched).
    assert!(confirmed >= 1500.0, "the bus fell behind: {m}");
}

/// F17: a client that pauses (its socket full, events piling up in the
/// ring) gets every event afterwards, in order: the backlog is written in
/// batches and none is lost between them.
#[test]
fn a_client_that_pauses_gets_every_event_after_the_pause() {
    let t = trace("calls_small.ami");
    let expected = broadcast_events(&t);
    let s = Setup::start(
        &["--loop", "0", "--rate", "3000"],
        &[t],
        "writetimeout_ms = 20000\nqueue_events = 65536\n",
    );
    let (mut a, _) = Ami::login(&s.facade, "all", "allpass", None);
    skip_boot(&mut a);
    std::thread::sleep(Duration::from_secs(4));
    let mut got = Vec::new();
    while got.len() < 15_000 {
        let m = a
            .read(Duration::from_secs(10))
            .expect("events after the pause");
        got.push(key_of(&m));
    }
    assert!(
        contiguous_in_loop(&got, &expected),
        "{}",
        explain(&got, &expected)
    );
    assert!(
        !s.metrics().contains("facade_dropped_sessions_total{"),
        "{}",
        s.metrics()
    );
}

/// F28: the backend goes away: sessions are closed, new ones refused;
/// after the bridge reconnects, a new login gets FullyBooted.
#[test]
fn backend_restart_closes_sessions_then_login_gets_fullybooted() {
    let mut s = Setup::start(
        &["--rate", "50", "--loop", "0"],
        &[trace("calls_small.ami")],
        "",
    );
    let (mut a, _) = Ami::login(&s.facade, "all", "allpass", None);
    drop(s.replay.take());
    assert!(
        a.closed_within(Duration::from_secs(10)),
        "session kept open"
    );
    let mut b = Ami::connect(&s.facade);
    assert!(
        b.closed_within(Duration::from_secs(3)),
        "a new client was not refused"
    );
    s.restart_replay();
    s.wait_ready();
    let (mut c, login) = Ami::login(&s.facade, "all", "allpass", None);
    assert!(login.contains("Authentication accepted"), "{login}");
    let booted = c.read(Duration::from_secs(5)).unwrap();
    assert!(booted.starts_with("Event: FullyBooted\r\n"), "{booted:?}");
    assert!(
        s.metrics()
            .contains("facade_dropped_sessions_total{reason=\"server_down\"}")
    );
}

/// F27: a user of two servers gets `Server:` last on every event and
/// forwarded response; a single-server user gets Asterisk's bytes.
#[test]
fn multi_server_users_get_server_headers() {
    let (_r2, addr2) = replay(&[
        "--responses",
        trace("actions.sent").to_str().unwrap(),
        "--rate",
        "50",
        "--loop",
        "0",
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let pbx2 = unique("pbx");
    let extra = format!(
        "[[server]]\nname = \"{pbx2}\"\naddress = \"{addr2}\"\nusername = \"b\"\nsecret = \"b\"\naction_connections = 1\n"
    );
    let s = Setup::start(
        &["--rate", "50", "--loop", "0"],
        &[trace("calls_small.ami")],
        &extra,
    );
    let pbx1 = s.setup.server.clone();
    let (mut a, _) = Ami::login(&s.facade, "all", "allpass", None);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let m = a.read(Duration::from_secs(10)).expect("events");
        if m.starts_with("Event: FullyBooted\r\n") {
            continue; // the facade's own, not a server's
        }
        let last = m.trim_end().lines().last().unwrap().to_string();
        assert!(last.starts_with("Server: "), "{m:?}");
        seen.insert(last);
    }
    assert!(seen.contains(&format!("Server: {pbx1}")), "{seen:?}");
    assert!(seen.contains(&format!("Server: {pbx2}")), "{seen:?}");
    let (mut b, _) = Ami::login(&s.facade, "all", "allpass", Some("off"));
    b.send(&[
        ("Action", "CoreSettings"),
        ("Server", &pbx2),
        ("ActionID", "x"),
    ]);
    let r = b.response();
    assert!(r.ends_with(&format!("Server: {pbx2}\r\n\r\n")), "{r:?}");
}

/// A scripted Asterisk for F22: it answers an async Originate on the
/// action connection only after writing its `OriginateResponse` (with the
/// action's ActionID) to every session that asked for events, the order
/// pitfall 10 of docs/facade.md warns about. Threads end with the process.
fn originating_fake() -> String {
    use std::sync::{Arc, Mutex};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let event_socks: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    std::thread::spawn(move || {
        for sock in l.incoming().flatten() {
            let socks = event_socks.clone();
            std::thread::spawn(move || fake_session(sock, &socks));
        }
    });
    addr
}

fn fake_session(sock: TcpStream, socks: &std::sync::Mutex<Vec<TcpStream>>) {
    let mut w = sock.try_clone().unwrap();
    let _ = w.write_all(b"Asterisk Call Manager/5.0.2\r\n");
    let mut a = Ami {
        s: sock,
        buf: Vec::new(),
    };
    while let Some(m) = a.read(Duration::from_secs(3600)) {
        let get = |k: &str| {
            m.lines()
                .find_map(|l| {
                    let (key, v) = l.split_once(": ")?;
                    key.eq_ignore_ascii_case(k).then(|| v.to_string())
                })
                .unwrap_or_default()
        };
        let id = get("ActionID");
        let answer = match get("Action").to_ascii_lowercase().as_str() {
            "challenge" => {
                format!("Response: Success\r\nActionID: {id}\r\nChallenge: 123456789\r\n\r\n")
            }
            "login" => {
                if !get("Events").eq_ignore_ascii_case("off") {
                    socks.lock().unwrap().push(w.try_clone().unwrap());
                }
                format!(
                    "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
                )
            }
            "ping" => format!(
                "Response: Success\r\nActionID: {id}\r\nPing: Pong\r\nTimestamp: 1.0\r\n\r\n"
            ),
            "listcommands" => format!(
                "Response: Success\r\nActionID: {id}\r\nOriginate: Originate a call.  (Priv: originate,all)\r\n\
                 Ping: Keepalive command.  (Priv: <none>)\r\n\r\n"
            ),
            "originate" => {
                if get("Async").eq_ignore_ascii_case("yes") {
                    let ev = format!(
                        "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {id}\r\nResponse: Success\r\n\
                         Channel: Local/100@test-00000001;1\r\nContext: test\r\nExten: 100\r\nReason: 4\r\n\r\n"
                    );
                    for s in socks.lock().unwrap().iter_mut() {
                        let _ = s.write_all(ev.as_bytes());
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    format!(
                        "Response: Success\r\nActionID: {id}\r\nMessage: Originate successfully queued\r\n\r\n"
                    )
                } else {
                    format!(
                        "Response: Success\r\nActionID: {id}\r\nMessage: Originate successfully queued\r\n\r\n"
                    )
                }
            }
            "userevent" => {
                let ev = format!(
                    "Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: {}\r\nActionID: {id}\r\n\r\n",
                    get("UserEvent")
                );
                for s in socks.lock().unwrap().iter_mut() {
                    let _ = s.write_all(ev.as_bytes());
                }
                format!("Response: Success\r\nActionID: {id}\r\nMessage: Event Sent\r\n\r\n")
            }
            "logoff" => {
                let _ = w.write_all(format!("Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish.\r\n\r\n").as_bytes());
                return;
            }
            _ => format!(
                "Response: Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command\r\n\r\n"
            ),
        };
        if w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// F22: an async Originate's Response reaches the client before its
/// OriginateResponse, both with the client's ActionID, even when Asterisk
/// sends the event first; other sessions see the event with the bridge's.
#[test]
fn async_originate_response_comes_before_its_event() {
    let fake = originating_fake();
    let facade = format!("127.0.0.1:{}", free_port());
    let extra = format!("[actions]\nenabled = false\n\n[facade]\nlisten = \"{facade}\"\n{USERS}");
    let setup = BridgeSetup::new(&fake, &shared_amqp_url(), &extra);
    let mut bridge = setup.start();
    // The facade answers once the event connection is up; the Originate
    // goes out on the action connection, which may log in a moment later
    // on a loaded machine.
    let ready = wait_until(Duration::from_secs(20), || {
        setup.log().contains("role=action-1")
            && TcpStream::connect(&facade).is_ok_and(|s| {
                let mut a = Ami { s, buf: Vec::new() };
                a.try_banner()
                    .is_some_and(|b| b.starts_with("Asterisk Call Manager/5.0.2"))
            })
    });
    assert!(ready, "{}", setup.log());
    let (mut a, _) = Ami::login(&facade, "all", "allpass", Some("call"));
    let (mut other, _) = Ami::login(&facade, "all", "allpass", Some("call"));
    for round in 0..3 {
        let id = format!("orig/{round}#x");
        a.send(&[
            ("Action", "Originate"),
            ("Channel", "Local/100@test"),
            ("Application", "Wait"),
            ("Async", "yes"),
            ("ActionID", &id),
        ]);
        let first = a.read(Duration::from_secs(10)).expect("response");
        assert_eq!(
            first,
            format!(
                "Response: Success\r\nActionID: {id}\r\nMessage: Originate successfully queued\r\n\r\n"
            )
        );
        let ev = a.read(Duration::from_secs(10)).expect("OriginateResponse");
        assert!(
            ev.starts_with(&format!("Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {id}\r\nResponse: Success\r\n")),
            "{ev:?}"
        );
        let seen = other
            .read(Duration::from_secs(10))
            .expect("the other session's copy");
        assert!(seen.contains("\r\nActionID: a2a-f"), "{seen:?}");
    }
    // The same reverse mapping for UserEvent.
    a.send(&[
        ("Action", "UserEvent"),
        ("UserEvent", "Wallboard"),
        ("ActionID", "u 1"),
    ]);
    assert_eq!(
        a.read(Duration::from_secs(10)).unwrap(),
        "Response: Success\r\nActionID: u 1\r\nMessage: Event Sent\r\n\r\n"
    );
    drop(a);
    let (mut u, _) = Ami::login(&facade, "all", "allpass", Some("user"));
    u.send(&[
        ("Action", "UserEvent"),
        ("UserEvent", "Wallboard"),
        ("ActionID", "u 2"),
    ]);
    let r = u.read(Duration::from_secs(10)).unwrap();
    assert!(
        r.starts_with("Response: Success\r\nActionID: u 2\r\n"),
        "{r:?}"
    );
    let ev = u.read(Duration::from_secs(10)).unwrap();
    assert_eq!(
        ev,
        "Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: Wallboard\r\nActionID: u 2\r\n\r\n"
    );
    bridge.signal("TERM");
    let _ = bridge.wait_timeout(Duration::from_secs(5));
}

/// F11: sessions that do not log in are closed after authtimeout, and
/// past authlimit new ones are closed at once.
#[test]
fn authtimeout_and_authlimit() {
    let s = Setup::looping("authtimeout_s = 2\nauthlimit = 2\n");
    // A logged-in session does not count against authlimit.
    let (mut ok, _) = Ami::login(&s.facade, "all", "allpass", Some("off"));
    let mut a = Ami::connect(&s.facade);
    assert!(a.try_banner().is_some(), "{}", s.metrics());
    let mut b = Ami::connect(&s.facade);
    assert!(b.try_banner().is_some(), "{}", s.metrics());
    let mut c = Ami::connect(&s.facade);
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "a third unauthenticated session was kept"
    );
    let t0 = Instant::now();
    assert!(
        a.closed_within(Duration::from_secs(5)),
        "authtimeout did not close it"
    );
    assert!(b.closed_within(Duration::from_secs(2)));
    assert!(t0.elapsed() < Duration::from_secs(4));
    ok.send(&[("Action", "Ping"), ("ActionID", "still")]);
    assert!(ok.response().contains("ActionID: still"));
    let m = s.metrics();
    assert!(
        m.contains("facade_dropped_sessions_total{reason=\"limit\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("facade_dropped_sessions_total{reason=\"auth_timeout\"} 2"),
        "{m}"
    );
}
