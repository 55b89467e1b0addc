//! A scripted fake Asterisk for tests of hostile or odd servers: it speaks
//! just enough AMI (banner, `Challenge`, `Login`, `Ping`, `Logoff`) and
//! lets a test write whatever it wants at two points of each session.
//!
//! Included with `#[path = "common/fake_ami.rs"] mod fake_ami;` by the test
//! files that use it. Blocking std I/O on threads: independent of the
//! runtime under test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
}

/// A running fake server; its threads end when the test process does.
pub struct FakeAmi {
    pub addr: String,
    pub sessions: Arc<AtomicUsize>,
}

/// Starts a fake server on a free port of 127.0.0.1.
pub fn start(script: impl Script) -> FakeAmi {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake AMI");
    let addr = listener.local_addr().expect("addr").to_string();
    let script = Arc::new(script);
    let sessions = Arc::new(AtomicUsize::new(0));
    let count = sessions.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { continue };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            std::thread::spawn(move || {
                let _ = session(n, sock, &*script);
            });
        }
    });
    FakeAmi { addr, sessions }
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

fn session(n: usize, sock: TcpStream, script: &dyn Script) -> std::io::Result<()> {
    let mut w = sock.try_clone()?;
    let mut r = BufReader::new(sock);
    w.write_all(b"Asterisk Call Manager/9.0.0\r\n")?;
    while let Some(a) = read_action(&mut r)? {
        let action = get(&a, "action").to_ascii_lowercase();
        let id = get(&a, "actionid").to_string();
        match action.as_str() {
            "challenge" => write!(
                w,
                "Response: Success\r\nActionID: {id}\r\nChallenge: 123456789\r\n\r\n"
            )?,
            "login" => {
                script.before_login_answer(n, &mut w);
                write!(
                    w,
                    "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
                )?;
                if !get(&a, "events").eq_ignore_ascii_case("off") {
                    script.after_login(n, &mut w);
                }
            }
            "logoff" => {
                write!(w, "Response: Goodbye\r\nActionID: {id}\r\n\r\n")?;
                return Ok(());
            }
            other => match script.answer(other, &id) {
                Some(bytes) => w.write_all(&bytes)?,
                None => write!(w, "Response: Success\r\nActionID: {id}\r\n\r\n")?,
            },
        }
    }
    Ok(())
}
