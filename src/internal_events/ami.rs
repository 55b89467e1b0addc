//! Events of the AMI client: connections lost, input skipped or ignored.

use std::time::Duration;

use ami_proto::{Kind, Malformed, Message};
use metrics::counter;

use super::catalog::{
    AMI_IGNORED_MESSAGES_TOTAL, AMI_PARSE_ERRORS_TOTAL, AMI_PUSH_DOWN_REFUSED_TOTAL,
    AMI_RECONNECTS_TOTAL,
};
use crate::logs::{Throttle, clip, clip_bytes};

/// An AMI connection was lost or could not be made; it will be retried.
pub struct AmiDisconnected<'a> {
    pub server: &'a str,
    pub role: &'a str,
    pub address: &'a str,
    pub reason: &'a str,
}

impl AmiDisconnected<'_> {
    pub fn emit(self) {
        tracing::warn!(target: "ami2amqp::ami::client", server = %self.server, role = %self.role,
            address = %self.address, reason = %clip(self.reason), "AMI disconnected; will reconnect");
        counter!(AMI_RECONNECTS_TOTAL, "server" => self.server.to_string(), "role" => self.role.to_string())
            .increment(1);
    }
}

/// Asterisk refused push-down's `Filter` actions on a fresh event
/// connection (the user lacks the `system` write class): counted at every
/// login, logged when `log` (the first time for this connection).
pub struct PushDownRefused<'a> {
    pub server: &'a str,
    pub role: &'a str,
    /// Asterisk's `Message:`.
    pub message: &'a str,
    pub log: bool,
}

impl PushDownRefused<'_> {
    pub fn emit(self) {
        if self.log {
            tracing::warn!(target: "ami2amqp::ami::client", server = %self.server, role = %self.role,
                message = %clip(self.message),
                "push-down: Asterisk refused the event filters (the Filter action needs the \
                 `system` write class in manager.conf); dropped events are still sent and \
                 dropped by the mappings");
        }
        counter!(AMI_PUSH_DOWN_REFUSED_TOTAL, "server" => self.server.to_string()).increment(1);
    }
}

/// Input the decoder gave up on (over a limit, not `Key: Value`).
pub struct AmiMalformed<'a> {
    pub server: &'a str,
    pub role: &'a str,
    pub error: &'a Malformed,
}

impl AmiMalformed<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        counter!(AMI_PARSE_ERRORS_TOTAL, "server" => self.server.to_string()).increment(1);
        if let Some(suppressed) = LOG.allow() {
            let error = self.error;
            tracing::warn!(target: "ami2amqp::ami::client", server = %self.server, role = %self.role, %error,
                excerpt = %clip_bytes(&error.excerpt), suppressed, "malformed AMI input skipped");
        }
    }
}

/// A message that is neither an event nor the answer to one of our
/// actions: a late response (debug) or a message without `Event:` (warned).
pub struct AmiIgnored<'a> {
    pub server: &'a str,
    pub role: &'a str,
    pub message: &'a Message,
    pub kind: Kind,
}

impl AmiIgnored<'_> {
    pub fn emit(self) {
        static NO_EVENT: Throttle = Throttle::new(Duration::from_secs(10));
        let response = self.kind == Kind::Response;
        let label = if response { "response" } else { "no_event" };
        counter!(AMI_IGNORED_MESSAGES_TOTAL, "server" => self.server.to_string(), "kind" => label)
            .increment(1);
        if response {
            // The answer to an action whose caller gave up, or to our Logoff.
            tracing::debug!(target: "ami2amqp::ami::client", server = %self.server,
                message = %clip_bytes(self.message.raw()), "response to no pending action ignored");
        } else if let Some(suppressed) = NO_EVENT.allow() {
            tracing::warn!(target: "ami2amqp::ami::client", server = %self.server, role = %self.role,
                message = %clip_bytes(self.message.raw()), suppressed,
                "AMI message without `Event:` (and not a response) ignored");
        }
    }
}
