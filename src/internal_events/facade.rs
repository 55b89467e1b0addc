//! Events of the AMI facade: sessions opened and closed, actions answered.
//! Labels come from bounded sets: configured user names (a session counts
//! only once logged in), fixed results and reasons.

use std::time::Duration;

use metrics::{counter, gauge};

use super::catalog::{FACADE_ACTIONS_TOTAL, FACADE_DROPPED_SESSIONS_TOTAL, FACADE_SESSIONS};
use crate::logs::{Throttle, clip};

const TARGET: &str = "ami2amqp::facade";

/// A session logged in (`+1`) or a logged-in session ended (`-1`).
pub struct SessionCount<'a> {
    pub user: &'a str,
    pub delta: f64,
}

impl SessionCount<'_> {
    pub fn emit(self) {
        gauge!(FACADE_SESSIONS, "user" => self.user.to_string()).increment(self.delta);
    }
}

/// Why the bridge closed a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A message could not be written within `writetimeout_ms`.
    WriteTimeout,
    /// The client fell `queue_events` events behind.
    QueueFull,
    /// Not logged in within `authtimeout_s`.
    AuthTimeout,
    /// More than `authlimit` sessions not logged in, or `max_sessions`.
    Limit,
    /// Every server of the session's user is disconnected.
    ServerDown,
    /// A failed login (Asterisk closes the session too).
    LoginFailed,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::WriteTimeout => "write_timeout",
            DropReason::QueueFull => "queue_full",
            DropReason::AuthTimeout => "auth_timeout",
            DropReason::Limit => "limit",
            DropReason::ServerDown => "server_down",
            DropReason::LoginFailed => "login_failed",
        }
    }
}

/// The bridge closed a session.
pub struct SessionDropped<'a> {
    pub peer: &'a str,
    pub user: Option<&'a str>,
    pub reason: DropReason,
}

impl SessionDropped<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(FACADE_DROPPED_SESSIONS_TOTAL, "reason" => self.reason.as_str()).increment(1);
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(
                target: TARGET,
                peer = %self.peer,
                user = %clip(self.user.unwrap_or("-")),
                reason = self.reason.as_str(),
                suppressed,
                "AMI facade: session closed by the bridge"
            );
        }
    }
}

/// What became of one action a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionResultKind {
    /// Asterisk answered (Success or its own Error).
    Answered,
    /// The user's write classes or the allow-list refused it.
    Denied,
    /// No answer in time, server unknown/down, connection lost.
    Failed,
}

impl ActionResultKind {
    fn as_str(self) -> &'static str {
        match self {
            ActionResultKind::Answered => "answered",
            ActionResultKind::Denied => "denied",
            ActionResultKind::Failed => "failed",
        }
    }
}

/// A forwarded (or refused) action is done.
pub struct ActionDone<'a> {
    pub user: &'a str,
    pub result: ActionResultKind,
}

impl ActionDone<'_> {
    pub fn emit(self) {
        counter!(FACADE_ACTIONS_TOTAL, "user" => self.user.to_string(), "result" => self.result.as_str())
            .increment(1);
    }
}
