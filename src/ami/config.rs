//! `[[server]]`: one Asterisk server as written in the config file
//! (docs/config.md). [`ServerConfig::spec`] builds the pool's
//! [`ServerSpec`] (timeouts, the reconnect policy) once the secret is
//! resolved (`crate::config` resolves secrets).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    AmiTls, AuthType, ClientConfig, Credentials, EventMask, Limits, ServerSpec, SnapshotKind,
};
use crate::config::doc::documented;
use crate::config::reconnect_backoff;
use crate::support::tls::{ClientFiles, host_of};

/// `events = "on"`, `"off"` or a class list.
#[derive(Debug, Deserialize, Serialize, Clone)]
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

documented! {
    /// One Asterisk server (a [[server]] table per server; at least one).
    #[derive(Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ServerConfig {
        /// The server's name (required): {server} in routing keys, the server
        /// of every message, metric labels. 1 to 64 of A-Z a-z 0-9 - _.
        pub name: Spanned<String>,
        /// host:port of Asterisk's manager interface (required; AMI listens
        /// on 5038 by default).
        pub address: Spanned<String>,
        /// The user's section in Asterisk's manager.conf (required).
        pub username: Spanned<String>,
        /// The secret, in this file. Set exactly one of secret, secret_file,
        /// secret_env.
        #[serde(skip_serializing)]
        pub secret: Option<String>,
        /// A file holding the secret (trailing newlines removed).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub secret_file: Option<PathBuf>,
        /// The name of an environment variable holding the secret.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub secret_env: Option<String>,
        /// "md5" (challenge, the secret never crosses the wire) or "plain".
        pub auth: AuthType,
        /// Events: of the event connection: "on", "off", a class list
        /// (["call", "cdr"] or "call,cdr") or a bitmask ("1").
        pub events: EventsCfg,
        /// State the event connection lists after each login, published
        /// as a snapshot on <server>.snapshot.<kind> between a start and an
        /// end marker (docs/snapshots.md): "channels" (CoreShowChannels),
        /// "bridges" (BridgeList), "queues" (QueueStatus), "devices"
        /// (DeviceStateList), "extensions" (ExtensionStateList), "presence"
        /// (PresenceStateList). A kind Asterisk refuses is logged once and
        /// left out. [] turns snapshots off.
        pub snapshot: Vec<SnapshotKind>,
        /// Extra connections for actions (0: actions share the event connection).
        pub action_connections: usize,
        /// Push-down: ask Asterisk not to send what the mappings drop (a
        /// narrower Events: mask, exclude Filters; the Filter action needs
        /// the system write class). A reload that changes it reconnects the
        /// event connection. Off with the facade or action_connections = 0.
        pub push_down: bool,
        /// Seconds between keepalive Pings on every connection (0 disables them).
        pub keepalive_s: u64,
        /// How long an action (and a keepalive Ping) may take by default, in seconds.
        pub action_timeout_s: u64,
        /// TCP connect plus login must finish within this, in seconds.
        pub connect_timeout_s: u64,
        /// First wait before reconnecting to Asterisk, in milliseconds.
        pub reconnect_initial_ms: u64,
        /// Longest wait before reconnecting (doubling, ±20 % jitter).
        pub reconnect_max_ms: u64,
        /// Connect with TLS to the manager's TLS listener (manager.conf
        /// tlsenable, port 5039 by default) on the event and the action
        /// connections alike. A failed handshake is an error, never a
        /// retry in plain text. The tls_* keys need tls = true.
        pub tls: bool,
        /// PEM file of the CA certificate(s) that signed Asterisk's
        /// certificate (unset: the system's CAs).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_ca_file: Option<PathBuf>,
        /// The name Asterisk's certificate must carry (unset: the host of
        /// address).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_server_name: Option<String>,
        /// PEM file of a client certificate to present (with tls_key_file).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_cert_file: Option<PathBuf>,
        /// PEM file of the client certificate's private key.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_key_file: Option<PathBuf>,
    }
}

/// A required string key the file did not write: empty, no position.
fn unset() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

impl Default for ServerConfig {
    /// Every optional key at its default; `name`, `address` and
    /// `username` unset (the checks require them).
    fn default() -> Self {
        ServerConfig {
            name: unset(),
            address: unset(),
            username: unset(),
            secret: None,
            secret_file: None,
            secret_env: None,
            auth: AuthType::default(),
            events: EventsCfg::default(),
            snapshot: SnapshotKind::ALL.to_vec(),
            action_connections: 2,
            push_down: false,
            keepalive_s: 20,
            action_timeout_s: 10,
            connect_timeout_s: 10,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            tls: false,
            tls_ca_file: None,
            tls_server_name: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("name", self.name.get_ref())
            .field("address", self.address.get_ref())
            .field("username", self.username.get_ref())
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("secret_env", &self.secret_env)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Whether a value was written in the file (a default has no position).
pub fn is_written<T>(v: &Spanned<T>) -> bool {
    v.span() != (0..0)
}

impl ServerConfig {
    /// The server name.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// The tls_* keys that are set, by name (they need `tls = true`).
    pub fn tls_keys_set(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.tls_ca_file.is_some() {
            v.push("tls_ca_file");
        }
        if self.tls_server_name.is_some() {
            v.push("tls_server_name");
        }
        if self.tls_cert_file.is_some() {
            v.push("tls_cert_file");
        }
        if self.tls_key_file.is_some() {
            v.push("tls_key_file");
        }
        v
    }

    /// The TLS settings with their files loaded (`None` without
    /// `tls = true`); the error names the key and the file.
    pub fn tls(&self) -> Result<Option<AmiTls>, String> {
        if !self.tls {
            return Ok(None);
        }
        let files = ClientFiles {
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
        };
        let name = match &self.tls_server_name {
            Some(n) => n.as_str(),
            None => host_of(self.address.get_ref()),
        };
        AmiTls::new(&files, name).map(Some)
    }

    /// The pool's view of this server, with its `secret` resolved, the
    /// bridge-wide input `limits` and buffer, and the actions' reply bound.
    pub fn spec(
        &self,
        secret: String,
        limits: Limits,
        max_buffered_bytes: usize,
        max_list_bytes: usize,
    ) -> ServerSpec {
        let credentials = Credentials {
            username: self.username.get_ref().clone(),
            secret,
            auth: self.auth,
        };
        let mut c = ClientConfig::new(self.name(), self.address.get_ref(), credentials);
        c.events = self.events.mask();
        c.keepalive = Duration::from_secs(self.keepalive_s);
        c.action_timeout = Duration::from_secs(self.action_timeout_s.max(1));
        c.connect_timeout = Duration::from_secs(self.connect_timeout_s.max(1));
        c.backoff = reconnect_backoff(self.reconnect_initial_ms, self.reconnect_max_ms);
        c.limits = limits;
        c.max_buffered_bytes = max_buffered_bytes;
        c.max_list_bytes = max_list_bytes;
        c.snapshot = self.snapshot.clone();
        ServerSpec {
            client: c,
            action_connections: self.action_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_applies_the_rules() {
        let s = ServerConfig {
            name: Spanned::new(1..2, "pbx1".into()),
            address: Spanned::new(3..4, "h:5038".into()),
            username: Spanned::new(5..6, "u".into()),
            keepalive_s: 0,
            action_timeout_s: 0,
            connect_timeout_s: 0,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 900,
            action_connections: 3,
            events: EventsCfg::One("off".into()),
            ..ServerConfig::default()
        };
        let limits = Limits {
            max_line: 2048,
            ..Limits::default()
        };
        let spec = s.spec("sec".into(), limits, 1 << 20, 4096);
        let c = &spec.client;
        assert_eq!(spec.action_connections, 3);
        assert_eq!((&*c.server, c.address.as_str()), ("pbx1", "h:5038"));
        assert_eq!(c.credentials.secret, "sec");
        assert_eq!(c.events, EventMask::Off);
        // 0 disables the keepalive; the timeouts are at least a second.
        assert_eq!(c.keepalive, Duration::ZERO);
        assert_eq!(c.action_timeout, Duration::from_secs(1));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.backoff.initial, Duration::from_millis(100));
        assert_eq!(c.backoff.max, Duration::from_millis(900));
        assert_eq!(c.backoff.jitter, 0.2);
        assert_eq!(c.limits.max_line, 2048);
        assert_eq!((c.max_buffered_bytes, c.max_list_bytes), (1 << 20, 4096));
    }
}
