//! Every configured Asterisk server: one event connection and a few action
//! connections each.
//!
//! Why separate connections? Asterisk answers the actions of one session in
//! order and writes that session's events on the same socket, so a slow
//! action (a synchronous `Originate` waits for the call to be answered)
//! holds back every event behind it. The pool therefore logs in once with
//! the configured `Events:` mask to receive events, and
//! `action_connections` more times with `Events: off` to carry actions.
//! Actions go to the connected action connection with the fewest actions in
//! flight; with `action_connections = 0` the event connection carries them.
//!
//! All servers' events arrive on one bounded channel. Each server has
//! at most one event connection, so the events of one server keep the order
//! Asterisk sent them in; servers are independent of each other (one
//! server's reconnect loop never stalls another's: each connection is its
//! own task).
//!
//! In a fleet (docs/scaling.md) the event connections are not started with
//! the pool: the lease task starts a server's with [`Pool::hold`] when this
//! instance gets its lease and stops it with [`Pool::release`] (which
//! waits until its last event is in the channel) when it gives the lease
//! back. The action connections run all the time either way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::client::{ActionError, ActionResult, Client, ClientConfig, Incoming};
use super::login::EventMask;
use super::message::Message;

/// One server of the pool.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Settings for the event connection; the action connections copy them
    /// with `Events: off`.
    pub client: ClientConfig,
    /// How many extra connections carry actions.
    pub action_connections: usize,
}

struct Server {
    /// The event connection's settings, to start it again.
    config: ClientConfig,
    /// The event connection, while this instance reads the server.
    events: Mutex<Option<Client>>,
    actions: Vec<Client>,
}

impl Server {
    fn events(&self) -> Option<Client> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The pool of connections to every configured server.
pub struct Pool {
    servers: HashMap<Arc<str>, Server>,
    order: Vec<Arc<str>>,
    /// Where event connections started later ([`Pool::hold`]) send; taken
    /// by [`Pool::shutdown`], so that the channel closes once the running
    /// connections have ended, however long other holders keep the pool.
    sink: Mutex<Option<mpsc::Sender<Incoming>>>,
}

/// Why the pool could not run an action.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("unknown server {0:?}")]
    UnknownServer(String),
    #[error(transparent)]
    Action(#[from] ActionError),
}

impl Pool {
    /// Starts every connection (the event connections only when `leased`
    /// is false: in a fleet [`Pool::hold`] starts them). Events of all
    /// servers go to `events`.
    pub fn start(specs: Vec<ServerSpec>, events: mpsc::Sender<Incoming>, leased: bool) -> Pool {
        let mut servers = HashMap::new();
        let mut order = Vec::new();
        for spec in specs {
            let name = spec.client.server.clone();
            let ev = (!leased).then(|| Client::spawn(spec.client.clone(), Some(events.clone())));
            let actions = (0..spec.action_connections)
                .map(|i| {
                    let mut c = spec.client.clone();
                    c.events = EventMask::Off;
                    c.push_down = None;
                    c.role = format!("action-{}", i + 1);
                    Client::spawn(c, None)
                })
                .collect();
            order.push(name.clone());
            servers.insert(
                name,
                Server {
                    config: spec.client,
                    events: Mutex::new(ev),
                    actions,
                },
            );
        }
        Pool {
            servers,
            order,
            sink: Mutex::new(Some(events)),
        }
    }

    /// Starts the event connection of `server` if it is not running;
    /// false for an unknown server or a pool shut down.
    pub fn hold(&self, server: &str) -> bool {
        let Some(s) = self.servers.get(server) else {
            return false;
        };
        let Some(sink) = self
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return false;
        };
        let mut ev = s.events.lock().unwrap_or_else(PoisonError::into_inner);
        if ev.is_none() {
            *ev = Some(Client::spawn(s.config.clone(), Some(sink)));
        }
        true
    }

    /// Stops the event connection of `server` (logs off; its status
    /// message says `disconnected` with `reason`) and waits, at most
    /// `limit`, until its last event is in the channel.
    pub async fn release(&self, server: &str, reason: &str, limit: Duration) {
        let client = self.servers.get(server).and_then(|s| {
            s.events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        });
        if let Some(c) = client {
            c.shutdown_with(reason);
            let _ = tokio::time::timeout(limit, c.finished()).await;
        }
    }

    /// Server names in configuration order.
    pub fn server_names(&self) -> &[Arc<str>] {
        &self.order
    }

    pub fn has_server(&self, name: &str) -> bool {
        self.servers.contains_key(name)
    }

    /// True when the server's event connection is logged in.
    pub fn events_connected(&self, name: &str) -> bool {
        self.event_client(name).is_some_and(|c| c.is_connected())
    }

    /// True when this instance runs the server's event connection.
    pub fn reads(&self, name: &str) -> bool {
        self.event_client(name).is_some()
    }

    /// The event connection of a server (for state watching), while it runs.
    pub fn event_client(&self, name: &str) -> Option<Client> {
        self.servers.get(name).and_then(Server::events)
    }

    /// The action connections of a server.
    pub fn action_clients(&self, name: &str) -> &[Client] {
        self.servers
            .get(name)
            .map(|s| s.actions.as_slice())
            .unwrap_or(&[])
    }

    /// Waits until every connection of every server is logged in.
    pub async fn wait_all_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for s in self.servers.values() {
            for c in s.events().iter().chain(s.actions.iter()) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !c.wait_connected(left).await {
                    return false;
                }
            }
        }
        true
    }

    /// Picks the connection for an action: the connected action connection
    /// with the fewest actions in flight, or the event connection when the
    /// server has no action connections.
    fn pick(&self, server: &str) -> Result<Client, PoolError> {
        let s = self
            .servers
            .get(server)
            .ok_or_else(|| PoolError::UnknownServer(server.to_string()))?;
        let unavailable = || PoolError::Action(ActionError::Unavailable(server.to_string()));
        if s.actions.is_empty() {
            return s.events().ok_or_else(unavailable);
        }
        s.actions
            .iter()
            .filter(|c| c.is_connected())
            .min_by_key(|c| c.in_flight())
            .cloned()
            .ok_or_else(unavailable)
    }

    /// Runs an action on `server`.
    pub async fn send_action(
        &self,
        server: &str,
        action: Message,
        timeout: Option<Duration>,
    ) -> Result<ActionResult, PoolError> {
        self.send_action_as(server, action, None, timeout).await
    }

    /// [`Pool::send_action`] with a caller-chosen ActionID
    /// ([`Client::send_action_as`]).
    pub async fn send_action_as(
        &self,
        server: &str,
        action: Message,
        id: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<ActionResult, PoolError> {
        let client = self.pick(server)?;
        Ok(client.send_action_as(action, id, timeout).await?)
    }

    /// Logs off every connection (none starts after this).
    pub fn shutdown(&self) {
        self.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for s in self.servers.values() {
            if let Some(c) = s.events() {
                c.shutdown();
            }
            for a in &s.actions {
                a.shutdown();
            }
        }
    }
}
