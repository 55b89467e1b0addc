//! CPU time of processes, read from `/proc`, for the benches' CPU-per-
//! message figures: the bridge's, a helper's (`replay`), the bench's own
//! and the broker's.

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `/proc/<pid>/stat`.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads, dead ones included), in
/// clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// [`cpu_ticks`] in seconds (0 when the process is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_ticks(pid).map_or(0.0, |t| t as f64 / clk_tck())
}

/// Context switches (voluntary + involuntary) of all live threads of a
/// process.
pub fn ctx_switches(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .flat_map(|st| {
            st.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The process listening on TCP `port` (IPv4 or IPv6), found through the
/// socket's inode in `/proc/net/tcp*` and the processes' open files: the
/// broker behind an AMQP URL, whatever its node name.
pub fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|t| listening_inode(&t, port))?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(p.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target))
            .then_some(pid)
    })
}

/// The inode of the socket listening on `port` in a `/proc/net/tcp` table.
fn listening_inode(table: &str, port: u16) -> Option<String> {
    const LISTEN: &str = "0A";
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = f.get(1)?.rsplit(':').next()?;
        let p = u16::from_str_radix(local_port, 16).ok()?;
        (p == port && *f.get(3)? == LISTEN).then(|| f.get(9).map(|s| s.to_string()))?
    })
}

/// The CPU seconds of a set of processes, sampled before and after a
/// phase of a bench.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<(f64, u64)>,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: pids.iter().map(|p| sample(*p)).collect(),
        }
    }

    /// CPU seconds and context switches of each process since
    /// [`CpuMeter::start`], in the order of the pids given.
    pub fn used(&self) -> Vec<(f64, u64)> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(p, (s, c))| {
                let (s1, c1) = sample(*p);
                ((s1 - s).max(0.0), c1.saturating_sub(*c))
            })
            .collect()
    }
}

fn sample(pid: u32) -> (f64, u64) {
    (cpu_seconds(pid), ctx_switches(pid))
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_a_listening_port_and_not_a_connected_one() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:D2F0 0100007F:1628 01 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(super::listening_inode(t, 5672).as_deref(), Some("4242"));
        assert_eq!(super::listening_inode(t, 54000), None);
    }
}
