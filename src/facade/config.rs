//! `[facade]` and `[[facade.user]]`: the AMI-compatible listener as written
//! in the config file (docs/facade.md, docs/config.md). Validation lives in
//! `crate::config::check` with the rest; [`FacadeConfig::users`] resolves
//! the users' secrets and classes into what the sessions check against.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ami_proto::{Account, EventFilter, EventMask, FilterSet};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::doc::documented;

documented! {
    /// The AMI facade: legacy AMI applications connect here instead of to
    /// Asterisk, and get the events of the bridge's own event connection
    /// and their actions run on its action connections (docs/facade.md).
    /// Without `listen` there is no facade.
    #[derive(Clone, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct FacadeConfig {
        /// host:port to listen on, e.g. "127.0.0.1:5038" (not set: no facade).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub listen: Option<Spanned<String>>,
        /// A client that takes longer than this to accept one message is
        /// dropped, in milliseconds (Asterisk's writetimeout).
        pub writetimeout_ms: u64,
        /// A client that has not logged in after this many seconds is
        /// disconnected (Asterisk's authtimeout).
        pub authtimeout_s: u64,
        /// Most sessions not yet logged in at once; more are closed at
        /// accept (Asterisk's authlimit).
        pub authlimit: usize,
        /// Most sessions at once, logged in or not; more are closed at accept.
        pub max_sessions: usize,
        /// How long a forwarded action may take, in seconds; a synchronous
        /// Originate gets its own Timeout plus 5 s when that is longer.
        pub action_timeout_s: u64,
        /// Events a session may have waiting; a client that falls further
        /// behind is dropped (the events are shared by all sessions: this
        /// bounds memory whatever the number of clients).
        pub queue_events: usize,
        /// The AMI version in the banner until a server has connected (then
        /// the first connected server's, as its banner says).
        pub version: String,
        /// Close new connections at once while none of the servers is
        /// connected, so that clients retry (their own reconnect logic).
        pub refuse_when_down: bool,
        /// Serve TLS with this certificate (chain, PEM), as Asterisk's
        /// tlsenable listener does; with tls_key_file. Not set: plain TCP.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_cert_file: Option<PathBuf>,
        /// The private key (PEM) of tls_cert_file.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_key_file: Option<PathBuf>,
        /// Ask every client for a certificate signed by a CA of this file
        /// (PEM); without it clients are not asked for one.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_client_ca_file: Option<PathBuf>,
        /// The users: one [[facade.user]] table each.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub user: Vec<FacadeUser>,
    }
}

impl Default for FacadeConfig {
    fn default() -> Self {
        FacadeConfig {
            listen: None,
            writetimeout_ms: 100,
            authtimeout_s: 30,
            authlimit: 50,
            max_sessions: 1000,
            action_timeout_s: 60,
            queue_events: 4096,
            version: "11.0.0".into(),
            refuse_when_down: true,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            user: Vec::new(),
        }
    }
}

impl fmt::Debug for FacadeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FacadeConfig")
            .field("listen", &self.listen())
            .field("users", &self.user.len())
            .finish_non_exhaustive()
    }
}

documented! {
    /// One login of the facade, like a section of Asterisk's manager.conf.
    #[derive(Clone, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct FacadeUser {
        /// The Username clients log in with (required; compared
        /// case-insensitively, as Asterisk does).
        pub name: Spanned<String>,
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
        /// AMI read classes: the events this user may receive ("all" for every
        /// class; none by default, as in manager.conf).
        pub read: Vec<String>,
        /// AMI write classes: the actions this user may run (learnt per server
        /// from ListCommands; none by default).
        pub write: Vec<String>,
        /// The servers this user sees (names of [[server]] tables; all when
        /// not set). The first is the default for actions without `Server:`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub servers: Vec<String>,
        /// Filters every session of this user starts with, in Asterisk's
        /// syntax ("!Event: VarSet" excludes; manager.conf's eventfilter).
        pub filters: Vec<String>,
    }
}

impl Default for FacadeUser {
    fn default() -> Self {
        FacadeUser {
            name: Spanned::new(0..0, String::new()),
            secret: None,
            secret_file: None,
            secret_env: None,
            read: Vec::new(),
            write: Vec::new(),
            servers: Vec::new(),
            filters: Vec::new(),
        }
    }
}

impl fmt::Debug for FacadeUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FacadeUser")
            .field("name", self.name.get_ref())
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("secret_env", &self.secret_env)
            .field("read", &self.read)
            .field("write", &self.write)
            .field("servers", &self.servers)
            .field("filters", &self.filters)
            .finish()
    }
}

/// A user of the running facade: its account (what the AMI session checks)
/// and the servers it may see.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub account: Account,
    /// Allowed servers, the default first (never empty).
    pub servers: Vec<std::sync::Arc<str>>,
}

impl FacadeConfig {
    /// The listen address, when the facade is on.
    pub fn listen(&self) -> Option<&str> {
        self.listen.as_ref().map(|l| l.get_ref().as_str())
    }

    /// The TLS server configuration, when `tls_cert_file` and
    /// `tls_key_file` are set (both or neither: `check` says so).
    pub fn tls_server_config(&self) -> Result<Option<rustls::ServerConfig>, String> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) if self.tls_client_ca_file.is_none() => Ok(None),
            (Some(cert), Some(key)) => crate::support::tls::server_config_named(
                cert,
                key,
                self.tls_client_ca_file.as_deref(),
                [
                    "facade.tls_cert_file",
                    "facade.tls_key_file",
                    "facade.tls_client_ca_file",
                ],
            )
            .map(Some),
            _ => Err(
                "facade: set both tls_cert_file and tls_key_file (tls_client_ca_file needs them)"
                    .into(),
            ),
        }
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.writetimeout_ms)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.authtimeout_s)
    }

    pub fn action_timeout(&self) -> Duration {
        Duration::from_secs(self.action_timeout_s)
    }

    /// The users with their secrets resolved; `all_servers` in
    /// configuration order. Errors name the user.
    pub fn users(&self, all_servers: &[std::sync::Arc<str>]) -> Result<Vec<User>, String> {
        self.user.iter().map(|u| u.resolve(all_servers)).collect()
    }
}

impl FacadeUser {
    fn resolve(&self, all_servers: &[std::sync::Arc<str>]) -> Result<User, String> {
        let name = self.name.get_ref().clone();
        let what = format!("facade user {name:?}");
        let secret = crate::config::resolve_secret(
            &what,
            &self.secret,
            &self.secret_file,
            &self.secret_env,
        )?;
        let mut filters = FilterSet::default();
        for (i, f) in self.filters.iter().enumerate() {
            let filter = EventFilter::legacy(f)
                .map_err(|e| format!("{what}: filters[{i}]: {}", e.asterisk_message()))?;
            filters.add(filter);
        }
        let servers = if self.servers.is_empty() {
            all_servers.to_vec()
        } else {
            self.servers
                .iter()
                .map(|s| {
                    all_servers
                        .iter()
                        .find(|a| a.as_ref() == s.as_str())
                        .cloned()
                        .ok_or_else(|| format!("{what}: unknown server {s:?}"))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(User {
            name,
            account: Account {
                secret,
                read: class_bits(&self.read),
                write: class_bits(&self.write),
                filters,
            },
            servers,
        })
    }
}

/// The class bits of a list of class names (`all` = every class).
pub fn class_bits(names: &[String]) -> u32 {
    EventMask::Classes(
        names
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .collect(),
    )
    .bits()
}

/// Class names the config accepts: Asterisk's classes and `all`.
pub fn known_class(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n == "all" || ami_proto::CLASSES.iter().any(|(c, _)| *c == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_defaults() {
        assert_eq!(class_bits(&["system".into(), "call".into()]), 0b11);
        assert_eq!(class_bits(&["all".into()]), ami_proto::ALL_CLASSES);
        assert_eq!(class_bits(&[]), 0);
        assert!(known_class("Originate") && known_class("all") && !known_class("calls"));
        let d = FacadeConfig::default();
        assert_eq!(d.listen(), None);
        assert_eq!(d.write_timeout(), Duration::from_millis(100));
        assert_eq!((d.authtimeout_s, d.authlimit), (30, 50));
    }

    #[test]
    fn users_resolve_servers_and_secrets() {
        let all: Vec<std::sync::Arc<str>> = vec!["pbx1".into(), "pbx2".into()];
        let mut u = FacadeUser {
            name: Spanned::new(0..0, "crm".into()),
            secret: Some("s".into()),
            read: vec!["call".into()],
            ..FacadeUser::default()
        };
        let r = u.resolve(&all).unwrap();
        assert_eq!(r.servers, all);
        assert_eq!(r.account.read, 2);
        u.servers = vec!["pbx2".into()];
        assert_eq!(u.resolve(&all).unwrap().servers, vec![all[1].clone()]);
        u.servers = vec!["pbx9".into()];
        assert!(u.resolve(&all).unwrap_err().contains("unknown server"));
        u.servers.clear();
        u.filters = vec!["!Event: (".into()];
        assert!(u.resolve(&all).unwrap_err().contains("filters[0]"));
        assert!(!format!("{u:?}").contains("\"s\""));
    }
}
