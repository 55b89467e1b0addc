//! The trace commands end to end: the built `ami2amqp` binary as a fake
//! Asterisk (`replay`), as a recorder (`record`) and as a counter
//! (`inspect`), driven over real TCP on ephemeral ports with the crate's own
//! codec and login as the client.
//!
//! Every child process is killed by a drop guard, so a failing assertion
//! leaves nothing behind. Timing assertions are deliberately loose: they
//! check that pacing happens, not how precisely.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ami2amqp::ami::decode_all;
use ami2amqp::ami::{AmiCodec, Frame, Kind, Limits, Message};
use ami2amqp::ami::{AuthType, Credentials, EventMask, login};
use ami2amqp::trace::read_trace;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

const BIN: &str = env!("CARGO_BIN_EXE_ami2amqp");
const WAIT: Duration = Duration::from_secs(10);

fn trace(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/traces")
        .join(name)
}

/// Kills the child when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// Waits (polling) for the child to exit on its own.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Starts `ami2amqp replay --listen 127.0.0.1:0 ARGS` and reads the bound
/// address from its first stdout line.
fn replay(args: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["--log-level", "warn", "replay", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn replay");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("address");
    (guard, addr)
}

fn bridge(auth: AuthType) -> Credentials {
    Credentials {
        username: "bridge".into(),
        secret: "bridgepass".into(),
        auth,
    }
}

/// The events of a trace file, decoded.
fn file_events(name: &str) -> Vec<Message> {
    let data = read_trace(trace(name)).expect("trace");
    decode_all(&data, Limits::default())
        .into_iter()
        .filter_map(|f| match f {
            Frame::Message(m) if m.kind() == Kind::Event => Some(m),
            _ => None,
        })
        .collect()
}

/// An AMI client on the crate's codec.
struct Client {
    framed: Framed<TcpStream, AmiCodec>,
    /// Events received while waiting for responses.
    events: Vec<Message>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        Client {
            framed: Framed::new(s, AmiCodec::default()),
            events: Vec::new(),
        }
    }

    async fn login(addr: SocketAddr, auth: AuthType, events: EventMask) -> Client {
        let mut c = Client::connect(addr).await;
        let ok = login(&mut c.framed, &bridge(auth), &events, WAIT)
            .await
            .expect("login");
        c.events.extend(ok.early_events);
        c
    }

    /// The next frame, `None` at the end of the connection.
    async fn frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.framed.next())
            .await
            .expect("timed out waiting for the server")
            .map(|r| r.expect("read"))
    }

    async fn message(&mut self) -> Message {
        loop {
            match self.frame().await {
                Some(Frame::Message(m)) => return m,
                Some(Frame::Banner(_)) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, pairs: &[(&str, &str)]) {
        self.framed
            .send(Message::from_pairs(pairs.iter().copied()))
            .await
            .expect("send");
    }

    /// Reads until a response, keeping events aside.
    async fn response(&mut self) -> Message {
        loop {
            let m = self.message().await;
            match m.kind() {
                Kind::Response => return m,
                _ => self.events.push(m),
            }
        }
    }

    /// Reads until `n` events have been received in total.
    async fn events(&mut self, n: usize) -> Vec<Message> {
        while self.events.len() < n {
            let m = self.message().await;
            assert_eq!(m.kind(), Kind::Event, "unexpected {m:?}");
            self.events.push(m);
        }
        std::mem::take(&mut self.events)
    }

    async fn ping(&mut self, id: &str) -> Message {
        self.send(&[("Action", "Ping"), ("ActionID", id)]).await;
        let r = self.response().await;
        assert_eq!(r.get("Response").as_deref(), Some("Success"));
        assert_eq!(r.get("Ping").as_deref(), Some("Pong"));
        assert_eq!(r.action_id().as_deref(), Some(id));
        r
    }

    /// Everything until the server closes.
    async fn read_to_end(self) -> Vec<u8> {
        let parts = self.framed.into_parts();
        let mut out = parts.read_buf.to_vec();
        let mut io = parts.io;
        tokio::time::timeout(WAIT, io.read_to_end(&mut out))
            .await
            .expect("server did not close")
            .expect("read");
        out
    }
}

/// Sends raw bytes and collects everything until the server closes.
async fn exchange_raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("server did not close")
        .expect("read");
    out
}

const CALLS: &str = "calls_small.ami";

#[tokio::test]
async fn plain_login_ping_logoff() {
    let (_g, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "tests/traces/calls_small.ami",
    ]);
    let mut c = Client::connect(addr).await;
    assert_eq!(
        c.frame().await,
        Some(Frame::Banner("Asterisk Call Manager/11.0.0".into()))
    );
    c.send(&[
        ("Action", "Login"),
        ("ActionID", "l-1"),
        ("Username", "bridge"),
        ("Secret", "bridgepass"),
        ("Events", "off"),
    ])
    .await;
    let r = c.response().await;
    assert_eq!(r.get("Response").as_deref(), Some("Success"));
    assert_eq!(r.get("Message").as_deref(), Some("Authentication accepted"));
    assert_eq!(r.action_id().as_deref(), Some("l-1"));
    let p = c.ping("p-1").await;
    assert!(p.get("Timestamp").is_some_and(|t| t.contains('.')));
    // Ping without ActionID: none echoed.
    c.send(&[("Action", "ping")]).await;
    let r = c.response().await;
    assert_eq!(r.get("Ping").as_deref(), Some("Pong"));
    assert!(r.action_id().is_none());
    c.send(&[("Action", "Logoff"), ("ActionID", "bye")]).await;
    let r = c.response().await;
    assert_eq!(r.get("Response").as_deref(), Some("Goodbye"));
    assert_eq!(
        r.get("Message").as_deref(),
        Some("Thanks for all the fish.")
    );
    assert_eq!(r.action_id().as_deref(), Some("bye"));
    assert!(c.events.is_empty(), "Events: off got {:?}", c.events);
    assert!(c.read_to_end().await.is_empty());
}

#[tokio::test]
async fn md5_login_and_unknown_action() {
    let (_g, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "tests/traces/calls_small.ami",
    ]);
    let mut c = Client::login(addr, AuthType::Md5, EventMask::Off).await;
    c.ping("after-md5").await;
    c.send(&[("Action", "NoSuchAction"), ("ActionID", "u-1")])
        .await;
    let r = c.response().await;
    assert_eq!(r.get("Response").as_deref(), Some("Error"));
    assert_eq!(r.action_id().as_deref(), Some("u-1"));
    // The text of the real capture.
    let real = read_trace(trace("actions.ami")).expect("trace");
    let want = r.get("Message").expect("message").into_owned();
    assert!(String::from_utf8_lossy(&real).contains(&format!("Message: {want}\r\n")));
    assert_eq!(
        want,
        "Invalid/unknown command: NoSuchAction. Use Action: ListCommands to show available commands."
    );
}

#[tokio::test]
async fn wrong_secret_and_prelogin_match_real_captures() {
    let (_g, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "tests/traces/calls_small.ami",
    ]);
    // Byte for byte what the real Asterisk sent, and the socket closes.
    for name in ["login_fail", "prelogin"] {
        let sent = read_trace(trace(&format!("{name}.sent"))).expect("sent");
        let got = exchange_raw(addr, &sent).await;
        let want = read_trace(trace(&format!("{name}.ami"))).expect("ami");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{name}"
        );
    }
    // And through the library's login: a clear rejection.
    let mut c = Client::connect(addr).await;
    let bad = Credentials {
        secret: "wrong".into(),
        ..bridge(AuthType::Md5)
    };
    let err = login(&mut c.framed, &bad, &EventMask::On, WAIT)
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("Authentication failed"), "{err}");
}

#[tokio::test]
async fn two_clients_get_all_events_in_order() {
    let want = file_events(CALLS);
    assert_eq!(want.len(), 749);
    let (_g, addr) = replay(&["tests/traces/calls_small.ami"]);
    let (a, b) = tokio::join!(
        Client::login(addr, AuthType::Plain, EventMask::On),
        Client::login(addr, AuthType::Md5, EventMask::On),
    );
    let (mut a, mut b) = (a, b);
    let (ea, eb) = tokio::join!(a.events(want.len()), b.events(want.len()));
    assert!(ea == want, "client A got other events");
    assert!(eb == want, "client B got other events");
    // Nothing more: the stream is over but the connection stays open.
    a.ping("done").await;
    assert!(a.events.is_empty());
}

#[tokio::test]
async fn events_off_then_on_and_class_filter() {
    let want = file_events(CALLS);
    let (_g, addr) = replay(&["tests/traces/calls_small.ami"]);

    // Off: nothing, even after a while.
    let mut off = Client::login(addr, AuthType::Plain, EventMask::Off).await;
    off.ping("1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    off.ping("2").await;
    assert!(off.events.is_empty(), "got {} events", off.events.len());
    // Switching on with the Events action resumes the stream from the start.
    off.send(&[
        ("Action", "Events"),
        ("ActionID", "ev"),
        ("EventMask", "on"),
    ])
    .await;
    let r = off.response().await;
    assert_eq!(r.get("Events").as_deref(), Some("On"));
    assert_eq!(r.action_id().as_deref(), Some("ev"));
    assert!(off.events(want.len()).await == want);

    // A class list: only events whose classes are all in it.
    let mask = EventMask::Classes(vec!["cdr".into(), "user".into()]);
    let expected: Vec<&Message> = want
        .iter()
        .filter(|m| {
            let p = m.get("Privilege").unwrap_or_default().to_ascii_lowercase();
            p.split(',')
                .all(|c| c == "all" || c == "cdr" || c == "user")
        })
        .collect();
    assert_eq!(expected.len(), 28 + 4, "Cdr + UserEvent in calls_small");
    let mut f = Client::login(addr, AuthType::Plain, mask).await;
    let got = f.events(expected.len()).await;
    assert!(got.iter().zip(&expected).all(|(g, w)| g == *w));
    // All of them arrived; nothing else follows.
    f.ping("after").await;
    assert!(f.events.is_empty(), "extra events: {:?}", f.events);
}

#[tokio::test]
async fn rate_is_roughly_respected() {
    let (_g, addr) = replay(&["--rate", "200", "tests/traces/calls_small.ami"]);
    let start = Instant::now();
    let mut c = Client::login(addr, AuthType::Plain, EventMask::On).await;
    // 100 events at 200/s: about half a second.
    c.events(100).await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(350), "too fast: {took:?}");
    assert!(took <= Duration::from_secs(8), "too slow: {took:?}");
    // Actions are answered without waiting for the pace.
    let t = Instant::now();
    c.ping("fast").await;
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn timing_reproduces_the_recorded_pace() {
    let want = file_events(CALLS);
    let (_g, addr) = replay(&[
        "--timing",
        "tests/traces/calls_small.timing",
        "tests/traces/calls_small.ami",
    ]);
    let start = Instant::now();
    let mut c = Client::login(addr, AuthType::Plain, EventMask::On).await;
    // The capture spans ~3.74 s from the first to the last event.
    let got = c.events(want.len()).await;
    let took = start.elapsed();
    assert!(got == want);
    assert!(took >= Duration::from_millis(3300), "too fast: {took:?}");
    assert!(took <= Duration::from_secs(15), "too slow: {took:?}");
}

#[tokio::test]
async fn loop_repeats_the_stream() {
    let want = file_events("login_plain.ami");
    let (_g, addr) = replay(&["--loop", "3", "tests/traces/login_plain.ami"]);
    let mut c = Client::login(addr, AuthType::Plain, EventMask::On).await;
    let got = c.events(3 * want.len()).await;
    for (i, g) in got.iter().enumerate() {
        assert!(*g == want[i % want.len()]);
    }
    c.ping("end").await;
    assert!(c.events.is_empty());
}

/// The recorded messages answering `id` in actions.ami, in order.
fn recorded_answer(id: &str) -> Vec<Message> {
    file_messages("actions.ami")
        .into_iter()
        .filter(|m| m.action_id().as_deref() == Some(id) && m.kind() != Kind::Action)
        .collect()
}

fn file_messages(name: &str) -> Vec<Message> {
    let data = read_trace(trace(name)).expect("trace");
    decode_all(&data, Limits::default())
        .into_iter()
        .filter_map(|f| match f {
            Frame::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Headers without ActionID, for comparing answers.
fn without_id(m: &Message) -> Vec<(String, String)> {
    m.iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("ActionID"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn responses_replay_recorded_answers() {
    let (_g, addr) = replay(&[
        "--responses",
        "tests/traces/actions.sent",
        "tests/traces/actions.ami",
    ]);
    let mut c = Client::login(addr, AuthType::Plain, EventMask::Off).await;

    // CoreShowChannels: the response and its whole event list, with our ID.
    c.send(&[("Action", "CoreShowChannels"), ("ActionID", "mine-1")])
        .await;
    let want = recorded_answer("act-coreshowchannels");
    assert_eq!(want.len(), 10, "response + 8 channels + complete");
    let r = c.response().await;
    assert_eq!(r.get("EventList").as_deref(), Some("start"));
    let mut got = vec![r];
    for _ in 1..want.len() {
        got.push(c.message().await);
    }
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.action_id().as_deref(), Some("mine-1"));
        assert_eq!(without_id(g), without_id(w));
    }
    assert_eq!(
        got.last().and_then(|m| m.get("EventList")).as_deref(),
        Some("Complete")
    );

    // Command: the recorded Output lines, best match on the Command field.
    c.send(&[
        ("Action", "Command"),
        ("ActionID", "cmd-7"),
        ("Command", "core show channels"),
    ])
    .await;
    let r = c.response().await;
    let w = &recorded_answer("act-cmd-channels")[0];
    assert_eq!(r.action_id().as_deref(), Some("cmd-7"));
    let outputs: Vec<_> = r.get_all("Output").collect();
    assert!(outputs.len() > 2);
    assert_eq!(outputs, w.get_all("Output").collect::<Vec<_>>());

    // Without an ActionID none comes back.
    c.send(&[("Action", "Command"), ("Command", "core show version")])
        .await;
    let r = c.response().await;
    assert!(r.action_id().is_none());
    assert!(
        r.get("Output")
            .is_some_and(|o| o.starts_with("Asterisk 22.10.1"))
    );

    // Getvar picks the recording with the same fields.
    c.send(&[
        ("Action", "Getvar"),
        ("ActionID", "g"),
        ("Variable", "LABGLOBAL2"),
    ])
    .await;
    let r = c.response().await;
    assert_eq!(r.get("Value").as_deref(), Some("set-from-ami"));
    assert!(c.events.is_empty(), "no list item may leak: {:?}", c.events);
}

/// A TCP proxy that records the server→client bytes of one connection.
async fn capturing_proxy(upstream: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.expect("accept");
        let server = TcpStream::connect(upstream).await.expect("upstream");
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let up = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut cr, &mut sw).await;
            let _ = sw.shutdown().await;
        });
        let mut captured = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            captured.extend_from_slice(&buf[..n]);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
        let _ = up.await;
        captured
    });
    (addr, task)
}

#[tokio::test]
async fn record_against_replay_is_byte_exact() {
    let (mut replay_child, addr) = replay(&[
        "--once",
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "tests/traces/calls_small.ami",
    ]);
    let (proxy, captured) = capturing_proxy(addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("rec.ami.zst");
    let timing = dir.path().join("rec.timing");
    let status = tokio::process::Command::new(BIN)
        .args(["--log-level", "warn", "record", "--server"])
        .arg(proxy.to_string())
        .args([
            "--username",
            "bridge",
            "--secret",
            "bridgepass",
            "--auth",
            "md5",
            "--duration",
            "1",
            "--out",
        ])
        .arg(&out)
        .arg("--timing")
        .arg(&timing)
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("record did not finish")
        .expect("run record");
    assert!(status.success(), "record failed: {status}");
    let sent = tokio::time::timeout(WAIT, captured)
        .await
        .expect("proxy")
        .expect("proxy task");
    let recorded = read_trace(&out).expect("recorded trace (zstd)");
    assert!(
        recorded == sent,
        "recorded bytes differ from what replay sent"
    );

    // Banner, Challenge + Login responses, the source events, Goodbye.
    let frames = decode_all(&recorded, Limits::default());
    assert_eq!(
        frames.first(),
        Some(&Frame::Banner("Asterisk Call Manager/11.0.0".into()))
    );
    let messages: Vec<&Message> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    let events: Vec<Message> = messages
        .iter()
        .filter(|m| m.kind() == Kind::Event)
        .map(|m| (*m).clone())
        .collect();
    assert!(
        events == file_events(CALLS),
        "recorded events differ from the source"
    );
    let last = messages.last().expect("messages");
    assert_eq!(last.get("Response").as_deref(), Some("Goodbye"));

    // Timing: one line per read, ending at the file's length.
    let t = std::fs::read_to_string(&timing).expect("timing");
    let last_line = t.lines().last().expect("timing lines");
    let total: usize = last_line
        .split_whitespace()
        .nth(1)
        .and_then(|b| b.parse().ok())
        .expect("bytes column");
    assert_eq!(total, recorded.len());

    // --once: the replay exits after its client left.
    let st = replay_child
        .wait_exit(WAIT)
        .expect("replay --once did not exit");
    assert!(st.success());
}

fn count_event_lines(data: &[u8]) -> u64 {
    let mut n = u64::from(data.starts_with(b"Event:"));
    n += memchr::memmem::find_iter(data, b"\nEvent:").count() as u64;
    n
}

#[test]
fn inspect_json_counts_match_event_lines() {
    let names = [
        "calls_small.ami",
        "actions.ami",
        "events_filtered.ami",
        "calls_busy.ami.zst",
    ];
    let out = Command::new(BIN)
        .args(["--log-level", "warn", "inspect", "--json"])
        .args(names.iter().map(|n| trace(n)))
        .output()
        .expect("run inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), names.len());
    for (line, name) in lines.iter().zip(names) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let data = read_trace(trace(name)).expect("trace");
        let events: u64 = v["events"]
            .as_object()
            .expect("events object")
            .values()
            .map(|n| n.as_u64().expect("count"))
            .sum();
        assert_eq!(events, count_event_lines(&data), "{name}");
        assert_eq!(v["malformed"], 0, "{name}");
        assert_eq!(v["banner"], "Asterisk Call Manager/11.0.0");
        assert!(v["trace"].as_str().is_some_and(|t| t.ends_with(name)));
        assert!(
            v["fields"]["Newchannel"]
                .as_array()
                .is_some_and(|f| { f.iter().any(|x| x == "Uniqueid") && f[0] == "Event" })
                || v["events"].get("Newchannel").is_none()
        );
    }
    // Known totals from tests/traces/SUMMARY.txt.
    let small: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
    assert_eq!(small["messages"], 761);
    assert_eq!(small["responses"]["Success"], 11);
    let busy: serde_json::Value = serde_json::from_str(lines[3]).expect("json");
    assert_eq!(busy["messages"], 179007);
    assert_eq!(busy["events"]["VarSet"], 42000);
}

#[test]
fn errors_are_one_clear_line() {
    let out = Command::new(BIN)
        .args([
            "--log-level",
            "error",
            "replay",
            "--listen",
            "127.0.0.1:0",
            "no/such/trace.ami",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot read no/such/trace.ami"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(BIN)
        .args(["--log-level", "error", "replay", "--listen", &addr])
        .arg(trace("login_plain.ami"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

/// The answers no capture covers: a second Login, an action without
/// `Action:`, a Challenge without `AuthType` and an empty `EventMask`.
#[tokio::test]
async fn second_login_missing_action_and_bad_requests() {
    let (_g, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "tests/traces/calls_small.ami",
    ]);
    let mut c = Client::login(addr, AuthType::Plain, EventMask::Off).await;
    // (request, Response, Message)
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );
    let cases: [Case; 4] = [
        (
            &[
                ("Action", "Login"),
                ("ActionID", "x-1"),
                ("Username", "bridge"),
                ("Secret", "bridgepass"),
            ],
            "Success",
            "Already authenticated",
        ),
        (
            &[("ActionID", "x-2"), ("Foo", "bar")],
            "Error",
            "Missing action in request",
        ),
        (
            &[("Action", "Challenge"), ("ActionID", "x-3")],
            "Error",
            "Must specify AuthType",
        ),
        (
            &[("Action", "Events"), ("ActionID", "x-4"), ("EventMask", "")],
            "Error",
            "Invalid event mask",
        ),
    ];
    for (i, (req, resp, msg)) in cases.into_iter().enumerate() {
        c.send(req).await;
        let r = c.response().await;
        assert_eq!(r.get("Response").as_deref(), Some(resp), "case {i}");
        assert_eq!(r.get("Message").as_deref(), Some(msg), "case {i}");
        assert_eq!(
            r.action_id().as_deref(),
            Some(format!("x-{}", i + 1).as_str())
        );
    }
    // Still logged in and answering.
    c.ping("after").await;
}
