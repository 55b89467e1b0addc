//! Bounds of the action path that need no I/O: requests in flight per user,
//! and the bounded label sets of the action metrics.
//!
//! - [`PerUser`] caps the requests one user has running, so that one user's
//!   slow actions cannot take every prefetch slot while others wait.
//! - [`Labels`] maps what a request says (its routing key, its action name)
//!   onto bounded sets: a configured server or `unknown`, a documented or
//!   allow-listed action or `other`. A client choosing 100,000 routing keys
//!   or action names makes no more than a handful of series.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Requests in flight per user, at most `max` each.
#[derive(Debug)]
pub struct PerUser {
    max: usize,
    /// Only users with requests in flight have an entry, so the map holds
    /// at most as many entries as there are requests in flight.
    counts: Mutex<HashMap<String, usize>>,
}

/// One request in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<PerUser>,
    user: String,
}

impl PerUser {
    pub fn new(max: usize) -> Arc<PerUser> {
        Arc::new(PerUser {
            max: max.max(1),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `user`, or `None` when the user has `max` in flight.
    pub fn try_acquire(self: &Arc<Self>, user: &str) -> Option<Slot> {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(user.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            user: user.to_string(),
        })
    }

    #[cfg(test)]
    /// Requests `user` has in flight.
    pub fn in_flight(&self, user: &str) -> usize {
        let m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        m.get(user).copied().unwrap_or(0)
    }

    #[cfg(test)]
    /// Users with an entry (for tests: entries go when their count is 0).
    pub fn users(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// The action names documented in Asterisk (one a line, `#` comments).
const DOCUMENTED: &str = include_str!("ami_actions.txt");

/// Bounded label values for the action metrics.
#[derive(Debug)]
pub struct Labels {
    servers: HashSet<String>,
    /// Lowercase name → the label (the documented spelling).
    actions: HashMap<String, String>,
}

/// The label of a routing key that names no configured server.
pub const UNKNOWN_SERVER: &str = "unknown";
/// The label of an action name outside the known set.
pub const OTHER_ACTION: &str = "other";

impl Labels {
    /// `servers`: the configured names; `allowed`: action names the
    /// allow-list grants by name (added to the documented ones).
    pub fn new<'a>(
        servers: impl IntoIterator<Item = &'a str>,
        allowed: impl IntoIterator<Item = &'a str>,
    ) -> Labels {
        let mut actions = HashMap::new();
        for name in DOCUMENTED
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            actions.insert(name.to_ascii_lowercase(), name.to_string());
        }
        for a in allowed.into_iter().filter(|a| *a != "*") {
            actions
                .entry(a.to_ascii_lowercase())
                .or_insert_with(|| a.to_string());
        }
        Labels {
            servers: servers.into_iter().map(str::to_string).collect(),
            actions,
        }
    }

    /// `server` if configured, else `unknown`.
    pub fn server(&self, server: &str) -> String {
        if self.servers.contains(server) {
            server.to_string()
        } else {
            UNKNOWN_SERVER.to_string()
        }
    }

    /// The action's documented (or allow-listed) name, else `other`.
    pub fn action(&self, name: &str) -> String {
        self.actions
            .get(&name.trim().to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| OTHER_ACTION.to_string())
    }

    #[cfg(test)]
    /// How many values the action label can take (for tests).
    pub fn action_values(&self) -> usize {
        self.actions.len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_caps_each_user_and_frees_on_drop() {
        let p = PerUser::new(2);
        let a1 = p.try_acquire("a").unwrap();
        let _a2 = p.try_acquire("a").unwrap();
        assert!(p.try_acquire("a").is_none(), "third slot for a");
        let b = p.try_acquire("b").expect("b is not limited by a");
        assert_eq!(p.in_flight("a"), 2);
        drop(a1);
        assert_eq!(p.in_flight("a"), 1);
        assert!(p.try_acquire("a").is_some());
        drop(b);
        assert_eq!(p.in_flight("b"), 0);
        assert_eq!(p.users(), 1, "users with nothing in flight leave the map");
    }

    #[test]
    fn labels_come_from_bounded_sets() {
        let l = Labels::new(["pbx1", "pbx2"], ["MyCustomAction", "*"]);
        assert_eq!(l.server("pbx1"), "pbx1");
        assert_eq!(l.server("pbx1.x"), UNKNOWN_SERVER);
        assert_eq!(l.action("originate"), "Originate");
        assert_eq!(l.action(" CoreShowChannels"), "CoreShowChannels");
        assert_eq!(l.action("mycustomaction"), "MyCustomAction");
        assert_eq!(l.action("Nope\n"), OTHER_ACTION);
        let mut seen = HashSet::new();
        for i in 0..10_000 {
            seen.insert(l.action(&format!("x{i}")));
            seen.insert(l.server(&format!("s{i}")));
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(l.action_values() > 150 && l.action_values() < 200);
    }
}
