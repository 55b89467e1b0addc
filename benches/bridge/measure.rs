//! Measuring a process from outside: CPU time, context switches and memory
//! from `/proc`, `perf` attached on request, and the bridge's HTTP
//! endpoints (`/healthz`, `/metrics`).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::setup::Setup;
use crate::trace::env_or;

pub(crate) use crate::common::cpu::{clk_tck, cpu_ticks, ctx_switches};

/// `perf record` attached to `pid` (with BENCH_PERF: scenario a, and both
/// bridge runs of scenario f, whose side is then `f0` / `f50`).
pub(crate) fn start_perf(
    s: &Setup,
    scenario: &str,
    side: &str,
    pid: u32,
) -> Option<tokio::process::Child> {
    let prefix = s
        .perf
        .as_ref()
        .filter(|_| scenario == "a" || scenario.starts_with('f'))?;
    let side = if scenario.starts_with('f') {
        scenario
    } else {
        side
    };
    tokio::process::Command::new("perf")
        .args(env_or("BENCH_PERF_ARGS", "record -F 999").split_whitespace())
        .args([
            "-o",
            &format!("{prefix}.{side}.data"),
            "-p",
            &pid.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

pub(crate) async fn stop_perf(p: Option<tokio::process::Child>) {
    if let Some(mut p) = p {
        if let Some(ppid) = p.id() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &ppid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), p.wait()).await;
    }
}

/// A `kB` line of /proc/<pid>/status (VmHWM, VmRSS), in bytes.
pub(crate) fn vm_bytes(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

pub(crate) async fn http_get(addr: &str, path: &str) -> Option<String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut r = Vec::new();
        s.read_to_end(&mut r).await.ok()?;
        let r = String::from_utf8_lossy(&r).into_owned();
        r.split_once("\r\n\r\n").map(|x| x.1.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}
