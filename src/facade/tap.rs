//! The facade's view of the event stream: the router task hands every
//! event and connection change of every server to [`Tap`], which shares it
//! with all sessions through one bounded broadcast ring.
//!
//! Why a broadcast ring: an event is formatted once ([`TapEvent`]) and each
//! session reads it at its own pace from the same buffer, so the cost on
//! the event path is one send whatever the number of clients, and memory
//! is bounded by the ring (`queue_events`), not by clients × backlog. A
//! session that falls a whole ring behind learns it (`Lagged`) and is
//! dropped; nobody else, and nothing on the bus, waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::ami::{ConnState, Message, ServerEvent};

/// One event as sessions see it.
#[derive(Debug)]
pub struct TapEvent {
    pub server: Arc<str>,
    /// The event in wire form (CRLF, blank line at the end).
    pub wire: Bytes,
    /// The decoded event (to restore an ActionID for its originator).
    pub message: Message,
    /// The class bits of its `Privilege:` (minus `all`).
    pub category: u32,
    /// Its `Event:` value.
    pub name: Bytes,
}

impl TapEvent {
    /// The facade's copy of an event; `None` for messages without
    /// `Privilege:`, which Asterisk never broadcasts (F14).
    pub fn new(ev: &ServerEvent) -> Option<TapEvent> {
        let privilege = ev.message.get_bytes("Privilege")?;
        let category = ami_proto::privilege_bits(privilege);
        let name = Bytes::copy_from_slice(ev.message.get_bytes("Event").unwrap_or_default());
        Some(TapEvent {
            server: ev.server.clone(),
            wire: super::wire::event_wire(&ev.message),
            message: ev.message.clone(),
            category,
            name,
        })
    }

    /// The event's ActionID, if any.
    pub fn action_id(&self) -> Option<&[u8]> {
        self.message.get_bytes("ActionID")
    }
}

/// What sessions receive, in the order the router task saw it.
#[derive(Debug, Clone)]
pub enum TapItem {
    Event(Arc<TapEvent>),
    /// The server's event connection went down.
    Down(Arc<str>),
}

/// The state of one server as the facade needs it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub connected: bool,
    /// The AMI version of its banner (`Asterisk Call Manager/<version>`).
    pub version: Option<String>,
    /// When its event connection last logged in.
    pub since: Instant,
}

/// Every server's [`Backend`], updated by the tap.
#[derive(Debug, Default)]
pub struct Backends(Mutex<HashMap<Arc<str>, Backend>>);

impl Backends {
    pub fn get(&self, server: &str) -> Option<Backend> {
        self.lock().get(server).cloned()
    }

    pub fn connected(&self, server: &str) -> bool {
        self.get(server).is_some_and(|b| b.connected)
    }

    /// The version of the first connected server of `order`.
    pub fn version(&self, order: &[Arc<str>]) -> Option<String> {
        let m = self.lock();
        order
            .iter()
            .filter_map(|s| m.get(s))
            .find(|b| b.connected)
            .and_then(|b| b.version.clone())
    }

    fn set(&self, server: &Arc<str>, state: &ConnState) -> bool {
        let mut m = self.lock();
        match state {
            ConnState::Connected { banner } => {
                let version = banner
                    .strip_prefix("Asterisk Call Manager/")
                    .map(|v| v.trim().to_string());
                m.insert(
                    server.clone(),
                    Backend {
                        connected: true,
                        version,
                        since: Instant::now(),
                    },
                );
                false
            }
            _ => m.get_mut(server).is_some_and(|b| {
                let was = b.connected;
                b.connected = false;
                was
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Backend>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The router task's handle: cheap to call when nobody listens.
#[derive(Clone)]
pub struct Tap {
    tx: broadcast::Sender<TapItem>,
    backends: Arc<Backends>,
}

impl Tap {
    /// A tap whose ring holds `capacity` items.
    pub fn new(capacity: usize) -> Tap {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Tap {
            tx,
            backends: Arc::new(Backends::default()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TapItem> {
        self.tx.subscribe()
    }

    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    /// An event of some server: formatted once, if any session listens.
    pub fn event(&self, ev: &ServerEvent) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        if let Some(t) = TapEvent::new(ev) {
            let _ = self.tx.send(TapItem::Event(Arc::new(t)));
        }
    }

    /// A connection change of a server's event connection.
    pub fn state(&self, server: &Arc<str>, state: &ConnState) {
        if self.backends.set(server, state) {
            let _ = self.tx.send(TapItem::Down(server.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_follow_connection_states() {
        let tap = Tap::new(16);
        let mut rx = tap.subscribe();
        let s: Arc<str> = "pbx1".into();
        tap.state(&s, &ConnState::Connecting { attempt: 0 });
        assert!(!tap.backends().connected("pbx1"));
        let banner = "Asterisk Call Manager/9.1.0".to_string();
        tap.state(&s, &ConnState::Connected { banner });
        assert!(tap.backends().connected("pbx1"));
        assert_eq!(
            tap.backends().version(std::slice::from_ref(&s)).as_deref(),
            Some("9.1.0")
        );
        assert!(rx.try_recv().is_err(), "nothing is sent for Connected");
        tap.state(&s, &ConnState::Disconnected { reason: "x".into() });
        assert!(matches!(rx.try_recv(), Ok(TapItem::Down(n)) if &*n == "pbx1"));
        tap.state(&s, &ConnState::Disconnected { reason: "x".into() });
        assert!(rx.try_recv().is_err(), "one Down per loss");
        assert_eq!(tap.backends().version(&[s]), None);
    }
}
