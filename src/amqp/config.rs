//! `[amqp]`: where RabbitMQ is and how the publisher talks to it
//! (docs/config.md). [`AmqpConfig::publisher`] builds the publisher's
//! runtime settings.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::connect::AmqpTls;
use super::publisher::PublisherConfig;
use crate::config::doc::documented;
use crate::config::{reconnect_backoff, redact_url};
use crate::support::backoff::Backoff;
use crate::support::tls::ClientFiles;

/// The URL used when the file names none.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

documented! {
    /// The broker (RabbitMQ).
    #[derive(Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct AmqpConfig {
        /// One broker URL, amqp://user:password@host:port/vhost (amqps:// for
        /// TLS). With neither url nor urls: amqp://guest:guest@127.0.0.1:5672/%2f.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub url: Option<Spanned<String>>,
        /// More broker URLs (cluster nodes), tried in turn after url.
        pub urls: Vec<Spanned<String>>,
        /// Publishes awaiting the broker's confirm at once (1 to 65535).
        pub confirm_window: usize,
        /// Declare the alternate exchange, the exchanges the mappings use and
        /// the status exchange (durable) at every (re)connect.
        pub declare_exchanges: bool,
        /// Alternate exchange for messages no queue is bound for ("" = none:
        /// such messages are counted as returned and dropped by the broker).
        pub alternate_exchange: String,
        /// First wait before reconnecting to the broker, in milliseconds.
        pub reconnect_initial_ms: u64,
        /// Longest wait before reconnecting (doubling, ±20 % jitter).
        pub reconnect_max_ms: u64,
        /// Seconds to wait for in-flight confirms at shutdown.
        pub shutdown_timeout_s: u64,
        /// For amqps:// URLs: PEM file of the CA certificate(s) that signed
        /// the broker's certificate (unset: the system's CAs).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_ca_file: Option<PathBuf>,
        /// For amqps:// URLs: the name the broker's certificate must carry
        /// (unset: the host of each URL).
        #[serde(skip_serializing_if = "Option::is_none", alias = "server_name")]
        pub tls_server_name: Option<String>,
        /// For amqps:// URLs: PEM file of a client certificate to present
        /// (with tls_key_file; with ?auth_mechanism=external in the URL it
        /// replaces the password).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_cert_file: Option<PathBuf>,
        /// PEM file of the client certificate's private key.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tls_key_file: Option<PathBuf>,
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: None,
            urls: Vec::new(),
            confirm_window: 256,
            declare_exchanges: true,
            alternate_exchange: "ami.unroutable".into(),
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            shutdown_timeout_s: 10,
            tls_ca_file: None,
            tls_server_name: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// URLs redacted: `Debug` output may end up in a log.
impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.url.as_ref().map(|u| redact_url(u.get_ref())))
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|u| redact_url(u.get_ref()))
                    .collect::<Vec<_>>(),
            )
            .field("confirm_window", &self.confirm_window)
            .finish_non_exhaustive()
    }
}

impl AmqpConfig {
    /// The broker URLs in the order they are tried.
    pub fn urls(&self) -> Vec<String> {
        let mut v: Vec<String> = self.url.iter().map(|u| u.get_ref().clone()).collect();
        v.extend(self.urls.iter().map(|u| u.get_ref().clone()));
        if v.is_empty() {
            v.push(DEFAULT_URL.to_string());
        }
        v
    }

    pub fn backoff(&self) -> Backoff {
        reconnect_backoff(self.reconnect_initial_ms, self.reconnect_max_ms)
    }

    /// The tls_* keys that are set, by name.
    pub fn tls_keys_set(&self) -> Vec<&'static str> {
        [
            ("tls_ca_file", self.tls_ca_file.is_some()),
            ("tls_server_name", self.tls_server_name.is_some()),
            ("tls_cert_file", self.tls_cert_file.is_some()),
            ("tls_key_file", self.tls_key_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// The TLS settings of the amqps:// URLs, files loaded; the error
    /// names the key and the file.
    pub fn tls(&self) -> Result<AmqpTls, String> {
        let files = ClientFiles {
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
        };
        AmqpTls::new(&files, self.tls_server_name.as_deref())
    }

    /// The publisher's runtime settings.
    pub fn publisher(&self, tls: AmqpTls) -> PublisherConfig {
        PublisherConfig {
            urls: self.urls(),
            tls,
            confirm_window: self.confirm_window,
            backoff: self.backoff(),
            declare_exchanges: self.declare_exchanges,
            alternate_exchange: self.alternate_exchange.clone(),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_s),
        }
    }
}
