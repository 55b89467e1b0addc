//! The login exchange as messages: `Challenge`, `Login`, the MD5 key.
//!
//! Asterisk offers two ways in. Plain: `Action: Login`, `Username`,
//! `Secret`. Challenge: `Action: Challenge` with `AuthType: MD5` returns a
//! random `Challenge`; the client then sends `Login` with `AuthType: MD5`
//! and `Key` = lowercase hex of md5(challenge + secret), so the secret
//! never crosses the wire. `Events:` on `Login` sets the session's mask
//! ([`EventMask`]). Only the messages are built here; sending them and
//! reading the answers is the client's business.

use md5::{Digest, Md5};

use crate::events::EventMask;
use crate::message::Message;

/// md5(challenge + secret) as lowercase hex, the `Key` of an MD5 login.
pub fn md5_key(challenge: &str, secret: &str) -> String {
    let mut h = Md5::new();
    h.update(challenge.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// How a [`login_action`] proves who it is.
#[derive(Clone, Copy)]
pub enum LoginProof<'a> {
    /// `Secret:` in clear text.
    Plain { secret: &'a str },
    /// `AuthType: MD5` and `Key:` for the challenge the server returned.
    Md5 { challenge: &'a str, secret: &'a str },
}

/// `Action: Challenge` / `AuthType: MD5`, asking for an MD5 challenge.
pub fn challenge_action(action_id: &str) -> Message {
    Message::from_pairs([
        ("Action", "Challenge"),
        ("ActionID", action_id),
        ("AuthType", "MD5"),
    ])
}

/// `Action: Login` for `username` with `proof`, asking for `events`.
pub fn login_action(
    action_id: &str,
    username: &str,
    proof: LoginProof<'_>,
    events: &EventMask,
) -> Message {
    let mut login = Message::from_pairs([
        ("Action", "Login"),
        ("ActionID", action_id),
        ("Username", username),
    ]);
    match proof {
        LoginProof::Plain { secret } => login.push("Secret", secret),
        LoginProof::Md5 { challenge, secret } => {
            login.push("AuthType", "MD5");
            login.push("Key", md5_key(challenge, secret));
        }
    }
    login.push("Events", events.header_value());
    login
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capture of a real MD5 login (tests/traces/login_md5.*, secret
    /// `bridgepass`): the challenge Asterisk sent and the key it accepted.
    const SENT: &str = include_str!("../../../tests/traces/login_md5.sent");
    const AMI: &str = include_str!("../../../tests/traces/login_md5.ami");

    fn captured(text: &str, key: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{key} in capture"))
    }

    #[test]
    fn md5_key_matches_the_real_capture() {
        let challenge = captured(AMI, "Challenge: ");
        assert_eq!(md5_key(&challenge, "bridgepass"), captured(SENT, "Key: "));
    }

    #[test]
    fn login_actions_in_wire_form() {
        let challenge = captured(AMI, "Challenge: ");
        let proof = LoginProof::Md5 {
            challenge: &challenge,
            secret: "bridgepass",
        };
        let m = login_action("login-2", "bridge", proof, &EventMask::Off);
        assert_eq!(
            m.get("Key").as_deref(),
            Some(captured(SENT, "Key: ").as_str())
        );
        assert_eq!(m.get("AuthType").as_deref(), Some("MD5"));
        assert_eq!(m.get("Events").as_deref(), Some("off"));
        let plain = LoginProof::Plain { secret: "s" };
        let m = login_action("l", "u", plain, &EventMask::On);
        assert_eq!(
            &m.to_wire()[..],
            b"Action: Login\r\nActionID: l\r\nUsername: u\r\nSecret: s\r\nEvents: on\r\n\r\n"
        );
        assert_eq!(
            &challenge_action("c").to_wire()[..],
            b"Action: Challenge\r\nActionID: c\r\nAuthType: MD5\r\n\r\n"
        );
    }
}
