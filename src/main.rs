//! The `ami2amqp` command line.
//!
//! This file is deliberately thin: it parses arguments with clap, sets up
//! logging and hands over to the library, where the real work (and its
//! tests) live. Every subcommand is one variant of [`Command`] holding its
//! own `clap::Args` struct and one `async fn` that runs it; adding a
//! subcommand means adding those two things and one line to
//! [`Command::run`].
//!
//! Errors end the program with one line on stderr (`ami2amqp: error: …`)
//! and exit status 1; usage errors are clap's (status 2). Logs go to
//! stderr too, so stdout carries only a command's output (the `listening on
//! ADDR` line of `replay`, the report of `inspect`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use ami2amqp::ami::{AuthType, Credentials, EventMask};
use ami2amqp::trace::replay::{Account, Pace, ReplayConfig, ReplayServer, ReplayTls};
use ami2amqp::trace::{inspect, record};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bridge between the Asterisk Manager Interface (AMI) and AMQP (RabbitMQ).
#[derive(Parser, Debug)]
#[command(name = "ami2amqp", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// Threads that run the bridge's tasks (parsing, routing, the action
    /// path, the HTTP endpoints). Default: one less than the CPUs, at
    /// least one: the AMQP connections' I/O loops and the spool's fsync
    /// have threads of their own, and on a small machine a second task
    /// thread only adds hand-overs between threads (BENCHMARKS.md, "Action
    /// round trips": 2 CPUs, one thread is as fast for events and faster
    /// for actions).
    #[arg(long, global = true, env = "AMI2AMQP_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

/// One less than the CPUs this process may use, at least one.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

#[derive(Args, Debug)]
struct LogArgs {
    /// Log filter in RUST_LOG syntax, e.g. `info`, `debug`,
    /// `ami2amqp=debug,info`. Logs go to stderr. The default keeps lapin
    /// from logging every returned (unroutable) message: they are counted
    /// in `amqp_returned_total`; and from logging each channel the broker
    /// closes as an error (in a fleet, every lease another instance holds
    /// is refused that way): the bridge logs the failures that matter
    /// itself. lapin and amq-protocol never log below
    /// `debug`, whatever the filter says: at `trace` they print every
    /// frame, the broker password (SASL response) included.
    #[arg(
        long,
        global = true,
        env = "RUST_LOG",
        hide_env_values = true,
        default_value = "info,lapin::returned_messages=error,lapin::channel=off"
    )]
    log_level: String,
    /// Log format: human-readable `text` or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    Run(RunArgs),
    Check(CheckArgs),
    Config(ConfigArgs),
    Map(MapArgs),
    Tail(TailArgs),
    Action(ActionArgs),
    Replay(ReplayArgs),
    Record(RecordArgs),
    Inspect(InspectArgs),
    Doctor(DoctorArgs),
    Generate(GenerateArgs),
}

impl Command {
    async fn run(self) -> Result<(), BoxError> {
        match self {
            Command::Run(a) => run(a).await,
            Command::Check(a) => check(a),
            Command::Config(a) => config(a),
            Command::Map(a) => map(a),
            Command::Tail(a) => tail(a).await,
            Command::Action(a) => action(a).await,
            Command::Replay(a) => replay(a).await,
            Command::Record(a) => record(a).await,
            Command::Inspect(a) => inspect(a).await,
            Command::Doctor(a) => doctor(a).await,
            Command::Generate(a) => generate(a),
        }
    }
}

/// Run the bridge: AMI events → mappings → RabbitMQ (with confirms and an
/// on-disk spool), until SIGTERM/SIGINT.
///
/// On SIGTERM/SIGINT the bridge logs off from Asterisk, writes what it
/// holds to the spool, waits (bounded) for the broker's confirms and exits
/// 0; what is not confirmed is published at the next start. SIGHUP reloads
/// the mapping files. docs/config.md describes the config file;
/// contrib/ami2amqp.toml is an example.
#[derive(Args, Debug)]
struct RunArgs {
    /// The configuration file (TOML).
    #[arg(long, short, default_value = "/etc/ami2amqp/ami2amqp.toml")]
    config: PathBuf,
}

async fn run(a: RunArgs) -> Result<(), BoxError> {
    let cfg = ami2amqp::config::Config::load(&a.config)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received");
        c2.cancel();
    });
    // The signal handler is in place before start, so a signal during
    // start stops the bridge once it is up rather than killing it.
    let bridge = ami2amqp::Bridge::start(cfg).await?;
    cancel.cancelled().await;
    bridge.shutdown().await;
    Ok(())
}

/// Validate the config file and the mapping files without running anything.
///
/// Prints `file:line:col: message` for every problem found and exits 0
/// only when everything is valid. With --config alone, the mappings
/// directories named in the config are checked too.
#[derive(Args, Debug)]
struct CheckArgs {
    /// The configuration file to check.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A mappings directory to check; repeat it to overlay directories in
    /// order (later ones add files or replace files of the same name).
    /// Default: the config's `[mappings]` directories, or `mappings`.
    #[arg(long, short)]
    mappings: Vec<PathBuf>,
    /// Also print, per [[server]], push-down's plan: the Events: mask and
    /// the Filter actions its event connection would use, and which event
    /// names the mappings keep and drop (docs/mapping.md, "Push-down").
    #[arg(long)]
    explain_filters: bool,
}

fn check(a: CheckArgs) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    match ami2amqp::tools::check(
        a.config.as_deref(),
        &a.mappings,
        a.explain_filters,
        &mut out,
    ) {
        0 => Ok(()),
        _ => Err("invalid configuration or mappings (see above)".into()),
    }
}

/// Print configuration files generated from the code.
#[derive(Args, Debug)]
struct ConfigArgs {
    #[command(subcommand)]
    what: ConfigCommand,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print a complete, commented config file: every key at its default
    /// value, each with its description.
    ///
    /// The values come from the code's defaults and the comments from the
    /// same text docs/config.md is checked against. One example
    /// `[[server]]` (pbx1, reading its secret from the environment variable
    /// AMI2AMQP_PBX1_SECRET) is included: edit it to name your Asterisk
    /// (or set that variable), and `ami2amqp check --config FILE` accepts
    /// the file. Secrets are never printed.
    Example,
}

fn config(a: ConfigArgs) -> Result<(), BoxError> {
    match a.what {
        ConfigCommand::Example => {
            let text = ami2amqp::config::example()?;
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => Ok(r?),
            }
        }
    }
}

/// Check a config against the real world: connect to every Asterisk and
/// broker once and report what works, line by line.
///
/// Per server: DNS, TCP, the AMI login (with the bridge's own client), the
/// actions its user may run against those [[actions.allow]] grants and
/// the list actions of its snapshot kinds, and the event classes that arrive in 3 s (and a reminder about
/// writetimeout, which Asterisk does not report over AMI). Per broker URL: DNS, TCP, the login,
/// and whether each exchange the mappings, status messages and action path
/// use exists (passive declares: doctor never declares or publishes).
/// Lines start with `ok`, `warn` or `FAIL`; the exit status is 0 only when
/// no check failed.
#[derive(Args, Debug)]
struct DoctorArgs {
    /// The config file.
    #[arg(long, short)]
    config: PathBuf,
}

async fn doctor(a: DoctorArgs) -> Result<(), BoxError> {
    let cfg = ami2amqp::config::Config::load(&a.config)?;
    let mut out = std::io::stdout().lock();
    match ami2amqp::tools::doctor(&cfg, &mut out).await {
        0 => Ok(()),
        _ => Err("some checks failed (see above)".into()),
    }
}

/// Write files generated from this command-line definition, for packagers:
/// man pages and shell completions.
///
/// `ami2amqp generate man DIR` writes `ami2amqp.1` and one
/// `ami2amqp-<command>.1` per subcommand; `ami2amqp generate completions
/// DIR` writes `ami2amqp.bash`, `_ami2amqp` (zsh) and `ami2amqp.fish`. The
/// Debian package (make deb) installs both.
#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(subcommand)]
    what: GenerateCommand,
}

#[derive(Subcommand, Debug)]
enum GenerateCommand {
    /// Man pages (section 1) into DIR.
    Man { dir: PathBuf },
    /// Completions for bash, zsh and fish into DIR.
    Completions { dir: PathBuf },
}

fn generate(a: GenerateArgs) -> Result<(), BoxError> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match a.what {
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| format!("{}: cannot write man pages: {e}", dir.display()))?;
        }
        GenerateCommand::Completions { dir } => {
            use clap_complete::Shell;
            std::fs::create_dir_all(&dir)?;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd.clone(), "ami2amqp", &dir)
                    .map_err(|e| format!("{}: cannot write completions: {e}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Dry run: feed traces through the mappings and print every message that
/// would be published, one JSON object per line
/// (`{"route","exchange","routing_key","properties","body"}`).
///
/// Timestamps and ids are deterministic (instance `dryrun`), so two runs
/// can be diffed to see what an edit changes. Items of event lists (answers
/// to the capturing client's actions) are skipped, as the bridge never
/// receives them.
#[derive(Args, Debug)]
struct MapArgs {
    /// The mappings directory; repeat it to overlay directories in order
    /// (later ones add files or replace files of the same name).
    #[arg(long, short, default_value = "mappings")]
    mappings: Vec<PathBuf>,
    /// The server name to use for `{server}`.
    #[arg(long, default_value = "pbx1")]
    server: String,
    /// Print a table of routing keys with counts, unmatched events and
    /// mapping errors instead of the messages.
    #[arg(long)]
    summary: bool,
    /// Trace files (raw AMI bytes, `.zst` accepted).
    #[arg(required = true, value_name = "TRACE")]
    traces: Vec<PathBuf>,
}

fn map(a: MapArgs) -> Result<(), BoxError> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let s = if a.summary {
        let s = ami2amqp::tools::map_summary(&a.mappings, &a.server, &a.traces)?;
        ami2amqp::tools::print_summary(&s, &mut out)?;
        s
    } else {
        let mut line = Vec::with_capacity(4096);
        ami2amqp::tools::map_traces(&a.mappings, &a.server, &a.traces, |m| {
            line.clear();
            m.write_json_line(&mut line)?;
            match out.write_all(&line) {
                // `map … | head`: the reader has seen enough.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
                r => r,
            }
        })?
    };
    if let Err(e) = out.flush() {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(e.into());
    }
    if s.errors > 0 {
        eprintln!(
            "ami2amqp: {} mapping error(s); run with --summary to see them",
            s.errors
        );
    }
    Ok(())
}

/// Watch the bus: bind a temporary queue to an exchange and print what
/// arrives, one line per message (`routing-key  body`), or JSON objects
/// with --json. If the exchange does not exist yet (a fresh broker the
/// bridge has not connected to), waits for it.
#[derive(Args, Debug)]
struct TailArgs {
    #[command(flatten)]
    amqp: AmqpArgs,
    /// The exchange to watch.
    #[arg(long, default_value = "ami.events")]
    exchange: String,
    /// Print one JSON object per message (exchange, routing key,
    /// properties, body).
    #[arg(long)]
    json: bool,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Binding keys (topic patterns such as `pbx1.call.#`); default `#`.
    #[arg(value_name = "BINDING")]
    bindings: Vec<String>,
}

/// Where a broker URL comes from. A password on the command line is
/// visible to every user of the machine (`ps`), so the environment
/// variable and the file are the safe forms.
#[derive(Args, Debug)]
struct AmqpArgs {
    /// The broker URL. On the command line it is visible to every user in
    /// `ps`: put a URL with a password in AMQP_URL or in --amqp-file.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,
    /// Read the broker URL from the first line of FILE (takes precedence
    /// over --amqp and AMQP_URL).
    #[arg(long, value_name = "FILE")]
    amqp_file: Option<PathBuf>,
    /// For amqps:// URLs: PEM file of the CA(s) the broker's certificate
    /// must be signed by (default: the system's).
    #[arg(long, value_name = "PEM")]
    tls_ca_file: Option<PathBuf>,
    /// For amqps:// URLs: the name the broker's certificate must carry
    /// (default: the URL's host).
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// For amqps:// URLs: a client certificate to present (PEM; with
    /// --tls-key; with ?auth_mechanism=external it replaces the password).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl AmqpArgs {
    /// The URL with the TLS settings of the --tls-* options.
    fn broker(&self) -> Result<ami2amqp::amqp::Broker, BoxError> {
        let files = ami2amqp::ami::ClientFiles {
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
        };
        let tls =
            ami2amqp::amqp::AmqpTls::new(&files, self.tls_server_name.as_deref()).map_err(|e| {
                [
                    ("amqp.tls_ca_file", "--tls-ca-file"),
                    ("amqp.tls_server_name", "--tls-server-name"),
                    ("amqp.tls_cert_file", "--tls-cert"),
                    ("amqp.tls_key_file", "--tls-key"),
                ]
                .iter()
                .fold(e, |e, (k, o)| e.replace(k, o))
            })?;
        Ok(ami2amqp::amqp::Broker {
            url: self.url()?,
            tls,
        })
    }

    fn url(&self) -> Result<String, BoxError> {
        let Some(f) = &self.amqp_file else {
            return Ok(self.amqp.clone());
        };
        warn_if_others_can_read(f);
        let u = ami2amqp::config::read_secret_file(f).map_err(|e| format!("--amqp-file {e}"))?;
        Ok(u)
    }
}

/// A file holding a secret should be private (ssh warns alike).
fn warn_if_others_can_read(f: &std::path::Path) {
    if let Some(w) = ami2amqp::config::others_can_access(f) {
        tracing::warn!("{w}");
    }
}

/// A secret from `--secret-file` (when given) or the `--secret`/env value.
fn secret_from(
    value: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, BoxError> {
    match file {
        Some(f) => {
            warn_if_others_can_read(f);
            let s =
                ami2amqp::config::read_secret_file(f).map_err(|e| format!("--secret-file {e}"))?;
            Ok(Some(s))
        }
        None => Ok(value),
    }
}

async fn tail(a: TailArgs) -> Result<(), BoxError> {
    let mut out = std::io::stdout();
    let d = a.duration.map(Duration::from_secs_f64);
    let broker = a.amqp.broker()?;
    ami2amqp::tools::tail(
        &broker,
        &a.exchange,
        &a.bindings,
        a.json,
        a.count,
        d,
        &mut out,
    )
    .await?;
    Ok(())
}

/// Send one AMI action through the bridge over AMQP and print the reply.
///
/// The request goes to the actions exchange with the server's name as
/// routing key; the reply comes back on direct reply-to. Exits 1 when the
/// reply is an error (bad_request, unknown_server, forbidden, timeout,
/// ami_error, unavailable) — handy to test the allow-list: the AMQP user of
/// the URL is the `user` the bridge checks.
///
/// Example: ami2amqp action --server pbx1 Originate Channel=Local/100@test
/// Context=test Exten=100 Priority=1 Async=true
#[derive(Args, Debug)]
struct ActionArgs {
    /// The broker (its user is the one the allow-list checks).
    #[command(flatten)]
    amqp: AmqpArgs,
    /// The Asterisk server (its name in the bridge's config).
    #[arg(long)]
    server: String,
    /// The actions exchange.
    #[arg(long, default_value = "ami.actions")]
    exchange: String,
    /// Seconds to wait; also sent as the request's expiration.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
    /// Set the AMQP user_id property (RabbitMQ rejects it unless it is the
    /// URL's user; by default it is set to that user).
    #[arg(long)]
    user_id: Option<String>,
    /// The action name, e.g. Ping, CoreShowChannels, Originate.
    #[arg(value_name = "ACTION")]
    action: String,
    /// Fields as Key=Value; repeat a key for a repeated header (Variable).
    #[arg(value_name = "KEY=VALUE")]
    fields: Vec<String>,
}

async fn action(a: ActionArgs) -> Result<(), BoxError> {
    use ami2amqp::actions::client;
    let body = client::body_from_args(&a.action, &a.fields)?;
    let broker = a.amqp.broker()?;
    let user = match a.user_id.clone() {
        Some(u) => u,
        None => client::default_user_id(&broker.url)?,
    };
    let timeout = Duration::from_secs_f64(a.timeout.max(0.001));
    let reply = client::call(
        &broker,
        &a.exchange,
        &a.server,
        body.to_string().as_bytes(),
        timeout,
        Some(&user),
    )
    .await?;
    if a.json {
        println!("{reply}");
    } else {
        print!("{}", client::render(&reply));
    }
    if client::is_error(&reply) {
        return Err("the action failed (see the reply above)".into());
    }
    Ok(())
}

/// Act as a fake Asterisk: serve recorded traces to AMI clients over TCP.
///
/// Each client gets the banner, must log in (plain `Secret` or MD5
/// `Challenge`/`Key`), and then receives the traces' events, filtered by
/// its `Events:` mask, while `Ping`, `Logoff`, `Events` and (with
/// --responses) recorded actions are answered. The bound address is
/// printed on stdout as `listening on ADDR`.
#[derive(Args, Debug)]
struct ReplayArgs {
    /// Address to listen on; port 0 picks a free port (see the
    /// `listening on` line).
    #[arg(long, default_value = "127.0.0.1:5038")]
    listen: String,
    /// Username the clients must log in with. Without --username and
    /// a secret any login is accepted.
    #[arg(long)]
    username: Option<String>,
    /// Secret for --username (plain `Secret:` or the MD5 `Key`). On the
    /// command line it is visible to every user in `ps`: prefer
    /// AMI2AMQP_REPLAY_SECRET or --secret-file.
    #[arg(long, env = "AMI2AMQP_REPLAY_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Read the secret from the first line of FILE (takes precedence over
    /// --secret).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Send this many events per second to each client (default: as fast
    /// as the client reads).
    #[arg(long, conflicts_with = "timing")]
    rate: Option<f64>,
    /// Reproduce the recorded pace from a `.timing` file (`<seconds>
    /// <cumulative bytes>` per line, `.zst` accepted). Give one per TRACE,
    /// in the same order.
    #[arg(long)]
    timing: Vec<PathBuf>,
    /// Play the stream this many times per client; 0 = forever.
    #[arg(long = "loop", default_value_t = 1)]
    loops: u64,
    /// Answer actions with the responses recorded in SENT_FILE (a
    /// `NAME.sent`) and its `NAME.ami`; the ActionID is rewritten to the
    /// client's. Login, Challenge, Ping, Logoff and Events stay built in.
    #[arg(long, value_name = "SENT_FILE")]
    responses: Option<PathBuf>,
    /// Milliseconds to wait before answering a failed login (Asterisk
    /// waits about a second); the connection is closed after the answer.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    auth_fail_delay: u64,
    /// Also stream the items of event lists recorded in the trace
    /// (answers to the capturing client's actions, which a real server
    /// sends only to that client).
    #[arg(long)]
    include_list_events: bool,
    /// Exit after the first client has disconnected.
    #[arg(long, conflicts_with = "exit_after_clients")]
    once: bool,
    /// Exit after N clients have connected and disconnected.
    #[arg(long, value_name = "N")]
    exit_after_clients: Option<u64>,
    /// Serve TLS, like Asterisk's manager TLS listener (tlsenable), with
    /// this certificate (PEM, the chain if any); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --tls-cert: require every client to present a certificate
    /// signed by a CA of this PEM file.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// The account's write classes, as manager.conf's `write =` (a class
    /// list such as `call,originate`, `all`, or `none`): the `Filter`
    /// action needs `system`, else it gets `Permission denied`.
    #[arg(long, value_name = "CLASSES", default_value = "all")]
    write_classes: String,
    /// Trace files (raw server→client bytes, `.zst` accepted), streamed
    /// one after the other.
    #[arg(required = true, value_name = "TRACE")]
    traces: Vec<PathBuf>,
}

async fn replay(a: ReplayArgs) -> Result<(), BoxError> {
    let pace = match (a.rate, a.timing.is_empty()) {
        (Some(r), _) => Pace::Rate(r),
        (None, false) => Pace::Timing(a.timing),
        (None, true) => Pace::Max,
    };
    let secret = secret_from(a.secret, a.secret_file.as_deref())?;
    let account = match (a.username, secret) {
        (Some(username), Some(secret)) => Some(Account { username, secret }),
        (None, None) => None,
        _ => return Err("--username and a secret (--secret-file, AMI2AMQP_REPLAY_SECRET or --secret) go together".into()),
    };
    let write_classes = match a.write_classes.trim() {
        "none" | "" => 0,
        w => {
            let mask = ami2amqp::ami::EventMask::parse(w);
            if mask.bits() == 0 {
                return Err(format!("--write-classes: no class in {w:?} (classes: system, call, originate, …; all; none)").into());
            }
            mask.bits()
        }
    };
    let config = ReplayConfig {
        write_classes,
        listen: a.listen,
        traces: a.traces,
        account,
        pace,
        loops: a.loops,
        responses: a.responses,
        auth_fail_delay: Duration::from_millis(a.auth_fail_delay),
        include_list_events: a.include_list_events,
        exit_after_clients: if a.once {
            Some(1)
        } else {
            a.exit_after_clients
        },
        tls: match (a.tls_cert, a.tls_key) {
            (Some(cert_file), Some(key_file)) => Some(ReplayTls {
                cert_file,
                key_file,
                client_ca: a.tls_client_ca,
            }),
            _ => None,
        },
    };
    let server = ReplayServer::bind(config).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, events = server.event_count(), "replay listening");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    server.run(shutdown_signal()).await?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AuthArg {
    Plain,
    Md5,
}

/// Record a live Asterisk's AMI stream, byte for byte, into a trace file.
///
/// Logs in, writes every byte received (banner included) to --out, and
/// optionally the timing of each read to --timing. Stops after --duration,
/// on SIGINT/SIGTERM or when the server closes; sends Logoff first and
/// flushes the files.
#[derive(Args, Debug)]
struct RecordArgs {
    /// Asterisk manager address, `host:port`.
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// AMI username (manager.conf section).
    #[arg(long)]
    username: String,
    /// AMI secret. On the command line it is visible to every user in
    /// `ps`: prefer AMI2AMQP_SECRET or --secret-file.
    #[arg(long, env = "AMI2AMQP_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Read the AMI secret from the first line of FILE (takes precedence
    /// over --secret and AMI2AMQP_SECRET).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// How to authenticate: `plain` sends the secret, `md5` uses the
    /// challenge so the secret never crosses the wire.
    #[arg(long, value_enum, default_value_t = AuthArg::Md5)]
    auth: AuthArg,
    /// Events to ask for: `on`, `off` or a class list such as
    /// `call,cdr,user`.
    #[arg(long, default_value = "on")]
    events: String,
    /// Trace file to write; zstd-compressed when the name ends in `.zst`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write `<seconds since connect> <cumulative bytes>` per read to
    /// this file (`.zst`: compressed), for `replay --timing`.
    #[arg(long, value_name = "FILE")]
    timing: Option<PathBuf>,
    /// Stop after this many seconds (fractions allowed; default: until
    /// SIGINT/SIGTERM or the server closes).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Connect with TLS (Asterisk's manager TLS listener, tlsenable, port
    /// 5039 by default); the certificate is verified, no plain-text
    /// fallback.
    #[arg(long)]
    tls: bool,
    /// With --tls: PEM file of the CA(s) to trust (default: the system's).
    #[arg(long, value_name = "PEM", requires = "tls")]
    tls_ca_file: Option<PathBuf>,
    /// With --tls: the name the certificate must carry (default: the host
    /// of --server).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
    /// With --tls: a client certificate to present (PEM; with --tls-key).
    #[arg(long, value_name = "PEM", requires_all = ["tls", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

async fn record(a: RecordArgs) -> Result<(), BoxError> {
    let duration = match a.duration {
        Some(d) if d.is_finite() && d >= 0.0 => Some(Duration::from_secs_f64(d)),
        Some(d) => return Err(format!("--duration must be >= 0 seconds, got {d}").into()),
        None => None,
    };
    let secret = secret_from(a.secret, a.secret_file.as_deref())?
        .ok_or("give the AMI secret: --secret-file FILE, AMI2AMQP_SECRET or --secret")?;
    let credentials = Credentials {
        username: a.username,
        secret,
        auth: match a.auth {
            AuthArg::Plain => AuthType::Plain,
            AuthArg::Md5 => AuthType::Md5,
        },
    };
    let mut config = record::RecordConfig::new(a.server, credentials, a.out);
    config.events = EventMask::parse(&a.events);
    config.timing = a.timing;
    config.duration = duration;
    if a.tls {
        let files = ami2amqp::ami::ClientFiles {
            ca_file: a.tls_ca_file,
            cert_file: a.tls_cert,
            key_file: a.tls_key,
        };
        let name = match &a.tls_server_name {
            Some(n) => n.clone(),
            None => ami2amqp::ami::host_of(&config.server).to_string(),
        };
        config.tls = Some(ami2amqp::ami::AmiTls::new(&files, &name)?);
    }
    record::record(config, shutdown_signal()).await?;
    Ok(())
}

/// Count the messages, events, responses and malformed frames of traces.
///
/// Prints a table per trace, or with --json one JSON object per trace and
/// line with the keys trace, banner, messages, events (name → count),
/// responses (value → count), malformed and fields (event → field names in
/// first-seen order).
#[derive(Args, Debug)]
struct InspectArgs {
    /// Print one JSON object per trace (one per line) instead of a table.
    #[arg(long)]
    json: bool,
    /// Trace files (`.zst` accepted).
    #[arg(required = true, value_name = "TRACE")]
    traces: Vec<PathBuf>,
}

async fn inspect(a: InspectArgs) -> Result<(), BoxError> {
    for path in a.traces {
        let report = tokio::task::spawn_blocking(move || inspect::inspect(&path)).await??;
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", report.to_json())?;
        } else {
            writeln!(out, "{}", report.to_table())?;
        }
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(log: &LogArgs) -> Result<(), BoxError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log_level)
        .map_err(|e| format!("bad --log-level {:?}: {e}", log.log_level))?;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let cap = tracing_subscriber::filter::filter_fn(|m| !carries_credentials(m));
    match log.log_format {
        LogFormat::Text => builder.finish().with(cap).try_init(),
        LogFormat::Json => builder.json().finish().with(cap).try_init(),
    }
    .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(())
}

/// lapin's and amq-protocol's `trace` output: every frame, the
/// connection's `StartOk` with the password in its SASL response
/// included. Dropped whatever the filter says (their `debug` and above
/// stay available).
fn carries_credentials(m: &tracing::Metadata<'_>) -> bool {
    let t = m.target();
    *m.level() == tracing::Level::TRACE && (t.starts_with("lapin") || t.starts_with("amq_protocol"))
}

/// The error and its causes on one line (`a: b: c`), without repeating a
/// cause its parent already printed.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

/// jemalloc rather than glibc's malloc (feature `jemalloc`, on by default):
/// the event path allocates and frees small buffers per event on a few
/// threads, which jemalloc's thread caches serve with less CPU
/// (BENCHMARKS.md, "jemalloc").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log) {
        eprintln!("ami2amqp: error: {}", one_line(e.as_ref()));
        return ExitCode::FAILURE;
    }
    let workers = cli
        .worker_threads
        .map_or_else(default_worker_threads, usize::from);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ami2amqp: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(()) => ExitCode::SUCCESS,
        // stdout closed early (`inspect … | head`): not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ami2amqp: error: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
