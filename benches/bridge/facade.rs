//! Scenario f, the AMI facade under the real burst: scenario c's bridge
//! set-up (replay `--timing` → relay → `ami2amqp run` → RabbitMQ →
//! consumer) run twice, once as in c (no `[facade]`) and once with a
//! `[facade]` section and `BENCH_FACADE_CLIENTS` (default 50) AMI clients
//! logged in with read `all` before the gate opens.
//!
//! The clients run in a child process ([`crate::facade_clients`]), one
//! blocking thread each: their CPU is then neither in the bridge's
//! /proc numbers nor in this process, whose relay stamps the events (a
//! busy runtime here would delay the stamps and the AMI stall check).
//! They still share the two cores with everything else, as real clients
//! on the same host would.
//!
//! The facade is configured with its defaults (`writetimeout_ms` 100,
//! `queue_events` 4096) except `refuse_when_down = false`: the clients log
//! in while the relay holds the bridge's AMI connection closed, so the
//! facade has no server up yet and would refuse them. For the same reason
//! the facade sends no FullyBooted after their login; the first broadcast
//! event is the trace's own FullyBooted.
//!
//! Measured: every client must receive every broadcast event (every event
//! of the trace with `Privilege:`) in the relay's order, compared by CRC32
//! of the bytes, else by `Event/Uniqueid`; latency is, for the k-th
//! broadcast event, the client's receive time minus the relay's stamp of
//! that event handed to the bridge (p50/p99/max over all clients); CPU is
//! the bridge's utime + stime with the clients minus without, per event
//! per client; plus the bridge's peak RSS, the consumer's count and the
//! AMI stall check of both runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ami2amqp::ami::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::Res;
use crate::bridge_side::{run_bridge, run_bridge_with};
use crate::outcome::Outcome;
use crate::report::{mb, ms3, row, verdict};
use crate::setup::Setup;
use crate::stats::{Pcts, pcts};
use crate::trace::{Pace, env_or};

pub(crate) const LOGIN_USER: &str = "bench";
pub(crate) const LOGIN_PASS: &str = "benchpass";
/// The target: extra bridge CPU per event per client.
const TARGET_US: f64 = 2.0;

/// One event a facade client should receive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expected {
    /// Its index in the trace (= in the relay's stamps).
    pub(crate) index: usize,
    /// CRC32 of its bytes without the blank line.
    pub(crate) full: u32,
    /// CRC32 of `Event/Uniqueid`.
    pub(crate) key: u32,
}

impl Expected {
    /// The trace's `i`-th event if a facade broadcasts it (`Privilege:`).
    pub(crate) fn of(i: usize, bytes: &[u8], m: &Message) -> Option<Expected> {
        m.get("Privilege")?;
        let body = bytes
            .strip_suffix(b"\r\n\r\n")
            .or_else(|| bytes.strip_suffix(b"\n\n"))
            .unwrap_or(bytes);
        let key = format!(
            "{}/{}",
            m.get("Event").unwrap_or_default(),
            m.get("Uniqueid").unwrap_or_default()
        );
        Some(Expected {
            index: i,
            full: message_crc(body),
            key: crc32fast::hash(key.as_bytes()),
        })
    }
}

/// CRC32 of a message's bytes (without its blank line).
pub(crate) fn message_crc(msg: &[u8]) -> u32 {
    crc32fast::hash(msg)
}

/// CRC32 of `Event/Uniqueid` of a message's bytes (CRLF lines), the first
/// of each header, any case, as `Message::get` reads them.
pub(crate) fn key_crc(msg: &[u8]) -> u32 {
    let field = |name: &[u8]| -> &[u8] {
        msg.split(|&b| b == b'\n')
            .find_map(|l| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                let c = l.iter().position(|&b| b == b':')?;
                l[..c]
                    .trim_ascii()
                    .eq_ignore_ascii_case(name)
                    .then(|| l[c + 1..].trim_ascii())
            })
            .unwrap_or_default()
    };
    let mut k = field(b"Event").to_vec();
    k.push(b'/');
    k.extend_from_slice(field(b"Uniqueid"));
    crc32fast::hash(&k)
}

/// The bridge's `[facade]` section for scenario f.
pub(crate) fn config_section(listen: &str) -> String {
    format!(
        r#"
[facade]
listen = "{listen}"
# The clients log in while the relay still holds the AMI connection.
refuse_when_down = false

[[facade.user]]
name = "{LOGIN_USER}"
secret = "{LOGIN_PASS}"
read = ["all"]
write = ["all"]
"#
    )
}

/// The client process, started and logged in.
pub(crate) struct Clients {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    out: PathBuf,
    n: usize,
    /// Login FullyBooteds dropped.
    boots: usize,
    /// `client …` lines.
    reports: Vec<String>,
    /// The child's own CPU ticks and VmHWM, once done.
    done: Option<(u64, u64)>,
    error: Option<String>,
}

impl Clients {
    /// Starts the child and waits until all `n` clients are logged in.
    pub(crate) async fn start(s: &Setup, addr: &str, n: usize, work: &Path) -> Res<Clients> {
        let expect = work.join("facade-expect.bin");
        let mut b = Vec::with_capacity(s.broadcast.len() * 8);
        for e in s.broadcast.iter() {
            b.extend_from_slice(&e.full.to_le_bytes());
            b.extend_from_slice(&e.key.to_le_bytes());
        }
        std::fs::write(&expect, b).map_err(|e| e.to_string())?;
        let out = work.join("facade-times.bin");
        let log =
            std::fs::File::create(work.join("facade-clients.log")).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(exe)
            .env("AMI2AMQP_BENCH_ROLE", "facade-clients")
            .env("BENCH_FACADE_ADDR", addr)
            .env("BENCH_FACADE_CLIENTS", n.to_string())
            .env("BENCH_FACADE_EXPECT", &expect)
            .env("BENCH_FACADE_OUT", &out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start facade clients: {e}"))?;
        let stdin = child.stdin.take().ok_or("stdin")?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| "facade clients did not log in within 60 s")?
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let mut f = line.split_whitespace();
        if f.next() != Some("ready") {
            return Err(format!("facade clients: {line}"));
        }
        let boots = f.nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        Ok(Clients {
            child,
            stdin,
            lines,
            out,
            n,
            boots,
            reports: Vec::new(),
            done: None,
            error: None,
        })
    }

    /// Waits for the child's `done` (every client has every event or was
    /// dropped); false at `deadline` or on an error.
    pub(crate) async fn wait_done(&mut self, deadline: tokio::time::Instant) -> bool {
        while self.done.is_none() && self.error.is_none() {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Err(_) => return false,
                Ok(Ok(Some(l))) => l,
                Ok(_) => {
                    self.error = Some("facade clients exited without a result".into());
                    break;
                }
            };
            if line.starts_with("client ") {
                self.reports.push(line);
            } else if let Some(rest) = line.strip_prefix("done ") {
                let mut f = rest.split_whitespace().map(|x| x.parse().unwrap_or(0));
                self.done = Some((f.next().unwrap_or(0), f.next().unwrap_or(0)));
            } else if line.starts_with("error") {
                self.error = Some(line);
            }
        }
        self.done.is_some()
    }

    /// Stops the clients if they are not done, and reads what they got.
    /// `arrivals` are the relay's stamps (index = trace event), `dropped`
    /// the bridge's `facade_dropped_sessions_total`.
    pub(crate) async fn finish(
        mut self,
        s: &Setup,
        arrivals: &[u64],
        dropped: Option<f64>,
    ) -> Res<FacadeSide> {
        let mut notes = Vec::new();
        if self.done.is_none() && self.error.is_none() {
            notes.push("clients still waiting 30 s after the bus had everything: stopped".into());
            let _ = self.stdin.write_all(b"stop\n").await;
            let _ = self.stdin.flush().await;
            self.wait_done(tokio::time::Instant::now() + Duration::from_secs(20))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
        if let Some(e) = self.error {
            return Err(e);
        }
        let (ticks, hwm) = self.done.ok_or("facade clients gave no result")?;
        let bytes = std::fs::read(&self.out).map_err(|e| e.to_string())?;
        let expected = s.broadcast.len();
        let times = split_times(&bytes, self.n, expected)?;
        let mut side = FacadeSide {
            clients: self.n,
            expected,
            boots: self.boots,
            client_cpu_s: ticks as f64 / s.tck,
            client_hwm: hwm,
            dropped,
            notes,
            ..Default::default()
        };
        for r in &self.reports {
            side.add_report(r, expected);
        }
        let mut all = Vec::with_capacity(self.n * expected);
        let mut p99s = Vec::with_capacity(self.n);
        for t in &times {
            let mut mine = Vec::with_capacity(t.len());
            for (k, &at) in t.iter().enumerate() {
                if at == 0 {
                    continue; // never received
                }
                let stamp = s
                    .broadcast
                    .get(k)
                    .and_then(|e| arrivals.get(e.index))
                    .copied()
                    .unwrap_or(0);
                if stamp == 0 {
                    continue;
                }
                if at < stamp {
                    side.before_stamp += 1;
                }
                mine.push(at.saturating_sub(stamp));
            }
            all.extend_from_slice(&mine);
            p99s.push(pcts(mine).p99);
        }
        side.latency = pcts(all);
        p99s.sort_by(f64::total_cmp);
        side.client_p99 = (
            p99s.first().copied().unwrap_or(f64::NAN),
            p99s.last().copied().unwrap_or(f64::NAN),
        );
        Ok(side)
    }
}

/// The child's times file: per client, one u64 per expected event.
fn split_times(b: &[u8], n: usize, expected: usize) -> Res<Vec<Vec<u64>>> {
    if b.len() != n * expected * 8 {
        return Err(format!(
            "times file has {} bytes, expected {n} × {expected} × 8",
            b.len()
        ));
    }
    Ok(b.chunks_exact(expected * 8)
        .map(|c| {
            c.chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
                .collect()
        })
        .collect())
}

/// What the facade clients of one run got.
#[derive(Debug, Default)]
pub(crate) struct FacadeSide {
    pub(crate) clients: usize,
    /// Broadcast events each client should get.
    pub(crate) expected: usize,
    /// Clients with every event, in order, nothing extra, not dropped.
    pub(crate) complete: usize,
    /// Events received, all clients.
    pub(crate) received: usize,
    /// Expected events a client never got (a later one came first).
    pub(crate) lost: usize,
    /// Clients that lost at least one event.
    pub(crate) lossy: usize,
    /// The most frequent distance between two lost events, per client
    /// (smallest, largest), and where the first losses were (a client).
    pub(crate) lost_gap: (usize, usize),
    pub(crate) lost_at: String,
    /// Events that match no expected event near their place (order).
    pub(crate) out_of_place: usize,
    /// Events in place whose bytes differ from the trace's.
    pub(crate) bytes_diff: usize,
    /// Clients whose connection the facade closed before the last event.
    pub(crate) closed: usize,
    /// Clients still short of the last event when stopped.
    pub(crate) stopped: usize,
    /// Messages without `Privilege:` after login, all clients.
    pub(crate) other: usize,
    pub(crate) extra: usize,
    pub(crate) boots: usize,
    /// Client receive times before the relay's stamp (clock sanity).
    pub(crate) before_stamp: usize,
    /// Relay stamp → client has it, over all clients.
    pub(crate) latency: Pcts,
    /// The smallest and largest per-client p99 (ms).
    pub(crate) client_p99: (f64, f64),
    pub(crate) client_cpu_s: f64,
    pub(crate) client_hwm: u64,
    pub(crate) dropped: Option<f64>,
    pub(crate) notes: Vec<String>,
}

impl FacadeSide {
    /// Adds one `client i got … eof …` line.
    fn add_report(&mut self, line: &str, expected: usize) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let word = |k: &str| -> &str {
            f.iter()
                .position(|x| *x == k)
                .and_then(|i| f.get(i + 1).copied())
                .unwrap_or("")
        };
        let get = |k: &str| -> usize { word(k).parse().unwrap_or(0) };
        let (got, lost, bad, gap) = (
            get("got"),
            get("lost"),
            get("out_of_place"),
            get("lost_gap"),
        );
        let (closed, stopped) = (get("closed") != 0, get("stopped") != 0);
        self.received += got;
        self.lost += lost;
        self.out_of_place += bad;
        self.bytes_diff += get("bytes_diff");
        self.other += get("other");
        self.extra += get("extra");
        self.closed += usize::from(closed);
        self.stopped += usize::from(stopped);
        if lost > 0 {
            self.lossy += 1;
            if gap > 0 {
                self.lost_gap = if self.lost_gap.0 == 0 {
                    (gap, gap)
                } else {
                    (self.lost_gap.0.min(gap), self.lost_gap.1.max(gap))
                };
            }
            if self.lost_at.is_empty() {
                self.lost_at = format!(
                    "{}: events {}",
                    f.get(..2).map(|x| x.join(" ")).unwrap_or_default(),
                    word("lost_at")
                );
            }
        }
        if got == expected && bad == 0 && get("extra") == 0 {
            self.complete += 1;
        } else if self.notes.len() < 3 {
            self.notes.push(format!(
                "{}: {got} of {expected} events, {lost} lost, {bad} out of place{}{}",
                f.get(..2).map(|x| x.join(" ")).unwrap_or_default(),
                if bad > 0 {
                    format!(" (first where event {} was expected)", word("first_bad"))
                } else {
                    String::new()
                },
                if closed {
                    ", connection closed by the facade"
                } else if stopped {
                    ", stopped waiting"
                } else {
                    ""
                }
            ));
        }
    }

    pub(crate) fn all_in_order(&self) -> bool {
        self.complete == self.clients && self.clients > 0
    }
}

/// Scenario f's two runs and their report.
pub(crate) struct FResult {
    pub(crate) clients: usize,
    pub(crate) base: Res<Outcome>,
    pub(crate) with: Res<(Outcome, FacadeSide)>,
}

impl FResult {
    /// Extra bridge CPU per event per client (µs).
    pub(crate) fn extra_us(&self) -> Option<f64> {
        let (Ok(b), Ok((w, f))) = (&self.base, &self.with) else {
            return None;
        };
        Some((w.cpu_s - b.cpu_s) * 1e6 / (f.expected.max(1) * self.clients.max(1)) as f64)
    }
}

pub(crate) async fn run_f(s: &Setup) -> FResult {
    let clients: usize = env_or("BENCH_FACADE_CLIENTS", "50").parse().unwrap_or(50);
    let t = std::time::Instant::now();
    eprintln!("bench bridge: scenario f (timing) bridge without facade clients…");
    let base = run_bridge(s, "f0", Pace::Timing).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("bench bridge: scenario f (timing) bridge with {clients} facade clients…");
    let with = run_bridge_with(s, &format!("f{clients}"), Pace::Timing, clients)
        .await
        .and_then(|(o, f)| Ok((o, f.ok_or("no facade result")?)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "bench bridge: scenario f took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let r = FResult {
        clients,
        base,
        with,
    };
    report(&r);
    r
}

fn report(r: &FResult) {
    println!();
    println!(
        "(f) AMI facade: calls_busy at its recorded pace (replay --timing), the bridge alone and with {} facade clients (read all)",
        r.clients
    );
    row("", "no clients", &format!("{} clients", r.clients), "");
    let empty = Outcome::default();
    let b = match &r.base {
        Ok(b) => b,
        Err(e) => {
            println!("  bridge without clients: {e}");
            &empty
        }
    };
    let (w, f) = match &r.with {
        Ok((w, f)) => (w, Some(f)),
        Err(e) => {
            println!("  bridge with clients: {e}");
            (&empty, None)
        }
    };
    let n = b.n.max(w.n);
    row(
        "bridge CPU (s, user+sys)",
        &format!("{:.2}", b.cpu_s),
        &format!("{:.2}", w.cpu_s),
        "gate open → bus (and clients) have everything",
    );
    row(
        "CPU per event (µs)",
        &format!("{:.1}", b.cpu_us_per_msg()),
        &format!("{:.1}", w.cpu_us_per_msg()),
        "",
    );
    if let (Some(x), Some(f)) = (r.extra_us(), f) {
        row(
            "extra CPU per event per client (µs)",
            "",
            &format!("{x:.2}"),
            &format!(
                "({:.2} − {:.2} s) / ({} events × {} clients)",
                w.cpu_s, b.cpu_s, f.expected, r.clients
            ),
        );
    }
    row(
        "context switches per event",
        &format!("{:.2}", b.ctx_switches as f64 / b.n.max(1) as f64),
        &format!("{:.2}", w.ctx_switches as f64 / w.n.max(1) as f64),
        "",
    );
    row("peak RSS (VmHWM)", &mb(b.hwm), &mb(w.hwm), "");
    row(
        "RSS when idle after the run",
        &mb(b.rss_idle),
        &mb(w.rss_idle),
        "",
    );
    let count = |o: &Outcome| o.delivered.iter().filter(|&&t| t > 0).count();
    row(
        "messages at the consumer (bus)",
        &format!("{}/{n}", count(b)),
        &format!("{}/{n}", count(w)),
        "",
    );
    row(
        "arrival→consumer p50/p99/p99.9 (ms)",
        &ms3(&b.e2e),
        &ms3(&w.e2e),
        "on its socket→delivered",
    );
    for (side, o) in [("no clients", b), ("with clients", w)] {
        if let Some(sc) = o.send {
            println!(
                "  AMI socket ({side}): replay → bridge took {:.2} s for the trace's 15.8 s schedule; worst lag behind schedule {:.1} ms (at {:.2} s); longest wait writing to the bridge's socket {:.1} ms, {:.1} ms in all",
                sc.duration, sc.max_lag_ms, sc.max_lag_at_s, sc.longest_write_ms, sc.write_wait_ms
            );
        }
    }
    if let Some(f) = f {
        println!(
            "  facade clients: {}/{} got all {} broadcast events in the relay's order; {} events received in all, {} lost ({} clients), {} out of place, {} matched by Event/Uniqueid only, {} extra, {} other messages; closed by the facade {}, still waiting when stopped {}; facade_dropped_sessions_total {}",
            f.complete,
            f.clients,
            f.expected,
            f.received,
            f.lost,
            f.lossy,
            f.out_of_place,
            f.bytes_diff,
            f.extra,
            f.other,
            f.closed,
            f.stopped,
            f.dropped.map_or("?".into(), |d| format!("{:.0}", d + 0.0))
        );
        if f.lost > 0 {
            println!(
                "  facade clients: lost events {} on average per client; first losses of {}; most frequent distance between two lost events {}–{} (per client)",
                f.lost / f.lossy.max(1),
                f.lost_at,
                f.lost_gap.0,
                f.lost_gap.1
            );
        }
        println!(
            "  facade latency (relay hands the event to the bridge → client has it), all clients: p50 {:.3} / p99 {:.3} / p99.9 {:.3} / max {:.3} ms over {} events; per-client p99 {:.3}–{:.3} ms",
            f.latency.p50,
            f.latency.p99,
            f.latency.p999,
            f.latency.max,
            f.latency.n,
            f.client_p99.0,
            f.client_p99.1
        );
        println!(
            "  facade clients' process (not in the bridge's numbers): {:.2} s CPU ({:.2} µs per event per client), peak RSS {}{}{}",
            f.client_cpu_s,
            f.client_cpu_s * 1e6 / (f.expected.max(1) * f.clients.max(1)) as f64,
            mb(Some(f.client_hwm)),
            if f.boots > 0 {
                format!("; {} login FullyBooted skipped", f.boots)
            } else {
                String::new()
            },
            if f.before_stamp > 0 {
                format!(
                    "; {} receive times before the relay's stamp",
                    f.before_stamp
                )
            } else {
                String::new()
            }
        );
        for note in &f.notes {
            println!("  note (clients): {note}");
        }
    }
    for (side, o) in [("no clients", b), ("with clients", w)] {
        for note in &o.notes {
            println!("  note ({side}): {note}");
        }
    }
    use std::io::Write as _;
    std::io::stdout().flush().ok();
}

/// Scenario f's lines under "targets".
pub(crate) fn target(r: &FResult) {
    println!();
    println!("targets (f)");
    if let Some(x) = r.extra_us() {
        println!(
            "  extra bridge CPU per event per client ≤ {TARGET_US} µs (f): {x:.2} µs  {}",
            verdict(x <= TARGET_US)
        );
    }
    if let Ok((w, f)) = &r.with {
        println!(
            "  every client gets every event in order (f):    {}/{} clients  {}",
            f.complete,
            f.clients,
            verdict(f.all_in_order())
        );
        let bus = |o: &Outcome| o.delivered.iter().filter(|&&t| t > 0).count() == o.n && o.n > 0;
        let base_bus = r.base.as_ref().is_ok_and(bus);
        println!(
            "  the bus gets everything (f, without / with):    {} / {}  {}",
            base_bus,
            bus(w),
            verdict(base_bus && bus(w))
        );
        let stall = |o: &Outcome| {
            o.send.is_some_and(|sc| {
                sc.duration < 16.5 && sc.max_lag_ms < 250.0 && sc.longest_write_ms < 250.0
            })
        };
        let base_ok = r.base.as_ref().is_ok_and(stall);
        println!(
            "  AMI socket never stalls (f, without / with):    {} / {}  {}",
            base_ok,
            stall(w),
            verdict(base_ok && stall(w))
        );
        println!(
            "  facade latency p50 / p99 / max (f):             {:.3} / {:.3} / {:.3} ms",
            f.latency.p50, f.latency.p99, f.latency.max
        );
    }
}
