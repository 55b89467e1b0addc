//! Which leases this instance should take or give back: pure bookkeeping,
//! fed by the lease task with what the broker said and what the peers
//! announced, asked once per tick for a [`Decision`].
//!
//! The broker arbitrates (a lease is an exclusive queue: two instances can
//! never both hold one), so this type only decides *which* leases to try
//! for, with three aims:
//!
//! - **Every server read.** A server no live peer claims is tried by every
//!   instance below its fair share, and after a grace period by any
//!   instance not more than one above it.
//! - **Fair shares.** With `M` servers and `N` live instances (this one and
//!   the peers sharing at least one server with it), the share is
//!   `ceil(M / N)`. An instance above it gives back one lease per tick
//!   while some live peer is below it; so after rebalancing nobody holds
//!   more than the share, or one more when a server was orphaned.
//! - **Few hand-overs.** Candidates are ranked by rendezvous hashing of
//!   `(instance, server)`, so instances that start together mostly want
//!   different servers; a lease given back is not tried again for a
//!   cooldown, so two instances cannot pass one back and forth.
//!
//! No clock and no I/O: `now` is passed in, and the model test in this
//! file runs a whole fleet against a simulated broker.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a peer said about itself in its last announcement.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Announce {
    pub instance: String,
    /// The servers in its configuration.
    pub servers: Vec<String>,
    /// The leases it holds.
    pub held: Vec<String>,
    /// It is shutting down and giving its leases back.
    #[serde(default)]
    pub leaving: bool,
}

#[derive(Clone, Debug)]
struct Peer {
    servers: BTreeSet<String>,
    held: BTreeSet<String>,
    seen: Instant,
    leaving: bool,
}

/// What to do this tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Leases to try for, best first (the broker may refuse some).
    pub acquire: Vec<Arc<str>>,
    /// A lease to hand over (one per tick at most).
    pub release: Option<Arc<str>>,
}

/// The timing of the plan (from `[fleet]`).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A peer not heard from for this long is dead.
    pub peer_timeout: Duration,
    /// Nothing is acquired until this long after start, so that the first
    /// decision knows the peers already running.
    pub discovery: Duration,
    /// A lease this instance gave back is not tried again for this long,
    /// or until a peer claims it (the hand-over is then complete).
    pub cooldown: Duration,
}

/// This instance's view of the fleet.
#[derive(Debug)]
pub struct Planner {
    me: String,
    servers: Vec<Arc<str>>,
    held: BTreeSet<Arc<str>>,
    peers: HashMap<String, Peer>,
    timing: Timing,
    started: Instant,
    cooldown: HashMap<Arc<str>, Instant>,
    /// When each server was first seen unclaimed by anybody.
    unclaimed_since: HashMap<Arc<str>, Instant>,
}

/// Peers remembered at most (a flood of announcements with made-up names
/// cannot grow the table beyond it).
pub const MAX_PEERS: usize = 1024;

/// The rendezvous-hashing weight of `(instance, server)`: a stable
/// pseudo-random number, higher is preferred.
fn weight(instance: &str, server: &str) -> u64 {
    // FNV-1a over "instance\0server", then a final mix (splitmix64) so that
    // names differing in one byte spread over the whole range.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.bytes().chain([0]).chain(server.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Planner {
    pub fn new(me: &str, servers: &[Arc<str>], timing: Timing, now: Instant) -> Planner {
        Planner {
            me: me.to_string(),
            servers: servers.to_vec(),
            held: BTreeSet::new(),
            peers: HashMap::new(),
            timing,
            started: now,
            cooldown: HashMap::new(),
            unclaimed_since: HashMap::new(),
        }
    }

    /// The leases held, in name order.
    pub fn held(&self) -> impl Iterator<Item = &Arc<str>> {
        self.held.iter()
    }

    /// This instance's announcement.
    pub fn announce(&self, leaving: bool) -> Announce {
        Announce {
            instance: self.me.clone(),
            servers: self.servers.iter().map(|s| s.to_string()).collect(),
            held: self.held.iter().map(|s| s.to_string()).collect(),
            leaving,
        }
    }

    /// A peer's announcement arrived (our own is ignored); false when it
    /// was dropped because the table of peers is full.
    pub fn heard(&mut self, a: Announce, now: Instant) -> bool {
        if a.instance == self.me {
            return true;
        }
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&a.instance) {
            return false;
        }
        // A hand-over is complete once a peer claims the server: the
        // cooldown has done its job (no taking it back before the peer
        // could), and must not delay taking it over when that peer dies or
        // leaves (whose last announcements may be all we hear from it).
        for h in &a.held {
            self.cooldown.remove(h.as_str());
        }
        let peer = Peer {
            servers: a.servers.into_iter().collect(),
            held: a.held.into_iter().collect(),
            seen: now,
            leaving: a.leaving,
        };
        self.peers.insert(a.instance, peer);
        true
    }

    /// The broker granted the lease of `server`.
    pub fn acquired(&mut self, server: &Arc<str>) {
        self.held.insert(server.clone());
        self.unclaimed_since.remove(server);
    }

    /// This instance gave the lease of `server` back.
    pub fn released(&mut self, server: &str, now: Instant) {
        if let Some(s) = self.held.take(server) {
            self.cooldown.insert(s, now + self.timing.cooldown);
        }
    }

    /// Every lease is gone at once (the broker connection was lost).
    pub fn lost_all(&mut self) {
        self.held.clear();
    }

    /// The peers alive at `now` that share at least one server with us.
    fn live_peers(&self, now: Instant) -> impl Iterator<Item = (&String, &Peer)> {
        self.peers.iter().filter(move |(_, p)| {
            !p.leaving
                && now.saturating_duration_since(p.seen) < self.timing.peer_timeout
                && self.servers.iter().any(|s| p.servers.contains(&**s))
        })
    }

    /// Live instances sharing servers with us, us included.
    pub fn live_instances(&self, now: Instant) -> usize {
        1 + self.live_peers(now).count()
    }

    /// The fair share: `ceil(M / N)`.
    pub fn share(&self, now: Instant) -> usize {
        self.servers.len().div_ceil(self.live_instances(now))
    }

    /// Servers a live peer says it holds. The claims of a peer above
    /// share + 1 are not believed: a peer that claims leases it does not
    /// hold (a bug, or a message forged on the fleet exchange) then cannot
    /// keep servers unread — they are tried like unclaimed ones, and the
    /// broker grants those nobody holds and refuses the others (as it
    /// does for a peer really that far above its share, for a few ticks
    /// while it hands leases over).
    fn claimed(&self, now: Instant, share: usize) -> BTreeSet<&str> {
        self.live_peers(now)
            .filter(|(_, p)| p.held.len() <= share + 1)
            .flat_map(|(_, p)| p.held.iter().map(String::as_str))
            .collect()
    }

    /// What to do now.
    pub fn decide(&mut self, now: Instant) -> Decision {
        self.peers
            .retain(|_, p| now.saturating_duration_since(p.seen) < self.timing.peer_timeout * 4);
        self.cooldown.retain(|_, until| *until > now);
        if now.saturating_duration_since(self.started) < self.timing.discovery {
            return Decision::default();
        }
        let share = self.share(now);
        let claimed = self.claimed(now, share);
        let unclaimed: Vec<Arc<str>> = self
            .servers
            .iter()
            .filter(|s| !self.held.contains(*s) && !claimed.contains(&***s))
            .cloned()
            .collect();

        self.unclaimed_since.retain(|s, _| unclaimed.contains(s));
        for s in &unclaimed {
            self.unclaimed_since.entry(s.clone()).or_insert(now);
        }
        let release = self.pick_release(now, share);
        let acquire = if release.is_some() {
            Vec::new()
        } else {
            self.pick_acquire(now, share, &unclaimed)
        };
        Decision { acquire, release }
    }

    /// Above the share while a live peer is below it: the held server the
    /// neediest peer's configuration has, least preferred by us first.
    fn pick_release(&self, now: Instant, share: usize) -> Option<Arc<str>> {
        if self.held.len() <= share {
            return None;
        }
        let needy = self
            .live_peers(now)
            .filter(|(_, p)| p.held.len() < share)
            .min_by_key(|(name, p)| (p.held.len(), name.as_str()))?;
        self.held
            .iter()
            .filter(|s| needy.1.servers.contains(&***s))
            .min_by_key(|s| weight(&self.me, s))
            .cloned()
    }

    /// Unclaimed servers to try for, best first: up to the share, plus
    /// one orphan (unclaimed for a whole peer timeout) up to share + 1.
    fn pick_acquire(&self, now: Instant, share: usize, unclaimed: &[Arc<str>]) -> Vec<Arc<str>> {
        let mut ranked: Vec<&Arc<str>> = unclaimed
            .iter()
            .filter(|s| !self.cooldown.contains_key(*s))
            .collect();
        ranked.sort_by_key(|s| std::cmp::Reverse(weight(&self.me, s)));
        let want = share.saturating_sub(self.held.len());
        let mut out: Vec<Arc<str>> = ranked.iter().take(want).map(|s| (*s).clone()).collect();
        if out.is_empty() && self.held.len() <= share {
            let orphan = ranked.iter().find(|s| {
                self.unclaimed_since
                    .get(**s)
                    .is_some_and(|t| now.saturating_duration_since(*t) >= self.timing.peer_timeout)
            });
            out.extend(orphan.map(|s| (*s).clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TICK: Duration = Duration::from_millis(500);

    fn timing() -> Timing {
        Timing {
            peer_timeout: TICK * 4,
            discovery: TICK * 2,
            cooldown: TICK * 8,
        }
    }

    fn names(n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("pbx{i}"))).collect()
    }

    /// A simulated fleet: each instance's planner, and the broker's table
    /// of exclusive queues (server → holder).
    struct Fleet {
        servers: Vec<Arc<str>>,
        planners: Vec<Option<Planner>>,
        leases: HashMap<Arc<str>, usize>,
        /// Announcements of the last tick, delivered at the next.
        inbox: Vec<Announce>,
        now: Instant,
    }

    impl Fleet {
        fn new(servers: usize) -> Fleet {
            Fleet {
                servers: names(servers),
                planners: Vec::new(),
                leases: HashMap::new(),
                inbox: Vec::new(),
                now: Instant::now(),
            }
        }

        fn join(&mut self) -> usize {
            let i = self.planners.len();
            let p = Planner::new(&format!("i{i}"), &self.servers, timing(), self.now);
            self.planners.push(Some(p));
            i
        }

        /// kill -9: the broker drops its exclusive queues at once.
        fn kill(&mut self, i: usize) {
            self.planners[i] = None;
            self.leases.retain(|_, h| *h != i);
        }

        /// Four servers: instance 0 alone, then instance 1 joins and has
        /// just got its two by hand-overs (the giver's cooldowns running).
        fn newcomer_by_hand_overs() -> Fleet {
            let mut f = Fleet::new(4);
            f.join();
            f.settle(5);
            f.join();
            let mut ticks = 0;
            while f.counts() != vec![2, 2] {
                f.tick(&[0, 1]);
                ticks += 1;
                assert!(ticks < 30, "{:?}", f.counts());
            }
            f
        }

        /// SIGTERM: it says it is leaving (still listing its leases),
        /// gives them all back, and is gone.
        fn leave(&mut self, i: usize) {
            if let Some(p) = self.planners[i].take() {
                self.inbox.push(p.announce(true));
            }
            self.leases.retain(|_, h| *h != i);
        }

        /// One tick of every live instance, in the order given.
        fn tick(&mut self, order: &[usize]) -> usize {
            self.now += TICK;
            let inbox = std::mem::take(&mut self.inbox);
            let mut changes = 0;
            for &i in order {
                let Some(p) = self.planners.get_mut(i).and_then(Option::as_mut) else {
                    continue;
                };
                for a in &inbox {
                    p.heard(a.clone(), self.now);
                }
                let d = p.decide(self.now);
                if let Some(s) = d.release {
                    assert_eq!(self.leases.remove(&s), Some(i), "released a lease not held");
                    p.released(&s, self.now);
                    changes += 1;
                }
                for s in d.acquire {
                    if let std::collections::hash_map::Entry::Vacant(e) =
                        self.leases.entry(s.clone())
                    {
                        e.insert(i);
                        p.acquired(&s);
                        changes += 1;
                    }
                }
                self.inbox.push(p.announce(false));
            }
            changes
        }

        fn live(&self) -> Vec<usize> {
            (0..self.planners.len())
                .filter(|i| self.planners[*i].is_some())
                .collect()
        }

        fn counts(&self) -> Vec<usize> {
            self.live()
                .iter()
                .map(|i| self.leases.values().filter(|h| **h == *i).count())
                .collect()
        }

        /// Ticks until nothing changes for a peer timeout and more.
        fn settle(&mut self, order_seed: u64) -> usize {
            let mut quiet = 0;
            let mut ticks = 0;
            let mut seed = order_seed;
            while quiet < 12 {
                let mut order = self.live();
                // A cheap shuffle: instances act in varying order.
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let k = order.len();
                if k > 1 {
                    order.rotate_left((seed >> 33) as usize % k);
                }
                quiet = if self.tick(&order) == 0 { quiet + 1 } else { 0 };
                ticks += 1;
                assert!(ticks < 400, "no convergence: {:?}", self.counts());
            }
            ticks
        }

        fn assert_fair(&self) {
            let n = self.live().len();
            let share = self.servers.len().div_ceil(n);
            assert_eq!(
                self.leases.len(),
                self.servers.len(),
                "a server has no reader"
            );
            for c in self.counts() {
                assert!(c <= share + 1, "{:?} over share {share}", self.counts());
            }
            // The planners agree with the broker.
            for i in self.live() {
                let p = self.planners[i].as_ref().unwrap();
                let mine: BTreeSet<Arc<str>> = self
                    .leases
                    .iter()
                    .filter(|(_, h)| **h == i)
                    .map(|(s, _)| s.clone())
                    .collect();
                assert_eq!(p.held.iter().cloned().collect::<BTreeSet<_>>(), mine);
            }
        }
    }

    #[test]
    fn three_instances_started_together_spread_twelve_servers_evenly() {
        let mut f = Fleet::new(12);
        for _ in 0..3 {
            f.join();
        }
        f.settle(7);
        f.assert_fair();
        assert_eq!(f.counts(), vec![4, 4, 4]);
    }

    #[test]
    fn a_killed_instance_s_servers_are_taken_within_a_peer_timeout() {
        let mut f = Fleet::new(12);
        for _ in 0..3 {
            f.join();
        }
        f.settle(1);
        f.kill(1);
        let orphaned: usize = 12 - f.leases.len();
        assert_eq!(orphaned, 4);
        let mut ticks = 0;
        while f.leases.len() < 12 {
            f.tick(&[0, 2]);
            ticks += 1;
        }
        // The peer timeout (4 ticks) after its last announcement arrived,
        // then one tick to act and one to settle a race between the two.
        assert!(ticks <= 6, "took {ticks} ticks");
        f.settle(2);
        f.assert_fair();
        assert_eq!(f.counts(), vec![6, 6]);
    }

    #[test]
    fn a_late_joiner_gets_its_share_by_hand_overs() {
        let mut f = Fleet::new(12);
        f.join();
        f.settle(3);
        assert_eq!(f.counts(), vec![12]);
        f.join();
        f.join();
        f.settle(4);
        f.assert_fair();
        assert_eq!(f.counts(), vec![4, 4, 4]);
    }

    #[test]
    fn a_server_handed_over_is_taken_back_at_once_when_its_new_holder_dies() {
        let mut f = Fleet::newcomer_by_hand_overs();
        // The newcomer (which got its two by hand-overs) is killed at
        // once, well within the cooldown of those hand-overs.
        f.kill(1);
        let mut ticks = 0;
        while f.leases.len() < 4 {
            f.tick(&[0]);
            ticks += 1;
            assert!(ticks <= 5, "waited out the cooldown: {ticks} ticks");
        }
    }

    #[test]
    fn a_server_handed_over_is_taken_back_at_once_when_its_new_holder_leaves() {
        let mut f = Fleet::newcomer_by_hand_overs();
        // SIGTERM before the old holder has heard the newcomer's claims:
        // the leaving announcement is the first it hears of them.
        f.leave(1);
        let mut ticks = 0;
        while f.leases.len() < 4 {
            f.tick(&[0]);
            ticks += 1;
            assert!(ticks <= 2, "waited out the cooldown: {ticks} ticks");
        }
    }

    #[test]
    fn nothing_is_acquired_during_discovery() {
        let now = Instant::now();
        let mut p = Planner::new("a", &names(3), timing(), now);
        assert_eq!(p.decide(now + TICK), Decision::default());
        assert_eq!(p.decide(now + TICK * 2).acquire.len(), 3);
    }

    #[test]
    fn leaving_peers_and_silent_peers_do_not_count() {
        let now = Instant::now();
        let mut p = Planner::new("a", &names(4), timing(), now);
        let peer = |name: &str, leaving| Announce {
            instance: name.into(),
            servers: (0..4).map(|i| format!("pbx{i}")).collect(),
            held: vec!["pbx0".into()],
            leaving,
        };
        p.heard(peer("b", false), now);
        p.heard(peer("c", true), now);
        p.heard(peer("a", false), now);
        assert_eq!(p.live_instances(now), 2);
        assert_eq!(p.share(now), 2);
        let d = p.decide(now + TICK * 2);
        assert_eq!(d.acquire.len(), 2);
        assert!(!d.acquire.iter().any(|s| &**s == "pbx0"), "{d:?}");
        // b falls silent: its server is ours to take, the share is all.
        assert_eq!(p.live_instances(now + TICK * 4), 1);
    }

    #[test]
    fn a_lease_given_back_is_not_taken_again_at_once() {
        let now = Instant::now();
        let servers = names(2);
        let mut p = Planner::new("a", &servers, timing(), now);
        p.acquired(&servers[0]);
        p.released("pbx0", now);
        let d = p.decide(now + TICK * 2);
        assert_eq!(d.acquire, vec![servers[1].clone()]);
        let d = p.decide(now + TICK * 9);
        assert!(d.acquire.contains(&servers[0]), "{d:?}");
    }

    #[test]
    fn a_peer_claiming_leases_it_does_not_hold_cannot_keep_servers_unread() {
        let mut f = Fleet::new(6);
        f.join();
        f.join();
        // A forged announcement: "ghost" holds everything.
        let ghost = Announce {
            instance: "ghost".into(),
            servers: (0..6).map(|i| format!("pbx{i}")).collect(),
            held: (0..6).map(|i| format!("pbx{i}")).collect(),
            leaving: false,
        };
        for _ in 0..40 {
            f.inbox.push(ghost.clone());
            f.tick(&[0, 1]);
        }
        assert_eq!(f.leases.len(), 6, "{:?}", f.leases);
    }

    #[test]
    fn the_peer_table_is_bounded() {
        let now = Instant::now();
        let mut p = Planner::new("a", &names(2), timing(), now);
        for i in 0..MAX_PEERS + 5 {
            let a = Announce {
                instance: format!("x{i}"),
                servers: vec!["pbx0".into()],
                held: Vec::new(),
                leaving: false,
            };
            assert_eq!(p.heard(a, now), i < MAX_PEERS);
        }
        assert_eq!(p.peers.len(), MAX_PEERS);
    }

    #[test]
    fn weights_are_stable_and_spread() {
        assert_eq!(weight("a", "pbx1"), weight("a", "pbx1"));
        assert_ne!(weight("a", "pbx1"), weight("b", "pbx1"));
        // The same name split differently is a different pair.
        assert_ne!(weight("ab", "c"), weight("a", "bc"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any fleet, any joins and kills: once membership is stable and
        /// the plan has settled, every server has exactly one holder (the
        /// broker's table) and nobody holds more than the share + 1.
        #[test]
        fn any_history_settles_fair(
            servers in 1usize..30,
            first in 1usize..5,
            steps in proptest::collection::vec((0u8..3, 0usize..8, 0u64..1000), 0..6),
        ) {
            let mut f = Fleet::new(servers);
            for _ in 0..first {
                f.join();
            }
            for (what, who, seed) in steps {
                match what {
                    0 => { f.join(); }
                    1 => {
                        let live = f.live();
                        if live.len() > 1 {
                            f.kill(live[who % live.len()]);
                        }
                    }
                    _ => {}
                }
                // Some ticks, not necessarily enough to settle.
                for _ in 0..(seed % 6) {
                    let order = f.live();
                    f.tick(&order);
                }
            }
            f.settle(servers as u64);
            f.assert_fair();
        }
    }
}
