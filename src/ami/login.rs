//! Logging in on a socket: the banner, then `Login` with a plain secret or
//! an MD5 challenge.
//!
//! The messages themselves (`Challenge`, `Login`, the MD5 key, the
//! `Events:` mask) come from the `ami-proto` crate; this module sends them
//! and reads the answers. On a wrong secret Asterisk answers
//! `Response: Error` / `Message: Authentication failed` (after a delay of
//! about a second) and closes the socket.
//!
//! The functions here work on a `Framed` stream before it is handed to the
//! connection task; events that arrive during login (Asterisk sends
//! `FullyBooted` right after a successful login) are returned so they are
//! not lost.

use std::fmt;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

pub use ami_proto::EventMask;
use ami_proto::{AmiCodec, Frame, Kind, LoginProof, Message, challenge_action, login_action};

use crate::logs::{Throttle, clip, clip_bytes};

/// How to authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// `Secret` sent in clear text.
    Plain,
    /// `Challenge` + `Key` = md5(challenge + secret). The default.
    #[default]
    Md5,
}

/// Username and secret. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
    pub auth: AuthType,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("auth", &self.auth)
            .finish()
    }
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection during login")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("authentication failed for user {username:?}: {message}")]
    Rejected { username: String, message: String },
    #[error("not an AMI server: {0}")]
    Protocol(String),
    #[error(
        "the server sent more than {budget} bytes of events before answering the login ([bridge] max_buffered_bytes)"
    )]
    TooMuchBeforeLogin { budget: usize },
}

/// Events read before the login answer, within a byte budget.
struct Early {
    events: Vec<Message>,
    bytes: usize,
    budget: usize,
}

impl Early {
    fn push(&mut self, m: Message) -> Result<(), LoginError> {
        self.bytes = self.bytes.saturating_add(m.memory_size());
        if self.bytes > self.budget {
            return Err(LoginError::TooMuchBeforeLogin {
                budget: self.budget,
            });
        }
        self.events.push(m);
        Ok(())
    }
}

/// What [`login`] may hold in events read before the answer to `Login`
/// when no budget is given ([`login_within`]).
pub const DEFAULT_EARLY_BUDGET: usize = 64 * 1024 * 1024;

/// A successful login.
#[derive(Debug)]
pub struct LoginOk {
    /// The banner, e.g. `Asterisk Call Manager/11.0.0`.
    pub banner: String,
    /// Events that arrived before the login answer was complete.
    pub early_events: Vec<Message>,
}

/// Reads frames until the response carrying `action_id`, keeping events.
async fn read_response<S>(
    framed: &mut Framed<S, AmiCodec>,
    action_id: &str,
    banner: &mut Option<String>,
    events: &mut Early,
) -> Result<Message, LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match framed.next().await {
            None => return Err(LoginError::Closed),
            Some(Err(e)) => return Err(LoginError::Io(e)),
            Some(Ok(Frame::Banner(b))) => *banner = Some(b),
            Some(Ok(Frame::Malformed(m))) => {
                static MALFORMED: Throttle = Throttle::new(Duration::from_secs(10));
                if let Some(suppressed) = MALFORMED.allow() {
                    tracing::warn!(error = %m, excerpt = %clip_bytes(&m.excerpt), suppressed,
                        "malformed AMI input during login");
                }
            }
            Some(Ok(Frame::Message(m))) => match m.kind() {
                Kind::Response if m.action_id().as_deref() == Some(action_id) => return Ok(m),
                // A response without our ActionID (some servers drop it).
                Kind::Response if m.action_id().is_none() => return Ok(m),
                Kind::Event => events.push(m)?,
                _ => {}
            },
        }
    }
}

/// What an event connection asks Asterisk for when the mappings push
/// their drops down (`mapping::PushDown`): the `Events:` mask of its
/// `Login` and the `Filter:` patterns it adds right after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRequest {
    pub mask: EventMask,
    pub filters: Vec<String>,
}

/// How the `Filter` actions sent with a login went ([`filter_answers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FiltersOutcome {
    /// Every filter was accepted.
    Added(usize),
    /// Asterisk refused one (`Permission denied` without the `system`
    /// write class): its `Message:`. The session has the filters accepted
    /// before it, and that is all (excludes only ever drop what the
    /// mappings drop, so fewer of them is safe).
    Refused(String),
}

/// The `Filter` actions (`Operation: Add`) for legacy `filters`, with the
/// ActionIDs [`filter_answers`] waits for. Written right behind the
/// `Login` ([`login_within`]'s `then`), Asterisk reads them before it
/// writes any event to the new session.
pub fn filter_actions(filters: &[String]) -> Vec<Message> {
    filters
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let id = format!("filter-{}", i + 1);
            Message::from_pairs([
                ("Action", "Filter"),
                ("ActionID", id.as_str()),
                ("Operation", "Add"),
                ("Filter", f.as_str()),
            ])
        })
        .collect()
}

/// Reads the answers to the `count` [`filter_actions`] sent with the
/// login, in order; events that arrive meanwhile are appended to
/// `ok.early_events` (within `budget` bytes, as for the login). Within
/// `timeout`.
pub async fn filter_answers<S>(
    framed: &mut Framed<S, AmiCodec>,
    ok: &mut LoginOk,
    count: usize,
    timeout: Duration,
    budget: usize,
) -> Result<FiltersOutcome, LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut early = Early {
        bytes: ok.early_events.iter().map(Message::memory_size).sum(),
        events: std::mem::take(&mut ok.early_events),
        budget,
    };
    let r = tokio::time::timeout(timeout, async {
        let mut banner = None;
        let mut refused = None;
        for i in 0..count {
            let id = format!("filter-{}", i + 1);
            let r = read_response(framed, &id, &mut banner, &mut early).await?;
            let success = r
                .get("Response")
                .is_some_and(|v| v.eq_ignore_ascii_case("Success"));
            if !success && refused.is_none() {
                refused =
                    Some(clip(r.get("Message").as_deref().unwrap_or("no message")).to_string());
            }
        }
        Ok::<_, LoginError>(match refused {
            Some(m) => FiltersOutcome::Refused(m),
            None => FiltersOutcome::Added(count),
        })
    })
    .await
    .map_err(|_| LoginError::Timeout(timeout));
    ok.early_events = early.events;
    r?
}

/// Logs in on a fresh connection: waits for the banner, authenticates and
/// asks for `events`. The whole exchange must finish within `timeout`.
pub async fn login<S>(
    framed: &mut Framed<S, AmiCodec>,
    creds: &Credentials,
    events: &EventMask,
    timeout: Duration,
) -> Result<LoginOk, LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    login_within(framed, creds, events, timeout, DEFAULT_EARLY_BUDGET, &[]).await
}

/// [`login`] holding at most `budget` bytes (as [`Message::memory_size`]
/// counts them) of events that arrive before the answer: a server that
/// sends more fails the login with [`LoginError::TooMuchBeforeLogin`]
/// instead of filling memory until the timeout. `then` is written in the
/// same flush right behind the `Login` (push-down's [`filter_actions`]);
/// their answers are the caller's to read.
pub async fn login_within<S>(
    framed: &mut Framed<S, AmiCodec>,
    creds: &Credentials,
    events: &EventMask,
    timeout: Duration,
    budget: usize,
    then: &[Message],
) -> Result<LoginOk, LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, login_inner(framed, creds, events, budget, then))
        .await
        .map_err(|_| LoginError::Timeout(timeout))?
}

/// Sends `Challenge` and returns the challenge of a successful answer.
async fn ask_challenge<S>(
    framed: &mut Framed<S, AmiCodec>,
    creds: &Credentials,
    banner: &mut Option<String>,
    early: &mut Early,
) -> Result<String, LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    framed.send(challenge_action("login-1")).await?;
    let r = read_response(framed, "login-1", banner, early).await?;
    let ok = r
        .get("Response")
        .is_some_and(|v| v.eq_ignore_ascii_case("Success"));
    match r.get("Challenge").filter(|_| ok) {
        Some(ch) => Ok(ch.into_owned()),
        None => Err(LoginError::Rejected {
            username: creds.username.clone(),
            message: format!(
                "MD5 challenge refused: {}",
                clip(r.get("Message").as_deref().unwrap_or("no message"))
            ),
        }),
    }
}

async fn login_inner<S>(
    framed: &mut Framed<S, AmiCodec>,
    creds: &Credentials,
    events: &EventMask,
    budget: usize,
    then: &[Message],
) -> Result<LoginOk, LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut early = Early {
        events: Vec::new(),
        bytes: 0,
        budget,
    };
    // The banner comes first, on its own line.
    let mut banner = match framed.next().await {
        None => return Err(LoginError::Closed),
        Some(Err(e)) => return Err(LoginError::Io(e)),
        Some(Ok(Frame::Banner(b))) => Some(b),
        Some(Ok(other)) => {
            return Err(LoginError::Protocol(format!(
                "expected the `Asterisk Call Manager/…` banner, got {other:?}"
            )));
        }
    };

    let challenge;
    let proof = match creds.auth {
        AuthType::Plain => LoginProof::Plain {
            secret: &creds.secret,
        },
        AuthType::Md5 => {
            challenge = ask_challenge(framed, creds, &mut banner, &mut early).await?;
            LoginProof::Md5 {
                challenge: &challenge,
                secret: &creds.secret,
            }
        }
    };
    let login = login_action("login-2", &creds.username, proof, events);
    framed.feed(login).await?;
    for m in then {
        framed.feed(m.clone()).await?;
    }
    SinkExt::<Message>::flush(framed).await?;
    let r = read_response(framed, "login-2", &mut banner, &mut early).await?;
    if r.get("Response")
        .is_some_and(|v| v.eq_ignore_ascii_case("Success"))
    {
        Ok(LoginOk {
            banner: banner.unwrap_or_default(),
            early_events: early.events,
        })
    } else {
        Err(LoginError::Rejected {
            username: creds.username.clone(),
            message: r
                .get("Message")
                .map(|m| clip(&m).to_string())
                .unwrap_or_else(|| "no message".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_secret() {
        let c = Credentials {
            username: "bridge".into(),
            secret: "s3cret".into(),
            auth: AuthType::Md5,
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
