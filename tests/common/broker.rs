//! RabbitMQ for integration tests: the shared node, and private nodes (alone
//! or joined in a cluster) that a test may stop, restart, crash or
//! reconfigure without disturbing anyone.
//!
//! # The shared node
//!
//! Most tests only need *a* broker: [`shared_amqp_url`] gives the URL of the
//! node that `scripts/ensure-rabbitmq.sh` (run by `make test`) keeps up on
//! `127.0.0.1:5672`. Such tests must use names of their own (queues,
//! exchanges) and must never stop the node or close connections that are not
//! theirs: other tests run against it at the same time.
//!
//! # Private nodes
//!
//! A test about "the broker goes away" needs a broker it owns.
//! [`PrivateBroker::start`] boots a separate RabbitMQ node from the installed
//! package, isolated from the system node in every respect:
//!
//! | what | how |
//! |---|---|
//! | node name | `RABBITMQ_NODENAME=ami2amqp-test-<pid>-<n>@localhost` |
//! | AMQP port | `RABBITMQ_NODE_PORT`, a free port, bound to `127.0.0.1` only (`RABBITMQ_NODE_IP_ADDRESS`) |
//! | distribution | `RABBITMQ_DIST_PORT`, a free port, and a private `epmd` on a third free port (`ERL_EPMD_PORT`; one for all the nodes of a cluster), so the shared epmd is never used, started or killed |
//! | data, logs | `RABBITMQ_MNESIA_BASE`, `RABBITMQ_LOG_BASE`, `RABBITMQ_PID_FILE` under a [`TempDir`] |
//! | configuration | `RABBITMQ_CONFIG_FILE`, `RABBITMQ_ADVANCED_CONFIG_FILE`, `RABBITMQ_CONFIG_FILES` (the `conf.d` glob) point into the temp dir, `RABBITMQ_CONF_ENV_FILE` and `RABBITMQ_ENABLED_PLUGINS_FILE` at files there (empty, or the plugins given to [`PrivateBroker::start_with_plugins`]): nothing in `/etc/rabbitmq` is read |
//! | Erlang cookie | `HOME` is a directory of the temp dir holding a fresh `.erlang.cookie`; `rabbitmqctl` run through [`PrivateBroker::ctl`] gets the same `HOME` |
//!
//! The scripts are run from `/usr/lib/rabbitmq/bin` (or
//! `$AMI2AMQP_RABBITMQ_BIN`), not through Debian's `/usr/sbin` wrappers: as
//! root those switch to the `rabbitmq` user with its own `HOME`, which could
//! read neither the temp dir nor our cookie. The node therefore runs as the
//! user running the tests. Every `RABBITMQ_*` and `ERL_*` variable of the
//! test's own environment is removed first.
//!
//! Booting takes about 7 s on a 2-core machine (most of it Erlang loading
//! modules), a graceful [`stop`](PrivateBroker::stop) 1 to 3 s, a
//! [`kill`](PrivateBroker::kill) is immediate. Each node uses ~130 MB of
//! memory, so share one node between the steps of a test rather than
//! starting many.
//!
//! # Private clusters
//!
//! A test about a cluster losing a node (publisher fail-over over
//! `[amqp] urls`, quorum queues keeping their messages) needs several
//! nodes that know each other. [`PrivateCluster::start`] boots `n`
//! private nodes as above, with two differences that clustering needs:
//!
//! - **one epmd** for all of them: Erlang nodes find each other's
//!   distribution port through the epmd of the host, here the private
//!   `ERL_EPMD_PORT`; with one epmd per node (as a lone node has) they
//!   could not. The cluster starts it before the nodes, on a free port,
//!   with a marker of its own, and kills it after them;
//! - **one Erlang cookie**: nodes (and `rabbitmqctl`) only talk to nodes
//!   with the same cookie. Each node still has its own `HOME`, holding a
//!   copy of the cluster's fresh cookie.
//!
//! The nodes boot in parallel; then every node but the first runs
//! `rabbitmqctl stop_app`, `join_cluster <first node>`, `start_app` (the
//! documented way, which resets the joining node), and the first node must
//! list all of them as running. On a 2-core machine booting takes 8-10 s
//! (three nodes at once, about 7 s for one alone) and the joins about
//! 2 s per node: a 3-node cluster is up in 12-15 s, and costs ~400 MB.
//!
//! [`PrivateCluster::node`] gives each node as a [`PrivateBroker`]: its
//! `amqp_url()`, `stop()`, `kill()`, `start_again()` (it rejoins as the
//! member it was: same name, data and ports), `ctl()`. The cluster has
//! shortcuts taking the node's index, [`PrivateCluster::amqp_urls`] for a
//! bridge's `urls` in a chosen order, and
//! [`PrivateCluster::running_nodes`]. A graceful stop of one member takes
//! about 1 s, a start again about 5 s.
//!
//! # Cleanup
//!
//! `Drop` kills the node (`SIGKILL` to its process group, then to every
//! process carrying this node's `AMI2AMQP_PRIVATE_BROKER` marker in its
//! environment: the beam, `erl_child_setup`, port programs, epmd) and
//! removes the temp dir; it runs when the test panics too. Only processes
//! with the marker are ever signalled, so the system node and its epmd are
//! safe. If a test binary dies without unwinding (SIGKILL, a timeout), the
//! next [`PrivateBroker::start`] in any test binary reaps what the dead
//! process left: processes whose marker names a process that no longer
//! exists, and its `ami2amqp-broker-<pid>-*` temp dirs. A cluster's drop
//! kills its nodes that way, then its epmd (marker
//! `<pid>/ami2amqp-test-<pid>-<n>-cluster`) and removes its own temp dir
//! (same prefix), so the reaping covers clusters too.
//!
//! # In async tests
//!
//! The methods block (start: seconds). In a `#[tokio::test]` that also
//! drives AMQP connections whose behaviour during the outage matters, run
//! them off the runtime: `let b = Arc::new(PrivateBroker::start());` then
//! `blocking({ let b = b.clone(); move || b.stop() }).await` (see
//! [`blocking`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// URL of the shared node: `$AMQP_URL`, else the guest account on
/// `127.0.0.1:$AMQP_PORT` (default 5672), default vhost.
pub fn shared_amqp_url() -> String {
    if let Some(url) = non_empty_env("AMQP_URL") {
        return url;
    }
    let port = non_empty_env("AMQP_PORT").unwrap_or_else(|| "5672".into());
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// Runs a blocking harness call (start, stop, ctl, ...) on tokio's blocking
/// pool, so the test's runtime keeps driving its connections meanwhile.
/// A panic inside `f` is re-raised as is.
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking harness task failed: {e}"),
    }
}

/// Environment variable set on every process of a private node, value
/// `<pid of the test process>/<node name>`.
const MARKER: &str = "AMI2AMQP_PRIVATE_BROKER";
/// Prefix of the temp dirs, followed by `<pid>-<n>-`.
const DIR_PREFIX: &str = "ami2amqp-broker-";

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A RabbitMQ node of one's own; see the module docs.
pub struct PrivateBroker {
    node: String,
    marker: String,
    ports: Ports,
    dir: TempDir,
    bin: PathBuf,
    epmd_bin: PathBuf,
    /// A member of a [`PrivateCluster`]: `ports.epmd` is the cluster's
    /// epmd, which the node neither starts nor stops.
    shared_epmd: bool,
    state: Mutex<State>,
}

/// How to boot a private node: [`PrivateBroker::start_with_plugins`]'s
/// arguments, plus the cluster it belongs to.
struct NodeSpec<'a> {
    rabbitmq_conf: &'a str,
    plugins: &'a [&'a str],
    cluster: Option<&'a ClusterLink>,
}

/// What the nodes of one [`PrivateCluster`] share.
struct ClusterLink {
    epmd_port: u16,
    cookie: String,
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    amqp: u16,
    dist: u16,
    epmd: u16,
}

#[derive(Default)]
struct State {
    /// `rabbitmq-server` (a shell that runs the beam as its child), leader
    /// of its own process group.
    server: Option<Child>,
    epmd: Option<Child>,
    last_start: Option<Duration>,
}

impl PrivateBroker {
    /// Starts a fresh node with the default configuration and waits until
    /// it accepts AMQP connections. Panics (with the node's log) if it does
    /// not within `$AMI2AMQP_BROKER_START_TIMEOUT` seconds (default 60).
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Like [`start`](Self::start), with `rabbitmq_conf` (new-style
    /// `key = value` lines, e.g. `vm_memory_high_watermark.relative = 0.9`)
    /// as the node's `rabbitmq.conf`. It stays in effect for
    /// [`start_again`](Self::start_again).
    pub fn start_with_config(rabbitmq_conf: &str) -> Self {
        Self::start_with_plugins(rabbitmq_conf, &[])
    }

    /// Like [`start_with_config`](Self::start_with_config), with these
    /// plugins enabled (e.g. `rabbitmq_auth_mechanism_ssl` for EXTERNAL).
    pub fn start_with_plugins(rabbitmq_conf: &str, plugins: &[&str]) -> Self {
        Self::boot(&NodeSpec {
            rabbitmq_conf,
            plugins,
            cluster: None,
        })
    }

    /// Creates the node's temp dir and files and starts it (with its own
    /// epmd, or the cluster's); panics with the log on failure.
    fn boot(spec: &NodeSpec<'_>) -> Self {
        reap_orphans();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let node = format!("ami2amqp-test-{pid}-{n}@localhost");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{pid}-{n}-"))
            .tempdir()
            .expect("creating the private broker's temp dir");
        let root = dir.path();
        for sub in ["home", "mnesia", "log"] {
            fs::create_dir(root.join(sub)).expect("creating broker dirs");
        }
        let cookie = match spec.cluster {
            Some(c) => c.cookie.clone(),
            None => fresh_cookie(pid, n),
        };
        write_cookie(&root.join("home/.erlang.cookie"), &cookie);
        let enabled = match spec.plugins {
            [] => String::new(),
            p => format!("[{}].\n", p.join(",")),
        };
        fs::write(root.join("enabled_plugins"), enabled).expect("writing enabled_plugins");
        fs::write(root.join("rabbitmq-env.conf"), "").expect("writing rabbitmq-env.conf");
        if !spec.rabbitmq_conf.is_empty() {
            fs::write(root.join("rabbitmq.conf"), spec.rabbitmq_conf)
                .expect("writing rabbitmq.conf");
        }
        let ports_for = |cluster: Option<&ClusterLink>| {
            let ports = free_ports();
            match cluster {
                Some(c) => Ports {
                    epmd: c.epmd_port,
                    ..ports
                },
                None => ports,
            }
        };

        let mut broker = PrivateBroker {
            marker: format!("{pid}/{node}"),
            node,
            ports: ports_for(spec.cluster),
            dir,
            bin: rabbitmq_bin_dir(),
            epmd_bin: epmd_path(),
            shared_epmd: spec.cluster.is_some(),
            state: Mutex::new(State::default()),
        };
        let mut attempt = 1;
        loop {
            match broker.launch() {
                Ok(()) => return broker,
                // A free port picked by binding to :0 can be taken by
                // someone else before the node binds it: try new ports.
                Err(e) if e.port_conflict && attempt < 3 => {
                    attempt += 1;
                    broker.ports = ports_for(spec.cluster);
                }
                Err(e) => panic!("{}", broker.failure("start", &e.reason)),
            }
        }
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.ports.amqp)
    }

    /// The AMQP port (the same after [`start_again`](Self::start_again)).
    pub fn port(&self) -> u16 {
        self.ports.amqp
    }

    /// The Erlang node name, e.g. `ami2amqp-test-1234-0@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The temp dir holding the node's data (`mnesia/`), logs (`log/`,
    /// `console.log`) and configuration.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long the last (re)start took until AMQP answered.
    pub fn last_start_duration(&self) -> Option<Duration> {
        self.lock().last_start
    }

    /// Whether the node's process is alive (it may still be booting or
    /// shutting down).
    pub fn is_running(&self) -> bool {
        let mut st = self.lock();
        match st.server.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the node gracefully (SIGTERM, as `rabbitmq-server` in the
    /// foreground handles it: queues and messages are written out) and
    /// waits until the AMQP port is closed. Does nothing if it is not
    /// running.
    pub fn stop(&self) {
        let mut st = self.lock();
        let Some(mut server) = st.server.take() else {
            return;
        };
        let began = Instant::now();
        // The shell forwards SIGTERM to the beam and exits after it.
        signal(server.id() as i32, SIGTERM);
        if wait_timeout(&mut server, Duration::from_secs(30)).is_none() {
            eprintln!(
                "private broker {}: still up 30 s after SIGTERM, killing it",
                self.node
            );
        }
        kill_server(&mut server);
        drop(st);
        self.wait_port_closed("stop");
        eprintln!(
            "private broker {} stopped in {:.1} s",
            self.node,
            began.elapsed().as_secs_f64()
        );
    }

    /// Kills the node at once (SIGKILL, like a crash or an OOM kill):
    /// nothing is flushed, clients see their connections drop. Waits until
    /// the AMQP port is closed.
    pub fn kill(&self) {
        let mut st = self.lock();
        let Some(mut server) = st.server.take() else {
            return;
        };
        kill_server(&mut server);
        drop(st);
        self.wait_port_closed("kill");
    }

    /// Starts the stopped (or killed) node again: same name, port and data
    /// directory, so durable queues and persistent messages are back.
    /// Waits until AMQP answers; panics with the log if it does not.
    pub fn start_again(&self) {
        assert!(
            !self.is_running(),
            "private broker {}: start_again() while it is running; stop() it first",
            self.node
        );
        if let Err(e) = self.launch() {
            panic!("{}", self.failure("start again", &e.reason));
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>` against this node and returns
    /// its standard output; panics with the output if it fails. Examples:
    /// `ctl(&["close_all_connections", "test"])`,
    /// `ctl(&["set_vm_memory_high_watermark", "0.000001"])`,
    /// `ctl(&["list_queues", "name", "messages"])`.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ctl`](Self::ctl) returning the failure instead of panicking.
    pub fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        self.cli("rabbitmqctl", args)
    }

    /// Runs another CLI tool of the package (`rabbitmq-diagnostics`,
    /// `rabbitmq-queues`, ...) as `<tool> -n <node> <args>`, at most 60 s.
    pub fn cli(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir().join(format!("cli-{n}.out"));
        let err_path = self.dir().join(format!("cli-{n}.err"));
        let shown = format!("{tool} -n {} {}", self.node, args.join(" "));
        let spawned = self
            .command(&self.bin.join(tool))
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdout(File::create(&out_path).expect("creating cli output file"))
            .stderr(File::create(&err_path).expect("creating cli output file"))
            .spawn();
        let mut child = spawned.map_err(|e| format!("`{shown}`: cannot run: {e}"))?;
        let status = wait_timeout(&mut child, Duration::from_secs(60));
        if status.is_none() {
            signal(-(child.id() as i32), SIGKILL);
            let _ = child.wait();
        }
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        match status {
            Some(s) if s.success() => Ok(stdout),
            Some(s) => Err(format!("`{shown}` failed ({s}):\n{stdout}{stderr}")),
            None => Err(format!("`{shown}` timed out after 60 s:\n{stdout}{stderr}")),
        }
    }

    /// The last `lines` lines of the node's log file and of its console
    /// output (where boot failures such as `eaddrinuse` end up).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.dir().join("log").join(format!("{}.log", self.node));
        let console = self.dir().join("console.log");
        format!(
            "--- {}:\n{}\n--- {}:\n{}",
            log.display(),
            tail(&log, lines),
            console.display(),
            tail(&console, lines)
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failure(&self, what: &str, reason: &str) -> String {
        format!(
            "private broker {} (AMQP port {}, dir {}): {what} failed: {reason}\n{}",
            self.node,
            self.ports.amqp,
            self.dir().display(),
            self.log_tail(40)
        )
    }

    /// A command with this node's environment, in its own process group.
    fn command(&self, program: &Path) -> Command {
        let root = self.dir();
        let mut cmd = base_command(program, &self.marker, root);
        let p = |rel: &str| root.join(rel);
        cmd.env("HOME", p("home"))
            .env("ERL_EPMD_PORT", self.ports.epmd.to_string())
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.ports.amqp.to_string())
            .env("RABBITMQ_DIST_PORT", self.ports.dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", p("mnesia"))
            .env("RABBITMQ_LOG_BASE", p("log"))
            .env("RABBITMQ_PID_FILE", p("rabbitmq.pid"))
            .env("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", p("advanced.config"))
            .env("RABBITMQ_CONFIG_FILES", p("conf.d/*.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", p("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins"));
        cmd
    }

    /// Starts epmd (if needed) and the node, and waits for AMQP. On error
    /// everything it started is killed again.
    fn launch(&self) -> Result<(), LaunchError> {
        let mut st = self.lock();
        let result = self.launch_locked(&mut st);
        if result.is_err() {
            for mut child in [st.server.take(), st.epmd.take()].into_iter().flatten() {
                kill_server(&mut child);
            }
        }
        result
    }

    fn launch_locked(&self, st: &mut State) -> Result<(), LaunchError> {
        let started = Instant::now();
        let deadline = started + start_timeout();
        if self.shared_epmd {
            // The cluster's epmd: started before the nodes, stopped after.
            if !port_open(self.ports.epmd) {
                return Err(LaunchError::other(format!(
                    "the cluster's epmd does not listen on port {}",
                    self.ports.epmd
                )));
            }
        } else {
            let epmd_alive = st
                .epmd
                .as_mut()
                .is_some_and(|e| matches!(e.try_wait(), Ok(None)));
            if !epmd_alive {
                let child = spawn_epmd(
                    self.command(&self.epmd_bin),
                    self.ports.epmd,
                    &self.dir().join("epmd.log"),
                )?;
                st.epmd = Some(child);
            }
        }

        let console_path = self.dir().join("console.log");
        let console_offset = fs::metadata(&console_path).map(|m| m.len()).unwrap_or(0);
        let console = append(&console_path);
        let server = self
            .command(&self.bin.join("rabbitmq-server"))
            .stdout(console.try_clone().expect("dup console log"))
            .stderr(console)
            .spawn()
            .map_err(|e| {
                LaunchError::other(format!(
                    "cannot run {}/rabbitmq-server: {e}",
                    self.bin.display()
                ))
            })?;
        let server = st.server.insert(server);
        loop {
            if amqp_answers(self.ports.amqp) {
                let took = started.elapsed();
                st.last_start = Some(took);
                eprintln!(
                    "private broker {} up on 127.0.0.1:{} in {:.1} s",
                    self.node,
                    self.ports.amqp,
                    took.as_secs_f64()
                );
                return Ok(());
            }
            if let Ok(Some(status)) = server.try_wait() {
                let output = read_from(&console_path, console_offset);
                return Err(LaunchError {
                    port_conflict: output.contains("eaddrinuse"),
                    reason: format!("rabbitmq-server exited during boot ({status})"),
                });
            }
            if Instant::now() > deadline {
                return Err(LaunchError::other(format!(
                    "no AMQP on 127.0.0.1:{} within {} s (set AMI2AMQP_BROKER_START_TIMEOUT to wait longer)",
                    self.ports.amqp,
                    start_timeout().as_secs()
                )));
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Waits until AMQP answers again (after `rabbitmqctl start_app`).
    fn wait_amqp(&self, what: &str) {
        let deadline = Instant::now() + start_timeout();
        while !amqp_answers(self.ports.amqp) {
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.failure(
                        what,
                        &format!("no AMQP within {} s", start_timeout().as_secs())
                    )
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn wait_port_closed(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while port_open(self.ports.amqp) {
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.failure(what, "the AMQP port still accepts connections after 15 s")
                );
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for mut child in [st.server.take(), st.epmd.take()].into_iter().flatten() {
            kill_server(&mut child);
        }
        // What left the process groups (erl_child_setup starts a session
        // of its own) still carries the marker.
        for pid in marked_processes(|m| m == self.marker) {
            signal(pid, SIGKILL);
        }
    }
}

/// A RabbitMQ cluster of private nodes; see the module docs.
pub struct PrivateCluster {
    // Fields drop in order: the nodes first, then the epmd they used.
    nodes: Vec<PrivateBroker>,
    epmd: ClusterEpmd,
    dir: TempDir,
    boot: Duration,
}

/// The epmd shared by the nodes of a cluster, killed on drop.
struct ClusterEpmd {
    child: Child,
    marker: String,
    port: u16,
}

impl Drop for ClusterEpmd {
    fn drop(&mut self) {
        kill_server(&mut self.child);
        for pid in marked_processes(|m| m == self.marker) {
            signal(pid, SIGKILL);
        }
    }
}

impl PrivateCluster {
    /// Boots `size` private nodes (default configuration) and joins them
    /// into one cluster; returns when every node is a running member and
    /// answers AMQP. Panics with the logs of the node at fault otherwise.
    pub fn start(size: usize) -> Self {
        Self::start_with_config(size, "")
    }

    /// Like [`start`](Self::start), with `rabbitmq_conf` as every node's
    /// `rabbitmq.conf` (see [`PrivateBroker::start_with_config`]).
    pub fn start_with_config(size: usize, rabbitmq_conf: &str) -> Self {
        assert!(size >= 1, "a cluster of {size} nodes");
        reap_orphans();
        let began = Instant::now();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("ami2amqp-test-{pid}-{n}-cluster");
        let marker = format!("{pid}/{name}");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{pid}-{n}-"))
            .tempdir()
            .expect("creating the private cluster's temp dir");
        let epmd_bin = epmd_path();
        let mut attempt = 1;
        let epmd = loop {
            let port = free_ports().epmd;
            let cmd = base_command(&epmd_bin, &marker, dir.path());
            match spawn_epmd(cmd, port, &dir.path().join("epmd.log")) {
                Ok(child) => {
                    break ClusterEpmd {
                        child,
                        marker: marker.clone(),
                        port,
                    };
                }
                Err(e) if e.port_conflict && attempt < 3 => attempt += 1,
                Err(e) => panic!("private cluster {name}: {}", e.reason),
            }
        };
        let link = ClusterLink {
            epmd_port: epmd.port,
            cookie: fresh_cookie(pid, n),
        };
        let spec = NodeSpec {
            rabbitmq_conf,
            plugins: &[],
            cluster: Some(&link),
        };
        // In parallel: a boot is mostly Erlang loading code, and the nodes
        // do not need each other until they join.
        let booted: Vec<std::thread::Result<PrivateBroker>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..size)
                .map(|_| s.spawn(|| PrivateBroker::boot(&spec)))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut nodes = Vec::with_capacity(size);
        let mut failure = None;
        for b in booted {
            match b {
                Ok(node) => nodes.push(node),
                Err(panic) => failure = failure.or(Some(panic)),
            }
        }
        if let Some(panic) = failure {
            // The nodes that did boot and the epmd are dropped (killed) on
            // the way out.
            std::panic::resume_unwind(panic);
        }
        let booted_in = began.elapsed();
        let mut cluster = PrivateCluster {
            nodes,
            epmd,
            dir,
            boot: Duration::ZERO,
        };
        let first = cluster.nodes[0].node.clone();
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"]);
            node.ctl(&["join_cluster", &first]);
            node.ctl(&["start_app"]);
            node.wait_amqp("start_app after join_cluster");
        }
        let running = cluster.running_nodes(0);
        let mut want: Vec<String> = cluster.nodes.iter().map(|b| b.node.clone()).collect();
        want.sort();
        assert_eq!(running, want, "private cluster {name}: running nodes");
        cluster.boot = began.elapsed();
        eprintln!(
            "private cluster of {size} nodes up in {:.1} s (nodes booted in parallel in {:.1} s, joined in {:.1} s)",
            cluster.boot.as_secs_f64(),
            booted_in.as_secs_f64(),
            (cluster.boot - booted_in).as_secs_f64()
        );
        cluster
    }

    /// How long [`start`](Self::start) took, boot and joins.
    pub fn boot_duration(&self) -> Duration {
        self.boot
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i` (0 is the one the others joined): its URL, port, node
    /// name, `stop`, `kill`, `start_again`, `ctl`, logs.
    pub fn node(&self, i: usize) -> &PrivateBroker {
        &self.nodes[i]
    }

    /// Every node, in order.
    pub fn nodes(&self) -> &[PrivateBroker] {
        &self.nodes
    }

    /// The index of the node called `name` (as `rabbitmqctl` prints it).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|b| b.node == name)
    }

    /// `amqp://guest:guest@127.0.0.1:<port of node i>/%2f`
    pub fn amqp_url(&self, i: usize) -> String {
        self.nodes[i].amqp_url()
    }

    /// The URLs of the nodes in the order of `order` (e.g. `[1, 2, 0]`).
    pub fn amqp_urls(&self, order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| self.amqp_url(i)).collect()
    }

    /// Stops node `i` gracefully ([`PrivateBroker::stop`]); the others
    /// see it leave and carry on.
    pub fn stop(&self, i: usize) {
        self.nodes[i].stop();
    }

    /// Kills node `i` at once ([`PrivateBroker::kill`]).
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again after a stop or kill: it comes back as the
    /// cluster member it was (same name, data and ports).
    pub fn start_again(&self, i: usize) {
        self.nodes[i].start_again();
    }

    /// `rabbitmqctl -n <node i> <args>` ([`PrivateBroker::ctl`]).
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        self.nodes[i].ctl(args)
    }

    /// The cluster's running members as node `i` sees them, sorted.
    pub fn running_nodes(&self, i: usize) -> Vec<String> {
        let out = self.ctl(i, &["cluster_status", "--formatter", "json"]);
        let status: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("cluster_status is not JSON ({e}):\n{out}"));
        let mut running: Vec<String> = status["running_nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("no running_nodes in cluster_status:\n{out}"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        running.sort();
        running
    }

    /// The epmd port the nodes share.
    pub fn epmd_port(&self) -> u16 {
        self.epmd.port
    }

    /// The temp dir of the cluster itself (`epmd.log`); each node has its
    /// own ([`PrivateBroker::dir`]).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

struct LaunchError {
    reason: String,
    port_conflict: bool,
}

impl LaunchError {
    fn other(reason: String) -> Self {
        LaunchError {
            reason,
            port_conflict: false,
        }
    }
}

/// A command that carries `marker`, runs in `dir`, has none of the
/// test's own `RABBITMQ_*` / `ERL_*` variables, and leads its own process
/// group.
fn base_command(program: &Path, marker: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && (k.starts_with("RABBITMQ_") || k.starts_with("ERL_"))
        {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .env(MARKER, marker)
        .process_group(0);
    cmd
}

/// Runs `epmd -port <port>` on 127.0.0.1 through `cmd` and waits until it
/// listens; kills it again on failure (a taken port is a `port_conflict`).
fn spawn_epmd(mut cmd: Command, port: u16, log_path: &Path) -> Result<Child, LaunchError> {
    let log = append(log_path);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .args(["-port", &port.to_string(), "-address", "127.0.0.1"])
        .stdout(log.try_clone().expect("dup epmd log"))
        .stderr(log)
        .spawn()
        .map_err(|e| LaunchError::other(format!("cannot run {program}: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !port_open(port) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LaunchError {
                reason: format!(
                    "epmd on port {port} exited ({status}): {}",
                    tail(log_path, 5)
                ),
                port_conflict: true,
            });
        }
        if Instant::now() > deadline {
            kill_server(&mut child);
            return Err(LaunchError::other(format!(
                "epmd did not listen on port {port} within 10 s"
            )));
        }
        sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// A cookie no other test run uses.
fn fresh_cookie(pid: u32, n: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("AMIAMQPTEST{pid}X{n}X{nanos}")
}

fn write_cookie(path: &Path, cookie: &str) {
    fs::write(path, cookie).expect("writing cookie");
    // Erlang refuses a cookie file that others can read.
    fs::set_permissions(path, fs::Permissions::from_mode(0o400)).expect("chmod cookie");
}

/// PIDs of live processes whose `AMI2AMQP_PRIVATE_BROKER` value satisfies
/// `pred`. Processes we may not read are skipped.
pub fn marked_processes(pred: impl Fn(&str) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = format!("{MARKER}=");
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 1 || pid == me {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let hit = environ
            .split(|&b| b == 0)
            .filter_map(|var| std::str::from_utf8(var).ok())
            .filter_map(|var| var.strip_prefix(&needle))
            .any(&pred);
        if hit {
            found.push(pid);
        }
    }
    found
}

/// Processes of a private node (by node name), e.g. to check that nothing
/// outlived a `PrivateBroker`.
pub fn processes_of_node(node: &str) -> Vec<i32> {
    marked_processes(|m| m.split_once('/').is_some_and(|(_, n)| n == node))
}

/// Kills private-node processes and removes temp dirs left by test
/// processes that no longer exist. Once per test binary.
fn reap_orphans() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let owner_gone = |pid: &str| {
            pid.parse::<u32>().is_ok_and(|p| {
                p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists()
            })
        };
        for pid in marked_processes(|m| {
            m.split_once('/')
                .is_some_and(|(owner, _)| owner_gone(owner))
        }) {
            signal(pid, SIGKILL);
        }
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
                continue;
            };
            let owner = rest.split('-').next().unwrap_or("");
            if owner_gone(owner) && entry.path().is_dir() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Kills a process group led by `leader` (a child of ours): first its
/// other members, so the leader (the `rabbitmq-server` shell, which waits
/// for the beam) reaps them instead of leaving zombies to init, then the
/// leader; waits for the leader.
fn kill_server(leader: &mut Child) {
    let pgid = leader.id() as i32;
    if matches!(leader.try_wait(), Ok(None)) {
        let members: Vec<i32> = group_members(pgid)
            .into_iter()
            .filter(|&pid| pid != pgid)
            .collect();
        for &pid in &members {
            signal(pid, SIGKILL);
        }
        if members.is_empty() || wait_timeout(leader, Duration::from_secs(5)).is_none() {
            signal(-pgid, SIGKILL);
        }
    }
    let _ = leader.wait();
    // Whatever is left in the group (nothing, normally).
    signal(-pgid, SIGKILL);
}

/// PIDs of the processes in process group `pgid`, from `/proc/*/stat`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // "pid (comm) state ppid pgrp ...": comm may contain spaces.
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let fields = stat.rsplit_once(')')?.1;
                    fields.split_whitespace().nth(2)?.parse::<i32>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

fn signal(pid: i32, sig: i32) -> bool {
    // Never the whole session / every process: 0, -1 and 1 are refused.
    if matches!(pid, -1..=1) {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { kill(pid, sig) == 0 }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Three distinct free ports on 127.0.0.1 (AMQP, distribution, epmd).
fn free_ports() -> Ports {
    let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    let (a, b, c) = (bind(), bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("local_addr").port();
    Ports {
        amqp: port(&a),
        dist: port(&b),
        epmd: port(&c),
    }
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Whether an AMQP 0-9-1 server answers on the port: send the protocol
/// header, expect a method frame (Connection.Start).
fn amqp_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut frame_type = [0u8; 1];
    matches!(stream.read(&mut frame_type), Ok(1) if frame_type[0] == 1)
}

fn start_timeout() -> Duration {
    let secs = non_empty_env("AMI2AMQP_BROKER_START_TIMEOUT")
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// Where the package's own scripts are (not Debian's `su` wrappers).
fn rabbitmq_bin_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("AMI2AMQP_RABBITMQ_BIN") {
        return PathBuf::from(dir);
    }
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").is_file() {
        return debian;
    }
    if let Some(found) = find_in_path("rabbitmq-server") {
        let found = fs::canonicalize(&found).unwrap_or(found);
        if let Some(dir) = found.parent() {
            return dir.to_path_buf();
        }
    }
    panic!(
        "rabbitmq-server not found (looked in /usr/lib/rabbitmq/bin and PATH): \
         run scripts/ensure-rabbitmq.sh as root to install it, or set AMI2AMQP_RABBITMQ_BIN"
    );
}

fn epmd_path() -> PathBuf {
    if let Some(found) = find_in_path("epmd") {
        return found;
    }
    let erlang = PathBuf::from("/usr/lib/erlang/bin/epmd");
    if erlang.is_file() {
        return erlang;
    }
    panic!("epmd not found on PATH nor in /usr/lib/erlang/bin (is Erlang installed?)");
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}
