//! A fake Asterisk that broadcasts numbered events at a steady rate, as a
//! real one broadcasts its events to whoever is logged in: `Event:
//! UserEvent`, `UserEvent: Tick`, `N: <n>` with `n` counting up whether
//! anybody reads or not. It logs every session (login and logout times,
//! the first and last `N` written to it), so a test knows exactly which
//! events each reader was sent and when the server had no reader.
//!
//! Blocking std I/O on threads: independent of the runtime under test.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One logged-in session, as the server saw it.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: usize,
    /// Logged in asking for events (`Events:` other than `off`).
    pub events: bool,
    pub login: Instant,
    pub logout: Option<Instant>,
    /// The first and last `N` written to it.
    pub first: Option<u64>,
    pub last: Option<u64>,
}

#[derive(Default)]
struct State {
    sessions: Vec<Session>,
    /// The sockets of the sessions with events, by session id.
    writers: Vec<(usize, TcpStream)>,
}

pub struct TickAmi {
    pub addr: String,
    state: Arc<Mutex<State>>,
    sent: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TickAmi {
    /// Listens on a free port and sends `rate` events per second.
    pub fn start(rate: u32) -> TickAmi {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let t = TickAmi {
            addr,
            state: Arc::default(),
            sent: Arc::default(),
            paused: Arc::default(),
            stop: Arc::default(),
        };
        let (state, stop) = (t.state.clone(), t.stop.clone());
        std::thread::spawn(move || {
            for (id, sock) in l.incoming().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(sock) = sock else { continue };
                let state = state.clone();
                std::thread::spawn(move || serve(id, sock, &state));
            }
        });
        let (state, sent, paused, stop) = (
            t.state.clone(),
            t.sent.clone(),
            t.paused.clone(),
            t.stop.clone(),
        );
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                next += period;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                if !paused.load(Ordering::Relaxed) {
                    let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
                    broadcast(&state, n);
                }
            }
        });
        t
    }

    /// The last `N` generated.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops generating events (sessions stay up).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    /// Every session so far.
    pub fn sessions(&self) -> Vec<Session> {
        lock(&self.state).sessions.clone()
    }

    /// The event sessions logged in now.
    pub fn readers(&self) -> usize {
        lock(&self.state)
            .sessions
            .iter()
            .filter(|s| s.events && s.logout.is_none())
            .count()
    }
}

impl TickAmi {
    /// How long the server had no event reader after its event session
    /// that ended first at or after `after`: the next session's login −
    /// that logout.
    pub fn gap_after(&self, after: Instant) -> Option<Duration> {
        let sessions: Vec<Session> = self.sessions().into_iter().filter(|s| s.events).collect();
        let ended = sessions
            .iter()
            .filter(|s| s.logout.is_some_and(|l| l >= after))
            .min_by_key(|s| s.logout)?;
        let out = ended.logout?;
        let next = sessions
            .iter()
            .filter(|s| s.login >= out)
            .min_by_key(|s| s.login)?;
        Some(next.login - out)
    }

    /// The longest time two event sessions were logged in together.
    pub fn max_overlap(&self) -> Duration {
        let now = Instant::now();
        let s: Vec<(Instant, Instant)> = self
            .sessions()
            .into_iter()
            .filter(|s| s.events)
            .map(|s| (s.login, s.logout.unwrap_or(now)))
            .collect();
        let mut worst = Duration::ZERO;
        for (i, a) in s.iter().enumerate() {
            for b in &s[i + 1..] {
                worst = worst.max(a.1.min(b.1).saturating_duration_since(a.0.max(b.0)));
            }
        }
        worst
    }
}

impl Drop for TickAmi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut st = lock(&self.state);
        for (_, w) in st.writers.drain(..) {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        let _ = TcpStream::connect(&self.addr);
    }
}

fn broadcast(state: &Mutex<State>, n: u64) {
    let msg =
        format!("Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: Tick\r\nN: {n}\r\n\r\n");
    let mut st = lock(state);
    let mut dead = Vec::new();
    let mut written = Vec::new();
    for (id, w) in &mut st.writers {
        if w.write_all(msg.as_bytes()).is_ok() {
            written.push(*id);
        } else {
            dead.push(*id);
        }
    }
    for s in st.sessions.iter_mut() {
        if written.contains(&s.id) {
            s.first.get_or_insert(n);
            s.last = Some(n);
        }
    }
    for id in dead {
        end(&mut st, id);
    }
}

fn end(st: &mut State, id: usize) {
    st.writers.retain(|(i, _)| *i != id);
    if let Some(s) = st.sessions.iter_mut().find(|s| s.id == id)
        && s.logout.is_none()
    {
        s.logout = Some(Instant::now());
    }
}

/// One message: its `Key: Value` lines up to the blank line; `None` at EOF.
fn read_message(r: &mut impl BufRead) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            if out.is_empty() {
                continue;
            }
            return Some(out);
        }
        if let Some((k, v)) = line.split_once(": ") {
            out.push((k.to_ascii_lowercase(), v.to_string()));
        }
    }
}

fn serve(id: usize, sock: TcpStream, state: &Mutex<State>) {
    let Ok(mut w) = sock.try_clone() else { return };
    let mut r = BufReader::new(sock);
    if w.write_all(b"Asterisk Call Manager/9.0.0\r\n").is_err() {
        return;
    }
    while let Some(m) = read_message(&mut r) {
        let get = |k: &str| m.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let action = get("action").unwrap_or("").to_ascii_lowercase();
        let aid = get("actionid").unwrap_or("");
        let answer = match action.as_str() {
            "challenge" => {
                format!("Response: Success\r\nActionID: {aid}\r\nChallenge: 123456789\r\n\r\n")
            }
            "login" => {
                let events = !get("events").is_some_and(|e| e.eq_ignore_ascii_case("off"));
                let answer = format!(
                    "Response: Success\r\nActionID: {aid}\r\nMessage: Authentication accepted\r\n\r\n"
                );
                // Answer before the session joins the broadcast, as Asterisk does.
                let mut st = lock(state);
                if w.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                st.sessions.push(Session {
                    id,
                    events,
                    login: Instant::now(),
                    logout: None,
                    first: None,
                    last: None,
                });
                if events && let Ok(c) = w.try_clone() {
                    st.writers.push((id, c));
                }
                continue;
            }
            "ping" => format!(
                "Response: Success\r\nActionID: {aid}\r\nPing: Pong\r\nTimestamp: 0.000000\r\n\r\n"
            ),
            "logoff" => {
                let mut st = lock(state);
                let _ = w.write_all(format!("Response: Goodbye\r\nActionID: {aid}\r\nMessage: Thanks for all the fish.\r\n\r\n").as_bytes());
                end(&mut st, id);
                return;
            }
            _ => format!("Response: Success\r\nActionID: {aid}\r\n\r\n"),
        };
        let _st = lock(state);
        if w.write_all(answer.as_bytes()).is_err() {
            break;
        }
    }
    end(&mut lock(state), id);
}
