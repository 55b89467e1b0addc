//! The configuration file (`ami2amqp run --config FILE`).
//!
//! One TOML file says where RabbitMQ is, which Asterisk servers to read, where
//! the mappings and the spool live and where metrics are served.
//! docs/config.md documents every key with its default, and
//! contrib/ami2amqp.toml is a working example. Every key except the
//! server list has a default, so a minimal file is five lines (one
//! `[[server]]` with name, address, username and secret).
//!
//! Validation happens here, before anything connects: a typo in a key is a
//! `file:line:col` error (unknown keys are rejected, never ignored), and
//! secrets are resolved (`secret`, `secret_file` or `secret_env`) so that a
//! missing secret file stops the start with one clear line instead of a
//! login loop. Secrets never reach `Debug` output or logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ami::{AuthType, ClientConfig, Credentials, EventMask, Limits, ServerSpec};
use crate::support::backoff::Backoff;
use crate::support::text::line_col;

mod amqp_url;
pub mod check;

pub use amqp_url::{parse_amqp_url, redact_url, url_user};
pub use check::others_can_access;

/// A configuration error, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub amqp: Amqp,
    #[serde(default, rename = "server")]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub mappings: MappingsCfg,
    #[serde(default)]
    pub spool: Spool,
    #[serde(default)]
    pub metrics: MetricsCfg,
    #[serde(default)]
    pub bridge: Bridge,
    #[serde(default)]
    pub status: Status,
    /// The action path (AMQP → AMI): docs/actions.md.
    #[serde(default)]
    pub actions: crate::actions::ActionsConfig,
    /// Where the file was read from (for messages; relative paths in the
    /// file are relative to the working directory).
    #[serde(skip)]
    pub path: PathBuf,
    /// Problems that do not stop the start (a secret file others can
    /// read), one line each, ready to print or log.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amqp {
    /// One broker URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Several (cluster nodes), tried in turn.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Publishes awaiting the broker's confirm at once.
    #[serde(default = "d_confirm_window")]
    pub confirm_window: usize,
    /// Declare the exchanges the mappings use at start (durable).
    #[serde(default = "d_true")]
    pub declare_exchanges: bool,
    /// Alternate exchange for messages no queue is bound for ("" = none:
    /// such messages are counted as returned and dropped by the broker).
    #[serde(default = "d_alternate")]
    pub alternate_exchange: String,
    #[serde(default = "d_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "d_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Seconds to wait for in-flight confirms at shutdown.
    #[serde(default = "d_shutdown_timeout")]
    pub shutdown_timeout_s: u64,
}

fn d_confirm_window() -> usize {
    256
}
fn d_true() -> bool {
    true
}
fn d_alternate() -> String {
    "ami.unroutable".into()
}
fn d_reconnect_initial() -> u64 {
    500
}
fn d_reconnect_max() -> u64 {
    30_000
}
fn d_shutdown_timeout() -> u64 {
    10
}

impl Default for Amqp {
    fn default() -> Self {
        Amqp {
            url: None,
            urls: Vec::new(),
            confirm_window: d_confirm_window(),
            declare_exchanges: true,
            alternate_exchange: d_alternate(),
            reconnect_initial_ms: d_reconnect_initial(),
            reconnect_max_ms: d_reconnect_max(),
            shutdown_timeout_s: d_shutdown_timeout(),
        }
    }
}

/// URLs redacted: `Debug` output may end up in a log.
impl fmt::Debug for Amqp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Amqp")
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("confirm_window", &self.confirm_window)
            .finish_non_exhaustive()
    }
}

impl Amqp {
    /// The broker URLs in the order they are tried.
    pub fn urls(&self) -> Vec<String> {
        let mut v: Vec<String> = self.url.iter().cloned().collect();
        v.extend(self.urls.iter().cloned());
        if v.is_empty() {
            v.push(default_url());
        }
        v
    }

    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: Duration::from_millis(self.reconnect_initial_ms),
            max: Duration::from_millis(self.reconnect_max_ms),
            jitter: 0.2,
        }
    }
}

/// `events = "on"`, `"off"` or a class list.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum EventsCfg {
    One(String),
    List(Vec<String>),
}

impl Default for EventsCfg {
    fn default() -> Self {
        EventsCfg::One("on".into())
    }
}

impl EventsCfg {
    pub fn mask(&self) -> EventMask {
        match self {
            EventsCfg::One(s) => EventMask::parse(s),
            EventsCfg::List(l) => EventMask::Classes(l.iter().map(|s| s.to_lowercase()).collect()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    /// `host:port` of Asterisk's AMI (port 5038 by default).
    pub address: String,
    pub username: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub auth: AuthType,
    #[serde(default)]
    pub events: EventsCfg,
    #[serde(default = "d_action_connections")]
    pub action_connections: usize,
    #[serde(default = "d_keepalive")]
    pub keepalive_s: u64,
    #[serde(default = "d_action_timeout")]
    pub action_timeout_s: u64,
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_s: u64,
    #[serde(default = "d_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "d_reconnect_max")]
    pub reconnect_max_ms: u64,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("secret_env", &self.secret_env)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

fn d_action_connections() -> usize {
    2
}
fn d_keepalive() -> u64 {
    20
}
fn d_action_timeout() -> u64 {
    10
}
fn d_connect_timeout() -> u64 {
    10
}

/// `[mappings]`: where the mapping files are (docs/config.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingsCfg {
    /// One directory (the default set: `mappings`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Several directories, in order: later ones add files or replace the
    /// files of the same name (`["mappings", "mappings/examples/x"]`).
    /// Give `dir` or `dirs`, not both.
    #[serde(default)]
    pub dirs: Option<Vec<PathBuf>>,
    /// Reload when a file in one of the directories changes (SIGHUP always
    /// reloads).
    #[serde(default = "d_true")]
    pub watch: bool,
}

impl MappingsCfg {
    /// The directories to load, in order (`dir`, `dirs`, or `mappings`).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match (&self.dir, &self.dirs) {
            (_, Some(v)) => v.clone(),
            (Some(d), None) => vec![d.clone()],
            (None, None) => vec![PathBuf::from("mappings")],
        }
    }

    /// The rules [`Self::dirs`] relies on: (key, message) of the problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match (&self.dir, &self.dirs) {
            (Some(_), Some(_)) => Err((
                "mappings.dirs",
                "give `dir` or `dirs`, not both (`dirs` lists every directory, the default set first)"
                    .into(),
            )),
            (_, Some(v)) if v.is_empty() => Err((
                "mappings.dirs",
                "is empty: list at least one directory (e.g. [\"mappings\"])".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl Default for MappingsCfg {
    fn default() -> Self {
        MappingsCfg {
            dir: None,
            dirs: None,
            watch: true,
        }
    }
}

/// What to do when the spool is full.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// New events are dropped (and counted); the oldest are kept.
    #[default]
    RefuseNew,
    /// The oldest spooled events are dropped (and counted) to make room.
    DropOldest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spool {
    #[serde(default = "d_spool_dir")]
    pub dir: PathBuf,
    #[serde(default = "d_spool_max")]
    pub max_bytes: u64,
    #[serde(default = "d_segment")]
    pub segment_bytes: u64,
    #[serde(default)]
    pub on_full: OnFull,
    /// How often written spool data is fsync'ed (bounds what a power loss
    /// can take; a `kill -9` loses nothing that was written).
    #[serde(default = "d_fsync")]
    pub fsync_interval_ms: u64,
}

fn d_spool_dir() -> PathBuf {
    PathBuf::from("/var/lib/ami2amqp/spool")
}
fn d_spool_max() -> u64 {
    1 << 30
}
fn d_segment() -> u64 {
    64 << 20
}
fn d_fsync() -> u64 {
    200
}

impl Default for Spool {
    fn default() -> Self {
        Spool {
            dir: d_spool_dir(),
            max_bytes: d_spool_max(),
            segment_bytes: d_segment(),
            on_full: OnFull::default(),
            fsync_interval_ms: d_fsync(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsCfg {
    /// `host:port` for `/metrics` and `/healthz`; "" disables.
    #[serde(default = "d_metrics")]
    pub listen: String,
}

fn d_metrics() -> String {
    "127.0.0.1:9187".into()
}

impl Default for MetricsCfg {
    fn default() -> Self {
        MetricsCfg {
            listen: d_metrics(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    /// Events read but not yet written to the spool, per AMI connection,
    /// in bytes (the in-memory budget in front of the disk).
    #[serde(default = "d_buffer")]
    pub max_buffered_bytes: usize,
    /// Longest AMI line accepted, in bytes.
    #[serde(default = "d_max_line")]
    pub max_line_bytes: usize,
    /// Largest AMI message accepted, in bytes.
    #[serde(default = "d_max_message")]
    pub max_message_bytes: usize,
}

fn d_buffer() -> usize {
    16 << 20
}
fn d_max_line() -> usize {
    Limits::default().max_line
}
fn d_max_message() -> usize {
    Limits::default().max_message
}

impl Default for Bridge {
    fn default() -> Self {
        Bridge {
            max_buffered_bytes: d_buffer(),
            max_line_bytes: d_max_line(),
            max_message_bytes: d_max_message(),
        }
    }
}

/// Where the bridge announces that a server connected or disconnected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    #[serde(default = "d_status_exchange")]
    pub exchange: String,
    /// `{server}` is replaced by the server name.
    #[serde(default = "d_status_key")]
    pub routing_key: String,
}

fn d_status_exchange() -> String {
    "ami.events".into()
}
fn d_status_key() -> String {
    "{server}.bridge.status".into()
}

impl Default for Status {
    fn default() -> Self {
        Status {
            exchange: d_status_exchange(),
            routing_key: d_status_key(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("{}: cannot read config file: {e}", path.display()))
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text (`path` is used for messages
    /// and to resolve relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let (l, c) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError(format!(
                "{}:{l}:{c}: {}",
                path.display(),
                e.message().trim()
            ))
        })?;
        cfg.path = path.to_path_buf();
        cfg.validate(text)?;
        Ok(cfg)
    }

    fn err(&self, msg: String) -> ConfigError {
        ConfigError(format!("{}: {msg}", self.path.display()))
    }

    /// Runs [`check::check`] (the same checks for `check` and `run`):
    /// errors become one `file:line:col: key: message` line each (the
    /// position when the key is written in `text`), warnings are kept in
    /// `self.warnings`.
    fn validate(&mut self, text: &str) -> Result<(), ConfigError> {
        let found = check::check(self);
        let line = |p: &check::Problem| {
            let at = match check::locate(text, &p.key) {
                Some((l, c)) => format!("{}:{l}:{c}", self.path.display()),
                None => self.path.display().to_string(),
            };
            match p.key.as_str() {
                "" => format!("{at}: {}", p.msg),
                k => format!("{at}: {k}: {}", p.msg),
            }
        };
        self.warnings = found
            .warnings
            .iter()
            .map(|p| format!("warning: {}", line(p)))
            .collect();
        if found.errors.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = found.errors.iter().map(line).collect();
        Err(ConfigError(lines.join("\n")))
    }

    /// The pool's view of the servers, secrets resolved.
    pub fn server_specs(&self) -> Result<Vec<ServerSpec>, ConfigError> {
        let limits = Limits {
            max_line: self.bridge.max_line_bytes,
            max_message: self.bridge.max_message_bytes,
            ..Limits::default()
        };
        self.servers
            .iter()
            .map(|s| {
                let secret = resolve_secret(s).map_err(|m| self.err(m))?;
                let mut c = ClientConfig::new(
                    &s.name,
                    &s.address,
                    Credentials {
                        username: s.username.clone(),
                        secret,
                        auth: s.auth,
                    },
                );
                c.events = s.events.mask();
                c.keepalive = Duration::from_secs(s.keepalive_s);
                c.action_timeout = Duration::from_secs(s.action_timeout_s.max(1));
                c.connect_timeout = Duration::from_secs(s.connect_timeout_s.max(1));
                c.backoff = Backoff {
                    initial: Duration::from_millis(s.reconnect_initial_ms),
                    max: Duration::from_millis(s.reconnect_max_ms),
                    jitter: 0.2,
                };
                c.limits = limits;
                c.max_buffered_bytes = self.bridge.max_buffered_bytes;
                c.max_list_bytes = self.actions.max_reply_bytes;
                Ok(ServerSpec {
                    client: c,
                    action_connections: s.action_connections,
                })
            })
            .collect()
    }
}

fn resolve_secret(s: &Server) -> Result<String, String> {
    let (v, from) = if let Some(v) = &s.secret {
        (v.clone(), "secret".to_string())
    } else if let Some(f) = &s.secret_file {
        let v = read_secret_file(f)
            .map_err(|e| format!("server {:?}: cannot read secret_file {e}", s.name))?;
        (v, format!("secret_file {}", f.display()))
    } else if let Some(v) = &s.secret_env {
        let val = std::env::var(v).map_err(|_| {
            format!(
                "server {:?}: environment variable {v} (secret_env) is not set",
                s.name
            )
        })?;
        (val, format!("secret_env {v}"))
    } else {
        return Err(format!("server {:?}: no secret", s.name));
    };
    if v.is_empty() || v.chars().any(char::is_control) {
        return Err(format!(
            "server {:?}: the secret from {from} is empty or contains a control character",
            s.name
        ));
    }
    Ok(v)
}

/// The first line of a secret file, without its line ending (`--secret-file`,
/// `--amqp-file`, `secret_file`). The error starts with the path.
pub fn read_secret_file(f: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
    Ok(t.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("c.toml"))
    }

    const MIN: &str = "[[server]]\nname = \"pbx1\"\naddress = \"127.0.0.1:5038\"\nusername = \"bridge\"\nsecret = \"s3cret\"\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.amqp.urls(), vec![default_url()]);
        assert_eq!(c.amqp.confirm_window, 256);
        assert_eq!(c.spool.max_bytes, 1 << 30);
        assert_eq!(c.metrics.listen, "127.0.0.1:9187");
        assert_eq!(c.mappings.dirs(), [PathBuf::from("mappings")]);
        let specs = c.server_specs().unwrap();
        assert_eq!(specs[0].action_connections, 2);
        assert_eq!(specs[0].client.credentials.secret, "s3cret");
        assert_eq!(specs[0].client.credentials.auth, AuthType::Md5);
        assert!(!format!("{:?}", c.servers[0]).contains("s3cret"));
        let t =
            format!("{MIN}[amqp]\nurl = \"amqp://u:p@ss@h/\"\nurls = [\"amqp://u:p@ss@h2/\"]\n");
        let c = parse(&t).unwrap();
        let d = format!("{c:?}");
        assert!(
            !d.contains("p@ss") && d.contains("amqp://u:***@h2:5672/"),
            "{d}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_position() {
        let e = parse(&format!("{MIN}secrett = \"x\"\n")).unwrap_err();
        assert!(
            e.0.starts_with("c.toml:6:1: unknown field `secrett`"),
            "{e}"
        );
        let e = parse("[amqp]\nurl = 5\n").unwrap_err();
        assert!(e.0.starts_with("c.toml:2:7:"), "{e}");
    }

    #[test]
    fn semantic_errors() {
        assert!(parse("").unwrap_err().0.contains("no [[server]]"));
        let e = parse(&MIN.replace("secret = \"s3cret\"\n", "")).unwrap_err();
        assert!(e.0.contains("exactly one of `secret`"), "{e}");
        let e = parse(&MIN.replace("pbx1", "pbx.1")).unwrap_err();
        assert!(e.0.contains("must be 1 to 64 characters of"), "{e}");
        let e = parse(&format!("{MIN}[amqp]\nurl = \"http://x:y@h\"\n")).unwrap_err();
        assert!(
            e.0.contains("must start with amqp://") && !e.0.contains(":y@"),
            "{e}"
        );
    }

    #[test]
    fn mappings_dir_or_dirs() {
        let dirs = |t: &str| parse(&format!("{MIN}[mappings]\n{t}")).map(|c| c.mappings.dirs());
        assert_eq!(dirs("dir = \"m\"\n").unwrap(), [PathBuf::from("m")]);
        assert_eq!(
            dirs("dirs = [\"m\", \"m/examples/x\"]\n").unwrap(),
            [PathBuf::from("m"), PathBuf::from("m/examples/x")]
        );
        let e = dirs("dir = \"m\"\ndirs = [\"m\"]\n").unwrap_err();
        assert!(
            e.0.starts_with("c.toml:8:8: mappings.dirs: give `dir` or `dirs`, not both"),
            "{e}"
        );
        let e = dirs("dirs = []\n").unwrap_err();
        assert!(
            e.0.starts_with("c.toml:7:8: mappings.dirs: is empty"),
            "{e}"
        );
    }

    #[test]
    fn secret_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "fromfile\n").unwrap();
        let t = MIN.replace(
            "secret = \"s3cret\"",
            &format!("secret_file = {:?}", f.display().to_string()),
        );
        assert_eq!(
            parse(&t).unwrap().server_specs().unwrap()[0]
                .client
                .credentials
                .secret,
            "fromfile"
        );
        let t = MIN.replace("secret = \"s3cret\"", "secret_file = \"/nonexistent/x\"");
        let e = parse(&t).unwrap().server_specs().unwrap_err();
        assert!(
            e.0.contains("cannot read secret_file /nonexistent/x"),
            "{e}"
        );
        let t = MIN.replace(
            "secret = \"s3cret\"",
            "secret_env = \"AMI2AMQP_TEST_UNSET_VAR\"",
        );
        let e = parse(&t).unwrap().server_specs().unwrap_err();
        assert!(e.0.contains("AMI2AMQP_TEST_UNSET_VAR"), "{e}");
    }

    #[test]
    fn events_forms() {
        let t = format!("{MIN}events = [\"call\", \"CDR\"]\n");
        let c = parse(&t).unwrap();
        assert_eq!(
            c.servers[0].events.mask(),
            EventMask::Classes(vec!["call".into(), "cdr".into()])
        );
        let t = format!("{MIN}events = \"off\"\n");
        assert_eq!(parse(&t).unwrap().servers[0].events.mask(), EventMask::Off);
    }
}
