//! Actions in, end to end: AMQP request → `ami2amqp run` → AMI server →
//! AMQP reply, against a real RabbitMQ, `ami2amqp replay` serving recorded
//! answers and a scripted AMI server that records what it receives.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

use common::broker::shared_amqp_url;
use common::procs::{Proc, bin, consume_auto_ack, free_port, replay, trace, unique};

/// A scripted AMI server: logs in anyone, answers `Ping`, answers `Command`
/// in Asterisk 13's `Response: Follows` form, never answers `Sleep`, and
/// says `Invalid/unknown command` to the rest. Records every action it
/// receives with the connection it came on.
#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Fake {
    async fn start() -> (Fake, String) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let fake = Fake::default();
        let f2 = fake.clone();
        tokio::spawn(async move {
            let mut conn_id = 0;
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                conn_id += 1;
                let f = f2.clone();
                tokio::spawn(f.serve(s, conn_id));
            }
        });
        (fake, addr)
    }

    async fn serve(self, s: tokio::net::TcpStream, conn: usize) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        if w.write_all(b"Asterisk Call Manager/2.10.6\r\n")
            .await
            .is_err()
        {
            return;
        }
        let mut fields: Vec<(String, String)> = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if !line.is_empty() {
                if let Some((k, v)) = line.split_once(": ") {
                    fields.push((k.to_string(), v.to_string()));
                }
                continue;
            }
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(a, _)| a.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            let action = get("Action").unwrap_or_default();
            let id = get("ActionID").unwrap_or_default();
            self.seen.lock().unwrap().push((conn, action.clone()));
            let reply = match action.to_ascii_lowercase().as_str() {
                "challenge" => {
                    format!("Response: Success\r\nActionID: {id}\r\nChallenge: 12345\r\n\r\n")
                }
                "login" => format!(
                    "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
                ),
                "ping" => format!("Response: Success\r\nActionID: {id}\r\nPing: Pong\r\n\r\n"),
                "command" => format!(
                    "Response: Follows\r\nPrivilege: Command\r\nActionID: {id}\r\nAsterisk 13.38.3 built by test\n\nline: three\n--END COMMAND--\r\n\r\n"
                ),
                "sleep" => String::new(),
                _ => format!(
                    "Response: Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command\r\n\r\n"
                ),
            };
            fields.clear();
            if !reply.is_empty() && w.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn saw(&self, action: &str) -> Vec<usize> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, a)| a.eq_ignore_ascii_case(action))
            .map(|(c, _)| *c)
            .collect()
    }
}

/// Writes a bridge config with several servers and a unique actions
/// exchange, and starts bridges on it.
struct Setup {
    dir: tempfile::TempDir,
    exchange: String,
    config: std::path::PathBuf,
}

impl Setup {
    fn new(servers: &[(&str, &str)], url: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let exchange = unique("ami.actions.test.");
        let mut s = format!(
            "[amqp]\nurl = \"{url}\"\nreconnect_initial_ms = 100\nreconnect_max_ms = 1000\n\n[mappings]\ndir = \"{}\"\n\n[spool]\ndir = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\n",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("mappings")
                .display(),
            dir.path().join("spool").display(),
            free_port(),
        );
        for (name, addr) in servers {
            s.push_str(&format!(
                "[[server]]\nname = \"{name}\"\naddress = \"{addr}\"\nusername = \"bridge\"\nsecret = \"bridgepass\"\naction_connections = 2\nreconnect_initial_ms = 100\nreconnect_max_ms = 500\naction_timeout_s = 5\nkeepalive_s = 0\n\n"
            ));
        }
        s.push_str(&format!(
            r#"[actions]
exchange = "{exchange}"
queue_prefix = "{exchange}."
unrouted = "{exchange}.unrouted"
expired = "{exchange}.expired"
default_timeout_ms = 3000

[[actions.allow]]
user = "guest"
actions = ["Ping", "Getvar", "CoreShowChannels", "Command", "Sleep", "NoSuchAction", "Status"]

[[actions.allow]]
user = "guest"
actions = ["Originate"]
fields = {{ Context = "^crm-" }}
"#
        ));
        let config = dir.path().join("c.toml");
        std::fs::write(&config, s).unwrap();
        Setup {
            dir,
            exchange,
            config,
        }
    }

    /// Starts a bridge with its own spool and metrics port.
    fn start(&self, tag: &str) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("{tag}.log"))).unwrap();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let spool = self.dir.path().join(format!("spool-{tag}"));
        let text = text
            .replace(
                &self.dir.path().join("spool").display().to_string(),
                &spool.display().to_string(),
            )
            .lines()
            .map(|l| {
                if l.starts_with("listen = ") {
                    format!("listen = \"127.0.0.1:{}\"", free_port())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = self.dir.path().join(format!("c-{tag}.toml"));
        std::fs::write(&config, text).unwrap();
        let child = std::process::Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc {
            child,
            name: tag.into(),
        }
    }

    fn log(&self, tag: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{tag}.log"))).unwrap_or_default()
    }
}

/// An AMQP client speaking the action contract over direct reply-to.
struct Caller {
    conn: Connection,
    ch: lapin::Channel,
    replies: tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
}

impl Caller {
    async fn new(url: &str) -> Caller {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut c = consume_auto_ack(&ch, "amq.rabbitmq.reply-to").await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(d)) = c.next().await {
                let corr = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                if tx.send((corr, v)).is_err() {
                    break;
                }
            }
        });
        Caller {
            conn,
            ch,
            replies: rx,
        }
    }

    async fn send(
        &self,
        exchange: &str,
        server: &str,
        corr: &str,
        body: &[u8],
        expiration_ms: Option<u64>,
    ) {
        let mut p = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id(corr.into())
            .with_user_id("guest".into());
        if let Some(e) = expiration_ms {
            p = p.with_expiration(e.to_string().into());
        }
        self.ch
            .basic_publish(
                exchange.into(),
                server.into(),
                BasicPublishOptions::default(),
                body,
                p,
            )
            .await
            .unwrap();
    }

    async fn replies(&mut self, n: usize, wait: Duration) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        while m.len() < n {
            match tokio::time::timeout(wait, self.replies.recv()).await {
                Ok(Some((c, v))) => {
                    assert!(m.insert(c.clone(), v).is_none(), "two replies for {c}");
                }
                _ => break,
            }
        }
        m
    }

    async fn call(&mut self, exchange: &str, server: &str, body: Value) -> Value {
        let corr = unique("c");
        self.send(exchange, server, &corr, body.to_string().as_bytes(), None)
            .await;
        let mut r = self.replies(1, Duration::from_secs(15)).await;
        r.remove(&corr)
            .unwrap_or_else(|| panic!("no reply to {body}"))
    }
}

fn kind(r: &Value) -> &str {
    r["error"]["kind"].as_str().unwrap_or("none")
}

async fn wait_ready(c: &mut Caller, ex: &str, server: &str, setup: &Setup, tag: &str) {
    // Publishing to an exchange that does not exist yet closes the channel:
    // wait until the bridge has declared it.
    let mut declared = false;
    for _ in 0..100 {
        let ch = c.conn.create_channel().await.unwrap();
        let passive = lapin::options::ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if ch
            .exchange_declare(
                ex.into(),
                lapin::ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok()
        {
            let _ = ch.close(200, "ok".into()).await;
            declared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        declared,
        "exchange {ex} never declared:\n{}",
        setup.log(tag)
    );
    for _ in 0..100 {
        let corr = unique("ready");
        c.send(ex, server, &corr, br#"{"Action":"Ping"}"#, Some(2000))
            .await;
        let r = c.replies(1, Duration::from_millis(500)).await;
        if r.get(&corr).is_some_and(|v| v["response"] == "Success") {
            return;
        }
    }
    panic!("bridge not ready:\n{}", setup.log(tag));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_under_load_across_servers_and_clients() {
    let url = shared_amqp_url();
    let sent = trace("actions.sent");
    let base = trace("login_plain.ami");
    let args = [
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--responses",
        sent.to_str().unwrap(),
        base.to_str().unwrap(),
    ];
    let (_r1, a1) = replay(&args);
    let (_r2, a2) = replay(&args);
    let setup = Setup::new(&[("one", &a1), ("two", &a2)], &url);
    let _bridge = setup.start("bridge");
    let ex = setup.exchange.clone();
    let mut first = Caller::new(&url).await;
    wait_ready(&mut first, &ex, "one", &setup, "bridge").await;
    wait_ready(&mut first, &ex, "two", &setup, "bridge").await;

    let mut tasks = Vec::new();
    for client in 0..4 {
        let url = url.clone();
        let ex = ex.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Caller::new(&url).await;
            let mut want = HashMap::new();
            for i in 0..60 {
                let server = if (i + client) % 2 == 0 { "one" } else { "two" };
                let corr = format!("c{client}-{i}");
                let body = match i % 3 {
                    0 => json!({"Action": "Ping", "ActionID": format!("mine-{client}-{i}")}),
                    1 => json!({"Action": "Getvar", "Variable": "LABGLOBAL", "ActionID": i}),
                    _ => json!({"Action": "CoreShowChannels"}),
                };
                c.send(&ex, server, &corr, body.to_string().as_bytes(), None)
                    .await;
                want.insert(corr, (server, i, body));
            }
            let got = c.replies(want.len(), Duration::from_secs(20)).await;
            assert_eq!(
                got.len(),
                want.len(),
                "client {client}: every request answered"
            );
            for (corr, (server, i, body)) in want {
                let r = &got[&corr];
                assert_eq!(r["server"], server, "{corr}");
                assert_eq!(
                    r["response"],
                    if i % 3 == 2 {
                        "Success"
                    } else {
                        r["response"].as_str().unwrap()
                    }
                );
                match i % 3 {
                    0 => {
                        assert_eq!(r["fields"]["Ping"], "Pong", "{corr}: {r}");
                        assert_eq!(
                            r["action_id"], body["ActionID"],
                            "{corr}: the client's ActionID comes back"
                        );
                    }
                    1 => assert_eq!(r["action_id"], i.to_string(), "{corr}"),
                    _ => {
                        let ev = r["events"].as_array().unwrap();
                        assert_eq!(
                            ev.last().unwrap()["Event"],
                            "CoreShowChannelsComplete",
                            "{corr}"
                        );
                    }
                }
            }
            drop(c.conn);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _ = first.conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_kind_and_both_command_forms() {
    let url = shared_amqp_url();
    let (fake, fake_addr) = Fake::start().await;
    let sent = trace("actions.sent");
    let base = trace("login_plain.ami");
    let (_r, rec) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--responses",
        sent.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let down = format!("127.0.0.1:{}", free_port());
    let setup = Setup::new(
        &[("fake", &fake_addr), ("rec", &rec), ("down", &down)],
        &url,
    );
    let _bridge = setup.start("bridge");
    let ex = setup.exchange.clone();
    let mut c = Caller::new(&url).await;
    wait_ready(&mut c, &ex, "fake", &setup, "bridge").await;
    wait_ready(&mut c, &ex, "rec", &setup, "bridge").await;

    // Command, Asterisk 14+ form (Output: lines) and 13 form (Follows).
    let r = c
        .call(
            &ex,
            "rec",
            json!({"Action": "Command", "Command": "core show version"}),
        )
        .await;
    assert!(
        r["output"][0].as_str().unwrap().starts_with("Asterisk 22"),
        "{r}"
    );
    let r = c
        .call(
            &ex,
            "fake",
            json!({"Action": "Command", "Command": "core show version"}),
        )
        .await;
    assert_eq!(
        r["output"],
        json!(["Asterisk 13.38.3 built by test", "", "line: three"]),
        "{r}"
    );
    // An event list.
    let r = c.call(&ex, "rec", json!({"Action": "Status"})).await;
    assert!(r["events"].as_array().unwrap().len() >= 2, "{r}");

    // bad_request: not JSON, no Action, wrong types.
    let corr = unique("bad");
    c.send(&ex, "fake", &corr, b"this is not json", None).await;
    let r = c
        .replies(1, Duration::from_secs(10))
        .await
        .remove(&corr)
        .unwrap();
    assert_eq!(kind(&r), "bad_request", "{r}");
    assert_eq!(
        kind(&c.call(&ex, "fake", json!({"Channel": "x"})).await),
        "bad_request"
    );
    assert_eq!(
        kind(
            &c.call(&ex, "fake", json!({"Action": "Ping", "X": {"nested": 1}}))
                .await
        ),
        "bad_request"
    );
    // bad_request: what Asterisk would reject (a 2000-byte line).
    assert_eq!(
        kind(
            &c.call(
                &ex,
                "fake",
                json!({"Action": "Command", "Command": "x".repeat(2000)})
            )
            .await
        ),
        "bad_request"
    );
    // unknown_server
    let r = c.call(&ex, "nosuchserver", json!({"Action": "Ping"})).await;
    assert_eq!(kind(&r), "unknown_server", "{r}");
    assert_eq!(r["server"], "nosuchserver");
    // forbidden: never reaches AMI.
    let before = fake.saw("Hangup").len() + fake.saw("Originate").len();
    assert_eq!(
        kind(
            &c.call(&ex, "fake", json!({"Action": "Hangup", "Channel": "x"}))
                .await
        ),
        "forbidden"
    );
    assert_eq!(
        kind(
            &c.call(
                &ex,
                "fake",
                json!({"Action": "Originate", "Context": "default", "Channel": "x"})
            )
            .await
        ),
        "forbidden"
    );
    assert_eq!(
        kind(&c.call(&ex, "fake", json!({"Action": "Logoff"})).await),
        "forbidden"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.saw("Hangup").len() + fake.saw("Originate").len(),
        before,
        "forbidden actions must not reach AMI"
    );
    assert!(fake.saw("Logoff").is_empty());
    // allowed by a field constraint: reaches AMI (and fails there: ami_error).
    let r = c
        .call(
            &ex,
            "fake",
            json!({"Action": "Originate", "Context": "crm-out", "Channel": "x"}),
        )
        .await;
    assert_eq!(kind(&r), "ami_error", "{r}");
    assert_eq!(fake.saw("Originate").len(), 1);
    // ami_error keeps Asterisk's message.
    let r = c.call(&ex, "rec", json!({"Action": "NoSuchAction"})).await;
    assert_eq!(kind(&r), "ami_error");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid/unknown command"),
        "{r}"
    );
    // timeout
    let t0 = std::time::Instant::now();
    let r = c
        .call(&ex, "fake", json!({"Action": "Sleep", "_timeout_ms": 300}))
        .await;
    assert_eq!(kind(&r), "timeout", "{r}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // unavailable
    let r = c.call(&ex, "down", json!({"Action": "Ping"})).await;
    assert_eq!(kind(&r), "unavailable", "{r}");
    // A request without reply_to runs and is acked, with no reply.
    c.ch.basic_publish(
        ex.as_str().into(),
        "fake".into(),
        BasicPublishOptions::default(),
        br#"{"Action":"Ping","ActionID":"noreply"}"#,
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await
    .unwrap();
    let pings = fake.saw("Ping").len();
    assert!(common::procs::wait_until(Duration::from_secs(5), || fake
        .saw("Ping")
        .len()
        > pings));
    assert!(c.replies(1, Duration::from_millis(500)).await.is_empty());
    let _ = c.conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_requests_fail_over_to_the_next_bridge_and_expired_ones_are_not_run() {
    let url = shared_amqp_url();
    let (fake, fake_addr) = Fake::start().await;
    let setup = Setup::new(&[("fake", &fake_addr)], &url);
    let ex = setup.exchange.clone();
    let mut c = Caller::new(&url).await;
    let mut a = setup.start("a");
    wait_ready(&mut c, &ex, "fake", &setup, "a").await;
    let b = setup.start("b");
    // b is a standby consumer (single active consumer): give it time to
    // register.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A request that a holds (its AMI server never answers).
    let corr = unique("held");
    c.send(
        &ex,
        "fake",
        &corr,
        br#"{"Action":"Sleep","_timeout_ms":2000}"#,
        None,
    )
    .await;
    assert!(common::procs::wait_until(Duration::from_secs(5), || fake
        .saw("Sleep")
        .len()
        == 1));
    a.signal("KILL");
    let _ = a.wait_timeout(Duration::from_secs(5));
    // b takes over, gets the redelivered request, runs it, answers.
    let r = c.replies(1, Duration::from_secs(20)).await;
    let r = r
        .get(&corr)
        .unwrap_or_else(|| panic!("no reply after fail-over\n{}", setup.log("b")));
    assert_eq!(kind(r), "timeout", "{r}");
    let conns = fake.saw("Sleep");
    assert_eq!(conns.len(), 2, "run by a, then again by b after redelivery");
    assert_ne!(
        conns[0], conns[1],
        "on different AMI connections (different bridges)"
    );

    // Expired in the queue: with no bridge running, a request whose
    // expiration passes is dead-lettered and answered `timeout` later,
    // never executed.
    let mut b = b;
    b.signal("TERM");
    assert_eq!(
        b.wait_timeout(Duration::from_secs(15)),
        Some(0),
        "{}",
        setup.log("b")
    );
    let pings = fake.saw("Ping").len();
    let corr = unique("expired");
    c.send(&ex, "fake", &corr, br#"{"Action":"Ping"}"#, Some(200))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _b2 = setup.start("b2");
    let r = c.replies(1, Duration::from_secs(20)).await;
    let r = r
        .get(&corr)
        .unwrap_or_else(|| panic!("no reply for the expired request\n{}", setup.log("b2")));
    assert_eq!(kind(r), "timeout", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("expired"),
        "{r}"
    );
    // Only the readiness pings of b2 may have reached AMI, not ours: b2
    // connects its action connections but nothing runs the expired Ping.
    assert_eq!(
        fake.saw("Ping").len() - pings,
        0,
        "the expired request was not executed"
    );
    let _ = c.conn.close(200, "bye".into()).await;
}
