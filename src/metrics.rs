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

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its
/// handle; `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            const BUCKETS: &[f64] = &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                30.0, 60.0,
            ];
            let b = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("latency_seconds".into()),
                    BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("spool_sync_seconds".into()),
                    BUCKETS,
                )
                .ok()?;
            b.install_recorder().ok()
        })
        .clone()
}

/// The health of the bridge, computed on request.
pub type HealthFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// Serves `/metrics` and `/healthz` on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    handle: Option<PrometheusHandle>,
    health: HealthFn,
    cancel: CancellationToken,
) {
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let handle = handle.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request line and headers (bounded, with a timeout).
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                loop {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
                                return true;
                            }
                        }
                    }
                }
            })
            .await
            .unwrap_or(false);
            if !read {
                return;
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
                    (
                        if ok {
                            "200 OK"
                        } else {
                            "503 Service Unavailable"
                        },
                        "application/json",
                        detail.to_string(),
                    )
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
        });
    }
}
