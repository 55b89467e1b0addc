//! The server end of an AMI session, as Asterisk 22 runs it.
//!
//! [`ServerSession`] is what `main/manager.c` does with each action a
//! client sends before anything reaches a dialplan or a channel: the
//! `Action:` lookup, the rule that only `Login`, `Challenge` and `Logoff`
//! are allowed before login, plain and MD5 login against an account, the
//! event mask (`Events:` at login and the `Events` action), the session's
//! filters (`Filter`), `Ping` and `Logoff`. Everything else is
//! [`Step::Forward`]: the caller decides where it runs.
//!
//! It does no I/O and keeps no clock: the 1 s pause after a failed login
//! and the closing of the socket are [`Step::Close`] for the caller to
//! carry out, and the time and boot state come in as arguments. That is
//! what lets an AMI-compatible listener (and a fake Asterisk in tests)
//! answer byte for byte as Asterisk does, with every rule tested here.
//!
//! Replies are written as Asterisk writes them (`astman_send_response`):
//! `Response:` first, the client's `ActionID` second when it sent one
//! (its first `ActionID:` header, byte for byte), then the rest, CRLF line
//! ends and one blank line at the end.

use crate::events::{EventMask, mask_allows};
use crate::filter::{EventFilter, FilterSet};
use crate::message::Message;

/// The class bit of `system` (the `Filter` action needs it as a write
/// class; `FullyBooted` is a `system` event).
const SYSTEM: u32 = 1;

/// What a session may do once logged in: one user of the listener.
#[derive(Debug, Clone)]
pub struct Account {
    /// The secret, compared exactly (plain) or through the MD5 key.
    pub secret: String,
    /// Read classes: the events the user may receive.
    pub read: u32,
    /// Write classes: the actions the user may run.
    pub write: u32,
    /// Filters every session of this user starts with (`manager.conf`'s
    /// `eventfilter`).
    pub filters: FilterSet,
}

/// Where a session looks its user up; names compare case-insensitively,
/// as Asterisk's do.
pub trait Accounts {
    /// The account of `username`, whatever its case.
    fn find(&self, username: &str) -> Option<&Account>;
}

/// The backend's state that `FullyBooted` reports after a login.
#[derive(Debug, Clone, Copy)]
pub struct Boot {
    /// Whether Asterisk has finished booting (no `FullyBooted` until then).
    pub fully_booted: bool,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Seconds since the last reload.
    pub last_reload_s: u64,
}

/// What the caller does with one client action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes (one or more whole messages) to the client.
    Answer(Vec<u8>),
    /// Write these bytes, then close the session; after a failed login,
    /// wait a second first (`delay`), as Asterisk does.
    Close {
        /// The last message of the session.
        answer: Vec<u8>,
        /// Wait one second before writing it.
        delay: bool,
    },
    /// Not an action the session answers itself: run it (a logged-in
    /// session only). `action` is its name as the client spelled it.
    Forward {
        /// The `Action:` value.
        action: String,
    },
}

/// A logged-in user's session state.
#[derive(Debug, Clone)]
struct LoggedIn {
    username: String,
    write: u32,
    read: u32,
    send_events: u32,
    filters: FilterSet,
}

/// One client session, from connect to close.
#[derive(Debug, Clone, Default)]
pub struct ServerSession {
    challenge: Option<String>,
    user: Option<LoggedIn>,
}

impl ServerSession {
    /// A new, unauthenticated session.
    pub fn new() -> Self {
        ServerSession::default()
    }

    /// The user name the session logged in with, as the client spelled it.
    pub fn username(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.username.as_str())
    }

    /// The session's write classes (0 before login).
    pub fn write_classes(&self) -> u32 {
        self.user.as_ref().map_or(0, |u| u.write)
    }

    /// The session's current event mask (0 before login).
    pub fn event_mask(&self) -> u32 {
        self.user.as_ref().map_or(0, |u| u.send_events)
    }

    /// Whether an event goes to this session: logged in, every class of its
    /// `Privilege:` (`category`, see [`crate::privilege_bits`]) in the
    /// session's mask, and its filters pass (`text` is the whole event).
    pub fn wants_event(&self, category: u32, name: &[u8], text: &[u8]) -> bool {
        self.user.as_ref().is_some_and(|u| {
            mask_allows(u.send_events, category) && u.filters.should_send(name, text)
        })
    }

    /// Handles one action. `challenge` makes a new MD5 challenge (digits)
    /// when the session needs one; `now` is the wall clock as (seconds,
    /// microseconds), for `Ping`.
    pub fn handle(
        &mut self,
        m: &Message,
        accounts: &impl Accounts,
        boot: Boot,
        challenge: impl FnOnce() -> String,
        now: (u64, u32),
    ) -> Step {
        let Some(action) = first_non_empty(m, "Action") else {
            return Step::Answer(error(m, "Missing action in request"));
        };
        let is = |name: &str| action.eq_ignore_ascii_case(name);
        if is("Logoff") {
            let answer = response(m, "Goodbye", &[("Message", "Thanks for all the fish.")]);
            return Step::Close {
                answer,
                delay: false,
            };
        }
        if self.user.is_none() && !(is("Login") || is("Challenge")) {
            return Step::Answer(error(m, "Permission denied"));
        }
        if is("Challenge") {
            return Step::Answer(self.challenge(m, challenge));
        }
        if is("Login") {
            return self.login(m, accounts, boot);
        }
        if is("Ping") {
            let ts = format!("{}.{:06}", now.0, now.1);
            return Step::Answer(response(
                m,
                "Success",
                &[("Ping", "Pong"), ("Timestamp", &ts)],
            ));
        }
        if is("Events") {
            return Step::Answer(self.events(m));
        }
        if is("Filter") {
            return Step::Answer(self.filter(m));
        }
        Step::Forward { action }
    }

    fn challenge(&mut self, m: &Message, make: impl FnOnce() -> String) -> Vec<u8> {
        if !header(m, "AuthType").eq_ignore_ascii_case("MD5") {
            return error(m, "Must specify AuthType");
        }
        let c = self.challenge.get_or_insert_with(make);
        response(m, "Success", &[("Challenge", c.as_str())])
    }

    fn login(&mut self, m: &Message, accounts: &impl Accounts, boot: Boot) -> Step {
        if self.user.is_some() {
            return Step::Answer(response(
                m,
                "Success",
                &[("Message", "Already authenticated")],
            ));
        }
        let username = header(m, "Username");
        let account = (!username.is_empty())
            .then(|| accounts.find(&username))
            .flatten()
            .filter(|a| self.proves(m, a));
        let Some(account) = account else {
            let answer = error(m, "Authentication failed");
            return Step::Close {
                answer,
                delay: true,
            };
        };
        let send_events = match EventMask::from_header(&header(m, "Events")) {
            Some(mask) => account.read & mask.bits(),
            None => account.read,
        };
        let user = LoggedIn {
            username,
            write: account.write,
            read: account.read,
            send_events,
            filters: account.filters.clone(),
        };
        let mut out = response(m, "Success", &[("Message", "Authentication accepted")]);
        if send_events & SYSTEM != 0 && boot.fully_booted {
            out.extend_from_slice(&fully_booted(boot));
        }
        self.user = Some(user);
        Step::Answer(out)
    }

    /// Whether the Login proves knowledge of the account's secret.
    fn proves(&self, m: &Message, account: &Account) -> bool {
        if header(m, "AuthType").eq_ignore_ascii_case("MD5") {
            let key = header(m, "Key");
            return match &self.challenge {
                Some(c) if !key.is_empty() => crate::login::md5_key(c, &account.secret) == key,
                _ => false,
            };
        }
        header(m, "Secret") == account.secret
    }

    fn events(&mut self, m: &Message) -> Vec<u8> {
        let Some(user) = self.user.as_mut() else {
            return error(m, "Permission denied");
        };
        let Some(mask) = EventMask::from_header(&header(m, "EventMask")) else {
            return error(m, "Invalid event mask");
        };
        let bits = mask.bits();
        user.send_events = user.read & bits;
        let on = if bits > 0 { "On" } else { "Off" };
        response(m, "Success", &[("Events", on)])
    }

    fn filter(&mut self, m: &Message) -> Vec<u8> {
        let Some(user) = self.user.as_mut() else {
            return error(m, "Permission denied");
        };
        if user.write & SYSTEM == 0 {
            return error(m, "Permission denied");
        }
        if !header(m, "Operation").eq_ignore_ascii_case("Add") {
            return error(m, "Unknown operation");
        }
        let criteria = header(m, "MatchCriteria");
        match EventFilter::new(Some(&criteria), &header(m, "Filter")) {
            Ok(f) => {
                user.filters.add(f);
                response(m, "Success", &[("Message", "Success")])
            }
            Err(e) => error(m, e.asterisk_message()),
        }
    }

    /// The read classes of the logged-in user (0 before login).
    pub fn read_classes(&self) -> u32 {
        self.user.as_ref().map_or(0, |u| u.read)
    }
}

/// `FullyBooted` as Asterisk sends it right after the login response.
fn fully_booted(boot: Boot) -> Vec<u8> {
    format!(
        "Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: {}\r\nLastReload: {}\r\n\
         Status: Fully Booted\r\n\r\n",
        boot.uptime_s, boot.last_reload_s
    )
    .into_bytes()
}

/// A header's value as Asterisk's `astman_get_header` reads it: the first
/// header of that name (any case), or empty.
fn header(m: &Message, key: &str) -> String {
    m.get(key).map(|v| v.into_owned()).unwrap_or_default()
}

/// The first non-empty value of `key` (how Asterisk finds `Action`).
fn first_non_empty(m: &Message, key: &str) -> Option<String> {
    m.get_all(key)
        .find(|v| !v.is_empty())
        .map(|v| v.into_owned())
}

/// A response as `astman_send_response` writes it.
pub fn response(m: &Message, result: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    push_line(&mut out, b"Response", result.as_bytes());
    if let Some(id) = m.get_bytes("ActionID").filter(|v| !v.is_empty()) {
        push_line(&mut out, b"ActionID", id);
    }
    for (k, v) in fields {
        push_line(&mut out, k.as_bytes(), v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `Response: Error` with `Message:`, as `astman_send_error` writes it.
pub fn error(m: &Message, message: &str) -> Vec<u8> {
    response(m, "Error", &[("Message", message)])
}

fn push_line(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.extend_from_slice(k);
    out.extend_from_slice(b": ");
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
