//! The bridge side of a scenario: `ami2amqp run` with default settings and
//! a fresh spool, fed through the relay ([`crate::ami_feed`]), measured
//! from outside (/proc) and through its /metrics.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Res;
use crate::ami_feed::{Relay, relay, start_replay};
use crate::common::procs::try_free_port;
use crate::consumer::Sink;
use crate::facade::{Clients, FacadeSide};
use crate::measure::{cpu_ticks, ctx_switches, http_get, start_perf, stop_perf, vm_bytes};
use crate::outcome::{Outcome, SendCheck};
use crate::setup::Setup;
use crate::stats::{
    Pcts, Sample, bucket_quantile, e2e_latencies, first_at_least, pcts, prom_buckets, prom_sum,
};
use crate::trace::{Pace, SERVER, now_us};

/// A started bridge with its replay and relay.
struct BridgeRun {
    work: PathBuf,
    bridge: Child,
    pid: u32,
    replay: Child,
    metrics: String,
    spool_dir: PathBuf,
    gate: Option<oneshot::Sender<()>>,
    relay_task: JoinHandle<Res<()>>,
    relay_state: Arc<Mutex<Relay>>,
    /// Scenario f: the facade's listen address (`None`: no `[facade]`).
    facade: Option<String>,
}

/// What was measured while the events flowed.
struct Measured {
    start_us: u64,
    ok: bool,
    cpu_s: f64,
    ctx_switches: u64,
    hwm: Option<u64>,
    rss_idle: Option<u64>,
}

pub(crate) async fn run_bridge(s: &Setup, scenario: &str, pace: Pace) -> Res<Outcome> {
    run_bridge_with(s, scenario, pace, 0).await.map(|(o, _)| o)
}

/// The bridge side; with `clients` > 0 (scenario f) the bridge has a
/// `[facade]` section and that many AMI clients ([`crate::facade`]) are
/// connected and logged in before the gate opens, and the measurement
/// lasts until they, too, have every event.
pub(crate) async fn run_bridge_with(
    s: &Setup,
    scenario: &str,
    pace: Pace,
    clients: usize,
) -> Res<(Outcome, Option<FacadeSide>)> {
    let n = s.names.len();
    let track = pace != Pace::Max;
    let sink = s.sink(&format!("{}.{scenario}.bridge", s.exchange)).await?;
    let mut b = BridgeRun::start(s, scenario, &pace, track, clients > 0).await?;
    b.wait_connected().await?;
    let mut cl = match &b.facade {
        Some(addr) if clients > 0 => Some(Clients::start(s, addr, clients, &b.work).await?),
        _ => None,
    };
    let hwm_before = vm_bytes(b.pid, "VmHWM");
    let poller = Poller::spawn(b.metrics.clone(), pace == Pace::Timing);
    let m = b.measure(s, scenario, &sink, &pace, cl.as_mut()).await?;
    let samples = poller.stop().await;
    let text = http_get(&b.metrics, "/metrics").await;
    let dropped = text
        .as_deref()
        .map(|t| prom_sum(t, "facade_dropped_sessions_total"));
    let hist = text
        .as_deref()
        .map(|t| prom_buckets(t, "publish_latency_seconds"))
        .unwrap_or_default();
    let spool_fsyncs = text.as_deref().map(|t| prom_sum(t, "spool_fsyncs_total"));
    let work = b.work.clone();
    let st = b.stop(s).await;

    let delivered = sink.deliveries();
    let mut o = Outcome {
        n,
        start_us: m.start_us,
        cpu_s: m.cpu_s,
        ctx_switches: m.ctx_switches,
        hwm: m.hwm,
        rss_idle: m.rss_idle,
        spool_fsyncs,
        ok: m.ok,
        ..Default::default()
    };
    if hwm_before.is_some() && hwm_before == m.hwm {
        o.notes
            .push("peak RSS was reached before the events started".into());
    }
    sink.note(&mut o);
    sink.close().await;
    if !m.ok {
        o.notes.push(format!(
            "timed out; bridge log: {}",
            tail(&work.join("bridge.log"))
        ));
    }
    o.last_delivery_us = delivered.iter().copied().max().unwrap_or(0);
    // +1: the bridge's own "connected" status message.
    o.last_confirm_us = first_at_least(&samples, |x| x.confirmed, n as f64 + 1.0);
    relay_results(&mut o, st, s, &pace, &samples, &delivered);
    o.confirm = histogram_pcts(&hist);
    o.confirm_from_histogram = true;
    o.delivered = delivered;
    o.samples = samples;
    let side = match cl {
        Some(c) => Some(c.finish(s, &o.arrivals, dropped).await?),
        None => None,
    };
    Ok((o, side))
}

impl BridgeRun {
    /// Starts the replay, the bridge (its AMI connection held by the
    /// relay's gate) and the relay.
    async fn start(
        s: &Setup,
        scenario: &str,
        pace: &Pace,
        track: bool,
        facade: bool,
    ) -> Res<BridgeRun> {
        let work = s.dir.path().join(format!("bridge-{scenario}"));
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let (replay, replay_addr) = start_replay(s, pace, &work.join("replay.log")).await?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let ami_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let metrics = format!("127.0.0.1:{}", try_free_port().map_err(|e| e.to_string())?);
        let spool_dir = match std::env::var("BENCH_SPOOL_DIR") {
            // An experiment: the spool somewhere else (e.g. /dev/shm);
            // removed at the end of the run.
            Ok(d) => Path::new(&d).join(format!(
                "ami2amqp-bench-spool.{}.{scenario}",
                std::process::id()
            )),
            Err(_) => work.join("spool"),
        };
        let facade = if facade {
            Some(format!(
                "127.0.0.1:{}",
                try_free_port().map_err(|e| e.to_string())?
            ))
        } else {
            None
        };
        let mut text = config_text(s, &ami_addr, &metrics, &spool_dir);
        if let Some(addr) = &facade {
            text.push_str(&crate::facade::config_section(addr));
        }
        let config = work.join("ami2amqp.toml");
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(work.join("bridge.log")).map_err(|e| e.to_string())?;
        let bridge = tokio::process::Command::new(&s.bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start bridge: {e}"))?;
        let pid = bridge.id().ok_or("no pid")?;
        let (gate_tx, gate_rx) = oneshot::channel();
        let relay_state = Arc::new(Mutex::new(Relay::default()));
        let relay_task = tokio::spawn(relay(
            listener,
            gate_rx,
            replay_addr,
            track,
            s.names.clone(),
            relay_state.clone(),
        ));
        Ok(BridgeRun {
            work,
            bridge,
            pid,
            replay,
            metrics,
            spool_dir,
            gate: Some(gate_tx),
            relay_task,
            relay_state,
            facade,
        })
    }

    /// Waits for the broker connection (exchanges declared).
    async fn wait_connected(&mut self) -> Res<()> {
        let up_deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(h) = http_get(&self.metrics, "/healthz").await
                && h.contains("\"broker\":\"connected\"")
            {
                return Ok(());
            }
            if Instant::now() > up_deadline {
                return Err(format!(
                    "bridge did not connect to the broker in 30 s; log: {}",
                    tail(&self.work.join("bridge.log"))
                ));
            }
            if let Ok(Some(st)) = self.bridge.try_wait() {
                return Err(format!(
                    "bridge exited ({st}); log: {}",
                    tail(&self.work.join("bridge.log"))
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens the gate, waits for every message at the consumer (and every
    /// event at the facade clients, if any), then lets the bridge idle.
    async fn measure(
        &mut self,
        s: &Setup,
        scenario: &str,
        sink: &Sink,
        pace: &Pace,
        clients: Option<&mut Clients>,
    ) -> Res<Measured> {
        let pid = self.pid;
        let perf = start_perf(s, scenario, "bridge", pid);
        if perf.is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let cpu0 = cpu_ticks(pid).ok_or("cpu")?;
        let cs0 = ctx_switches(pid);
        let start_us = now_us();
        if let Some(gate) = self.gate.take() {
            let _ = gate.send(());
        }
        let n = s.names.len();
        let mut ok = sink
            .wait_all(n, tokio::time::Instant::now() + pace.limit(n))
            .await;
        if let Some(c) = clients {
            // The clients get their events as the bridge reads them, long
            // before the bus has drained; 30 s is only for a stuck client.
            ok &= c
                .wait_done(tokio::time::Instant::now() + Duration::from_secs(30))
                .await;
        }
        let cpu1 = cpu_ticks(pid).ok_or("cpu")?;
        let cs1 = ctx_switches(pid);
        let hwm = vm_bytes(pid, "VmHWM");
        stop_perf(perf).await;
        // Idle: the spool drained, nothing arriving; long enough for the
        // bridge's memory task (3 s period) to see the burst is over and trim.
        tokio::time::sleep(Duration::from_millis(7000)).await;
        let rss_idle = vm_bytes(pid, "VmRSS");
        Ok(Measured {
            start_us,
            ok,
            cpu_s: (cpu1 - cpu0) as f64 / s.tck,
            ctx_switches: cs1.saturating_sub(cs0),
            hwm,
            rss_idle,
        })
    }

    /// Stops the bridge (SIGTERM: it logs off and exits), then the replay;
    /// returns what the relay saw.
    async fn stop(mut self, s: &Setup) -> Relay {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(20), self.bridge.wait())
            .await
            .is_err()
        {
            let _ = self.bridge.kill().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.replay.wait()).await;
        let _ = self.replay.kill().await;
        if !self.spool_dir.starts_with(s.dir.path()) {
            let _ = std::fs::remove_dir_all(&self.spool_dir);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.relay_task).await;
        std::mem::take(&mut *self.relay_state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The bridge's config: defaults everywhere (confirm window, fsync
/// interval, spool sizes…) except where things live. One AMI connection:
/// no action connections, and no snapshot (its markers are messages the
/// trace does not have; this measures the event path).
fn config_text(s: &Setup, ami_addr: &std::net::SocketAddr, metrics: &str, spool: &Path) -> String {
    format!(
        r#"[amqp]
url = "{url}"

[[server]]
name = "{SERVER}"
address = "{ami_addr}"
username = "bench"
secret = "bench"
action_connections = 0
snapshot = []

[mappings]
dir = "{mappings}"
watch = false

[spool]
dir = "{spool}"
{fsync}

[metrics]
listen = "{metrics}"

[status]
exchange = "{exchange}"
"#,
        url = s.url,
        mappings = s.mappings.display(),
        spool = spool.display(),
        exchange = s.exchange,
        // An experiment: another fsync interval than the default.
        fsync = std::env::var("BENCH_FSYNC_MS")
            .map(|v| format!("fsync_interval_ms = {v}"))
            .unwrap_or_default(),
    )
}

/// Polls the bridge's /metrics (every 50 ms at the recorded pace, else
/// every 100 ms) until stopped.
struct Poller {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: tokio_util::sync::CancellationToken,
    task: JoinHandle<()>,
}

impl Poller {
    fn spawn(metrics: String, fast: bool) -> Poller {
        let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (s2, stop2) = (samples.clone(), stop.clone());
        let every = if fast { 50 } else { 100 };
        let task = tokio::spawn(async move {
            loop {
                let t_us = now_us();
                if let Some(text) = http_get(&metrics, "/metrics").await {
                    s2.lock().unwrap_or_else(|p| p.into_inner()).push(Sample {
                        t_us,
                        events: prom_sum(&text, "ami_events_total"),
                        published: prom_sum(&text, "amqp_published_total"),
                        confirmed: prom_sum(&text, "amqp_confirmed_total"),
                        spool: prom_sum(&text, "spool_messages"),
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(every)) => {}
                    _ = stop2.cancelled() => break,
                }
            }
        });
        Poller {
            samples,
            stop,
            task,
        }
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        let _ = self.task.await;
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Folds what the relay saw into `o`: notes, and with tracking (a paced
/// scenario) the AMI send check and the end-to-end latencies.
fn relay_results(
    o: &mut Outcome,
    st: Relay,
    s: &Setup,
    pace: &Pace,
    samples: &[Sample],
    delivered: &[u64],
) {
    let n = s.names.len();
    if st.wrong_names > 0 {
        o.notes.push(format!(
            "relay: {} events out of place against the trace",
            st.wrong_names
        ));
    }
    let _ = st.opened_us;
    if *pace == Pace::Max {
        return;
    }
    if st.times.len() != n {
        o.notes.push(format!(
            "relay stamped {} events, expected {n}",
            st.times.len()
        ));
    }
    o.send = Some(send_check(&st, s, pace, samples));
    o.e2e = pcts(e2e_latencies(&st.times, delivered));
    o.arrivals = st.times;
}

/// How the relay's stamps compare with the schedule the replay follows.
fn send_check(st: &Relay, s: &Setup, pace: &Pace, samples: &[Sample]) -> SendCheck {
    let n = s.names.len();
    let first = st.times.first().copied().unwrap_or(0);
    let sched: Vec<Duration> = match pace {
        Pace::Timing => s.timing.clone(),
        Pace::Rate(r) => (0..n)
            .map(|i| Duration::from_secs_f64(i as f64 / r))
            .collect(),
        Pace::Max => vec![],
    };
    let (max_lag_us, max_lag_at) = st
        .times
        .iter()
        .zip(&sched)
        .map(|(t, at)| {
            (
                t.saturating_sub(first) as i64 - at.as_micros() as i64,
                at.as_secs_f64(),
            )
        })
        .fold((0i64, 0.0f64), |a, b| if b.0 > a.0 { b } else { a });
    SendCheck {
        duration: st.times.last().copied().unwrap_or(0).saturating_sub(first) as f64 / 1e6,
        max_lag_ms: max_lag_us as f64 / 1000.0,
        max_lag_at_s: max_lag_at,
        longest_write_ms: st.longest_write_us as f64 / 1000.0,
        longest_write_at_s: st.longest_write_at_us.saturating_sub(first) as f64 / 1e6,
        write_wait_ms: st.write_wait_us as f64 / 1000.0,
        read_all_s: first_at_least(samples, |x| x.events, n as f64)
            .map(|t| t.saturating_sub(first) as f64 / 1e6),
    }
}

/// The bridge's read → confirm percentiles from its
/// `publish_latency_seconds` histogram (interpolated; no max).
fn histogram_pcts(hist: &[(f64, f64)]) -> Pcts {
    Pcts {
        n: hist.last().map_or(0, |b| b.1 as usize),
        p50: bucket_quantile(hist, 0.5).unwrap_or(f64::NAN),
        p99: bucket_quantile(hist, 0.99).unwrap_or(f64::NAN),
        p999: bucket_quantile(hist, 0.999).unwrap_or(f64::NAN),
        max: f64::NAN,
    }
}

/// The last 15 lines of a log file.
fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
