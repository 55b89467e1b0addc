//! The one place that opens and closes AMQP connections.
//!
//! The publisher, the action service, `tail` and `action` all connect with
//! [`connect`] (bounded by a timeout), close with [`close_bounded`] (lapin
//! may never finish closing a connection that died under it), and the two
//! long-running users walk the configured URLs with [`Reconnect`]
//! (rotation on failure, exponential backoff with jitter).
//!
//! Errors are [`AmqpError`], which keeps the `lapin::Error` so callers can
//! test the broker's reply ([`is_not_found`]) instead of searching error
//! texts.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties, ErrorKind};

use super::publisher::short;
use crate::config::redact_url;
use crate::support::backoff::Backoff;
use crate::support::tls::{self, ClientFiles};

/// Why talking to the broker failed; the texts are the log/health texts.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The TCP connect, TLS and AMQP handshake took longer than allowed.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The broker refused the connection, or it broke during the handshake.
    #[error("connect: {0}")]
    Connect(#[source] lapin::Error),
    /// The TLS settings could not be loaded (no system CAs).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// An operation on an open connection failed; `what` says which.
    #[error("{what}: {source}")]
    Op {
        what: String,
        #[source]
        source: lapin::Error,
    },
}

impl AmqpError {
    /// Wraps `source` as the failure of operation `what`.
    pub fn op(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> AmqpError {
        let what = what.into();
        move |source| AmqpError::Op { what, source }
    }
}

/// True when the broker answered 404 NOT_FOUND (no such exchange/queue).
pub fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// True when the broker answered 405 RESOURCE_LOCKED (an exclusive queue
/// another connection owns: a lease held by another instance).
pub fn is_resource_locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)))
}

/// TLS settings for `amqps://` URLs: the CA(s) to trust (a file, or the
/// system's), an optional client certificate, and an optional name the
/// broker's certificate must carry instead of the URL's host. `amqp://`
/// URLs ignore them. Cloning is cheap.
#[derive(Clone, Default)]
pub struct AmqpTls {
    /// Built from the files once; `None`: the system's CAs, no client
    /// certificate (built at connect time).
    config: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<String>,
}

impl fmt::Debug for AmqpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTls")
            .field("custom", &self.config.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A broker URL with the TLS settings for it (the command-line tools).
#[derive(Clone, Debug)]
pub struct Broker {
    pub url: String,
    pub tls: AmqpTls,
}

impl Broker {
    /// `url` with the default TLS settings (the system's CAs).
    pub fn plain_settings(url: impl Into<String>) -> Broker {
        Broker {
            url: url.into(),
            tls: AmqpTls::default(),
        }
    }
}

/// The `[amqp]` keys of the TLS files, for error texts.
pub const TLS_KEYS: [&str; 3] = [
    "amqp.tls_ca_file",
    "amqp.tls_cert_file",
    "amqp.tls_key_file",
];

impl AmqpTls {
    /// Loads the files (an error names the key and the file) and checks
    /// `server_name`.
    pub fn new(files: &ClientFiles, server_name: Option<&str>) -> Result<AmqpTls, String> {
        if let Some(n) = server_name {
            tls::server_name(n).map_err(|e| format!("amqp.tls_server_name: {e}"))?;
        }
        let config = if *files == ClientFiles::default() {
            None
        } else {
            Some(Arc::new(tls::client_config(files, TLS_KEYS)?))
        };
        Ok(AmqpTls {
            config,
            server_name: server_name.map(str::to_string),
        })
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        match &self.config {
            Some(c) => Ok(c.clone()),
            None => tls::client_config(&ClientFiles::default(), TLS_KEYS).map(Arc::new),
        }
    }
}

/// Opens a connection to `url`, giving up after `timeout`. An `amqps://`
/// URL is opened with `tls` (see [`AmqpTls`]); a failed handshake is an
/// error naming its cause, never a plain-text retry.
pub async fn connect(url: &str, tls: &AmqpTls, timeout: Duration) -> Result<Connection, AmqpError> {
    tokio::time::timeout(timeout, open(url, tls, None))
        .await
        .map_err(|_| AmqpError::ConnectTimeout)?
}

/// [`connect`] asking for a heartbeat of `heartbeat_s` seconds unless the
/// URL sets one (`?heartbeat=`): the fleet's lease connection, whose loss
/// the broker must notice within a bound the lease timing relies on.
pub async fn connect_with_heartbeat(
    url: &str,
    tls: &AmqpTls,
    timeout: Duration,
    heartbeat_s: u16,
) -> Result<Connection, AmqpError> {
    tokio::time::timeout(timeout, open(url, tls, Some(heartbeat_s)))
        .await
        .map_err(|_| AmqpError::ConnectTimeout)?
}

/// The largest AMQP frame this client asks for, unless the URL says
/// otherwise (`?frame_max=131072`). lapin keeps a send and a receive buffer
/// of 32 frames per connection, written through when it connects, so the
/// broker's default (128 KiB) costs 8 MiB of resident memory per
/// connection; the bridge's messages are a few hundred bytes, and a larger
/// one is only split into more frames.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

async fn open(url: &str, tls: &AmqpTls, heartbeat: Option<u16>) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default();
    let mut uri = match url.parse::<AMQPUri>() {
        Ok(u) => u,
        // What lapin refuses, with lapin's own error.
        Err(_) => {
            return Connection::connect(url, props)
                .await
                .map_err(AmqpError::Connect);
        }
    };
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    if let Some(h) = heartbeat {
        uri.query.heartbeat.get_or_insert(h);
    }
    if uri.scheme != AMQPScheme::AMQPS {
        return Connection::connect_uri(uri, props)
            .await
            .map_err(AmqpError::Connect);
    }
    let config = tls.client_config().map_err(AmqpError::Tls)?;
    let connector = Arc::new(RustlsConnector::from(config));
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| uri.authority.host.clone());
    let runtime = lapin::runtime::default_runtime().map_err(AmqpError::Connect)?;
    // Our own TCP + TLS step instead of lapin's: the CA file or system
    // roots, the client certificate, the server name override, and an
    // error that names the cause.
    Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let host = uri.authority.host.as_str();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, uri.authority.port))
                .await
                .map_err(lapin::Error::from)?
                .collect();
            let tcp = AsyncTcpStream::connect(&runtime, addrs).await?;
            tcp.into_rustls(&connector, &name)
                .await
                .map_err(|e| lapin::Error::from(io::Error::new(e.kind(), tls::describe_io(&e))))
        },
        props,
    )
    .await
    .map_err(AmqpError::Connect)
}

/// How long the command-line tools (`tail`, `action`) wait for a
/// connection to open, and for it to close when they are done.
pub const CLI_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const CLI_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// [`connect`] for the command-line tools: the error names the (redacted)
/// URL, as `cannot connect to amqp://user:***@host:5672/%2F: …`.
pub async fn connect_cli(url: &str, tls: &AmqpTls) -> Result<Connection, CliConnectError> {
    connect(url, tls, CLI_CONNECT_TIMEOUT)
        .await
        .map_err(|source| CliConnectError {
            url: redact_url(url),
            source,
        })
}

/// A command-line tool could not connect; the text names the redacted URL
/// and, for a refused connection, lapin's reason alone.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {url}: {}", match source {
    AmqpError::Connect(l) => l.to_string(),
    other => other.to_string(),
})]
pub struct CliConnectError {
    /// The URL, redacted.
    url: String,
    source: AmqpError,
}

/// Closes `conn` with `reason`, waiting at most `limit`: lapin may never
/// complete the close of a connection that died under it. Returns whether
/// the close finished (successfully or not) in time.
pub async fn close_bounded(conn: &Connection, reason: &str, limit: Duration) -> bool {
    tokio::time::timeout(limit, conn.close(200, short(reason)))
        .await
        .is_ok()
}

/// Which URL to try next and how long to wait first: a failed attempt
/// moves to the next URL (cluster fail-over) and doubles the wait; a
/// session that got going starts the backoff over.
#[derive(Clone, Debug)]
pub struct Reconnect {
    urls: Vec<String>,
    index: usize,
    attempt: u32,
    backoff: Backoff,
    tls: AmqpTls,
}

impl Reconnect {
    /// `urls` must not be empty (the configuration checks that).
    pub fn new(urls: Vec<String>, backoff: Backoff) -> Reconnect {
        Reconnect {
            urls,
            index: 0,
            attempt: 0,
            backoff,
            tls: AmqpTls::default(),
        }
    }

    /// With `tls` for the `amqps://` URLs.
    pub fn with_tls(mut self, tls: AmqpTls) -> Reconnect {
        self.tls = tls;
        self
    }

    /// The TLS settings of the `amqps://` URLs.
    pub fn tls(&self) -> &AmqpTls {
        &self.tls
    }

    /// The URL to connect to now; `""` if the list is empty.
    pub fn url(&self) -> &str {
        match self.urls.len() {
            0 => "",
            n => &self.urls[self.index % n],
        }
    }

    /// A session got going: the next wait is the shortest again.
    pub fn succeeded(&mut self) {
        self.attempt = 0;
    }

    /// An attempt failed: try the next URL, after a longer wait.
    pub fn failed(&mut self) {
        self.attempt = self.attempt.saturating_add(1);
        self.index = self.index.wrapping_add(1);
    }

    /// How long to wait before the next attempt (with jitter).
    pub fn delay(&self) -> Duration {
        self.backoff.delay(self.attempt.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn protocol(code: u16, text: &str) -> lapin::Error {
        let e = AMQPError::from_id(code, short(text)).expect("a known reply code");
        ErrorKind::ProtocolError(e).into()
    }

    #[test]
    fn not_found_is_the_reply_code_not_the_text() {
        let nf = protocol(404, "NOT_FOUND - no exchange 'x' in vhost '/'");
        assert!(is_not_found(&nf));
        // An error whose text merely mentions NOT_FOUND is not one.
        let io: lapin::Error = std::io::Error::other("peer said NOT_FOUND").into();
        assert!(!is_not_found(&io), "{io}");
        let denied = protocol(403, "ACCESS_REFUSED - NOT_FOUND in a name");
        assert!(!is_not_found(&denied));
    }

    #[test]
    fn error_texts_stay_the_log_texts() {
        assert_eq!(AmqpError::ConnectTimeout.to_string(), "connect timed out");
        let e = AmqpError::op("channel")(protocol(404, "NOT_FOUND - x"));
        assert!(e.to_string().starts_with("channel: "), "{e}");
        assert!(matches!(&e, AmqpError::Op { source, .. } if is_not_found(source)));
    }

    #[test]
    fn reconnect_rotates_on_failure_and_resets_after_a_session() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
        };
        let mut r = Reconnect::new(vec!["amqp://a".into(), "amqp://b".into()], b);
        assert_eq!(r.url(), "amqp://a");
        assert_eq!(r.delay(), Duration::from_millis(100));
        r.failed();
        assert_eq!(
            (r.url(), r.delay()),
            ("amqp://b", Duration::from_millis(100))
        );
        r.failed();
        assert_eq!(
            (r.url(), r.delay()),
            ("amqp://a", Duration::from_millis(200))
        );
        for _ in 0..10 {
            r.failed();
        }
        assert_eq!(r.delay(), Duration::from_secs(1));
        // A session that got going: same URL, shortest wait again.
        let before = r.url().to_string();
        r.succeeded();
        assert_eq!(
            (r.url(), r.delay()),
            (before.as_str(), Duration::from_millis(100))
        );
        assert_eq!(Reconnect::new(vec![], b).url(), "");
    }

    #[tokio::test]
    async fn connect_gives_up_after_the_timeout() {
        // A listener that accepts TCP but never speaks AMQP.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            l.local_addr().expect("addr").port()
        );
        let t = std::time::Instant::now();
        let r = connect(&url, &AmqpTls::default(), Duration::from_millis(300)).await;
        assert!(matches!(r, Err(AmqpError::ConnectTimeout)), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(l);
    }

    /// lapin's buffers are 32 frames each: the bridge asks for small frames
    /// unless the URL names a size (against the real broker).
    #[tokio::test]
    async fn frames_are_small_unless_the_url_says_otherwise() {
        let base = std::env::var("AMQP_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let sep = if base.contains('?') { '&' } else { '?' };
        for (url, want) in [
            (base.clone(), DEFAULT_FRAME_MAX),
            (format!("{base}{sep}frame_max=65536"), 65536),
        ] {
            let c = connect(&url, &AmqpTls::default(), Duration::from_secs(30))
                .await
                .expect("the test broker (make rabbitmq)");
            assert_eq!(c.configuration().frame_max(), want, "{url}");
            close_bounded(&c, "test done", Duration::from_secs(2)).await;
        }
    }
}
