//! A scripted fake Asterisk for tests of hostile or odd servers: it speaks
//! just enough AMI (banner, `Challenge`, `Login`, `Ping`, `Logoff`) and
//! lets a test write whatever it wants at two points of each session, and
//! the events an action causes (an async `Originate`'s `OriginateResponse`)
//! to the sessions that asked for events, as Asterisk does.
//!
//! Included with `#[path = "common/fake_ami.rs"] mod fake_ami;` by the test
//! files that use it. Blocking std I/O on threads: independent of the
//! runtime under test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What the fake server does at the scripted points of a session.
pub trait Script: Send + Sync + 'static {
    /// After reading `Login`, before answering it. `session` counts the
    /// connections accepted so far (0 = first).
    fn before_login_answer(&self, _session: usize, _sock: &mut TcpStream) {}
    /// Right after a successful login of a session that asked for events
    /// (`Events:` other than `off`).
    fn after_login(&self, _session: usize, _sock: &mut TcpStream) {}
    /// The answer to any other action (`Command`, …); `None` answers
    /// `Response: Success`.
    fn answer(&self, _action: &str, _action_id: &str) -> Option<Vec<u8>> {
        None
    }
    /// The events an action causes (each a complete message), written to
    /// every logged-in session that asked for events (`Events:` other than
    /// `off`), the sender included: as Asterisk does with an async
    /// `Originate`'s `OriginateResponse`, which carries the action's
    /// `ActionID` and goes to every session whose mask has `call`.
    fn events_for(&self, _action: &str, _action_id: &str) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// `None` (default): the answer first, then the events. `Some(d)`: the
    /// events to the *other* sessions first, the answer `d` later, then the
    /// events to the sender: a client with separate action and event
    /// connections (the bridge) sees the event before the response, a race
    /// real Asterisk can produce between two connections.
    fn events_to_others_first(&self) -> Option<Duration> {
        None
    }
}

/// A session's socket for writing, shared with the threads that broadcast
/// events (one message per lock: never interleaved).
type Writer = Arc<Mutex<TcpStream>>;

/// The logged-in sessions that asked for events.
type EventSessions = Arc<Mutex<Vec<(usize, Writer)>>>;

fn write_to(w: &Writer, bytes: &[u8]) -> std::io::Result<()> {
    w.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .write_all(bytes)
}

/// A running fake server; its threads end when the test process does.
pub struct FakeAmi {
    pub addr: String,
    pub sessions: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    socks: Arc<Mutex<Vec<TcpStream>>>,
}

impl FakeAmi {
    /// The server "crashes": every session is cut, and connections
    /// accepted from now on are closed at once (no banner).
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self
            .socks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Starts a fake server on a free port of 127.0.0.1.
pub fn start(script: impl Script) -> FakeAmi {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake AMI");
    let addr = listener.local_addr().expect("addr").to_string();
    let script = Arc::new(script);
    let sessions = Arc::new(AtomicUsize::new(0));
    let count = sessions.clone();
    let listeners = EventSessions::default();
    let down = Arc::new(AtomicBool::new(false));
    let socks = Arc::new(Mutex::new(Vec::new()));
    let (down2, socks2) = (down.clone(), socks.clone());
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { continue };
            if down2.load(Ordering::SeqCst) {
                continue; // dropped: closed
            }
            if let Ok(s) = sock.try_clone() {
                socks2
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(s);
            }
            let n = count.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            let listeners = listeners.clone();
            std::thread::spawn(move || {
                let _ = session(n, sock, &*script, &listeners);
                listeners
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|(m, _)| *m != n);
            });
        }
    });
    FakeAmi {
        addr,
        sessions,
        down,
        socks,
    }
}

/// Reads one action: its `Key: Value` lines up to a blank line.
fn read_action(r: &mut impl BufRead) -> std::io::Result<Option<Vec<(String, String)>>> {
    let mut fields = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if fields.is_empty() {
                continue;
            }
            return Ok(Some(fields));
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

fn get<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

fn session(
    n: usize,
    sock: TcpStream,
    script: &dyn Script,
    listeners: &EventSessions,
) -> std::io::Result<()> {
    let w: Writer = Arc::new(Mutex::new(sock.try_clone()?));
    let mut r = BufReader::new(sock);
    let mut wants_events = false;
    write_to(&w, b"Asterisk Call Manager/9.0.0\r\n")?;
    while let Some(a) = read_action(&mut r)? {
        let action = get(&a, "action").to_ascii_lowercase();
        let id = get(&a, "actionid").to_string();
        match action.as_str() {
            "challenge" => write_to(
                &w,
                format!("Response: Success\r\nActionID: {id}\r\nChallenge: 123456789\r\n\r\n")
                    .as_bytes(),
            )?,
            "login" => {
                let mut g = w.lock().unwrap_or_else(PoisonError::into_inner);
                script.before_login_answer(n, &mut g);
                write!(
                    g,
                    "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
                )?;
                if !get(&a, "events").eq_ignore_ascii_case("off") {
                    script.after_login(n, &mut g);
                    wants_events = true;
                    listeners
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((n, w.clone()));
                }
            }
            "logoff" => {
                write_to(
                    &w,
                    format!("Response: Goodbye\r\nActionID: {id}\r\n\r\n").as_bytes(),
                )?;
                return Ok(());
            }
            other => {
                let answer = script.answer(other, &id).unwrap_or_else(|| {
                    format!("Response: Success\r\nActionID: {id}\r\n\r\n").into_bytes()
                });
                let events = script.events_for(other, &id);
                let targets: Vec<(usize, Writer)> = listeners
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let broadcast = |to_self: bool| {
                    for (m, t) in &targets {
                        if (*m == n) == to_self {
                            for e in &events {
                                let _ = write_to(t, e);
                            }
                        }
                    }
                };
                match script.events_to_others_first() {
                    Some(d) => {
                        broadcast(false);
                        std::thread::sleep(d);
                        write_to(&w, &answer)?;
                        if wants_events {
                            broadcast(true);
                        }
                    }
                    None => {
                        write_to(&w, &answer)?;
                        broadcast(false);
                        if wants_events {
                            broadcast(true);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
