//! The AMI facade: an AMI-compatible listener, so that applications written
//! for Asterisk's manager interface connect to the bridge instead and
//! Asterisk serves one session (the bridge's) however many clients there
//! are (docs/facade.md; the behaviour reference is F1–F28 there).
//!
//! - [`config`]: `[facade]` and `[[facade.user]]`.
//! - [`tap`]: the router task's events, shared with every session through
//!   one bounded ring (formatted once, read by all).
//! - [`session`]: one client: the AMI session rules of
//!   `ami_proto::ServerSession`, its actions one at a time, its events.
//! - [`forward`]: running an action on a server (server choice, write
//!   classes, allow-list, timeout, the ActionID given back).
//! - [`wire`]: the bytes clients receive, without I/O.
//!
//! This file is the listener: accept, the session limits (`authlimit`,
//! `max_sessions`), and refusing clients while no server is connected.

mod config;
mod forward;
mod ids;
mod session;
mod tap;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{FacadeConfig, FacadeUser, known_class};
pub(crate) use tap::Tap;

use crate::ami::Pool;
use crate::internal_events::facade::{DropReason, SessionDropped};
use forward::{Facade, Users};

/// A counted place among the sessions (all, or not yet logged in); freed
/// when dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a place if fewer than `limit` are taken.
    fn take(counter: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(counter.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds the facade's listener (an error here stops the start: the port
/// is taken or not allowed).
pub async fn bind(cfg: &FacadeConfig) -> Result<Option<TcpListener>, String> {
    let Some(addr) = cfg.listen() else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| format!("facade: cannot listen on {addr}: {e}"))
}

/// Everything the listener needs, built before anything is spawned so
/// that a bad user (an unreadable secret file) stops the start.
pub struct Prepared {
    facade: Arc<Facade>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Resolves the users and compiles the allow-list's `ami:` rules.
pub fn prepare(
    cfg: FacadeConfig,
    listener: TcpListener,
    pool: Arc<Pool>,
    tap: Tap,
    allow: &[crate::actions::allow::AllowEntry],
) -> Result<Prepared, String> {
    let users = Users::new(cfg.users(pool.server_names())?);
    let tls = cfg
        .tls_server_config()?
        .map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    let facade = Facade::new(cfg, users, pool, tap, allow)?;
    Ok(Prepared {
        facade: Arc::new(facade),
        listener,
        tls,
    })
}

/// Accepts clients until `cancel`.
pub async fn serve(p: Prepared, cancel: CancellationToken) {
    let all = Arc::new(AtomicUsize::new(0));
    let unauth = Arc::new(AtomicUsize::new(0));
    if let Ok(a) = p.listener.local_addr() {
        tracing::info!(target: "ami2amqp::facade", listen = %a, users = p.facade.users_len(), tls = p.tls.is_some(), "AMI facade listening");
    }
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = p.listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(target: "ami2amqp::facade", error = %e, "AMI facade: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer = peer.to_string();
        match admit(&p.facade, &all, &unauth) {
            Ok((slot, pending)) => {
                let facade = p.facade.clone();
                let cancel = cancel.clone();
                let tls = p.tls.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    tokio::select! {
                        _ = session::Session::serve(facade, stream, peer, pending, tls) => {}
                        _ = cancel.cancelled() => {}
                    }
                });
            }
            Err(reason) => {
                SessionDropped {
                    peer: &peer,
                    user: None,
                    reason,
                }
                .emit();
                drop(stream);
            }
        }
    }
}

/// Whether a new client may start a session: its two slots (all
/// sessions, not yet logged in), or why not.
fn admit(
    facade: &Facade,
    all: &Arc<AtomicUsize>,
    unauth: &Arc<AtomicUsize>,
) -> Result<(Slot, Slot), DropReason> {
    if facade.cfg.refuse_when_down
        && !facade
            .servers
            .iter()
            .any(|s| facade.tap.backends().connected(s))
    {
        return Err(DropReason::ServerDown);
    }
    let slot = Slot::take(all, facade.cfg.max_sessions).ok_or(DropReason::Limit)?;
    let pending = Slot::take(unauth, facade.cfg.authlimit).ok_or(DropReason::Limit)?;
    Ok((slot, pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_and_free() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&c, 2).unwrap();
        let b = Slot::take(&c, 2).unwrap();
        assert!(Slot::take(&c, 2).is_none());
        drop(a);
        assert!(Slot::take(&c, 2).is_some());
        drop(b);
        assert_eq!(c.load(Ordering::Acquire), 0);
    }
}
