//! Metrics and health over HTTP: `/metrics` (Prometheus text) and `/healthz`.
//!
//! Every module records its numbers through the `metrics` facade
//! (`metrics::counter!` and friends) without knowing who reads them. This
//! module installs the Prometheus recorder once per process and serves two
//! endpoints on the configured address with a deliberately tiny HTTP/1.1
//! responder: Prometheus scrapes `GET /metrics`; load balancers and
//! systemd-style watchdogs poll `GET /healthz`, which answers 200 when the
//! broker and every Asterisk server are connected and 503 (with the reason
//! in a JSON body) when one is not. Pulling in a web framework for two fixed
//! GET routes is not worth its weight.
//!
//! The listener is bounded: at most [`MAX_HTTP_CONNECTIONS`] at once, 5 s
//! per exchange, and a failed `accept` (at the file-descriptor limit, say)
//! waits [`ACCEPT_BACKOFF`] before the next one instead of spinning.
//!
//! Label values come from bounded sets; for the one label AMI input
//! decides, the event name, [`EventCounters`] maps names to labels.

pub(crate) mod config;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::logs::Throttle;
use crate::support::backoff::Backoff;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process), registers the
/// metrics' help texts with it and returns its handle; `None` if another
/// recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = builder()?.install_recorder().ok()?;
            crate::internal_events::catalog::describe();
            Some(handle)
        })
        .clone()
}

/// The recorder's configuration: histogram buckets for the latencies.
pub(crate) fn builder() -> Option<PrometheusBuilder> {
    use crate::internal_events::catalog::SPOOL_SYNC_SECONDS;
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.2, 0.5,
        1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("latency_seconds".into()),
            BUCKETS,
        )
        .ok()?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(SPOOL_SYNC_SECONDS.into()),
            BUCKETS,
        )
        .ok()
}

/// The health of the bridge, computed on request.
pub type HealthFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// Most HTTP connections served at once. Past this the listener stops
/// accepting (connections wait in the kernel's backlog) until one closes,
/// so a flood of idle connections holds at most this many descriptors.
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// How long one HTTP exchange may take, request and response together.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits after a failed `accept` (out of file descriptors, say): starts at
/// 100 ms and doubles up to 1 s while failures go on, instead of retrying
/// in a tight loop.
pub const ACCEPT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(1),
    jitter: 0.0,
};

/// Serves `/metrics` and `/healthz` on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    handle: Option<PrometheusHandle>,
    health: HealthFn,
    cancel: CancellationToken,
) {
    static ACCEPT_FAILED: Throttle = Throttle::new(Duration::from_secs(10));
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let mut failures = 0u32;
    loop {
        let accepted = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => listener.accept().await.map(|(sock, _)| (sock, permit)),
                Err(_) => return,
            },
            _ = cancel.cancelled() => return,
        };
        let (sock, permit) = match accepted {
            Ok(x) => x,
            Err(e) => {
                let wait = ACCEPT_BACKOFF.delay(failures);
                failures = failures.saturating_add(1);
                if let Some(suppressed) = ACCEPT_FAILED.allow() {
                    tracing::warn!(error = %e, retry_in = ?wait, suppressed,
                        "metrics listener accept failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        failures = 0;
        let handle = handle.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HTTP_TIMEOUT, answer(sock, handle, health)).await;
            drop(permit);
        });
    }
}

/// Reads one request (headers only, at most 4 KiB) and answers it.
async fn answer(mut sock: TcpStream, handle: Option<PrometheusHandle>, health: HealthFn) {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    loop {
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => {
                n += k;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
                    break;
                }
            }
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, body) = match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            handle.as_ref().map(|h| h.render()).unwrap_or_default(),
        ),
        "/healthz" => {
            let (ok, detail) = health();
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", detail.to_string())
        }
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// The `event` label of an event name, from a bounded set: a documented
/// event gets its documented spelling, an event that the loaded mappings
/// name gets the first spelling seen, anything else (and anything past
/// [`EventLabels::MAX`] labels) is [`EventLabels::OTHER`]. A peer sending
/// a million distinct names thus makes one series, not a million.
#[derive(Debug, Default)]
pub struct EventLabels {
    /// Lowercased name → label, for the names that get their own label.
    known: HashMap<String, Arc<str>>,
}

impl EventLabels {
    /// The label of every event name outside the set.
    pub const OTHER: &'static str = "other";
    /// Most distinct labels (the documented events and the names of a
    /// large mapping set fit well below).
    pub const MAX: usize = 1000;

    /// The label for `name`; `mapped` tells whether the loaded mappings
    /// name the event.
    pub fn label(&mut self, name: &str, mapped: impl FnOnce(&str) -> bool) -> Arc<str> {
        let lower = name.to_ascii_lowercase();
        if let Some(l) = self.known.get(&lower) {
            return l.clone();
        }
        let label: Arc<str> = match crate::ami::documented::documented_spelling(name) {
            Some(d) => Arc::from(d),
            None if mapped(name) => Arc::from(name),
            None => return Arc::from(Self::OTHER),
        };
        if self.known.len() >= Self::MAX {
            return Arc::from(Self::OTHER);
        }
        self.known.insert(lower, label.clone());
        label
    }
}

/// `ami_events_total{server, event}` for one server, with the label from
/// [`EventLabels`]. The counter of each spelling seen is cached (at most
/// [`EventCounters::MAX_CACHED`] spellings) so the usual event costs one
/// hash lookup; the cache is emptied when the mapping set changes, since
/// the names it knows decide the labels.
pub struct EventCounters {
    server: Arc<str>,
    labels: EventLabels,
    by_label: HashMap<Arc<str>, metrics::Counter>,
    cached: HashMap<String, metrics::Counter>,
    /// Identity of the mapping set the cache was filled under.
    generation: usize,
}

impl EventCounters {
    pub const MAX_CACHED: usize = 4096;

    pub fn new(server: Arc<str>) -> Self {
        EventCounters {
            server,
            labels: EventLabels::default(),
            by_label: HashMap::new(),
            cached: HashMap::new(),
            generation: 0,
        }
    }

    /// Counts one event named `name`. `generation` identifies the mapping
    /// set (a number that changes when it is swapped); `mapped` tells
    /// whether that set names the event.
    pub fn increment(&mut self, name: &str, generation: usize, mapped: impl FnOnce(&str) -> bool) {
        if generation != self.generation {
            self.cached.clear();
            self.generation = generation;
        }
        if let Some(c) = self.cached.get(name) {
            c.increment(1);
            return;
        }
        let label = self.labels.label(name, mapped);
        let server = &self.server;
        let c = self
            .by_label
            .entry(label.clone())
            .or_insert_with(|| {
                metrics::counter!(crate::internal_events::catalog::AMI_EVENTS_TOTAL, "server" => server.to_string(), "event" => label.to_string())
            })
            .clone();
        c.increment(1);
        if self.cached.len() < Self::MAX_CACHED {
            self.cached.insert(name.to_string(), c);
        }
    }

    #[cfg(test)]
    /// How many distinct `event` labels this server has used.
    pub fn labels(&self) -> usize {
        self.by_label.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_grows_to_a_second() {
        let ms: Vec<u128> = (0..7)
            .map(|n| ACCEPT_BACKOFF.delay(n).as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn labels_come_from_a_bounded_set() {
        let mut l = EventLabels::default();
        assert_eq!(&*l.label("NEWCHANNEL", |_| false), "Newchannel");
        assert_eq!(
            &*l.label("MyCustom", |n| n.eq_ignore_ascii_case("mycustom")),
            "MyCustom"
        );
        assert_eq!(&*l.label("mycustom", |_| false), "MyCustom");
        assert_eq!(&*l.label("Whatever-42", |_| false), "other");
        let mut distinct = std::collections::HashSet::new();
        for i in 0..10_000 {
            distinct.insert(l.label(&format!("Junk{i}"), |_| false));
            distinct.insert(l.label(&format!("Mapped{i}"), |_| true));
        }
        assert!(distinct.len() <= EventLabels::MAX + 1, "{}", distinct.len());
    }

    #[test]
    fn counters_make_one_series_per_label() {
        let mut c = EventCounters::new(Arc::from("pbx"));
        for i in 0..20_000 {
            c.increment(&format!("Junk{i}"), 1, |_| false);
            c.increment("Hangup", 1, |_| false);
            c.increment("hangup", 1, |_| false);
        }
        assert_eq!(c.labels(), 2);
        assert!(c.cached.len() <= EventCounters::MAX_CACHED);
        // A mapping reload that names an event gives it its own label.
        c.increment("Junk7", 1, |_| true);
        assert_eq!(c.labels(), 2, "cached under the old set");
        c.increment("Junk7", 2, |_| true);
        assert_eq!(c.labels(), 3);
    }
}
