//! The raw side of a scenario, run from the parent: starts the raw
//! publisher ([`crate::raw_publisher`]) as a child process, measures it
//! from outside like the bridge, and reads back its per-message stamps.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::Res;
use crate::measure::{cpu_ticks, ctx_switches, start_perf, stop_perf, vm_bytes};
use crate::outcome::Outcome;
use crate::raw_publisher::Mode;
use crate::setup::Setup;
use crate::stats::{e2e_latencies, pcts};
use crate::trace::{Pace, now_us};

/// The raw publisher, started and ready (`ready` read).
struct RawChild {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// One run of the raw publisher driven in `mode`; the pipelined one is
/// the side called `raw` (the reference), the others `raw-<mode>`.
pub(crate) async fn run_raw(s: &Setup, scenario: &str, pace: Pace, mode: Mode) -> Res<Outcome> {
    let n = s.names.len();
    let side = match mode {
        Mode::Pipelined => "raw".to_string(),
        m => format!("raw-{}", m.as_str()),
    };
    let side = side.as_str();
    let sink = s.sink(&format!("{}.{scenario}.{side}", s.exchange)).await?;
    let out_path = s.dir.path().join(format!("{side}-{scenario}.bin"));
    let mut c = start(s, &pace, mode, &out_path).await?;
    let perf = start_perf(s, scenario, side, c.pid);
    if perf.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu0 = cpu_ticks(c.pid).ok_or("cpu")?;
    let cs0 = ctx_switches(c.pid);
    let start_us = now_us();
    c.stdin
        .write_all(b"go\n")
        .await
        .map_err(|e| e.to_string())?;
    let limit = pace.limit(n);
    let done = tokio::time::timeout(limit, c.lines.next_line())
        .await
        .map_err(|_| format!("raw publisher not done in {limit:?}"))?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let cpu1 = cpu_ticks(c.pid).ok_or("cpu")?;
    let cs1 = ctx_switches(c.pid);
    let hwm = vm_bytes(c.pid, "VmHWM");
    stop_perf(perf).await;
    let mut o = Outcome {
        n,
        start_us,
        cpu_s: (cpu1 - cpu0) as f64 / s.tck,
        ctx_switches: cs1.saturating_sub(cs0),
        hwm,
        ..Default::default()
    };
    let mut f = done.split_whitespace().skip(1);
    let (ret, nack) = (f.next().unwrap_or("?"), f.next().unwrap_or("?"));
    if ret != "0" || nack != "0" {
        o.notes.push(format!("returned {ret}, nacked {nack}"));
    }
    c.stdin
        .write_all(b"exit\n")
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(30), c.child.wait()).await;
    let (arrival, published, confirmed) = read_stamps(&out_path, n)?;
    o.ok = sink
        .wait_all(n, tokio::time::Instant::now() + Duration::from_secs(60))
        .await;
    let delivered = sink.deliveries();
    sink.note(&mut o);
    sink.close().await;
    o.last_delivery_us = delivered.iter().copied().max().unwrap_or(0);
    o.last_confirm_us = confirmed.iter().copied().max();
    o.e2e = pcts(e2e_latencies(&arrival, &delivered));
    o.confirm = pcts(
        published
            .iter()
            .zip(&confirmed)
            .map(|(p, c)| c.saturating_sub(*p))
            .collect(),
    );
    o.arrivals = arrival;
    o.delivered = delivered;
    Ok(o)
}

/// Starts this binary as the raw publisher and waits for its `ready`.
async fn start(s: &Setup, pace: &Pace, mode: Mode, out_path: &Path) -> Res<RawChild> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .env("AMI2AMQP_BENCH_ROLE", "raw")
        .env("BENCH_RAW_URL", &s.url)
        .env("BENCH_RAW_MAPPINGS", &s.mappings)
        .env("BENCH_RAW_OUT", out_path)
        .env("BENCH_RAW_WINDOW", s.window.to_string())
        .env("BENCH_RAW_PACE", pace.env())
        .env("BENCH_RAW_MODE", mode.as_str())
        .env("BENCH_RAW_IN_FLIGHT", s.in_flight.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start raw publisher: {e}"))?;
    let pid = child.id().ok_or("no pid")?;
    let stdin = child.stdin.take().ok_or("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .map_err(|_| "raw publisher not ready in 120 s")?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if !line.starts_with("ready") {
        return Err(format!("raw publisher: {line:?}"));
    }
    Ok(RawChild {
        child,
        pid,
        stdin,
        lines,
    })
}

/// The child's arrival, publish and confirm stamps (µs), one per message.
fn read_stamps(path: &Path, n: usize) -> Res<(Vec<u64>, Vec<u64>, Vec<u64>)> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let col = |k: usize| -> Vec<u64> {
        bytes[k * n * 8..(k + 1) * n * 8]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect()
    };
    if bytes.len() != n * 24 {
        return Err("raw publisher result file has the wrong size".into());
    }
    Ok((col(0), col(1), col(2)))
}
