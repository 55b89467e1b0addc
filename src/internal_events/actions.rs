//! Events of the action path: allow-list decisions, refused and failed
//! replies, answered requests.

use std::time::Duration;

use metrics::counter;

use super::catalog::{
    ACTIONS_AUTHZ_TOTAL, ACTIONS_BUSY_TOTAL, ACTIONS_DROPPED_TOTAL,
    ACTIONS_REPLY_CHANNEL_REOPENED_TOTAL, ACTIONS_REPLY_FAILURES_TOTAL, ACTIONS_TOO_LARGE_TOTAL,
    ACTIONS_TOTAL,
};
use crate::logs::{Throttle, clip};

const TARGET: &str = "ami2amqp::actions::rpc";

/// The broker closed the reply channel (a reply it refused?); it is
/// reopened.
pub struct ReplyChannelReopened;

impl ReplyChannelReopened {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(ACTIONS_REPLY_CHANNEL_REOPENED_TOTAL).increment(1);
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(
                target: TARGET,
                suppressed,
                "action path: the broker closed the reply channel (a reply it refused?); reopening it"
            );
        }
    }
}

/// A request whose `reply_to` is not allowed for its user: acked, not
/// executed, not answered.
pub struct ReplyToRefused<'a> {
    pub user: &'a str,
    pub reply_to: &'a str,
}

impl ReplyToRefused<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(ACTIONS_DROPPED_TOTAL, "reason" => "reply_to").increment(1);
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(
                target: TARGET,
                user = %clip(self.user),
                reply_to = %clip(self.reply_to),
                suppressed,
                "action request dropped: reply_to is neither direct reply-to nor allowed for this user; not executed"
            );
        }
    }
}

/// The allow-list refused a request.
pub struct ActionDenied<'a> {
    pub user: &'a str,
    pub server: &'a str,
    pub action: &'a str,
    pub reason: &'a str,
}

impl ActionDenied<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(ACTIONS_AUTHZ_TOTAL, "decision" => "deny").increment(1);
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(target: TARGET, user = %clip(self.user), server = %clip(self.server),
                action = %clip(self.action), reason = %clip(self.reason), suppressed, "action denied");
        }
    }
}

/// The allow-list let a request through (counted only).
pub struct ActionAllowed;

impl ActionAllowed {
    pub fn emit(self) {
        counter!(ACTIONS_AUTHZ_TOTAL, "decision" => "allow").increment(1);
    }
}

/// A request answered `busy`: its user has too many running (counted
/// only; the reply says why).
pub struct ActionBusy;

impl ActionBusy {
    pub fn emit(self) {
        counter!(ACTIONS_BUSY_TOTAL).increment(1);
    }
}

/// A reply over `max_reply_bytes`, answered `too_large` (counted only).
pub struct ReplyTooLarge;

impl ReplyTooLarge {
    pub fn emit(self) {
        counter!(ACTIONS_TOO_LARGE_TOTAL).increment(1);
    }
}

/// A request answered; an error answer is logged at debug level.
pub struct ActionAnswered<'a> {
    /// Label: a configured server, else `unknown`.
    pub server: &'a str,
    /// Label: a documented or allow-listed action, else `other` (`-` when
    /// the body could not be parsed).
    pub action: String,
    /// Label: `ok` or the error kind.
    pub result: &'static str,
    /// The error message of an error answer.
    pub error: Option<&'a str>,
}

impl ActionAnswered<'_> {
    pub fn emit(self) {
        if let Some(message) = self.error {
            tracing::debug!(target: TARGET, server = %self.server, kind = self.result,
                message = %clip(message), "action answered with an error");
        }
        counter!(ACTIONS_TOTAL, "server" => self.server.to_string(), "action" => self.action, "result" => self.result)
            .increment(1);
    }
}

/// A reply could not be published; the request stays unacked and is
/// redelivered when the channel or connection goes away.
pub struct ReplyFailed<'a> {
    pub server: &'a str,
    pub reply_to: &'a str,
    pub error: &'a str,
}

impl ReplyFailed<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(target: TARGET, server = %self.server, reply_to = %clip(self.reply_to),
                error = %clip(self.error), suppressed, "reply could not be published; the request stays unacked");
        }
        counter!(ACTIONS_REPLY_FAILURES_TOTAL).increment(1);
    }
}
