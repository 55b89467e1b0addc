//! A fleet of `ami2amqp run` instances with `[fleet] enabled` sharing
//! servers, on one broker (or cluster): their common config, each
//! instance's own spool, metrics listener and log, and what `/healthz`
//! and the logs say about them. Used by tests/fleet.rs (with the fake
//! Asterisks of [`super::tick_ami`]) and the fleet bench (with replays).
//!
//! Every name the instances declare is unique to the fleet and deleted
//! when it is dropped (drop the instances first).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cleanup::BrokerCleanup;
use super::procs::{Proc, bin, copy_mappings, free_port, health, unique, unroutable_of};

/// `[fleet]` timings.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub announce_ms: u64,
    pub peer_timeout_ms: u64,
}

impl Timings {
    /// The defaults of `[fleet]`.
    pub const DEFAULT: Timings = Timings {
        announce_ms: 1000,
        peer_timeout_ms: 3000,
    };
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    /// The events (and status) exchange.
    pub exchange: String,
    /// The action path's exchange.
    pub actions: String,
    /// The broker URL the test's own clients use.
    pub url: String,
    text: String,
    metrics: BTreeMap<String, String>,
    _cleanup: BrokerCleanup,
}

impl Fleet {
    /// A fleet config for `servers` (name, AMI address) on the brokers
    /// `urls` (the first is also the test's own).
    pub fn new(servers: &[(String, String)], urls: &[String], t: Timings) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let exchange = unique("ami.test.fleet.");
        let actions = unique("ami.actions.test.fleet.");
        let fleet_exchange = unique("ami.test.fleetx.");
        let mappings = copy_mappings(dir.path(), &exchange).expect("copy mappings");
        let cleanup = BrokerCleanup::on(&urls[0]);
        let unroutable = unroutable_of(&exchange);
        cleanup
            .exchange(&exchange)
            .exchange(&unroutable)
            .queue(&unroutable);
        cleanup.exchange(&fleet_exchange);
        for x in [format!("{actions}.unrouted"), format!("{actions}.expired")] {
            cleanup.exchange(&x).queue(&x);
        }
        cleanup.exchange(&actions);
        let urls_toml: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        let mut text = format!(
            "[amqp]\nurls = [{}]\nreconnect_initial_ms = 100\nreconnect_max_ms = 1000\nalternate_exchange = \"{unroutable}\"\n\n",
            urls_toml.join(", ")
        );
        for (name, addr) in servers {
            cleanup.queue(&format!("{actions}.{name}"));
            text += &format!(
                "[[server]]\nname = \"{name}\"\naddress = \"{addr}\"\nusername = \"bridge\"\nsecret = \"bridgepass\"\nsnapshot = []\naction_connections = 1\nreconnect_initial_ms = 100\nreconnect_max_ms = 1000\n\n"
            );
        }
        text += &format!(
            "[mappings]\ndir = \"{m}\"\n\n[status]\nexchange = \"{exchange}\"\n\n\
             [actions]\nexchange = \"{actions}\"\nqueue_prefix = \"{actions}.\"\nunrouted = \"{actions}.unrouted\"\nexpired = \"{actions}.expired\"\nmax_in_flight_per_user = 1024\n\n\
             [[actions.allow]]\nuser = \"guest\"\nactions = [\"Ping\"]\n\n\
             [fleet]\nenabled = true\nexchange = \"{fleet_exchange}\"\nlease_prefix = \"{fleet_exchange}.lease.\"\n\
             announce_interval_ms = {}\npeer_timeout_ms = {}\n",
            t.announce_ms,
            t.peer_timeout_ms,
            m = mappings.display(),
        );
        Fleet {
            dir,
            exchange,
            actions,
            url: urls[0].clone(),
            text,
            metrics: BTreeMap::new(),
            _cleanup: cleanup,
        }
    }

    /// The config of instance `name`: its own spool and metrics listener.
    pub fn config(&mut self, name: &str) -> PathBuf {
        let metrics = self.metrics_addr(name);
        let spool = self.dir.path().join(format!("spool-{name}"));
        let text = format!(
            "instance = \"{name}\"\n\n{}\n[spool]\ndir = \"{}\"\nfsync_interval_ms = 50\n\n[metrics]\nlisten = \"{metrics}\"\n",
            self.text,
            spool.display()
        );
        let p = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// Where instance `name` serves /metrics and /healthz.
    pub fn metrics_addr(&mut self, name: &str) -> String {
        self.metrics
            .entry(name.to_string())
            .or_insert_with(|| format!("127.0.0.1:{}", free_port()))
            .clone()
    }

    /// Starts `ami2amqp run` as instance `name` (its log in `<name>.log`).
    pub fn start(&mut self, name: &str) -> Proc {
        let config = self.config(name);
        self.start_with(name, &config)
    }

    /// [`Fleet::start`] with a config written by [`Fleet::config`] and
    /// then edited.
    pub fn start_with(&mut self, name: &str, config: &std::path::Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bridge");
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `/healthz` of instance `name`.
    pub fn health(&self, name: &str) -> Option<serde_json::Value> {
        health(self.metrics.get(name)?).map(|(_, h)| h)
    }

    /// The servers instance `name` holds, from its `/healthz`.
    pub fn held(&self, name: &str) -> Option<BTreeSet<String>> {
        let h = self.health(name)?;
        Some(
            h["held"]
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
        )
    }

    /// The process id instance `name` logged at its (last) start.
    pub fn process(&self, name: &str) -> Option<String> {
        let log = self.log(name);
        let line = log.lines().rfind(|l| l.contains("ami2amqp starting"))?;
        let at = line.find("process=")? + "process=".len();
        Some(line[at..].split_whitespace().next()?.to_string())
    }

    /// Runs `Ping` on `server` through the action path; the reply.
    pub async fn ping(&self, server: &str) -> Result<serde_json::Value, String> {
        let broker = ami2amqp::amqp::Broker::plain_settings(self.url.clone());
        let body = ami2amqp::actions::client::body_from_args("Ping", &[])?;
        ami2amqp::actions::client::call(
            &broker,
            &self.actions,
            server,
            body.to_string().as_bytes(),
            Duration::from_secs(10),
            Some("guest"),
        )
        .await
        .map_err(|e| format!("Ping {server}: {e}"))
    }
}
