//! Real AMI client libraries, unchanged, against a fake Asterisk and against
//! the bridge's AMI facade (docs: /tests/facade_clients/README.md).
//!
//! The clients are small programs under tests/facade_clients/ that use
//! panoramisk 1.4 (Python) and asterisk-manager 0.2.0 (Node.js) as an
//! application would and print one JSON line per observation; the libraries
//! are installed by `make facade-clients` (scripts/ensure-facade-clients.sh)
//! under target/facade-clients/. Without them these tests fail: they never
//! skip.
//!
//! Every scenario runs twice per library: `direct_*` against the backend
//! itself (`ami2amqp replay` serving real Asterisk captures, or the scripted
//! fake of tests/common/fake_ami.rs for `Originate`), which proves the
//! drivers and the assertions, and `facade_*` against the facade of a bridge
//! connected to the same backend.

mod common;
#[path = "common/fake_ami.rs"]
mod fake_ami;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::broker::shared_amqp_url;
use common::procs::{BridgeSetup, Proc, bin, free_port, repo, trace};
use serde_json::Value;

/// The facade's user in every facade test. `Command` needs write class
/// `command`, which it lacks: the forbidden action.
const FACADE_USER: &str = "crm";
const FACADE_SECRET: &str = "crm-secret-7";
const FACADE_WRITE: &str = r#"["system", "call", "reporting", "originate"]"#;

/// The account the backends accept (the bridge's own login, and the clients'
/// in the direct tests).
const BACKEND_USER: &str = "bridge";
const BACKEND_SECRET: &str = "bridgepass";

/// Events per second the looping replay sends (to the bridge or a client).
const RATE: &str = "200";

// ---------------------------------------------------------------------------
// The client programs

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lib {
    Panoramisk,
    AsteriskManager,
}

fn clients_dir() -> PathBuf {
    std::env::var_os("FACADE_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/facade-clients"))
}

/// The command line running `lib`'s driver; panics (never skips) when the
/// library is not installed.
fn driver(lib: Lib) -> Command {
    let dir = clients_dir();
    let missing = |what: &Path| {
        panic!(
            "{} not found: the AMI client libraries are not installed; run `make facade-clients` \
             (scripts/ensure-facade-clients.sh)",
            what.display()
        )
    };
    match lib {
        Lib::Panoramisk => {
            let py = dir.join("venv/bin/python");
            if !py.exists() {
                missing(&py);
            }
            let ok = Command::new(&py)
                .args(["-c", "import panoramisk"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                missing(&dir.join("venv/…/panoramisk"));
            }
            let mut c = Command::new(py);
            c.arg(repo().join("tests/facade_clients/panoramisk_client.py"));
            c
        }
        Lib::AsteriskManager => {
            let modules = dir.join("node/node_modules");
            let pkg = modules.join("asterisk-manager/package.json");
            if !pkg.exists() {
                missing(&pkg);
            }
            let mut c = Command::new("node");
            c.arg(repo().join("tests/facade_clients/asterisk_manager_client.js"))
                .env("NODE_PATH", modules);
            c
        }
    }
}

/// A running driver: its JSON lines arrive on a channel.
struct Client {
    name: String,
    child: Child,
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    stderr: tempfile::NamedTempFile,
    /// What the library received (panoramisk's `save_stream`).
    wire: tempfile::NamedTempFile,
    done: bool,
}

impl Client {
    fn start(lib: Lib, target: &Target, scenario: &str, arg: Option<&str>) -> Client {
        let (host, port) = target.addr.rsplit_once(':').expect("host:port");
        let stderr = tempfile::NamedTempFile::new().expect("temp file");
        let wire = tempfile::NamedTempFile::new().expect("temp file");
        let mut cmd = driver(lib);
        cmd.env("FACADE_CLIENT_WIRE", wire.path())
            .args([host, port, &target.user, &target.secret, scenario])
            .args(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("stderr file"));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {lib:?} driver: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"kind": "unparsed", "line": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Client {
            name: format!("{lib:?} {scenario} → {}", target.addr),
            child,
            rx,
            seen: Vec::new(),
            stderr,
            wire,
            done: false,
        }
    }

    fn report(&self) -> String {
        let mut err = String::new();
        let _ =
            std::fs::File::open(self.stderr.path()).and_then(|mut f| f.read_to_string(&mut err));
        let wire = std::fs::read(self.wire.path()).unwrap_or_default();
        let wire = String::from_utf8_lossy(&wire[wire.len().saturating_sub(3000)..])
            .replace("\r\n", "\\r\\n\n");
        let lines: Vec<String> = self.seen.iter().map(|v| v.to_string()).collect();
        format!(
            "{}\n--- lines:\n{}\n--- stderr (last 2000 bytes):\n{}\n--- received (panoramisk only, last 3000 bytes):\n{}",
            self.name,
            lines.join("\n"),
            tail(&err, 2000),
            wire
        )
    }

    /// The next line of `kind` (lines of other kinds are kept); panics
    /// after `t` or when the driver ends first.
    fn expect(&mut self, kind: &str, t: Duration) -> Value {
        let end = Instant::now() + t;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["kind"] == "done" {
                        self.done = true;
                    }
                    if v["kind"] == kind {
                        return v;
                    }
                    if self.done {
                        panic!("driver finished without a {kind:?} line\n{}", self.report());
                    }
                }
                Err(_) => panic!("no {kind:?} line within {t:?}\n{}", self.report()),
            }
        }
    }

    /// Waits for `done`; every line seen.
    fn finish(mut self, t: Duration) -> Finished {
        if !self.done {
            self.expect("done", t);
        }
        let _ = self.child.wait();
        let report = self.report();
        Finished {
            lines: std::mem::take(&mut self.seen),
            report,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` bytes of `s` (from a char boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// A finished driver's lines.
struct Finished {
    lines: Vec<Value>,
    report: String,
}

impl Finished {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let v = self.all(kind);
        assert_eq!(v.len(), 1, "exactly one {kind:?} line\n{}", self.report);
        v[0]
    }

    /// The `response` line of `action`.
    fn response(&self, action: &str) -> &Value {
        self.lines
            .iter()
            .find(|v| v["kind"] == "response" && v["action"] == action)
            .unwrap_or_else(|| panic!("no response to {action}\n{}", self.report))
    }

    fn no_errors(&self) {
        assert!(
            self.all("error").is_empty() && self.all("unparsed").is_empty(),
            "driver error\n{}",
            self.report
        );
    }
}

// ---------------------------------------------------------------------------
// Backends and the facade

/// Where a client connects, and as whom.
struct Target {
    addr: String,
    user: String,
    secret: String,
    facade: bool,
}

/// `ami2amqp replay` on a fixed port (it can be restarted on the same one).
struct Replay {
    proc: Option<Proc>,
    addr: String,
    args: Vec<String>,
}

impl Replay {
    /// Real Asterisk captures: `calls_small` looping at RATE events/s, the
    /// actions of `actions` (CoreShowChannels, ListCommands, …) answered as
    /// recorded; login as `bridge`.
    fn calls() -> Replay {
        Replay::start(&[
            "--username",
            BACKEND_USER,
            "--secret",
            BACKEND_SECRET,
            "--responses",
            trace("actions.sent").to_str().expect("utf-8 path"),
            "--rate",
            RATE,
            "--loop",
            "0",
            trace("calls_small.ami").to_str().expect("utf-8 path"),
        ])
    }

    fn start(args: &[&str]) -> Replay {
        let mut r = Replay {
            proc: None,
            addr: String::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        // A port from free_port() can be taken by someone else before the
        // replay binds it (tests run in parallel): then another one.
        for _ in 0..5 {
            r.addr = format!("127.0.0.1:{}", free_port());
            if r.try_start() {
                return r;
            }
        }
        panic!("replay could not listen on a free port ({})", r.addr);
    }

    /// Starts the replay on `self.addr` again (after `stop`): the same
    /// port, a few tries while the old listener's port is released.
    fn restart(&mut self) {
        for _ in 0..20 {
            if self.try_start() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("replay could not listen on {} again", self.addr);
    }

    fn try_start(&mut self) -> bool {
        let mut child = Command::new(bin())
            .args(["replay", "--listen", &self.addr])
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start replay");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let proc = Proc {
            child,
            name: "replay".into(),
        };
        if !line.starts_with("listening on ") {
            return false; // dropped: killed
        }
        self.proc = Some(proc);
        true
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn direct(&self) -> Target {
        Target {
            addr: self.addr.clone(),
            user: BACKEND_USER.into(),
            secret: BACKEND_SECRET.into(),
            facade: false,
        }
    }
}

/// A bridge whose facade listens on a free port, with one user.
struct Facade {
    setup: BridgeSetup,
    bridge: Option<Proc>,
    addr: String,
}

impl Facade {
    fn start(backend: &str) -> Facade {
        // The facade's and the metrics' ports come from free_port() and
        // can be taken by a parallel test before the bridge binds them: the
        // bridge then exits, and a new setup gets new ports.
        for attempt in 1.. {
            let addr = format!("127.0.0.1:{}", free_port());
            let extra = format!(
                r#"
[facade]
listen = "{addr}"

[[facade.user]]
name = "{FACADE_USER}"
secret = "{FACADE_SECRET}"
read = ["all"]
write = {FACADE_WRITE}
"#
            );
            let setup = BridgeSetup::new(backend, &shared_amqp_url(), &extra);
            let bridge = setup.start();
            let mut f = Facade {
                setup,
                bridge: Some(bridge),
                addr,
            };
            match f.wait_ready(Duration::from_secs(15)) {
                Ok(()) => return f,
                Err(log) if attempt < 3 && log.contains("in use") => continue,
                Err(log) => panic!("the bridge exited during start-up:\n{log}"),
            }
        }
        unreachable!()
    }

    /// The bridge is connected to its server and the facade writes a
    /// banner. `Err(its log)` at once if the bridge exits (a config it
    /// rejects, a port in use).
    fn wait_ready(&mut self, t: Duration) -> Result<(), String> {
        let server = self.setup.server.clone();
        let end = Instant::now() + t;
        let mut connected = false;
        let mut banner = None;
        while Instant::now() < end {
            if let Some(Ok(Some(st))) = self.bridge.as_mut().map(|b| b.child.try_wait()) {
                return Err(format!("({st})\n{}", self.setup.log()));
            }
            connected = connected
                || self
                    .setup
                    .health()
                    .is_some_and(|(_, h)| h["servers"][&server] == "connected");
            if connected {
                banner = raw_banner(&self.addr);
                if banner
                    .as_deref()
                    .is_some_and(|b| b.starts_with("Asterisk Call Manager/"))
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "facade not ready on {} within {t:?}: server connected: {connected}, banner: {banner:?}, health: {:?}\n{}",
            self.addr,
            self.setup.health(),
            self.setup.log()
        );
    }

    fn target(&self) -> Target {
        Target {
            addr: self.addr.clone(),
            user: FACADE_USER.into(),
            secret: FACADE_SECRET.into(),
            facade: true,
        }
    }
}

impl Drop for Facade {
    fn drop(&mut self) {
        if let Some(b) = self.bridge.take() {
            b.signal("TERM");
            let mut b = b;
            if b.wait_timeout(Duration::from_secs(5)).is_none() {
                drop(b);
            }
        }
        // Then `setup` drops: its BrokerCleanup deletes the exchange and
        // the action path's queues and exchanges this bridge declared.
    }
}

/// The first line a raw connection to `addr` reads within a second.
fn raw_banner(addr: &str) -> Option<String> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    let _ = (&s).write_all(b"Action: Logoff\r\n\r\n");
    Some(line)
}

// ---------------------------------------------------------------------------
// Recorded AMI bytes

/// The messages of a capture (`NAME.ami`), each with its closing blank line.
fn recorded_messages(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(trace(name)).expect("read trace");
    let text = text.split_once("\r\n").map_or("", |x| x.1); // the banner
    text.split_inclusive("\r\n\r\n")
        .map(str::to_string)
        .collect()
}

/// The recorded message starting with `first` and carrying `ActionID: id`,
/// with that ActionID replaced by `new_id` (no ActionID line if empty).
fn recorded(name: &str, first: &str, id: &str, new_id: &str) -> Vec<u8> {
    let needle = format!("\r\nActionID: {id}\r\n");
    let m = recorded_messages(name)
        .into_iter()
        .find(|m| m.starts_with(first) && m.contains(&needle))
        .unwrap_or_else(|| panic!("{name}: no {first:?} with ActionID {id}"));
    let with = if new_id.is_empty() {
        "\r\n".to_string()
    } else {
        format!("\r\nActionID: {new_id}\r\n")
    };
    m.replacen(&needle, &with, 1).into_bytes()
}

/// Names of the events of a capture, in order.
fn recorded_event_names(name: &str) -> Vec<String> {
    recorded_messages(name)
        .iter()
        .filter_map(|m| m.strip_prefix("Event: "))
        .filter_map(|m| m.split("\r\n").next())
        .map(str::to_string)
        .collect()
}

/// A fake Asterisk that never answers `QueueStatus`, and answers an async
/// `Originate` with the recorded
/// `Response` and `OriginateResponse` (calls_small, `small-100`) carrying
/// the action's ActionID, and `ListCommands` as recorded (actions), so that
/// the facade learns each action's write classes.
struct OriginateScript {
    events_to_others_first: Option<Duration>,
}

impl fake_ami::Script for OriginateScript {
    fn answer(&self, action: &str, id: &str) -> Option<Vec<u8>> {
        match action {
            "originate" => Some(recorded(
                "calls_small.ami",
                "Response: Success",
                "small-100",
                id,
            )),
            // Never answered: an action in flight when the server goes down.
            "queuestatus" => Some(Vec::new()),
            "listcommands" => Some(recorded(
                "actions.ami",
                "Response: Success",
                "act-listcommands",
                id,
            )),
            _ => None,
        }
    }

    fn events_for(&self, action: &str, id: &str) -> Vec<Vec<u8>> {
        match action {
            "originate" => vec![recorded(
                "calls_small.ami",
                "Event: OriginateResponse",
                "small-100",
                id,
            )],
            _ => Vec::new(),
        }
    }

    fn events_to_others_first(&self) -> Option<Duration> {
        self.events_to_others_first
    }
}

// ---------------------------------------------------------------------------
// Scenarios (each asserts what holds against Asterisk and the facade alike)

const T: Duration = Duration::from_secs(20);

fn run(lib: Lib, target: &Target, scenario: &str, arg: Option<&str>) -> Finished {
    let f = Client::start(lib, target, scenario, arg).finish(T);
    f.no_errors();
    f
}

/// The banner version the backends of these tests announce.
const REPLAY_VERSION: &str = "11.0.0";

fn check_login(f: &Finished, lib: Lib) {
    let login = f.one("login");
    assert_eq!(login["ok"], true, "{}", f.report);
    assert_eq!(login["message"], "Authentication accepted", "{}", f.report);
    if lib == Lib::Panoramisk {
        // panoramisk reads the version off the banner (F1).
        assert_eq!(login["version"], REPLAY_VERSION, "{}", f.report);
    }
}

fn scenario_login(lib: Lib, target: &Target) {
    let f = run(lib, target, "login", None);
    check_login(&f, lib);
    let bye = f.response("Logoff");
    assert_eq!(bye["response"], "Goodbye", "{}", f.report);
    assert_eq!(bye["message"], "Thanks for all the fish.", "{}", f.report);
}

/// A wrong secret: `Response: Error` / `Message: Authentication failed`
/// (F8; the facade waits 1 s first, as Asterisk does).
fn scenario_login_fail(lib: Lib, target: &Target) {
    let wrong = Target {
        addr: target.addr.clone(),
        user: target.user.clone(),
        secret: format!("{}-wrong", target.secret),
        facade: target.facade,
    };
    let f = run(lib, &wrong, "login", None);
    let login = f.one("login");
    assert_eq!(login["ok"], false, "{}", f.report);
    assert_eq!(login["message"], "Authentication failed", "{}", f.report);
}

fn scenario_login_md5(lib: Lib, target: &Target) {
    let f = run(lib, target, "login_md5", None);
    let ch = f.response("Challenge");
    assert_eq!(ch["response"], "Success", "{}", f.report);
    let digits = ch["challenge"].as_str().unwrap_or("");
    assert!(
        // facade.md F7 says 1-9 digits; Asterisk prints an ast_random()
        // value, and the replay draws up to i32::MAX: up to 10.
        (1..=10).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
        "challenge of digits (F7)\n{}",
        f.report
    );
    check_login(&f, lib);
    assert_eq!(f.response("Logoff")["response"], "Goodbye", "{}", f.report);
}

fn scenario_events(lib: Lib, target: &Target) {
    const N: usize = 25;
    let f = run(lib, target, "events", Some(&N.to_string()));
    check_login(&f, lib);
    let got: Vec<&str> = f
        .all("event")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(got.len(), N, "{}", f.report);
    let trace = recorded_event_names("calls_small.ami");
    // FullyBooted first (F10: the mask has `system`, the backend booted).
    assert_eq!(got[0], "FullyBooted", "{}", f.report);
    if target.facade {
        // The stream was already running: N consecutive events of the
        // looping capture, from wherever it was (FullyBooted aside).
        let rest = &got[1..];
        let looped: Vec<&str> = trace
            .iter()
            .chain(trace.iter())
            .map(String::as_str)
            .collect();
        assert!(
            looped.windows(rest.len()).any(|w| w == rest),
            "events in the capture's order (F17)\n{}",
            f.report
        );
    } else {
        let want: Vec<&str> = trace.iter().take(N).map(String::as_str).collect();
        assert_eq!(got, want, "{}", f.report);
    }
    for e in f.all("event") {
        assert!(
            e["privilege"].as_str().is_some_and(|p| p.ends_with("all")),
            "every broadcast event has Privilege (F14)\n{}",
            f.report
        );
    }
}

fn scenario_ping(lib: Lib, target: &Target) {
    let f = run(lib, target, "ping", None);
    let r = f.response("Ping");
    assert_eq!(r["response"], "Success", "{}", f.report);
    assert_eq!(r["ping"], "Pong", "{}", f.report);
    let ts = r["timestamp"].as_str().unwrap_or("");
    let (sec, usec) = ts.split_once('.').unwrap_or(("", ""));
    assert!(
        sec.parse::<u64>().is_ok() && usec.len() == 6 && usec.parse::<u32>().is_ok(),
        "Timestamp: <sec>.<usec> (F13)\n{}",
        f.report
    );
}

/// The recorded CoreShowChannels list: 8 channels.
const LIST_ITEMS: usize = 8;

fn scenario_list(lib: Lib, target: &Target) {
    let f = run(lib, target, "list", None);
    let r = f.response("CoreShowChannels");
    let items: Vec<String> = match lib {
        Lib::Panoramisk => {
            // The future resolves with the Response, the items and the
            // completion event, all with the action's ActionID.
            let msgs = r["messages"].as_array().expect("a list");
            let id = &msgs[0]["actionid"];
            assert!(
                id.as_str().is_some_and(|s| s.starts_with("action/")),
                "{}",
                f.report
            );
            assert!(msgs.iter().all(|m| &m["actionid"] == id), "{}", f.report);
            assert_eq!(msgs[0]["response"], "Success", "{}", f.report);
            assert_eq!(msgs[0]["eventlist"], "start", "{}", f.report);
            msgs[1..]
                .iter()
                .map(|m| m["event"].as_str().unwrap_or("").to_string())
                .collect()
        }
        Lib::AsteriskManager => {
            assert_eq!(r["response"], "Success", "{}", f.report);
            assert_eq!(r["eventlist"], "start", "{}", f.report);
            let list = f.one("list");
            assert_eq!(list["actionid"], r["actionid"], "{}", f.report);
            list["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|m| m.as_str().unwrap_or("").to_string())
                .collect()
        }
    };
    let mut want = vec!["CoreShowChannel".to_string(); LIST_ITEMS];
    want.push("CoreShowChannelsComplete".into());
    assert_eq!(items, want, "{}", f.report);
}

fn scenario_originate(lib: Lib, target: &Target) {
    let f = run(lib, target, "originate", None);
    let sent = f.one("sent")["actionid"].clone();
    match lib {
        Lib::Panoramisk => {
            // Response first, then the OriginateResponse with the action's
            // ActionID: the future resolves with both (a pitfall-10 overtake
            // would resolve it with the event alone).
            let msgs = f.response("Originate")["messages"]
                .as_array()
                .expect("Originate resolves with a list")
                .clone();
            assert_eq!(msgs.len(), 2, "{}", f.report);
            assert_eq!(msgs[0]["response"], "Success", "{}", f.report);
            assert_eq!(
                msgs[0]["message"], "Originate successfully queued",
                "{}",
                f.report
            );
            assert_eq!(msgs[0]["actionid"], sent, "{}", f.report);
            assert_eq!(msgs[1]["event"], "OriginateResponse", "{}", f.report);
            assert_eq!(msgs[1]["actionid"], sent, "{}", f.report);
            assert_eq!(msgs[1]["response"], "Success", "{}", f.report);
        }
        Lib::AsteriskManager => {
            // The callback gets the Response (not the event); then the
            // `originateresponse` event with the same ActionID.
            let kinds: Vec<&str> = f
                .lines
                .iter()
                .filter_map(|v| v["kind"].as_str())
                .filter(|k| *k == "response" || *k == "event")
                .collect();
            assert_eq!(kinds, ["response", "event"], "{}", f.report);
            let r = f.response("Originate");
            assert!(
                r.get("event").is_none(),
                "callback got the event\n{}",
                f.report
            );
            assert_eq!(r["response"], "Success", "{}", f.report);
            assert_eq!(
                r["message"], "Originate successfully queued",
                "{}",
                f.report
            );
            assert_eq!(r["actionid"], sent, "{}", f.report);
            let e = f.one("event");
            assert_eq!(e["name"], "OriginateResponse", "{}", f.report);
            assert_eq!(e["actionid"], sent, "{}", f.report);
            assert_eq!(e["response"], "Success", "{}", f.report);
        }
    }
}

fn scenario_forbidden(lib: Lib, target: &Target) {
    let f = run(lib, target, "forbidden", None);
    let r = f.response("Command");
    assert_eq!(r["response"], "Error", "{}", f.report);
    assert_eq!(r["message"], "Permission denied", "{}", f.report);
    assert!(
        r["actionid"].as_str().is_some_and(|s| !s.is_empty()),
        "{}",
        f.report
    );
}

fn scenario_logoff(lib: Lib, target: &Target) {
    let f = run(lib, target, "logoff", None);
    let r = f.response("Logoff");
    assert_eq!(r["response"], "Goodbye", "{}", f.report);
    assert_eq!(r["message"], "Thanks for all the fish.", "{}", f.report);
    f.one("closed");
}

/// Reconnect after the backend restarts, by the library's own logic.
/// asterisk-manager waits 10 s before its first reconnect (fixed in the
/// library); panoramisk `reconnect_timeout` (1 s here).
fn scenario_reconnect(lib: Lib, replay: &mut Replay, facade: Option<&Facade>) {
    let target = facade.map_or_else(|| replay.direct(), Facade::target);
    let mut c = Client::start(lib, &target, "reconnect", None);
    c.expect("ready", T);
    replay.stop();
    std::thread::sleep(Duration::from_millis(300));
    replay.restart();
    c.expect("disconnected", T);
    let f = c.finish(Duration::from_secs(40));
    f.no_errors();
    let logins = f.all("login");
    assert_eq!(logins.len(), 2, "{}", f.report);
    assert!(logins.iter().all(|l| l["ok"] == true), "{}", f.report);
    let pings: Vec<_> = f
        .all("response")
        .into_iter()
        .filter(|r| r["action"] == "Ping")
        .collect();
    assert_eq!(pings.len(), 2, "{}", f.report);
    assert!(pings.iter().all(|p| p["ping"] == "Pong"), "{}", f.report);
}

/// F20: several clients send `CoreShowChannels` with `ActionID: 1` at the
/// same time, `ROUNDS` times each; each sees exactly its own answers.
fn scenario_same_id(target: &Target) {
    const ROUNDS: usize = 3;
    let clients: Vec<Client> = [
        Lib::Panoramisk,
        Lib::Panoramisk,
        Lib::AsteriskManager,
        Lib::AsteriskManager,
    ]
    .into_iter()
    .map(|lib| Client::start(lib, target, "same_id", Some(&ROUNDS.to_string())))
    .collect();
    for c in clients {
        let f = c.finish(T);
        f.no_errors();
        let raw = f.one("raw_ids")["messages"]
            .as_array()
            .expect("list")
            .clone();
        let count = |first: &str| {
            raw.iter()
                .filter(|m| m["actionid"] == "1" && m["first"] == first)
                .count()
        };
        assert_eq!(count("Response: Success"), ROUNDS, "{}", f.report);
        assert_eq!(
            count("Event: CoreShowChannel"),
            ROUNDS * LIST_ITEMS,
            "{}",
            f.report
        );
        assert_eq!(
            count("Event: CoreShowChannelsComplete"),
            ROUNDS,
            "{}",
            f.report
        );
        assert_eq!(
            raw.iter().filter(|m| m["actionid"] == "1").count(),
            ROUNDS * (LIST_ITEMS + 2),
            "nothing else with ActionID 1\n{}",
            f.report
        );
    }
}

// ---------------------------------------------------------------------------
// The tests: direct (proves the drivers) and through the facade

/// The user `limited` of the captures (write = originate): `Command` is
/// answered `Permission denied` as recorded.
fn limited_replay() -> (Replay, Target) {
    let r = Replay::start(&[
        "--username",
        "limited",
        "--secret",
        "limitedpass",
        "--responses",
        trace("permission_denied.sent")
            .to_str()
            .expect("utf-8 path"),
        trace("calls_small.ami").to_str().expect("utf-8 path"),
    ]);
    let t = Target {
        addr: r.addr.clone(),
        user: "limited".into(),
        secret: "limitedpass".into(),
        facade: false,
    };
    (r, t)
}

fn originate_backend(events_to_others_first: Option<Duration>) -> fake_ami::FakeAmi {
    fake_ami::start(OriginateScript {
        events_to_others_first,
    })
}

/// Generates, per library, `direct_<lib>_<scenario>` and
/// `facade_<lib>_<scenario>`.
macro_rules! replay_scenario {
    ($scenario:ident, $direct:ident, $facade:ident, $lib:expr) => {
        #[test]
        fn $direct() {
            let r = Replay::calls();
            $scenario($lib, &r.direct());
        }

        #[test]
        fn $facade() {
            let r = Replay::calls();
            let f = Facade::start(&r.addr);
            $scenario($lib, &f.target());
        }
    };
}

replay_scenario!(
    scenario_login,
    direct_panoramisk_login,
    facade_panoramisk_login,
    Lib::Panoramisk
);
replay_scenario!(
    scenario_login,
    direct_asterisk_manager_login,
    facade_asterisk_manager_login,
    Lib::AsteriskManager
);
replay_scenario!(
    scenario_login_fail,
    direct_panoramisk_login_fail,
    facade_panoramisk_login_fail,
    Lib::Panoramisk
);
replay_scenario!(
    scenario_login_fail,
    direct_asterisk_manager_login_fail,
    facade_asterisk_manager_login_fail,
    Lib::AsteriskManager
);
replay_scenario!(
    scenario_login_md5,
    direct_panoramisk_login_md5,
    facade_panoramisk_login_md5,
    Lib::Panoramisk
);
replay_scenario!(
    scenario_events,
    direct_panoramisk_events,
    facade_panoramisk_events,
    Lib::Panoramisk
);
replay_scenario!(
    scenario_events,
    direct_asterisk_manager_events,
    facade_asterisk_manager_events,
    Lib::AsteriskManager
);
replay_scenario!(
    scenario_ping,
    direct_panoramisk_ping,
    facade_panoramisk_ping,
    Lib::Panoramisk
);
replay_scenario!(
    scenario_ping,
    direct_asterisk_manager_ping,
    facade_asterisk_manager_ping,
    Lib::AsteriskManager
);
replay_scenario!(
    scenario_list,
    direct_panoramisk_list,
    facade_panoramisk_list,
    Lib::Panoramisk
);
replay_scenario!(
    scenario_list,
    direct_asterisk_manager_list,
    facade_asterisk_manager_list,
    Lib::AsteriskManager
);
replay_scenario!(
    scenario_logoff,
    direct_panoramisk_logoff,
    facade_panoramisk_logoff,
    Lib::Panoramisk
);
replay_scenario!(
    scenario_logoff,
    direct_asterisk_manager_logoff,
    facade_asterisk_manager_logoff,
    Lib::AsteriskManager
);

#[test]
fn direct_panoramisk_forbidden() {
    let (_r, t) = limited_replay();
    scenario_forbidden(Lib::Panoramisk, &t);
}

#[test]
fn direct_asterisk_manager_forbidden() {
    let (_r, t) = limited_replay();
    scenario_forbidden(Lib::AsteriskManager, &t);
}

#[test]
fn facade_panoramisk_forbidden() {
    let r = Replay::calls();
    let f = Facade::start(&r.addr);
    scenario_forbidden(Lib::Panoramisk, &f.target());
}

#[test]
fn facade_asterisk_manager_forbidden() {
    let r = Replay::calls();
    let f = Facade::start(&r.addr);
    scenario_forbidden(Lib::AsteriskManager, &f.target());
}

fn direct_originate(lib: Lib) {
    let ami = originate_backend(None);
    let t = Target {
        addr: ami.addr.clone(),
        user: BACKEND_USER.into(),
        secret: BACKEND_SECRET.into(),
        facade: false,
    };
    scenario_originate(lib, &t);
}

/// Through the facade the backend writes the `OriginateResponse` to the
/// bridge's event connection 200 ms *before* the `Response` on its action
/// connection (pitfall 10): the client must still see the Response first.
fn facade_originate(lib: Lib) {
    let ami = originate_backend(Some(Duration::from_millis(200)));
    let f = Facade::start(&ami.addr);
    scenario_originate(lib, &f.target());
}

#[test]
fn direct_panoramisk_originate() {
    direct_originate(Lib::Panoramisk);
}

#[test]
fn direct_asterisk_manager_originate() {
    direct_originate(Lib::AsteriskManager);
}

#[test]
fn facade_panoramisk_originate() {
    facade_originate(Lib::Panoramisk);
}

#[test]
fn facade_asterisk_manager_originate() {
    facade_originate(Lib::AsteriskManager);
}

/// An action in flight when the backend goes down. Asterisk leaves it
/// unanswered (the connection just drops; panoramisk queues it for after
/// the reconnect); the facade answers it `Response: Error` / `Message:
/// Server <name> disconnected`, then closes the session (its only server)
/// (F28, pitfall 18).
fn inflight(lib: Lib, facade: bool) {
    let ami = originate_backend(None);
    let f = facade.then(|| Facade::start(&ami.addr));
    let target = match &f {
        Some(f) => f.target(),
        None => Target {
            addr: ami.addr.clone(),
            user: BACKEND_USER.into(),
            secret: BACKEND_SECRET.into(),
            facade: false,
        },
    };
    let mut c = Client::start(lib, &target, "inflight", None);
    c.expect("ready", T);
    // Time for the facade to forward it.
    std::thread::sleep(Duration::from_millis(300));
    ami.go_down();
    let fin = c.finish(T);
    fin.no_errors();
    fin.one("closed");
    match &f {
        None => {
            fin.one("no_response");
        }
        Some(f) => {
            let r = fin.response("QueueStatus");
            assert_eq!(r["response"], "Error", "{}", fin.report);
            assert_eq!(
                r["message"],
                format!("Server {} disconnected", f.setup.server),
                "{}",
                fin.report
            );
        }
    }
}

#[test]
fn direct_panoramisk_inflight_when_backend_drops() {
    inflight(Lib::Panoramisk, false);
}

#[test]
fn direct_asterisk_manager_inflight_when_backend_drops() {
    inflight(Lib::AsteriskManager, false);
}

#[test]
fn facade_panoramisk_inflight_when_backend_drops() {
    inflight(Lib::Panoramisk, true);
}

#[test]
fn facade_asterisk_manager_inflight_when_backend_drops() {
    inflight(Lib::AsteriskManager, true);
}

#[test]
fn direct_panoramisk_reconnect() {
    let mut r = Replay::calls();
    scenario_reconnect(Lib::Panoramisk, &mut r, None);
}

#[test]
fn direct_asterisk_manager_reconnect() {
    let mut r = Replay::calls();
    scenario_reconnect(Lib::AsteriskManager, &mut r, None);
}

#[test]
fn facade_panoramisk_reconnect() {
    let mut r = Replay::calls();
    let f = Facade::start(&r.addr);
    scenario_reconnect(Lib::Panoramisk, &mut r, Some(&f));
}

#[test]
fn facade_asterisk_manager_reconnect() {
    let mut r = Replay::calls();
    let f = Facade::start(&r.addr);
    scenario_reconnect(Lib::AsteriskManager, &mut r, Some(&f));
}

#[test]
fn direct_same_action_id() {
    let r = Replay::calls();
    scenario_same_id(&r.direct());
}

#[test]
fn facade_same_action_id_each_client_gets_its_own_answers() {
    let r = Replay::calls();
    let f = Facade::start(&r.addr);
    scenario_same_id(&f.target());
}

/// The helpers' own checks: the recorded bytes used by the fake are real
/// AMI messages with the ActionID swapped.
#[test]
fn recorded_bytes_keep_asterisk_framing() {
    let r = recorded(
        "calls_small.ami",
        "Event: OriginateResponse",
        "small-100",
        "x/1",
    );
    let s = String::from_utf8(r).expect("utf-8");
    assert!(
        s.starts_with("Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: x/1\r\n"),
        "{s}"
    );
    assert!(
        s.ends_with("\r\n\r\n") && !s.ends_with("\r\n\r\n\r\n"),
        "{s}"
    );
    let no_id = recorded("calls_small.ami", "Response: Success", "small-100", "");
    assert_eq!(
        no_id,
        b"Response: Success\r\nMessage: Originate successfully queued\r\n\r\n"
    );
}

/// The fake's race is real: with `events_to_others_first`, a second
/// session (the bridge's event connection) has the `OriginateResponse`
/// before the sender (the action connection) has its `Response`.
#[test]
fn fake_sends_originate_response_to_other_sessions_first() {
    let ami = originate_backend(Some(Duration::from_millis(300)));
    let login = |events: &str| {
        let s = TcpStream::connect(&ami.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        (&s).write_all(
            format!("Action: Login\r\nUsername: u\r\nSecret: s\r\nEvents: {events}\r\n\r\n")
                .as_bytes(),
        )
        .expect("login");
        let mut r = BufReader::new(s);
        read_message(&mut r); // banner + login response
        r
    };
    let mut listener = login("on");
    let mut actor = login("off");
    actor
        .get_mut()
        .write_all(
            b"Action: Originate\r\nActionID: o-1\r\nChannel: Local/100@test\r\nAsync: true\r\n\r\n",
        )
        .expect("originate");
    let ev = read_message(&mut listener);
    assert!(
        ev.starts_with("Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: o-1\r\n"),
        "{ev}"
    );
    let t0 = Instant::now();
    let resp = read_message(&mut actor);
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "the response waited"
    );
    assert_eq!(
        resp,
        "Response: Success\r\nActionID: o-1\r\nMessage: Originate successfully queued\r\n\r\n"
    );
}

/// One AMI message (up to its blank line; the banner line is part of the
/// first).
fn read_message(r: &mut impl BufRead) -> String {
    let mut m = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).expect("read") == 0 {
            return m;
        }
        m.push_str(&line);
        if line == "\r\n" {
            return m;
        }
    }
}

/// Pitfall 9 / F21, on the raw wire (order-based clients such as pyst2 and
/// Asterisk::Manager rely on it; the two libraries here match ActionIDs): a
/// pipelined forwarded action and a local one (`Ping` without ActionID) are
/// answered in request order, as Asterisk handles a session's actions one at
/// a time.
fn pipelined_answers_in_request_order(target: &Target) {
    let s = TcpStream::connect(&target.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = format!(
        "Action: Login\r\nUsername: {}\r\nSecret: {}\r\nEvents: off\r\n\r\n\
         Action: CoreShowChannels\r\nActionID: 1\r\n\r\n\
         Action: Ping\r\n\r\n",
        target.user, target.secret
    );
    (&s).write_all(req.as_bytes()).expect("write");
    let mut r = BufReader::new(s);
    let mut firsts = Vec::new();
    while firsts.len() < 12 {
        let m = read_message(&mut r);
        assert!(!m.is_empty(), "closed after {firsts:?}");
        let m = m
            .strip_prefix("Asterisk Call Manager/")
            .map_or(m.as_str(), |x| x.split_once("\r\n").map_or("", |y| y.1));
        let first: Vec<&str> = m.lines().take(2).collect();
        firsts.push(first.join(" | "));
    }
    let got: Vec<&str> = firsts.iter().map(String::as_str).collect();
    let mut want = vec!["Response: Success | Message: Authentication accepted".to_string()];
    want.push("Response: Success | ActionID: 1".into());
    want.extend(std::iter::repeat_n(
        "Event: CoreShowChannel | ActionID: 1".to_string(),
        LIST_ITEMS,
    ));
    want.push("Event: CoreShowChannelsComplete | ActionID: 1".into());
    want.push("Response: Success | Ping: Pong".into());
    assert_eq!(got, want, "answers in request order (F21)");
}

#[test]
fn direct_pipelined_answers_in_request_order() {
    let r = Replay::calls();
    pipelined_answers_in_request_order(&r.direct());
}

#[test]
fn facade_pipelined_answers_in_request_order() {
    let r = Replay::calls();
    let f = Facade::start(&r.addr);
    pipelined_answers_in_request_order(&f.target());
}
