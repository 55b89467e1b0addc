//! Actions in, end to end: AMQP request → `ami2amqp run` → AMI server →
//! AMQP reply, against a real RabbitMQ, `ami2amqp replay` serving recorded
//! answers and a scripted AMI server that records what it receives.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

use common::broker::shared_amqp_url;
use common::cleanup::BrokerCleanup;
use common::procs::{
    ActionNames, Proc, bin, consume_auto_ack, copy_mappings, correlation_id, free_port, replay,
    trace, unique,
};

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
                "biglist" => {
                    let n: usize = get("Count").and_then(|c| c.parse().ok()).unwrap_or(1000);
                    let mut r = format!(
                        "Response: Success\r\nActionID: {id}\r\nEventList: start\r\nMessage: Channels will follow\r\n\r\n"
                    );
                    for i in 0..n {
                        r.push_str(&format!("Event: CoreShowChannel\r\nActionID: {id}\r\nChannel: PJSIP/{i:06}-{}\r\n\r\n", "x".repeat(150)));
                    }
                    r.push_str(&format!("Event: CoreShowChannelsComplete\r\nActionID: {id}\r\nEventList: Complete\r\nListItems: {n}\r\n\r\n"));
                    r
                }
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
///
/// Its queues and exchanges (the action path's, and the events exchange of
/// its copy of the mappings) are deleted from the broker when it is
/// dropped: declare it before the bridges it starts.
struct Setup {
    dir: tempfile::TempDir,
    exchange: String,
    config: std::path::PathBuf,
    _cleanup: BrokerCleanup,
}

impl Setup {
    fn new(servers: &[(&str, &str)], url: &str) -> Setup {
        Setup::with(servers, url, "", "")
    }

    /// With `actions_keys` added to `[actions]` and `allow` (more
    /// `[[actions.allow]]` entries) appended.
    fn with(servers: &[(&str, &str)], url: &str, actions_keys: &str, allow: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let names = ActionNames::unique();
        let exchange = names.exchange.clone();
        // The default mappings, publishing to an exchange of this setup's
        // (not the shared `ami.events`).
        let events = unique("ami.test.");
        let mappings = copy_mappings(dir.path(), &events).unwrap();
        let cleanup = BrokerCleanup::on(url);
        cleanup.exchange(&events);
        let unroutable = common::procs::unroutable_of(&events);
        cleanup.exchange(&unroutable).queue(&unroutable);
        let server_names: Vec<&str> = servers.iter().map(|(n, _)| *n).collect();
        names.record(&cleanup, &server_names);
        let mut s = format!(
            "[amqp]\nurl = \"{url}\"\nreconnect_initial_ms = 100\nreconnect_max_ms = 1000\nalternate_exchange = \"{unroutable}\"\n\n[mappings]\ndir = \"{}\"\n\n[spool]\ndir = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\n",
            mappings.display(),
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
{actions_keys}

[[actions.allow]]
user = "guest"
actions = ["Ping", "Getvar", "CoreShowChannels", "Command", "Sleep", "NoSuchAction", "Status", "BigList"]

[[actions.allow]]
user = "guest"
actions = ["Originate"]
fields = {{ Context = "^crm-" }}

{allow}
"#
        ));
        let config = dir.path().join("c.toml");
        std::fs::write(&config, s).unwrap();
        Setup {
            dir,
            exchange,
            config,
            _cleanup: cleanup,
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

    /// GET `path` from the metrics listener of bridge `tag`.
    fn http_get(&self, tag: &str, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let text = std::fs::read_to_string(self.dir.path().join(format!("c-{tag}.toml"))).ok()?;
        let addr = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))?
            .trim_matches('"')
            .to_string();
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut r = String::new();
        s.read_to_string(&mut r).ok()?;
        r.split_once("\r\n\r\n").map(|x| x.1.to_string())
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
                let corr = correlation_id(&d);
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
        let p = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_user_id("guest".into());
        self.send_with(exchange, server, corr, body, expiration_ms, p)
            .await;
    }

    /// `send` with the given properties (reply_to, user_id) as the base.
    async fn send_with(
        &self,
        exchange: &str,
        server: &str,
        corr: &str,
        body: &[u8],
        expiration_ms: Option<u64>,
        base: BasicProperties,
    ) {
        let mut p = base.with_correlation_id(corr.into());
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

/// Sends a `Sleep` to server "fake" (which never answers it: the bridge
/// answers `timeout` after `timeout_ms`) and waits until the fake has seen
/// `seen` of them; returns its correlation id.
async fn send_sleep(c: &Caller, ex: &str, fake: &Fake, timeout_ms: u64, seen: usize) -> String {
    let corr = unique("sleep");
    let body = json!({"Action": "Sleep", "_timeout_ms": timeout_ms}).to_string();
    c.send(ex, "fake", &corr, body.as_bytes(), None).await;
    assert!(
        common::procs::wait_for(Duration::from_secs(5), || fake.saw("Sleep").len() == seen).await,
        "the fake did not see the Sleep"
    );
    corr
}

fn kind(r: &Value) -> &str {
    r["error"]["kind"].as_str().unwrap_or("none")
}

/// One fake Asterisk (server "fake") behind one running bridge with
/// `actions_keys` and `allow` (see [`Setup::with`]), and a caller that has
/// seen the bridge ready.
struct OneFake {
    fake: Fake,
    setup: Setup,
    _bridge: Proc,
    c: Caller,
    ex: String,
}

async fn one_fake(url: &str, actions_keys: &str, allow: &str) -> OneFake {
    let (fake, fake_addr) = Fake::start().await;
    let setup = Setup::with(&[("fake", &fake_addr)], url, actions_keys, allow);
    let bridge = setup.start("bridge");
    let ex = setup.exchange.clone();
    let mut c = Caller::new(url).await;
    wait_ready(&mut c, &ex, "fake", &setup, "bridge").await;
    OneFake {
        fake,
        setup,
        _bridge: bridge,
        c,
        ex,
    }
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
    // 4 clients × 60 requests at once from one user: above the default
    // per-user bound, which is not what this test is about.
    let setup = Setup::with(
        &[("one", &a1), ("two", &a2)],
        &url,
        "max_in_flight_per_user = 1000",
        "",
    );
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
    assert!(
        common::procs::wait_for(Duration::from_secs(5), || fake.saw("Ping").len() > pings).await
    );
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
    let corr = send_sleep(&c, &ex, &fake, 2000, 1).await;
    a.signal("KILL");
    let _ = a.wait_timeout(Duration::from_secs(5));
    // b takes over, gets the redelivered request, runs it, answers.
    let r = c.replies(1, Duration::from_secs(20)).await;
    let r = r
        .get(&corr)
        .unwrap_or_else(|| panic!("no reply after fail-over\n{}", setup.log("b")));
    assert_eq!(kind(r), "timeout", "{r}");
    assert_eq!(r["error"]["may_have_run"], true, "{r}");
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
    assert_eq!(kind(r), "expired", "{r}");
    assert_eq!(r["error"]["may_have_run"], false, "{r}");
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

impl Fake {
    /// Every action received other than the bridge's own (Login,
    /// Challenge, keepalive Ping), in order.
    fn requests(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, a)| a.clone())
            .filter(|a| !["login", "challenge", "ping"].contains(&a.to_ascii_lowercase().as_str()))
            .collect()
    }
}

/// SIGTERM lets a running request finish: its reply goes out and it is
/// acked (not run again by the next bridge); with nothing running the
/// bridge does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_running_requests_and_does_not_wait_without_any() {
    let url = shared_amqp_url();
    // Fields drop in reverse order: the bridges before the set-up.
    let OneFake {
        fake,
        setup,
        _bridge: mut a,
        mut c,
        ex,
    } = one_fake(&url, "", "").await;

    // Never answered by the fake: the bridge answers `timeout` after 800 ms.
    let corr = send_sleep(&c, &ex, &fake, 800, 1).await;
    a.signal("TERM");
    let r = c.replies(1, Duration::from_secs(5)).await;
    let r = r
        .get(&corr)
        .unwrap_or_else(|| panic!("the running request got no reply\n{}", setup.log("bridge")));
    assert_eq!(kind(r), "timeout", "{r}");
    assert_eq!(
        a.wait_timeout(Duration::from_secs(10)),
        Some(0),
        "{}",
        setup.log("bridge")
    );
    assert!(
        setup
            .log("bridge")
            .contains("the requests running at shutdown finished"),
        "{}",
        setup.log("bridge")
    );

    // Acked: the next bridge does not run it again. And it stops at once
    // when idle.
    let mut b = setup.start("b");
    wait_ready(&mut c, &ex, "fake", &setup, "b").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.saw("Sleep").len(), 1, "run again after shutdown");
    let t = std::time::Instant::now();
    b.signal("TERM");
    assert_eq!(
        b.wait_timeout(Duration::from_secs(10)),
        Some(0),
        "{}",
        setup.log("b")
    );
    let took = t.elapsed();
    assert!(
        !setup.log("b").contains("requests running at shutdown"),
        "{}",
        setup.log("b")
    );
    assert!(
        took < Duration::from_millis(1800),
        "an idle bridge took {took:?} to stop\n{}",
        setup.log("b")
    );
}

/// Items 4, 5, 6, 7 and 18 of issue 10: what the allow-list checks is what
/// Asterisk would run, or the request is refused before reaching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_before_reaching_asterisk() {
    let url = shared_amqp_url();
    let (fake, fake_addr) = Fake::start().await;
    let (ops, ops_addr) = Fake::start().await;
    let setup = Setup::with(
        &[("fake", &fake_addr), ("ops", &ops_addr)],
        &url,
        "",
        r#"
[[actions.allow]]
user = "guest"
actions = ["*"]
servers = ["ops"]

[[actions.allow]]
user = "guest"
actions = ["Redirect"]
fields = { Context = "^crm-out$", Channel = "^PJSIP/[0-9]+$" }
only_fields = ["Exten", "Priority"]
"#,
    );
    let _bridge = setup.start("bridge");
    let ex = setup.exchange.clone();
    let mut c = Caller::new(&url).await;
    wait_ready(&mut c, &ex, "fake", &setup, "bridge").await;
    wait_ready(&mut c, &ex, "ops", &setup, "bridge").await;
    let (fake_before, ops_before) = (fake.requests().len(), ops.requests().len());

    let cases = [
        // 7: the always-refused actions, spelled to slip past the check,
        // for a user granted every action
        ("ops", json!({"Action": " Logoff"}), "forbidden"),
        ("ops", json!({"Action": "Logoff\u{0}"}), "bad_request"),
        (
            "ops",
            json!({"Action": "\u{1}", "action": "Events"}),
            "bad_request",
        ),
        (
            "ops",
            json!({"Action": "Events", "ACTION": "Ping"}),
            "bad_request",
        ),
        // 18: an integer beyond 64 bits would be sent as a float's text
        (
            "ops",
            serde_json::from_str::<Value>(
                r#"{"Action": "Setvar", "Variable": "X", "Value": 123456789012345678901234567890}"#,
            )
            .unwrap(),
            "bad_request",
        ),
        // 4: NUL and control characters in values and names
        (
            "fake",
            json!({"Action": "Originate", "Context": "crm-out\u{0}x", "Channel": "x"}),
            "bad_request",
        ),
        (
            "fake",
            json!({"Action": "Originate", "Context": "crm-out", "Channel": "Local/1@from-internal\u{0}@crm-out"}),
            "bad_request",
        ),
        (
            "fake",
            json!({"Action": "Originate", "Context": "crm-out", "Chan\u{0}nel": "x"}),
            "bad_request",
        ),
        // 5: every value of a constrained field, whatever the key's case
        (
            "fake",
            json!({"Action": "Originate", "Context": "crm-out", "context": "default"}),
            "forbidden",
        ),
        (
            "fake",
            json!({"Action": "Originate", "Context": ["crm-out", "default"]}),
            "forbidden",
        ),
        // 6: fields the rule does not list
        (
            "fake",
            json!({"Action": "Redirect", "Context": "crm-out", "Channel": "PJSIP/100", "Exten": "1", "Priority": 1, "Application": "Dial"}),
            "forbidden",
        ),
    ];
    for (server, body, want) in cases {
        let r = c.call(&ex, server, body.clone()).await;
        assert_eq!(kind(&r), want, "{body}: {r}");
        assert_eq!(r["error"]["may_have_run"], false, "{body}: {r}");
    }
    // Allowed by the same rules: it does reach Asterisk.
    let r = c
        .call(
            &ex,
            "fake",
            json!({"Action": "Redirect", "Context": "crm-out", "Channel": "PJSIP/100", "Exten": "1", "Priority": 1}),
        )
        .await;
    assert_eq!(kind(&r), "ami_error", "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.requests()[fake_before..].to_vec(),
        vec!["Redirect".to_string()],
        "only the allowed request reached the AMI server"
    );
    assert!(
        ops.requests()[ops_before..].is_empty(),
        "{:?}",
        ops.requests()
    );
    let _ = c.conn.close(200, "bye".into()).await;
}

/// Item 8: replies go to direct reply-to or a queue a rule allows for the
/// user; other requests are dropped unexecuted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_only_to_direct_reply_to_or_allowed_queues() {
    let url = shared_amqp_url();
    let (fake, fake_addr) = Fake::start().await;
    let prefix = unique("crm.replies.");
    let setup = Setup::with(
        &[("fake", &fake_addr)],
        &url,
        "",
        &format!(
            "[[actions.allow]]\nuser = \"guest\"\nactions = [\"Ping\"]\nreply_to = ['^{}\\.ok$']\n",
            regex::escape(&prefix)
        ),
    );
    let _bridge = setup.start("bridge");
    let ex = setup.exchange.clone();
    let mut c = Caller::new(&url).await;
    wait_ready(&mut c, &ex, "fake", &setup, "bridge").await;
    // Two queues of the caller's: one a rule allows, one ("billing") not.
    let ok_q = format!("{prefix}.ok");
    let bad_q = format!("{prefix}.billing");
    for q in [&ok_q, &bad_q] {
        c.ch.queue_declare(
            q.as_str().into(),
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let mut ok_c = consume_auto_ack(&c.ch, &ok_q).await;
    let mut bad_c = consume_auto_ack(&c.ch, &bad_q).await;
    let pings = fake.saw("Ping").len();
    for (q, corr) in [(&bad_q, "to-billing"), (&ok_q, "to-ok")] {
        let p = BasicProperties::default()
            .with_reply_to(q.as_str().into())
            .with_user_id("guest".into());
        c.send_with(
            &ex,
            "fake",
            corr,
            br#"{"Action":"Ping","_timeout_ms":1000}"#,
            None,
            p,
        )
        .await;
    }
    let d = tokio::time::timeout(Duration::from_secs(10), ok_c.next())
        .await
        .expect("a reply in the allowed queue")
        .unwrap()
        .unwrap();
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        "to-ok"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), bad_c.next())
            .await
            .is_err(),
        "nothing may be published to a queue the user may not reply to"
    );
    // The refused request was not executed: only the allowed one pinged
    // (keepalive pings are off in this setup).
    assert_eq!(fake.saw("Ping").len() - pings, 1);
    let metrics = setup.http_get("bridge", "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("actions_dropped_total{reason=\"reply_to\"} 1"),
        "{metrics}"
    );
    let _ = c.conn.close(200, "bye".into()).await;
}

/// Item 9: one user's slow requests cannot hold every slot; their timeout
/// is capped; another user's Ping is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_starve_another() {
    let url = shared_amqp_url();
    let OneFake {
        fake,
        setup: _setup,
        _bridge,
        mut c,
        ex,
    } = one_fake(
        &url,
        "prefetch = 8\nmax_in_flight_per_user = 3\nmax_timeout_ms = 4000",
        "[[actions.allow]]\nuser = \"anonymous\"\nactions = [\"Ping\"]\n",
    )
    .await;
    let t0 = std::time::Instant::now();
    for i in 0..20 {
        c.send(
            &ex,
            "fake",
            &format!("slow-{i}"),
            br#"{"Action":"Sleep","_timeout_ms":30000}"#,
            None,
        )
        .await;
    }
    assert!(common::procs::wait_for(Duration::from_secs(5), || fake.saw("Sleep").len() >= 3).await);
    // Another user (anonymous: no user_id).
    let p = BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into());
    c.send_with(&ex, "fake", "other-user", br#"{"Action":"Ping"}"#, None, p)
        .await;
    let t_ping = std::time::Instant::now();
    let mut got = HashMap::new();
    while !got.contains_key("other-user") && t_ping.elapsed() < Duration::from_secs(20) {
        got.extend(c.replies(1, Duration::from_millis(200)).await);
    }
    let ping_wait = t_ping.elapsed();
    let r = got
        .get("other-user")
        .expect("the other user's Ping answered");
    assert_eq!(r["response"], "Success", "{r}");
    assert!(
        ping_wait < Duration::from_secs(3),
        "the other user's Ping waited {ping_wait:?}"
    );
    // The slow user's requests: at most 3 ran at once; the rest were
    // answered `busy` without reaching Asterisk, and the ones that ran
    // timed out at the cap (4 s), not after the 30 s they asked for.
    got.extend(c.replies(20, Duration::from_secs(10)).await);
    let slow: Vec<&Value> = (0..20)
        .filter_map(|i| got.get(&format!("slow-{i}")))
        .collect();
    assert_eq!(slow.len(), 20, "every slow request answered: {got:?}");
    let busy = slow.iter().filter(|r| kind(r) == "busy").count();
    let timed_out = slow.iter().filter(|r| kind(r) == "timeout").count();
    assert_eq!(busy + timed_out, 20, "{slow:?}");
    assert!(busy >= 1, "{slow:?}");
    assert_eq!(fake.saw("Sleep").len(), timed_out, "busy ones never ran");
    assert!(
        t0.elapsed() < Duration::from_secs(25),
        "timeouts are capped: {:?}",
        t0.elapsed()
    );
    let _ = c.conn.close(200, "bye".into()).await;
}

/// Items 10 and 11: a tiny `expiration` says whether the action was sent;
/// distinct routing keys and action names make a bounded number of series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_tell_whether_sent_and_metric_labels_stay_bounded() {
    let url = shared_amqp_url();
    let OneFake {
        fake,
        setup,
        _bridge,
        mut c,
        ex,
    } = one_fake(&url, "", "").await;
    for exp in [0u64, 1] {
        let sleeps = fake.saw("Sleep").len();
        let corr = unique("tiny");
        c.send(&ex, "fake", &corr, br#"{"Action":"Sleep"}"#, Some(exp))
            .await;
        let r = c.replies(1, Duration::from_secs(10)).await.remove(&corr);
        let r = r.expect("a reply");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = fake.saw("Sleep").len() > sleeps;
        assert!(["timeout", "expired"].contains(&kind(&r)), "{r}");
        assert_eq!(
            r["error"]["may_have_run"] == true,
            kind(&r) == "timeout",
            "{r}"
        );
        if sent {
            assert_eq!(r["error"]["may_have_run"], true, "ran on Asterisk: {r}");
        }
        if kind(&r) == "expired" {
            assert!(!sent, "`expired` must mean not sent: {r}");
        }
    }

    // 300 distinct routing keys, 300 distinct action names.
    for i in 0..300 {
        let p = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_user_id("guest".into());
        c.send_with(
            &ex,
            &format!("nosuch-{i}"),
            &format!("k{i}"),
            br#"{"Action":"Ping"}"#,
            None,
            p.clone(),
        )
        .await;
        let body = format!(r#"{{"Action":"Act{i}"}}"#);
        c.send_with(&ex, "fake", &format!("a{i}"), body.as_bytes(), None, p)
            .await;
    }
    let got = c.replies(600, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 600);
    let metrics = setup.http_get("bridge", "/metrics").unwrap_or_default();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("actions_total{"))
        .collect();
    assert!(series.len() <= 8, "{series:#?}");
    assert!(
        series
            .iter()
            .any(|l| l.contains("server=\"unknown\"") && l.ends_with(" 300")),
        "{series:#?}"
    );
    assert!(
        series.iter().any(|l| l.contains("action=\"other\"")
            && l.contains("result=\"forbidden\"")
            && l.ends_with(" 300")),
        "{series:#?}"
    );
    let _ = c.conn.close(200, "bye".into()).await;
}

/// Item 12: denials of hostile values log a few short lines, not the values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_log_clipped_rate_limited_lines() {
    let url = shared_amqp_url();
    let OneFake {
        fake: _fake,
        setup,
        _bridge,
        mut c,
        ex,
    } = one_fake(&url, "", "").await;
    let big = "x".repeat(200_000);
    for i in 0..30 {
        let body = json!({"Action": "Originate", "Context": format!("default-{i}-{big}")});
        c.send(
            &ex,
            "fake",
            &format!("d{i}"),
            body.to_string().as_bytes(),
            None,
        )
        .await;
    }
    let got = c.replies(30, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 30);
    assert!(got.values().all(|r| kind(r) == "forbidden"
        && r["error"]["message"].as_str().unwrap().len() < 2000));
    let log = setup.log("bridge");
    let denied = log.lines().filter(|l| l.contains("action denied")).count();
    assert!((1..=2).contains(&denied), "{denied} denial lines");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2000, "a log line of {longest} bytes");
    let _ = c.conn.close(200, "bye".into()).await;
}

/// Item 3: a list reply over `max_reply_bytes` is answered `too_large` with
/// its number of events; the path keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_over_the_reply_bound_is_too_large() {
    let url = shared_amqp_url();
    let OneFake {
        fake: _fake,
        setup: _setup,
        _bridge,
        mut c,
        ex,
    } = one_fake(&url, "max_reply_bytes = 100000", "").await;
    let r = c
        .call(&ex, "fake", json!({"Action": "BigList", "Count": 100}))
        .await;
    assert_eq!(
        r["events"].as_array().map(Vec::len),
        Some(101),
        "under the bound"
    );
    let r = c
        .call(
            &ex,
            "fake",
            json!({"Action": "BigList", "Count": 5000, "ActionID": "big"}),
        )
        .await;
    assert_eq!(kind(&r), "too_large", "{r}");
    assert_eq!(r["action_id"], "big");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("5001 events"),
        "{r}"
    );
    let r = c.call(&ex, "fake", json!({"Action": "Ping"})).await;
    assert_eq!(r["response"], "Success");
    let _ = c.conn.close(200, "bye".into()).await;
}

/// Item 3: a reply the broker refuses (over its `max_message_size`) closes
/// the reply channel; it is reopened and later requests are answered;
/// /healthz shows the action path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reply_does_not_break_the_action_path() {
    let broker = common::broker::PrivateBroker::start_with_config("max_message_size = 65536\n");
    let url = broker.amqp_url();
    let OneFake {
        fake: _fake,
        setup,
        _bridge,
        mut c,
        ex,
    } = one_fake(&url, "max_reply_bytes = 10000000", "").await;
    let health = || {
        setup
            .http_get("bridge", "/healthz")
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .unwrap_or(Value::Null)
    };
    assert_eq!(health()["actions"], "ready", "{}", health());
    // ~1 MB of reply: the broker refuses it and closes the reply channel.
    let corr = unique("huge");
    c.send(
        &ex,
        "fake",
        &corr,
        br#"{"Action":"BigList","Count":5000}"#,
        None,
    )
    .await;
    let _ = c.replies(1, Duration::from_secs(3)).await;
    for i in 0..5 {
        let r = c
            .call(&ex, "fake", json!({"Action": "Ping", "ActionID": i}))
            .await;
        assert_eq!(r["response"], "Success", "{r}");
    }
    assert_eq!(health()["actions"], "ready", "{}", health());
    let metrics = setup.http_get("bridge", "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("actions_reply_channel_reopened_total 1"),
        "the refused reply closed the channel and it was reopened once:\n{metrics}\n{}",
        setup.log("bridge")
    );
    broker.stop();
    assert!(
        common::procs::wait_for(Duration::from_secs(15), || health()["actions"] != "ready").await,
        "{}",
        health()
    );
    assert_eq!(health()["healthy"], false);
}
