//! Child processes of the `ami2amqp` binary for end-to-end tests: a replay
//! (fake Asterisk) and the bridge, killed on drop even when a test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use super::cleanup::BrokerCleanup;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ami2amqp")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn trace(name: &str) -> PathBuf {
    repo().join("tests/traces").join(name)
}

/// A unique name for this test run (server names, exchanges, queues).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. "TERM", "KILL", "HUP").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// Waits for exit, at most `t`; returns the exit code (None = still
    /// running or killed by a signal).
    pub fn wait_timeout(&mut self, t: Duration) -> Option<i32> {
        let end = Instant::now() + t;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ami2amqp replay` on a free port; returns it and its address.
pub fn replay(args: &[&str]) -> (Proc, String) {
    replay_to("127.0.0.1:0", args, Stdio::null())
}

/// [`replay`] serving the bridge's test account (`bridge` / `bridgepass`),
/// `args` after the login options.
pub fn replay_as_bridge(args: &[&str]) -> (Proc, String) {
    let login = ["--username", "bridge", "--secret", "bridgepass"];
    replay(&[&login[..], args].concat())
}

/// [`replay`] listening on `listen` (an address an earlier replay had: the
/// same server coming back).
pub fn replay_on(listen: &str, args: &[&str]) -> (Proc, String) {
    replay_to(listen, args, Stdio::null())
}

/// [`replay`] with its log (`RUST_LOG=info`) written to `log`: the
/// per-client `client stream stats` lines.
pub fn replay_logged(args: &[&str], log: &Path) -> (Proc, String) {
    let f = std::fs::File::create(log).expect("replay log file");
    replay_to("127.0.0.1:0", args, Stdio::from(f))
}

fn replay_to(listen: &str, args: &[&str], stderr: Stdio) -> (Proc, String) {
    let mut child = Command::new(bin())
        .arg("replay")
        .args(["--listen", listen])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start replay");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("replay prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from replay: {line:?}"))
        .to_string();
    (
        Proc {
            child,
            name: "replay".into(),
        },
        addr,
    )
}

/// Writes a bridge config for one replayed server.
///
/// Every name the bridge may declare on the shared broker is unique to the
/// setup (the event and status exchange, the action path's exchanges and
/// queues) and recorded in `cleanup`, which deletes them when the setup is
/// dropped: drop the bridge first (declare the setup before starting it).
pub struct BridgeSetup {
    pub dir: tempfile::TempDir,
    pub server: String,
    pub exchange: String,
    pub config: PathBuf,
    pub mappings: PathBuf,
    pub metrics: String,
    /// The action path's names: `[actions]` exchange, queue_prefix,
    /// unrouted, expired (unique ones unless `extra` set them).
    pub actions: ActionNames,
    /// Deletes this setup's queues and exchanges from the shared broker on
    /// drop; tests add the names they declare themselves.
    pub cleanup: BrokerCleanup,
}

/// The names of a bridge's action path (`[actions]`).
#[derive(Clone, Debug)]
pub struct ActionNames {
    pub exchange: String,
    pub queue_prefix: String,
    pub unrouted: String,
    pub expired: String,
}

impl ActionNames {
    /// Unique names under `ami.actions.test.<pid>x<n>`, as tests/actions.rs
    /// uses them.
    pub fn unique() -> ActionNames {
        let x = unique("ami.actions.test.");
        ActionNames {
            queue_prefix: format!("{x}."),
            unrouted: format!("{x}.unrouted"),
            expired: format!("{x}.expired"),
            exchange: x,
        }
    }

    /// The per-server queue of `server`.
    pub fn queue(&self, server: &str) -> String {
        format!("{}{server}", self.queue_prefix)
    }

    /// Records every queue and exchange the action path declares for
    /// `servers` in `c`.
    pub fn record(&self, c: &BrokerCleanup, servers: &[&str]) {
        for fanout in [&self.unrouted, &self.expired] {
            c.queue(fanout).exchange(fanout);
        }
        c.exchange(&self.exchange);
        for s in servers {
            c.queue(&self.queue(s));
        }
    }

    /// `extra` (TOML lines of a config) with these names in its `[actions]`
    /// table: the keys `extra` does not set are added after its `[actions]`
    /// header, or in an `[actions]` table appended when it has none. The
    /// names really used are returned.
    fn apply(self, extra: &str) -> (String, ActionNames) {
        let given: toml::Table = toml::from_str(extra).expect("`extra` is valid TOML");
        let given = given.get("actions").and_then(|a| a.as_table());
        let get = |k: &str, dflt: &String| -> String {
            given
                .and_then(|t| t.get(k))
                .and_then(|v| v.as_str())
                .map_or_else(|| dflt.clone(), str::to_string)
        };
        let used = ActionNames {
            exchange: get("exchange", &self.exchange),
            queue_prefix: get("queue_prefix", &self.queue_prefix),
            unrouted: get("unrouted", &self.unrouted),
            expired: get("expired", &self.expired),
        };
        let mut keys = String::new();
        for (k, v) in [
            ("exchange", &self.exchange),
            ("queue_prefix", &self.queue_prefix),
            ("unrouted", &self.unrouted),
            ("expired", &self.expired),
        ] {
            if given.is_none_or(|t| !t.contains_key(k)) {
                keys += &format!("{k} = \"{v}\"\n");
            }
        }
        let text = if given.is_some() {
            let mut out = String::new();
            for line in extra.lines() {
                out += line;
                out.push('\n');
                if line.trim() == "[actions]" {
                    out += &keys;
                }
            }
            out
        } else {
            format!("{extra}\n[actions]\n{keys}")
        };
        (text, used)
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    try_free_port().expect("free port")
}

/// [`free_port`] for callers that report errors instead of panicking (the
/// benches).
pub fn try_free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// Copies the default mappings (`mappings/*.toml`) into `dir/mappings`
/// with the exchange `ami.events` renamed to `exchange`; returns the new
/// directory. Tests and the bridge bench use it to get an exchange of
/// their own.
pub fn copy_mappings(dir: &Path, exchange: &str) -> std::io::Result<PathBuf> {
    let mappings = dir.join("mappings");
    std::fs::create_dir(&mappings)?;
    for e in std::fs::read_dir(repo().join("mappings"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let t = std::fs::read_to_string(&p)?;
            let t = t.replace("\"ami.events\"", &format!("\"{exchange}\""));
            let name = p.file_name().ok_or(std::io::ErrorKind::InvalidInput)?;
            std::fs::write(mappings.join(name), t)?;
        }
    }
    Ok(mappings)
}

/// `ami2amqp <command> --config <config>`: success, stdout, stderr.
pub fn with_config(command: &str, config: &Path) -> (bool, String, String) {
    let o = Command::new(bin())
        .args([command, "--config"])
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("run ami2amqp {command}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The line of [`BridgeSetup`]'s server table that turns the snapshots
/// after (re)connect off: tests of other features compare what arrives
/// with the dry run of a trace, which has no snapshot in it.
/// [`BridgeSetup::with_snapshots`] removes it (tests/snapshot.rs).
const SNAPSHOT_OFF: &str = "snapshot = []\n";

impl BridgeSetup {
    /// Turns the snapshots after (re)connect back on (the default list).
    pub fn with_snapshots(&self) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        assert!(
            text.contains(SNAPSHOT_OFF),
            "no {SNAPSHOT_OFF:?} in the config"
        );
        std::fs::write(&self.config, text.replacen(SNAPSHOT_OFF, "", 1)).expect("write config");
    }

    /// Adds `lines` to the config right after the first `anchor` line
    /// (`"[amqp]\n"`, `"action_connections = 1\n"` for the server table).
    pub fn insert_after(&self, anchor: &str, lines: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        assert!(text.contains(anchor), "no {anchor:?} in the config");
        let text = text.replacen(anchor, &format!("{anchor}{lines}\n"), 1);
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Copies the default mappings with the exchange renamed to a unique
    /// one, and writes a config pointing at `ami_addr` and `amqp_url`.
    pub fn new(ami_addr: &str, amqp_url: &str, extra: &str) -> BridgeSetup {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = unique("pbx");
        let exchange = unique("ami.test.");
        let mappings = copy_mappings(dir.path(), &exchange).expect("copy the mappings");
        let metrics = format!("127.0.0.1:{}", free_port());
        let (extra, actions) = ActionNames::unique().apply(extra);
        let cleanup = BrokerCleanup::new();
        cleanup.exchange(&exchange);
        // The run's own alternate exchange and its queue: unroutable
        // messages of a test must not pile up in the shared ami.unroutable.
        let unroutable = unroutable_of(&exchange);
        cleanup.exchange(&unroutable).queue(&unroutable);
        actions.record(&cleanup, &[&server]);
        let config = dir.path().join("ami2amqp.toml");
        let text = format!(
            r#"
[amqp]
url = "{amqp_url}"
reconnect_initial_ms = 100
reconnect_max_ms = 1000
alternate_exchange = "{unroutable}"

[[server]]
name = "{server}"
address = "{ami_addr}"
username = "bridge"
secret = "bridgepass"
{snapshot_off}
action_connections = 1
reconnect_initial_ms = 100
reconnect_max_ms = 1000

[mappings]
dir = "{mappings}"

[spool]
dir = "{spool}"
fsync_interval_ms = 50

[metrics]
listen = "{metrics}"

[status]
exchange = "{exchange}"
{extra}
"#,
            mappings = mappings.display(),
            spool = dir.path().join("spool").display(),
            snapshot_off = SNAPSHOT_OFF.trim_end(),
        );
        std::fs::write(&config, text).expect("write config");
        BridgeSetup {
            dir,
            server,
            exchange,
            config,
            mappings,
            metrics,
            actions,
            cleanup,
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Starts `ami2amqp run` with this config.
    pub fn start(&self) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bridge.log"))
            .expect("log file");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bridge");
        Proc {
            child,
            name: "bridge".into(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bridge.log")).unwrap_or_default()
    }

    /// GET /metrics or /healthz from the bridge.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.metrics, path)
    }

    /// `/healthz`: status code and JSON body.
    pub fn health(&self) -> Option<(u16, serde_json::Value)> {
        health(&self.metrics)
    }

    /// Run 1 of a spool test: with the broker away the bridge reads the
    /// whole trace into its spool (`spooled` messages once it stopped:
    /// the events, `connected` and `stopped`), then stops cleanly.
    pub async fn spool_with_broker_away(&self, spooled: u64) {
        let mut a = self.start();
        let ok = wait_for(Duration::from_secs(20), || {
            self.health()
                .is_some_and(|(_, h)| h["spool"]["messages"] == spooled - 1)
        })
        .await;
        assert!(ok, "run 1 did not spool the trace: {:?}", self.health());
        a.signal("TERM");
        assert_eq!(wait_exit(&mut a, Duration::from_secs(15)).await, Some(0));
    }

    /// Rewrites the config for a run against the broker at `url` (with
    /// `amqp_extra` lines added to `[amqp]`) and no Asterisk (the server's
    /// address becomes a port nobody listens on).
    pub fn move_to_broker(&self, url: &str, amqp_extra: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("url = ") {
                out += &format!("url = \"{url}\"\n{amqp_extra}\n");
            } else if line.starts_with("address = ") {
                out += &format!("address = \"127.0.0.1:{}\"\n", free_port());
            } else {
                out += line;
                out.push('\n');
            }
        }
        std::fs::write(&self.config, out).expect("write config");
    }

    /// Waits at most `t` for the spool to be empty (everything confirmed).
    pub async fn spool_drained(&self, t: Duration) -> bool {
        wait_for(t, || {
            self.health()
                .is_some_and(|(_, h)| h["spool"]["messages"] == 0)
        })
        .await
    }

    /// Runs `ami2amqp map` over a trace with this setup's mappings and
    /// server name; returns the JSON messages.
    pub fn dry_run(&self, trace: &Path) -> Vec<serde_json::Value> {
        self.dry_run_all(&[trace])
    }

    /// The same over several traces, one after the other (`seq` running
    /// on, as a replay with `--loop` sends them).
    pub fn dry_run_all(&self, traces: &[&Path]) -> Vec<serde_json::Value> {
        let out = Command::new(bin())
            .args(["map", "--mappings"])
            .arg(&self.mappings)
            .args(["--server", &self.server])
            .args(traces)
            .output()
            .expect("run map");
        assert!(
            out.status.success(),
            "map failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("map prints JSON lines"))
            .collect()
    }
}

/// A queue bound to an exchange, consumed into a channel.
pub struct Sink {
    pub conn: lapin::Connection,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<lapin::message::Delivery>,
}

/// The alternate exchange (and queue) of a test's events exchange, as
/// [`BridgeSetup`] configures it (`[amqp] alternate_exchange`).
pub fn unroutable_of(exchange: &str) -> String {
    format!("{exchange}.unroutable")
}

/// Declares `exchange` exactly as a [`BridgeSetup`] bridge does: a durable
/// topic exchange with [`unroutable_of`] as its alternate exchange.
pub async fn declare_exchange(ch: &lapin::Channel, exchange: &str) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(unroutable_of(exchange).as_bytes().into()),
    );
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
}

/// Declares `exchange` as [`declare_exchange`] does, then `queue` (durable, or
/// exclusive with a server-chosen name when `queue` is empty) bound to it
/// with `binding`. Returns the queue's name.
pub async fn bound_queue(
    ch: &lapin::Channel,
    exchange: &str,
    queue: &str,
    binding: &str,
) -> lapin::types::ShortString {
    declare_exchange(ch, exchange)
        .await
        .expect("declare exchange");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: queue.is_empty(),
                durable: !queue.is_empty(),
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    q.name().clone()
}

/// A passive declare of `queue`: whether it exists, and its message
/// count (a 404 closes the channel: use one of its own).
pub async fn passive_declare(ch: &lapin::Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Consumes `queue` without acks (the broker forgets each message as it
/// delivers it): what every test reader here wants.
/// Connects to the broker at `url`, panicking after 15 s or on an error.
pub async fn connect(url: &str) -> lapin::Connection {
    tokio::time::timeout(
        Duration::from_secs(15),
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
    .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// A delivery's `correlation_id`, or "" without one.
pub fn correlation_id(d: &lapin::message::Delivery) -> String {
    d.properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default()
}

pub async fn consume_auto_ack(ch: &lapin::Channel, queue: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

/// An exclusive queue bound to `exchange` (declared as the bridge does)
/// with `binding`, consumed: no message is published before someone
/// listens.
pub async fn sink(url: &str, exchange: &str, binding: &str) -> Sink {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    let queue = bound_queue(&ch, exchange, "", binding).await;
    let mut consumer = consume_auto_ack(&ch, queue.as_str()).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            if tx.send(d).is_err() {
                break;
            }
        }
    });
    Sink { conn, rx }
}

/// The messages of `got` that are not the bridge's status messages.
pub fn without_status(got: Vec<lapin::message::Delivery>) -> Vec<lapin::message::Delivery> {
    got.into_iter()
        .filter(|d| !d.routing_key.as_str().ends_with(".bridge.status"))
        .collect()
}

impl Sink {
    /// Collects messages until `n` arrived or nothing came for `idle`.
    pub async fn collect(&mut self, n: usize, idle: Duration) -> Vec<lapin::message::Delivery> {
        let mut v = Vec::new();
        while v.len() < n {
            match tokio::time::timeout(idle, self.rx.recv()).await {
                Ok(Some(d)) => v.push(d),
                _ => break,
            }
        }
        v
    }
}

/// A delivery's body as JSON.
pub fn body(d: &lapin::message::Delivery) -> serde_json::Value {
    serde_json::from_slice(&d.data).expect("JSON body")
}

/// GET `path` from the bridge's metrics listener at `addr`: status code
/// and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let code = r.split_whitespace().nth(1)?.parse().ok()?;
    let body = r.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}

/// `/healthz` of the bridge whose metrics listener is `addr`.
pub fn health(addr: &str) -> Option<(u16, serde_json::Value)> {
    let (code, b) = http_get(addr, "/healthz")?;
    Some((code, serde_json::from_str(&b).ok()?))
}

/// Waits until `f` is true, at most `t`.
pub fn wait_until(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `f` every 50 ms without blocking the runtime, at most `t`.
/// (In async tests use this, not [`wait_until`]: a blocked worker can
/// starve an in-process fake server.)
pub async fn wait_for(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + t;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (without blocking the runtime) for a process to exit; its code.
pub async fn wait_exit(p: &mut Proc, t: Duration) -> Option<i32> {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if let Ok(Some(st)) = p.child.try_wait() {
            return st.code();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Every `.seg` file of a spool directory, in order.
pub fn spool_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("spool dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}
