//! The run's settings (environment), the facts about the trace both sides
//! need, and the shared setup: temporary directory, the run's exchange and
//! mappings, the admin connection to the broker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ami2amqp::amqp::short;
use lapin::options::ExchangeDeleteOptions;
use lapin::{Connection, ConnectionProperties};

use crate::Res;
use crate::common::procs::{copy_mappings, declare_exchange};
use crate::facade::Expected;
use crate::measure::clk_tck;
use crate::trace::{decode_event, env_or, load_stream};

/// What the environment asks for (see the crate docs).
pub(crate) struct Params {
    pub(crate) url: String,
    pub(crate) scenarios: String,
    pub(crate) sides: String,
    pub(crate) rate: f64,
    pub(crate) queue_version: i64,
    pub(crate) window: usize,
    /// The pipelined raw publisher's publishes in flight.
    pub(crate) in_flight: usize,
}

impl Params {
    pub(crate) fn from_env() -> Res<Params> {
        Ok(Params {
            url: env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            scenarios: env_or("BENCH_SCENARIOS", "s,a,b,c,f"),
            sides: env_or("BENCH_SIDES", "raw,bridge,awaited,batched"),
            rate: env_or("BENCH_RATE", "5000")
                .parse()
                .map_err(|_| "BENCH_RATE")?,
            queue_version: env_or("BENCH_QUEUE_VERSION", "2")
                .parse()
                .map_err(|_| "BENCH_QUEUE_VERSION")?,
            window: ami2amqp::config::Amqp::default().confirm_window,
            in_flight: env_or("BENCH_IN_FLIGHT", "64")
                .parse()
                .map_err(|_| "BENCH_IN_FLIGHT")?,
        })
    }

    /// Whether `BENCH_SCENARIOS` lists `name`.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.scenarios.split(',').any(|x| x.trim() == name)
    }
}

/// The trace's event names and recorded schedule.
pub(crate) struct TraceFacts {
    pub(crate) names: Vec<String>,
    /// The events a facade broadcasts, in order (scenario f).
    pub(crate) broadcast: Vec<Expected>,
    pub(crate) timing: Vec<Duration>,
    pub(crate) span: Duration,
    /// Events in the busiest 1-s window of the recorded pace.
    pub(crate) peak_1s: usize,
}

impl TraceFacts {
    pub(crate) fn load() -> Res<TraceFacts> {
        let timed = load_stream(true)?;
        let mut names = Vec::with_capacity(timed.events.len());
        let mut broadcast = Vec::with_capacity(timed.events.len());
        for (i, ev) in timed.events.iter().enumerate() {
            let m = decode_event(&ev.bytes)?;
            names.push(m.event_name().unwrap_or_default().into_owned());
            if let Some(e) = Expected::of(i, &ev.bytes, &m) {
                broadcast.push(e);
            }
        }
        let timing: Vec<Duration> = timed.events.iter().map(|e| e.at).collect();
        let span = timing.last().copied().unwrap_or_default();
        let peak_1s = {
            let mut best = 0;
            let mut j = 0;
            for i in 0..timing.len() {
                while timing[i] - timing[j] >= Duration::from_secs(1) {
                    j += 1;
                }
                best = best.max(i - j + 1);
            }
            best
        };
        Ok(TraceFacts {
            names,
            broadcast,
            timing,
            span,
            peak_1s,
        })
    }
}

/// Everything both sides of every scenario share.
pub(crate) struct Setup {
    pub(crate) url: String,
    pub(crate) bin: PathBuf,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) exchange: String,
    pub(crate) mappings: PathBuf,
    pub(crate) window: usize,
    pub(crate) in_flight: usize,
    pub(crate) queue_version: i64,
    /// Event names of the stream, in order (to check that messages are
    /// matched to the right event).
    pub(crate) names: Arc<Vec<String>>,
    /// Each event's time in the recorded pace, relative to the first.
    pub(crate) timing: Vec<Duration>,
    /// The events a facade client should receive, in order (scenario f).
    pub(crate) broadcast: Arc<Vec<Expected>>,
    pub(crate) admin: Connection,
    pub(crate) tck: f64,
    pub(crate) perf: Option<String>,
}

impl Setup {
    /// A temporary directory with the default mappings sending to a fresh
    /// exchange, declared on the broker as the bridge declares it.
    pub(crate) async fn new(p: &Params, facts: TraceFacts) -> Res<Setup> {
        let TraceFacts {
            names,
            broadcast,
            timing,
            ..
        } = facts;
        let dir = tempfile::Builder::new()
            .prefix("ami2amqp-bench.")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let run_id = format!(
            "{}.{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
        let exchange = format!("ami2amqp.bench.{run_id}");
        let mappings = copy_mappings(dir.path(), &exchange).map_err(|e| e.to_string())?;
        let url = &p.url;
        let admin = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| {
                format!("cannot connect to {url}: {e} (start RabbitMQ: scripts/ensure-rabbitmq.sh)")
            })?;
        {
            // The exchange exactly as the bridge declares it.
            let ch = admin.create_channel().await.map_err(|e| e.to_string())?;
            declare_exchange(&ch, &exchange)
                .await
                .map_err(|e| format!("declare exchange: {e}"))?;
            let _ = ch.close(200, short("ok")).await;
        }
        Ok(Setup {
            url: p.url.clone(),
            bin: std::env::var_os("BENCH_BIN")
                .map_or_else(|| PathBuf::from(crate::common::procs::bin()), PathBuf::from),
            dir,
            exchange,
            mappings,
            window: p.window,
            in_flight: p.in_flight,
            queue_version: p.queue_version,
            names: Arc::new(names),
            timing,
            broadcast: Arc::new(broadcast),
            admin,
            tck: clk_tck(),
            perf: std::env::var("BENCH_PERF").ok(),
        })
    }

    /// Deletes the run's exchange, closes the admin connection, and keeps
    /// the temporary directory if `BENCH_KEEP` says so.
    pub(crate) async fn finish(self) -> Res<()> {
        {
            let ch = self
                .admin
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            let _ = ch
                .exchange_delete(short(&self.exchange), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.admin.close(200, short("bye")).await;
        if std::env::var("BENCH_KEEP").is_ok() {
            let p = self.dir.keep();
            println!("\nkept {}", p.display());
        }
        Ok(())
    }
}
