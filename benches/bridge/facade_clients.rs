//! Scenario f's AMI clients: this bench binary re-run as a child process
//! (`AMI2AMQP_BENCH_ROLE=facade-clients`), so that their CPU is neither
//! the bridge's nor the bench process's (where the relay stamps events).
//!
//! It logs `BENCH_FACADE_CLIENTS` clients in to the facade at
//! `BENCH_FACADE_ADDR` one after the other (the server is not up yet: the
//! relay holds the bridge's AMI connection closed), says `ready`, and then
//! runs one thread per client with blocking reads: split the stream at
//! `\r\n\r\n`, and for every event with a `Privilege:` header record the
//! time the read that completed it returned, and match it with the next
//! expected broadcast event (`BENCH_FACADE_EXPECT`, from
//! [`crate::facade::Expected`]): the CRC32 of its bytes, else of its
//! `Event/Uniqueid` key. An event that matches none of the next
//! [`LOOKAHEAD`] expected ones by its bytes, nor the next by its key, is
//! out of place; one that matches a later one means the events in between
//! were lost (counted, and the client stays in step, so that later events
//! are still matched to the right stamp). Events are only ever matched
//! forward: order is kept or the event is out of place. A thread ends when
//! it has the last expected event, at EOF (the facade closed it), or when
//! stdin says `stop` (the parent gave up waiting: every socket is shut
//! down). Then the times go to `BENCH_FACADE_OUT` (per client, one u64 µs
//! stamp per expected event, 0 = never received, little-endian), one
//! `client …` line per client and `done <cpu ticks> <VmHWM bytes>` to
//! stdout.

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use memchr::memmem;

use crate::Res;
use crate::facade::{LOGIN_PASS, LOGIN_USER, key_crc, message_crc};
use crate::measure::{cpu_ticks, vm_bytes};
use crate::trace::now_us;

/// How many expected events ahead an event is looked for (lost events).
const LOOKAHEAD: usize = 64;

pub(crate) fn main() {
    if let Err(e) = run() {
        println!("error {e}");
        eprintln!("bench bridge, facade clients: {e}");
        std::process::exit(1);
    }
}

fn var(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} not set"))
}

fn run() -> Res<()> {
    let addr = var("BENCH_FACADE_ADDR")?;
    let n: usize = var("BENCH_FACADE_CLIENTS")?
        .parse()
        .map_err(|_| "BENCH_FACADE_CLIENTS")?;
    let expect = Arc::new(read_expect(&var("BENCH_FACADE_EXPECT")?)?);
    let out = var("BENCH_FACADE_OUT")?;

    let mut logged = Vec::with_capacity(n);
    for i in 0..n {
        logged.push(login(&addr).map_err(|e| format!("client {i}: {e}"))?);
    }
    // A FullyBooted the facade sends at login (only when its server is
    // already up) is not part of the broadcast stream: drop it.
    let mut boots = 0usize;
    for (s, rest) in &mut logged {
        boots += skip_login_boot(s, rest);
    }
    let socks: Vec<TcpStream> = logged
        .iter()
        .filter_map(|(s, _)| s.try_clone().ok())
        .collect();
    println!("ready {n} {boots}");
    std::io::stdout().flush().ok();

    let stopping = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, Client)>();
    for (i, (s, rest)) in logged.into_iter().enumerate() {
        let (tx, expect, stopping) = (tx.clone(), expect.clone(), stopping.clone());
        std::thread::Builder::new()
            .name(format!("client-{i}"))
            .spawn(move || {
                let _ = tx.send((i, read_events(s, rest, &expect, &stopping)));
            })
            .map_err(|e| e.to_string())?;
    }
    drop(tx);
    // `stop` on stdin: shut every socket down, so that every read ends.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line.trim() == "stop" {
                stopping.store(true, Ordering::SeqCst);
                for s in &socks {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    });
    let mut results: Vec<Option<Client>> = (0..n).map(|_| None).collect();
    for (i, c) in rx {
        results[i] = Some(c);
    }
    let mut bin = Vec::with_capacity(n * expect.len() * 8);
    for (i, c) in results.iter().enumerate() {
        let c = c
            .as_ref()
            .ok_or_else(|| format!("client {i} has no result"))?;
        for t in &c.times {
            bin.extend_from_slice(&t.to_le_bytes());
        }
        println!(
            "client {i} got {} lost {} bytes_diff {} out_of_place {} first_bad {} other {} extra {} closed {} stopped {} lost_at {} lost_gap {}",
            c.got,
            c.lost.len(),
            c.bytes_diff,
            c.out_of_place,
            c.first_bad.map_or(-1, |k| k as i64),
            c.other,
            c.extra,
            u8::from(c.closed),
            u8::from(c.stopped),
            if c.lost.is_empty() {
                "-".to_string()
            } else {
                c.lost
                    .iter()
                    .take(4)
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            common_gap(&c.lost)
        );
    }
    std::fs::write(&out, bin).map_err(|e| format!("write {out}: {e}"))?;
    let me = std::process::id();
    println!(
        "done {} {}",
        cpu_ticks(me).unwrap_or(0),
        vm_bytes(me, "VmHWM").unwrap_or(0)
    );
    std::io::stdout().flush().ok();
    Ok(())
}

/// (CRC32 of the bytes, CRC32 of `Event/Uniqueid`) of each expected event.
fn read_expect(path: &str) -> Res<Vec<(u32, u32)>> {
    let b = std::fs::read(path).map_err(|e| format!("read {path}: {e}"))?;
    Ok(b.chunks_exact(8)
        .map(|c| {
            (
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect())
}

/// Connects, reads the banner, logs in; returns the socket and whatever
/// came after the login response.
fn login(addr: &str) -> Res<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let banner_end = read_until(&mut s, &mut buf, b"\r\n")?;
    buf.drain(..banner_end + 2);
    s.write_all(
        format!("Action: Login\r\nUsername: {LOGIN_USER}\r\nSecret: {LOGIN_PASS}\r\n\r\n")
            .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let end = read_until(&mut s, &mut buf, b"\r\n\r\n")?;
    let resp = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !resp.contains("Response: Success") {
        return Err(format!("login refused: {resp:?}"));
    }
    buf.drain(..end + 4);
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok((s, buf))
}

fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, pat: &[u8]) -> Res<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = memmem::find(buf, pat) {
            return Ok(i);
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed during login".into()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) => return Err(format!("during login: {e}")),
        }
    }
}

/// Takes a login FullyBooted already waiting on the socket (1 if so).
fn skip_login_boot(s: &mut TcpStream, rest: &mut Vec<u8>) -> usize {
    if s.set_nonblocking(true).is_ok() {
        let mut chunk = [0u8; 4096];
        while let Ok(k) = s.read(&mut chunk) {
            if k == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..k]);
        }
        let _ = s.set_nonblocking(false);
    }
    if rest.starts_with(b"Event: FullyBooted\r\n")
        && let Some(i) = memmem::find(rest, b"\r\n\r\n")
    {
        rest.drain(..i + 4);
        return 1;
    }
    0
}

/// The most frequent distance between consecutive lost events (0: fewer
/// than two lost).
fn common_gap(lost: &[usize]) -> usize {
    let mut gaps: Vec<usize> = lost.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let mut best = (0, 0);
    let mut i = 0;
    while i < gaps.len() {
        let j = gaps[i..].iter().take_while(|&&g| g == gaps[i]).count();
        if j > best.1 {
            best = (gaps[i], j);
        }
        i += j;
    }
    best.0
}

/// What one client received.
#[derive(Default)]
struct Client {
    /// Receive time (µs) of each expected event, 0 = not received.
    times: Vec<u64>,
    /// The next expected event.
    next: usize,
    got: usize,
    /// Expected events skipped over (a later one came first).
    lost: Vec<usize>,
    /// Events matched by their key, not their bytes.
    bytes_diff: usize,
    /// Events that match none of the next expected ones.
    out_of_place: usize,
    first_bad: Option<usize>,
    /// Messages without `Privilege:` (not broadcast events).
    other: usize,
    /// Broadcast events after the last expected one.
    extra: usize,
    /// The facade closed the connection before the last event.
    closed: bool,
    /// The parent stopped the client before the last event.
    stopped: bool,
}

impl Client {
    fn on_message(&mut self, msg: &[u8], t: u64, expect: &[(u32, u32)]) {
        if !(msg.starts_with(b"Privilege: ") || memmem::find(msg, b"\r\nPrivilege: ").is_some()) {
            self.other += 1;
            return;
        }
        let k = self.next;
        if k >= expect.len() {
            self.extra += 1;
            return;
        }
        let crc = message_crc(msg);
        let at = if crc == expect[k].0 {
            Some(k)
        } else if let Some(j) = expect[k + 1..]
            .iter()
            .take(LOOKAHEAD)
            .position(|e| e.0 == crc)
        {
            Some(k + 1 + j)
        } else if key_crc(msg) == expect[k].1 {
            self.bytes_diff += 1;
            Some(k)
        } else {
            None
        };
        let Some(at) = at else {
            self.out_of_place += 1;
            self.first_bad.get_or_insert(k);
            return;
        };
        self.lost.extend(k..at);
        self.times[at] = t;
        self.got += 1;
        self.next = at + 1;
    }

    /// The connection ended before the last event.
    fn ended(&mut self, stopping: &AtomicBool) {
        self.stopped = stopping.load(Ordering::SeqCst);
        self.closed = !self.stopped;
    }
}

/// Reads one client's socket until the last expected event is in, or EOF.
fn read_events(
    mut s: TcpStream,
    mut buf: Vec<u8>,
    expect: &[(u32, u32)],
    stopping: &AtomicBool,
) -> Client {
    let mut c = Client {
        times: vec![0; expect.len()],
        ..Default::default()
    };
    let finder = memmem::Finder::new(b"\r\n\r\n");
    let mut chunk = vec![0u8; 256 * 1024];
    let mut t = now_us();
    // Where the next message starts, and where the search for its end
    // resumes (the terminator may straddle two reads).
    let (mut start, mut scan) = (0usize, 0usize);
    loop {
        while let Some(i) = finder.find(&buf[scan..]) {
            let end = scan + i;
            c.on_message(&buf[start..end], t, expect);
            start = end + 4;
            scan = start;
        }
        scan = buf.len().saturating_sub(3).max(start);
        if c.next >= expect.len() {
            break;
        }
        if start > 0 {
            buf.drain(..start);
            scan -= start;
            start = 0;
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                c.ended(stopping);
                break;
            }
            Ok(k) => {
                t = now_us();
                buf.extend_from_slice(&chunk[..k]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.ended(stopping);
                break;
            }
        }
    }
    c
}
