//! The configuration file (`ami2amqp run --config FILE`).
//!
//! One TOML file says where RabbitMQ is, which Asterisk servers to read, where
//! the mappings and the spool live and where metrics are served.
//! docs/config.md documents every key with its default, and
//! contrib/ami2amqp.toml is a working example. Every key except the
//! server list has a default, so a minimal file is five lines (one
//! `[[server]]` with name, address, username and secret).
//!
//! Each section's struct lives beside the component it configures (re-exported
//! here), with its defaults in its one `Default` and the method that builds
//! the component's runtime settings. [`example`] prints them all as
//! `ami2amqp config example`, comments taken from their doc comments
//! ([`doc`]); tests/config_docs.rs holds docs/config.md to that output.
//!
//! Validation happens here, before anything connects: a typo in a key is a
//! `file:line:col` error (unknown keys are rejected, never ignored), and
//! secrets are resolved (`secret`, `secret_file` or `secret_env`) so that a
//! missing secret file stops the start with one clear line instead of a
//! login loop. Secrets never reach `Debug` output or logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ami::ServerSpec;
use crate::support::backoff::Backoff;
use crate::support::text::line_col;

mod amqp_url;
pub(crate) mod check;
pub(crate) mod doc;
pub(crate) mod example;

pub use crate::actions::ActionsConfig;
pub use crate::ami::config::{EventsCfg, ServerConfig};
pub use crate::amqp::config::{AmqpConfig, DEFAULT_URL};
pub use crate::amqp::spool::{OnFull, SpoolSettings};
pub use crate::bridge::config::{BridgeConfig, StatusConfig};
pub use crate::facade::{FacadeConfig, FacadeUser};
pub use crate::fleet::FleetConfig;
pub use crate::mapping::config::MappingsConfig;
pub use crate::metrics::config::MetricsConfig;
pub use amqp_url::{parse_amqp_url, redact_url, url_user};
pub use check::others_can_access;
pub use example::example;

/// The `[amqp]` section under its former name (benches use it).
pub type Amqp = AmqpConfig;

/// A configuration error, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole file: one section per component, each defined beside the
/// component it configures (with its defaults and the method that builds
/// the component's runtime settings).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This instance's name in logs, metrics, status messages and the
    /// fleet (default: the host name); unique within a fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<toml::Spanned<String>>,
    pub amqp: AmqpConfig,
    #[serde(rename = "server")]
    pub servers: Vec<ServerConfig>,
    pub mappings: MappingsConfig,
    pub spool: SpoolSettings,
    pub metrics: MetricsConfig,
    pub bridge: BridgeConfig,
    pub status: StatusConfig,
    /// The action path (AMQP → AMI): docs/actions.md.
    pub actions: ActionsConfig,
    /// The AMI facade (AMI clients → bridge): docs/facade.md.
    pub facade: FacadeConfig,
    /// Several instances sharing servers: docs/scaling.md.
    pub fleet: FleetConfig,
    /// Where the file was read from (for messages; relative paths in the
    /// file are relative to the working directory).
    #[serde(skip)]
    pub path: PathBuf,
    /// Problems that do not stop the start (a secret file others can
    /// read), one line each, ready to print or log.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The reconnect policy of `reconnect_initial_ms` / `reconnect_max_ms`
/// (`[amqp]` and every `[[server]]`): doubling waits, each ±20 % at random
/// so that bridges do not hammer a restarting peer in step.
pub fn reconnect_backoff(initial_ms: u64, max_ms: u64) -> Backoff {
    Backoff {
        initial: Duration::from_millis(initial_ms),
        max: Duration::from_millis(max_ms),
        jitter: 0.2,
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
            let pos = p.at.map(|at| line_col(text, at));
            let at = match pos.or_else(|| check::locate(text, &p.key)) {
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

    /// This instance's name: the `instance` key, else the host name
    /// (`"ami2amqp"` if even that cannot be read).
    pub fn instance_name(&self) -> String {
        match &self.instance {
            Some(i) => i.get_ref().clone(),
            None => host_name().unwrap_or_else(|| "ami2amqp".to_string()),
        }
    }

    /// The pool's view of the servers, secrets resolved.
    pub fn server_specs(&self) -> Result<Vec<ServerSpec>, ConfigError> {
        let limits = self.bridge.limits();
        self.servers
            .iter()
            .map(|s| {
                let what = format!("server {:?}", s.name());
                let secret = resolve_secret(&what, &s.secret, &s.secret_file, &s.secret_env)
                    .map_err(|m| self.err(m))?;
                let mut spec = s.spec(
                    secret,
                    limits,
                    self.bridge.max_buffered_bytes,
                    self.actions.max_reply_bytes,
                );
                spec.client.tls = s.tls().map_err(|m| self.err(format!("{what}: {m}")))?;
                Ok(spec)
            })
            .collect()
    }
}

/// The host name (gethostname(2)), when it is a usable instance name.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?;
    check::instance_name_ok(name).then(|| name.to_string())
}

/// The secret of `what` (`server "pbx1"`, `facade user "crm"`) from the
/// one of `secret`, `secret_file`, `secret_env` that is set.
pub(crate) fn resolve_secret(
    what: &str,
    secret: &Option<String>,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<String, String> {
    let (v, from) = if let Some(v) = secret {
        (v.clone(), "secret".to_string())
    } else if let Some(f) = file {
        let v = read_secret_file(f).map_err(|e| format!("{what}: cannot read secret_file {e}"))?;
        (v, format!("secret_file {}", f.display()))
    } else if let Some(v) = env {
        let val = std::env::var(v)
            .map_err(|_| format!("{what}: environment variable {v} (secret_env) is not set"))?;
        (val, format!("secret_env {v}"))
    } else {
        return Err(format!("{what}: no secret"));
    };
    if v.is_empty() || v.chars().any(char::is_control) {
        return Err(format!(
            "{what}: the secret from {from} is empty or contains a control character"
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
    use crate::ami::{AuthType, EventMask};

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("c.toml"))
    }

    const MIN: &str = "[[server]]\nname = \"pbx1\"\naddress = \"127.0.0.1:5038\"\nusername = \"bridge\"\nsecret = \"s3cret\"\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.amqp.urls(), vec![DEFAULT_URL.to_string()]);
        assert_eq!(c.amqp.confirm_window, 256);
        assert_eq!(c.spool.max_bytes, 1 << 30);
        assert_eq!(c.metrics.listen(), Some("127.0.0.1:9187"));
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

    /// Semantic errors about names, addresses and URLs point at the value
    /// (its `toml::Spanned` position), like type errors do.
    #[test]
    fn semantic_errors_carry_the_value_position() {
        let two = format!("{MIN}{MIN}");
        let e = parse(&two).unwrap_err();
        assert_eq!(
            e.0,
            "c.toml:7:8: server[1].name: server name \"pbx1\" is used twice"
        );
        let e = parse(&MIN.replace("127.0.0.1:5038", "pbx")).unwrap_err();
        assert_eq!(
            e.0,
            "c.toml:3:11: server[0].address: \"pbx\" must be host:port (AMI listens on host:5038 by default)"
        );
        let t = format!("{MIN}[amqp]\nurls = [\"amqp://h/\",\n  \"http://u:pw@h/\"]\n");
        let e = parse(&t).unwrap_err();
        assert!(
            e.0.starts_with("c.toml:8:3: amqp.urls[1]: cannot be used: must start with amqp://"),
            "{e}"
        );
        let e = parse(&format!("{MIN}[metrics]\nlisten = \"h:0\"\n")).unwrap_err();
        assert!(
            e.0.starts_with("c.toml:7:10: metrics.listen: \"h:0\" has port"),
            "{e}"
        );
        // Inline tables too.
        let t = "server = [{ name = \"a\", address = \"x\", username = \"u\", secret = \"s\" }]\n";
        let e = parse(t).unwrap_err();
        assert!(e.0.starts_with("c.toml:1:35: server[0].address:"), "{e}");
    }

    #[test]
    fn fleet_checks() {
        let t = format!("instance = \"bridge a\"\n{MIN}");
        let e = parse(&t).unwrap_err();
        assert!(
            e.0.starts_with("c.toml:1:12: instance: \"bridge a\" must be"),
            "{e}"
        );
        let t = format!("{MIN}action_connections = 0\n[fleet]\nenabled = true\n");
        let e = parse(&t).unwrap_err();
        assert!(
            e.0.contains("server[0].action_connections: must be at least 1"),
            "{e}"
        );
        let t = format!("{MIN}[fleet]\nenabled = true\npeer_timeout_ms = 1500\n");
        let e = parse(&t).unwrap_err();
        assert!(
            e.0.contains("fleet.peer_timeout_ms: 1500 is out of range"),
            "{e}"
        );
        let t = format!("{MIN}[fleet]\nenabled = true\n[facade]\nlisten = \"127.0.0.1:5039\"\n");
        let c = parse(&t).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("fleet.enabled: with the AMI facade on")),
            "{:?}",
            c.warnings
        );
        let c = parse(&format!("instance = \"bridge-a.1\"\n{MIN}")).unwrap();
        assert_eq!(c.instance_name(), "bridge-a.1");
        assert!(!parse(MIN).unwrap().instance_name().is_empty());
    }

    /// `name`, `address` and `username` have no default: a server without
    /// one is an error naming the key, with every other problem of the file.
    #[test]
    fn required_server_keys() {
        let e = parse(&MIN.replace("name = \"pbx1\"\n", "")).unwrap_err();
        assert!(e.0.contains("server[0]: missing field `name`"), "{e}");
        let t = MIN.replace("username = \"bridge\"\n", "") + "[spool]\nmax_bytes = 0\n";
        let e = parse(&t).unwrap_err();
        assert!(e.0.contains("server[0]: missing field `username`"), "{e}");
        assert!(e.0.contains("spool.max_bytes: 0 is out of range"), "{e}");
        // Written but empty is the name rule's error, not "missing".
        let e = parse(&MIN.replace("\"pbx1\"", "\"\"")).unwrap_err();
        assert!(
            e.0.starts_with("c.toml:2:8: server[0].name: server name \"\" must be"),
            "{e}"
        );
    }
}
