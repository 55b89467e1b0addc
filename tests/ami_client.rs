//! The AMI client and pool over real TCP against `ami2amqp replay` serving
//! real captures: login (plain, MD5, wrong secret), ActionID correlation
//! under concurrency, event lists, both Command forms, reconnect, keepalive.

mod common;
#[path = "common/fake_ami.rs"]
mod fake_ami;

use std::sync::Arc;
use std::time::Duration;

use ami2amqp::ami::{ActionError, Backoff};
use ami2amqp::ami::{
    AuthType, Client, ClientConfig, ConnState, Credentials, EventMask, Incoming, Message, Pool,
    PoolError, ServerSpec,
};
use common::procs::{replay, trace};
use tokio::sync::mpsc;

fn config(addr: &str, auth: AuthType, secret: &str) -> ClientConfig {
    let mut c = ClientConfig::new(
        "pbx1",
        addr,
        Credentials {
            username: "bridge".into(),
            secret: secret.into(),
            auth,
        },
    );
    c.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        jitter: 0.1,
    };
    c.action_timeout = Duration::from_secs(5);
    c
}

fn creds_args() -> Vec<String> {
    vec![
        "--username".into(),
        "bridge".into(),
        "--secret".into(),
        "bridgepass".into(),
    ]
}

async fn events_until(rx: &mut mpsc::Receiver<Incoming>, n: usize) -> Vec<Message> {
    let mut v = Vec::new();
    while v.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Incoming::Event(e))) => v.push(e.message),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    v
}

#[tokio::test]
async fn plain_and_md5_login_receive_every_event_in_order() {
    let t = trace("calls_small.ami");
    let mut args = creds_args();
    args.push(t.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_r, addr) = replay(&args);
    let expected: Vec<String> =
        ami2amqp::ami::decode_all(&std::fs::read(&t).unwrap(), Default::default())
            .into_iter()
            .filter_map(|f| match f {
                ami2amqp::ami::Frame::Message(m) if m.kind() == ami2amqp::ami::Kind::Event => {
                    Some(String::from_utf8_lossy(m.raw()).into_owned())
                }
                _ => None,
            })
            .collect();
    for auth in [AuthType::Plain, AuthType::Md5] {
        let (tx, mut rx) = mpsc::channel(64);
        let c = Client::spawn(config(&addr, auth, "bridgepass"), Some(tx));
        assert!(c.wait_connected(Duration::from_secs(5)).await, "{auth:?}");
        let got = events_until(&mut rx, expected.len()).await;
        let got: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8_lossy(m.raw()).into_owned())
            .collect();
        assert_eq!(got.len(), expected.len(), "{auth:?}");
        assert_eq!(
            got, expected,
            "{auth:?}: same events, same order, byte for byte"
        );
        c.shutdown();
    }
}

#[tokio::test]
async fn wrong_secret_is_reported_and_retried() {
    let (_r, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--auth-fail-delay",
        "10",
        trace("login_plain.ami").to_str().unwrap(),
    ]);
    let (tx, mut rx) = mpsc::channel(64);
    let c = Client::spawn(config(&addr, AuthType::Md5, "wrong"), Some(tx));
    assert!(!c.wait_connected(Duration::from_millis(800)).await);
    // The state says why, and actions fail fast.
    let mut saw = false;
    while let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        if let Incoming::State {
            state: ConnState::Disconnected { reason },
            ..
        } = i
        {
            assert!(reason.contains("Authentication failed"), "{reason}");
            saw = true;
            break;
        }
    }
    assert!(saw, "a Disconnected state with the reason");
    let r = c
        .send_action(Message::from_pairs([("Action", "Ping")]), None)
        .await;
    assert!(matches!(r, Err(ActionError::Unavailable(_))), "{r:?}");
    c.shutdown();
}

#[tokio::test]
async fn concurrent_actions_are_correlated() {
    let (_r, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--responses",
        trace("actions.sent").to_str().unwrap(),
        trace("login_plain.ami").to_str().unwrap(),
    ]);
    let mut cfg = config(&addr, AuthType::Md5, "bridgepass");
    cfg.events = EventMask::Off;
    let c = Client::spawn(cfg, None);
    assert!(c.wait_connected(Duration::from_secs(5)).await);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            // Alternate a Ping and a Getvar, each with the caller's own id,
            // which the client must replace by its own.
            let action = if i % 2 == 0 {
                Message::from_pairs([("Action", "Ping"), ("ActionID", "same-for-everyone")])
            } else {
                Message::from_pairs([("Action", "Getvar"), ("Variable", "LABGLOBAL")])
            };
            (i, c.send_action(action, None).await)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("action {i}: {e}"));
        if i % 2 == 0 {
            assert_eq!(
                r.response.get("Ping").as_deref(),
                Some("Pong"),
                "{:?}",
                r.response
            );
        } else {
            assert!(
                r.response.contains("Variable") || r.response.contains("Value"),
                "{:?}",
                r.response
            );
        }
        assert!(r.response.action_id().unwrap().starts_with("a2a-"));
    }
    assert_eq!(c.in_flight(), 0);
    c.shutdown();
}

#[tokio::test]
async fn event_lists_and_command_output() {
    let (_r, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--responses",
        trace("actions.sent").to_str().unwrap(),
        trace("login_plain.ami").to_str().unwrap(),
    ]);
    let mut cfg = config(&addr, AuthType::Plain, "bridgepass");
    cfg.events = EventMask::Off;
    let c = Client::spawn(cfg, None);
    assert!(c.wait_connected(Duration::from_secs(5)).await);

    let r = c
        .send_action(Message::from_pairs([("Action", "CoreShowChannels")]), None)
        .await
        .unwrap();
    assert_eq!(r.response.get("EventList").as_deref(), Some("start"));
    let last = r.events.last().unwrap();
    assert_eq!(
        last.event_name().as_deref(),
        Some("CoreShowChannelsComplete")
    );
    let items: usize = last.get("ListItems").unwrap().parse().unwrap();
    assert_eq!(r.events.len(), items + 1);
    assert!(
        r.events[..items]
            .iter()
            .all(|e| e.event_name().as_deref() == Some("CoreShowChannel"))
    );

    let r = c
        .send_action(
            Message::from_pairs([("Action", "Command"), ("Command", "core show version")]),
            None,
        )
        .await
        .unwrap();
    let out = r.output();
    assert!(!out.is_empty() && out[0].starts_with("Asterisk"), "{out:?}");

    // An error response ends the action at once, with the message kept.
    let r = c
        .send_action(Message::from_pairs([("Action", "NoSuchAction")]), None)
        .await
        .unwrap();
    assert!(!r.is_success());
    let msg = r.response.get("Message").unwrap_or_default().into_owned();
    assert!(msg.starts_with("Invalid/unknown command"), "{msg}");

    // What Asterisk would reject is refused before it is sent.
    let long = "x".repeat(2000);
    let r = c
        .send_action(
            Message::from_pairs([("Action", "Command"), ("Command", long.as_str())]),
            None,
        )
        .await;
    assert!(matches!(r, Err(ActionError::Invalid(_))), "{r:?}");
    c.shutdown();
}

#[tokio::test]
async fn legacy_follows_command_output_over_tcp() {
    // A server speaking Asterisk 13's `Response: Follows` form.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (s, _) = l.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"Asterisk Call Manager/2.10.6\r\n")
            .await
            .unwrap();
        let mut id = String::new();
        let mut action = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(v) = line.strip_prefix("ActionID: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("Action: ") {
                action = v.to_string();
            } else if line.is_empty() {
                let reply = if action == "Login" {
                    format!(
                        "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
                    )
                } else {
                    format!(
                        "Response: Follows\r\nPrivilege: Command\r\nActionID: {id}\r\nAsterisk 13.38.3 built by x\n\nsecond: line\n--END COMMAND--\r\n\r\n"
                    )
                };
                w.write_all(reply.as_bytes()).await.unwrap();
            }
        }
    });
    let mut cfg = config(&addr, AuthType::Plain, "x");
    cfg.events = EventMask::Off;
    let c = Client::spawn(cfg, None);
    assert!(c.wait_connected(Duration::from_secs(5)).await);
    let r = c
        .send_action(
            Message::from_pairs([("Action", "Command"), ("Command", "core show version")]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        r.output(),
        vec!["Asterisk 13.38.3 built by x", "", "second: line"]
    );
    c.shutdown();
}

#[tokio::test]
async fn reconnects_after_the_server_closes() {
    let t = trace("login_plain.ami");
    let (r1, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        t.to_str().unwrap(),
    ]);
    let (tx, mut rx) = mpsc::channel(1024);
    let c = Client::spawn(config(&addr, AuthType::Md5, "bridgepass"), Some(tx));
    assert!(c.wait_connected(Duration::from_secs(5)).await);
    drop(r1); // the server goes away
    let mut st = c.state();
    let lost = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if matches!(
                *st.borrow_and_update(),
                ConnState::Disconnected { .. } | ConnState::Connecting { .. }
            ) {
                return;
            }
            if st.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(lost.is_ok(), "disconnect noticed");
    // A new server on the same port: the client comes back by itself.
    let port = addr.rsplit(':').next().unwrap();
    let mut child = None;
    for _ in 0..50 {
        let p = std::process::Command::new(common::procs::bin())
            .args([
                "replay",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--username",
                "bridge",
                "--secret",
                "bridgepass",
            ])
            .arg(&t)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut p = common::procs::Proc {
            child: p,
            name: "replay2".into(),
        };
        if p.wait_timeout(Duration::from_millis(300)).is_none() {
            child = Some(p);
            break;
        }
    }
    assert!(child.is_some(), "second replay started");
    assert!(
        c.wait_connected(Duration::from_secs(10)).await,
        "reconnected"
    );
    // The state changes travelled in order with the events.
    let mut states = Vec::new();
    while let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        if let Incoming::State { state, .. } = i {
            states.push(match state {
                ConnState::Connected { .. } => "connected",
                ConnState::Disconnected { .. } => "disconnected",
                ConnState::Connecting { .. } => "connecting",
                ConnState::Stopped => "stopped",
            });
        }
    }
    let compact: Vec<_> = states
        .iter()
        .filter(|s| **s != "connecting")
        .copied()
        .collect();
    assert_eq!(
        compact,
        vec!["connected", "disconnected", "connected"],
        "{states:?}"
    );
    c.shutdown();
}

#[tokio::test]
async fn keepalive_detects_a_silent_server() {
    // A server that logs us in and then never answers anything.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a2 = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        loop {
            let (s, _) = l.accept().await.unwrap();
            a2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"Asterisk Call Manager/11.0.0\r\n")
                    .await
                    .unwrap();
                let mut answered = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.is_empty() && !answered {
                        answered = true;
                        w.write_all(b"Response: Success\r\nActionID: login-2\r\nMessage: Authentication accepted\r\n\r\n").await.unwrap();
                    }
                }
            });
        }
    });
    let mut cfg = config(&addr, AuthType::Plain, "x");
    cfg.keepalive = Duration::from_millis(100);
    cfg.action_timeout = Duration::from_millis(250);
    let c = Client::spawn(cfg, None);
    assert!(c.wait_connected(Duration::from_secs(5)).await);
    // The unanswered Ping makes the client drop the session and log in again.
    let mut ok = false;
    for _ in 0..100 {
        if accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "reconnected after the keepalive timed out");
    c.shutdown();
}

#[tokio::test]
async fn pool_separates_event_and_action_connections() {
    let (_r, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--responses",
        trace("actions.sent").to_str().unwrap(),
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let (tx, mut rx) = mpsc::channel(8192);
    let mut a = config(&addr, AuthType::Md5, "bridgepass");
    a.server = Arc::from("a");
    let mut b = a.clone();
    b.server = Arc::from("b");
    let pool = Pool::start(
        vec![
            ServerSpec {
                client: a,
                action_connections: 2,
            },
            ServerSpec {
                client: b,
                action_connections: 0,
            },
        ],
        tx,
        false,
    );
    assert!(pool.wait_all_connected(Duration::from_secs(5)).await);
    assert_eq!(pool.action_clients("a").len(), 2);
    // Actions are spread over the action connections of "a".
    let mut handles = Vec::new();
    for _ in 0..20 {
        handles.push(pool.send_action("a", Message::from_pairs([("Action", "Ping")]), None));
    }
    for r in futures::future::join_all(handles).await {
        assert_eq!(r.unwrap().response.get("Ping").as_deref(), Some("Pong"));
    }
    // "b" has none: its event connection carries actions.
    let r = pool
        .send_action("b", Message::from_pairs([("Action", "Ping")]), None)
        .await
        .unwrap();
    assert!(r.is_success());
    let e = pool
        .send_action("nope", Message::from_pairs([("Action", "Ping")]), None)
        .await;
    assert_eq!(e.unwrap_err(), PoolError::UnknownServer("nope".into()));
    // Events of both servers arrive (749 each), each server's in order.
    let mut per: std::collections::HashMap<String, Vec<String>> = Default::default();
    while per.values().map(Vec::len).sum::<usize>() < 2 * 749 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Incoming::Event(e))) => per
                .entry(e.server.to_string())
                .or_default()
                .push(String::from_utf8_lossy(e.message.raw()).into_owned()),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert_eq!(per["a"].len(), 749);
    assert_eq!(per["a"], per["b"]);
    pool.shutdown();
}

/// A server that logs in anyone and then writes `total` numbered events as
/// fast as the socket takes them, answering `Ping` in between. Counts the
/// bytes it got into the socket and the connections it accepted.
struct Flood {
    addr: String,
    written: Arc<std::sync::atomic::AtomicU64>,
    connections: Arc<std::sync::atomic::AtomicU64>,
}

impl Flood {
    async fn start(total: u64) -> Flood {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (w2, c2) = (written.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                c2.fetch_add(1, Relaxed);
                let written = w2.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let (tx, mut replies) = mpsc::unbounded_channel::<String>();
                    // Reader: answer Login and Ping through the writer.
                    tokio::spawn(async move {
                        let mut lines = BufReader::new(r).lines();
                        let (mut action, mut id) = (String::new(), String::new());
                        while let Ok(Some(line)) = lines.next_line().await {
                            if let Some(v) = line.strip_prefix("Action: ") {
                                action = v.to_ascii_lowercase();
                            } else if let Some(v) = line.strip_prefix("ActionID: ") {
                                id = v.to_string();
                            } else if line.is_empty() {
                                let extra = if action == "ping" {
                                    "Ping: Pong\r\n"
                                } else {
                                    ""
                                };
                                let _ = tx.send(format!(
                                    "Response: Success\r\nActionID: {id}\r\n{extra}\r\n"
                                ));
                            }
                        }
                    });
                    if w.write_all(b"Asterisk Call Manager/5.0.1\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    // Wait for the login before flooding.
                    let Some(login) = replies.recv().await else {
                        return;
                    };
                    if w.write_all(login.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut seq = 0u64;
                    let mut chunk = String::new();
                    while seq < total {
                        chunk.clear();
                        while let Ok(r) = replies.try_recv() {
                            chunk.push_str(&r);
                        }
                        for _ in 0..64 {
                            if seq == total {
                                break;
                            }
                            chunk.push_str(&format!(
                                "Event: Flood\r\nPrivilege: call,all\r\nChannel: PJSIP/1000-{seq:08x}\r\nUniqueid: 1700000000.{seq}\r\nSeq: {seq}\r\n\r\n"
                            ));
                            seq += 1;
                        }
                        if w.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                        written.fetch_add(chunk.len() as u64, Relaxed);
                    }
                    // Keep answering Pings until the client goes.
                    while let Some(r) = replies.recv().await {
                        if w.write_all(r.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Flood {
            addr,
            written,
            connections,
        }
    }
}

/// A consumer that stops taking events: the client reads until its memory
/// budget is full, then stops reading (the server's writes block) without
/// dropping the connection — not even when a keepalive Ping goes unanswered
/// because its answer sits unread behind the events — and delivers every
/// event, in order, once the consumer is back.
#[tokio::test]
async fn a_stalled_consumer_pauses_reading_within_the_budget_and_loses_nothing() {
    use std::sync::atomic::Ordering::Relaxed;
    const TOTAL: u64 = 300_000; // ~40 MB on the wire
    const BUDGET: usize = 1 << 20;
    let flood = Flood::start(TOTAL).await;
    let mut cfg = config(&flood.addr, AuthType::Plain, "x");
    cfg.max_buffered_bytes = BUDGET;
    cfg.keepalive = Duration::from_millis(100);
    // Long enough for the Pong, queued behind megabytes of events, to be
    // read after the pause even on a loaded machine; shorter than the pause,
    // so that a client that counted the pause would give up on the
    // connection (a second connection fails the test below).
    cfg.action_timeout = Duration::from_millis(1500);
    let (tx, mut rx) = mpsc::channel(8);
    let c = Client::spawn(cfg, Some(tx));
    assert!(c.wait_connected(Duration::from_secs(5)).await);

    // Nobody takes events for a while: the writes must stop well short of
    // the 40 MB (budget + 8 in the channel + the kernel's socket buffers,
    // a few MB on loopback).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let at_2000 = flood.written.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let at_2500 = flood.written.load(Relaxed);
    assert_eq!(at_2000, at_2500, "the client kept reading past its budget");
    assert!(
        at_2500 < 20 << 20,
        "{at_2500} bytes taken with a {BUDGET}-byte budget"
    );
    assert!(
        at_2500 > BUDGET as u64,
        "the client read nothing: {at_2500}"
    );

    // Back to consuming: every event, in order, on the same connection.
    let mut next = 0u64;
    while next < TOTAL {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Incoming::Event(e))) => {
                let seq: u64 = e.message.get("Seq").unwrap().parse().unwrap();
                assert_eq!(seq, next, "event out of order or lost");
                next += 1;
            }
            Ok(Some(_)) => {}
            other => panic!("stream ended after {next} events: {other:?}"),
        }
    }
    assert_eq!(
        flood.connections.load(Relaxed),
        1,
        "the connection was dropped while reading was paused"
    );
    c.shutdown();
}

/// Answers `Command` with legacy output over the default limits (20,000
/// lines, blank lines and `Event:` lines among them).
struct HugeCommandOutput;
impl fake_ami::Script for HugeCommandOutput {
    fn answer(&self, action: &str, id: &str) -> Option<Vec<u8>> {
        if action != "command" {
            return None;
        }
        let mut out =
            format!("Response: Follows\r\nPrivilege: Command\r\nActionID: {id}\r\n").into_bytes();
        for i in 0..20_000 {
            out.extend_from_slice(format!("Event: Forged{i}\n\n").as_bytes());
        }
        out.extend_from_slice(b"--END COMMAND--\r\n\r\n");
        Some(out)
    }
}

/// Item 15: an overlong legacy `Follows` answer is an error at once (not a
/// timeout), and nothing of it is read as events; the connection stays in
/// step.
#[tokio::test]
async fn overlong_legacy_command_output_is_an_error_not_a_timeout() {
    let ami = fake_ami::start(HugeCommandOutput);
    let (tx, mut rx) = mpsc::channel(64);
    let c = Client::spawn(config(&ami.addr, AuthType::Md5, "x"), Some(tx));
    assert!(c.wait_connected(Duration::from_secs(5)).await);
    let t0 = std::time::Instant::now();
    let cmd = Message::from_pairs([("Action", "Command"), ("Command", "core show help")]);
    let r = c.send_action(cmd, Some(Duration::from_secs(8))).await;
    let took = t0.elapsed();
    let r = r.expect("an answer, not a timeout");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!r.is_success(), "{:?}", r.response);
    let why = r.response.get("Message").unwrap_or_default().into_owned();
    assert!(why.contains("lines"), "{why}");
    let ping = c
        .send_action(Message::from_pairs([("Action", "Ping")]), None)
        .await
        .expect("ping");
    assert!(ping.is_success());
    while let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        if let Incoming::Event(e) = i {
            panic!("output read as an event: {:?}", e.message);
        }
    }
    c.shutdown();
}

/// Floods 30 MB of events before answering the first `Login`.
struct FloodBeforeLogin;
impl fake_ami::Script for FloodBeforeLogin {
    fn before_login_answer(&self, session: usize, s: &mut std::net::TcpStream) {
        use std::io::Write;
        if session > 0 {
            return;
        }
        let chunk = b"Event: Flood\r\nData: 0123456789012345678901234567890123456789\r\n\r\n"
            .repeat(10_000);
        for _ in 0..50 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    }
}

/// Item 14: the byte budget applies from the first byte: events before
/// the login answer past `max_buffered_bytes` fail the login (and the
/// client reconnects) instead of piling up in memory.
#[tokio::test]
async fn events_before_the_login_answer_fail_it_past_the_budget() {
    let ami = fake_ami::start(FloodBeforeLogin);
    let (tx, mut rx) = mpsc::channel(64);
    let mut cfg = config(&ami.addr, AuthType::Md5, "x");
    cfg.max_buffered_bytes = 1 << 20;
    cfg.connect_timeout = Duration::from_secs(30);
    let c = Client::spawn(cfg, Some(tx));
    let mut reason = None;
    while let Ok(Some(i)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        match i {
            Incoming::State {
                state: ConnState::Disconnected { reason: r },
                ..
            } => reason = Some(r),
            Incoming::State {
                state: ConnState::Connected { .. },
                ..
            } => break,
            _ => {}
        }
    }
    let reason = reason.expect("the flooded login failed");
    assert!(reason.contains("before answering the login"), "{reason}");
    // The second session is not flooded: logged in.
    assert!(c.wait_connected(Duration::from_secs(10)).await);
    c.shutdown();
}
