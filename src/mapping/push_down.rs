//! Push-down: what Asterisk need not send, computed from the mapping set.
//!
//! Asterisk formats and writes every event to every session whose event
//! mask lets it through; its manager thread is where a busy system hurts.
//! An event the mappings drop (a `drop` route, or no route and no
//! fallback) costs Asterisk that work for nothing. [`PushDown::plan`]
//! reads a compiled [`Router`] (no I/O) and says what the event connection
//! can ask for instead:
//!
//! - **Which names are dropped for sure.** For each event name the routes
//!   name (by `events`), the routes that could meet it are walked in
//!   order, as [`Router::route`] does: a route that is not `drop` and
//!   could match keeps the name (its `when`/`absent` conditions may hold);
//!   a `drop` route without conditions (named, or `"*"`) that has `stop`
//!   ends the walk; the fallback tier is looked at only when no ordinary
//!   route is certain to match. An `events_regex` route could match a name
//!   when its regex, made case-insensitive, finds the name (the wire may
//!   spell it in any case), and is never *certain* to match. Names no route
//!   names meet only the `"*"` and regex routes: when one of those, or a
//!   fallback, may publish them, the kept set is **open** (any name may
//!   produce a message); otherwise it is **closed** (only the kept names).
//! - **Filters**: one or more legacy exclude filters
//!   `!^Event: ([Vv][Aa][Rr][Ss][Ee][Tt]|…)[[:space:]]`, a POSIX extended
//!   regex (Asterisk ≥ 13) over the event text, anchored at its start and
//!   spelled case-insensitively, as mapping names compare. Exclude filters
//!   only, never include filters: an exclude names exactly what the
//!   mappings drop, so everything else (list items of actions, an
//!   `OriginateResponse`, events of names the mappings have never heard
//!   of) still passes, whatever the set looks like. Names of other
//!   characters than `A-Z a-z 0-9 _ -` are left unfiltered (noted), as are
//!   names past [`MAX_FILTERS`] filters of at most [`MAX_FILTER_BYTES`].
//! - **The mask.** When the kept set is closed and the class of every kept
//!   name is known ([`crate::ami::documented::event_class_bits`]), the
//!   mask is the union of their classes intersected with the configured
//!   one (never wider than configured); otherwise the configured mask
//!   stays. A dropped name whose classes the mask already excludes gets no
//!   filter (each filter costs Asterisk a regex per event).
//!
//! The plan is a value; the client applies it (`ami::client`), `ami2amqp
//! check --explain-filters` prints it, and the bridge recomputes it on
//! every mapping reload. docs/mapping.md ("Push-down") is the user's view.

use std::collections::BTreeSet;

use super::router::{CompiledRoute, Index, Router};
use crate::ami::EventMask;
use crate::ami::documented::{documented_spelling, event_class_bits};
use ami_proto::CLASSES;

/// Most `Filter` actions a plan holds.
pub const MAX_FILTERS: usize = 16;

/// Longest `Filter:` value of a plan, in bytes (Asterisk's request lines
/// are at most 1022 bytes, `Filter: ` included).
pub const MAX_FILTER_BYTES: usize = 900;

/// What the event connection asks Asterisk for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushDown {
    /// The `Events:` mask to log in with.
    pub mask: EventMask,
    /// `Filter:` values to add after login, in order (exclude filters).
    pub filters: Vec<String>,
    /// Names the filters drop, as documented (else as the mappings spell
    /// them, lower-cased).
    pub filtered: Vec<String>,
    /// Names the mappings drop for sure (filtered or not).
    pub dropped: Vec<String>,
    /// The names that can produce a message when the kept set is closed;
    /// `None`: open (a `"*"`, `events_regex` or fallback route may publish
    /// any event).
    pub kept: Option<Vec<String>>,
    /// Why something was not narrowed or filtered, one line each.
    pub notes: Vec<String>,
    /// False when push-down is off (the mask is the configured one, no
    /// filters); `notes` says why.
    pub enabled: bool,
}

/// The bridge's side of push-down: one plan per server, sent to its event
/// connection (`ami::ClientConfig::push_down`) and recomputed after every
/// mapping reload ([`Feed::update`]); a connection whose plan changed
/// reconnects with the new one.
pub struct Feed {
    servers: Vec<FeedServer>,
}

struct FeedServer {
    name: String,
    configured: EventMask,
    tx: tokio::sync::watch::Sender<crate::ami::EventRequest>,
    on: bool,
}

impl Feed {
    /// Plans for every server of `servers` under `router`.
    pub fn new(servers: &[crate::ami::ServerConfig], facade: bool, router: &Router) -> Feed {
        let servers = servers
            .iter()
            .map(|s| {
                let p = PushDown::for_server(router, s, facade);
                log_plan(s.name(), &p);
                FeedServer {
                    name: s.name().to_string(),
                    configured: s.events.mask(),
                    tx: tokio::sync::watch::channel(p.request()).0,
                    on: p.enabled,
                }
            })
            .collect();
        Feed { servers }
    }

    /// The request channel of `server`'s event connection (`None` when
    /// push-down is off for it).
    pub fn receiver(
        &self,
        server: &str,
    ) -> Option<tokio::sync::watch::Receiver<crate::ami::EventRequest>> {
        self.servers
            .iter()
            .find(|s| s.on && s.name == server)
            .map(|s| s.tx.subscribe())
    }

    /// Recomputes every plan for a reloaded set; the servers whose plan
    /// changed get it (and reconnect).
    pub fn update(&self, router: &Router) {
        for s in self.servers.iter().filter(|s| s.on) {
            let p = PushDown::plan(router, &s.configured);
            let new = p.request();
            if s.tx.send_if_modified(|cur| {
                let changed = *cur != new;
                if changed {
                    *cur = new.clone();
                }
                changed
            }) {
                tracing::info!(server = %s.name, "push-down: the reloaded mappings change the event mask or filters; the event connection reconnects");
                log_plan(&s.name, &p);
            }
        }
    }
}

fn log_plan(server: &str, p: &PushDown) {
    if p.enabled {
        tracing::info!(server = %server, mask = %p.mask.header_value(), filters = p.filters.len(),
            filtered = %p.filtered.join(","), "push-down plan");
    }
}

/// What one event name meets in the routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Some route may publish it.
    Kept,
    /// Nothing is published for it, whatever its fields.
    Dropped,
}

impl PushDown {
    /// Push-down switched off: the configured mask, no filters.
    pub fn off(configured: &EventMask, why: &str) -> PushDown {
        PushDown {
            mask: configured.clone(),
            filters: Vec::new(),
            filtered: Vec::new(),
            dropped: Vec::new(),
            kept: None,
            notes: vec![why.to_string()],
            enabled: false,
        }
    }

    /// The plan for one `[[server]]`: [`PushDown::plan`] when its
    /// `push_down` is on, else (and when the bridge's AMI facade is on,
    /// whose clients receive every event of the event connection, or when
    /// the event connection also carries the actions, whose
    /// `OriginateResponse` and `UserEvent` events must reach their caller)
    /// [`PushDown::off`].
    pub fn for_server(
        router: &Router,
        server: &crate::ami::ServerConfig,
        facade: bool,
    ) -> PushDown {
        let configured = server.events.mask();
        if !server.push_down {
            PushDown::off(&configured, "push_down = false")
        } else if facade {
            PushDown::off(
                &configured,
                "off: the AMI facade is on, and its clients receive every event of the event connection",
            )
        } else if server.action_connections == 0 {
            PushDown::off(
                &configured,
                "off: action_connections = 0, so the event connection also runs actions, whose events (OriginateResponse, …) must reach their caller",
            )
        } else {
            PushDown::plan(router, &configured)
        }
    }

    /// What the event connection asks for.
    pub fn request(&self) -> crate::ami::EventRequest {
        crate::ami::EventRequest {
            mask: self.mask.clone(),
            filters: self.filters.clone(),
        }
    }

    /// The plan for `router`, never wider than `configured`.
    pub fn plan(router: &Router, configured: &EventMask) -> PushDown {
        let mut notes = Vec::new();
        let names: BTreeSet<&str> = router
            .normal
            .by_name
            .keys()
            .chain(router.fallback.by_name.keys())
            .map(String::as_str)
            .collect();
        let open = fate(router, None) == Fate::Kept;
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for &n in &names {
            match fate(router, Some(n)) {
                Fate::Kept => kept.push(n),
                Fate::Dropped => dropped.push(n),
            }
        }
        let configured_bits = configured.bits();
        let mut mask = configured.clone();
        if open {
            notes.push(
                "the mask stays as configured: a \"*\", events_regex or fallback route may publish events of any name".into(),
            );
        } else {
            let unknown: Vec<&str> = kept
                .iter()
                .copied()
                .filter(|n| event_class_bits(n).is_none())
                .collect();
            if unknown.is_empty() {
                let needed = kept
                    .iter()
                    .filter_map(|n| event_class_bits(n))
                    .fold(0, |a, b| a | b);
                let bits = needed & configured_bits;
                if bits != configured_bits {
                    mask = mask_of(bits);
                }
            } else {
                notes.push(format!(
                    "the mask stays as configured: no known class for {}",
                    unknown
                        .iter()
                        .map(|n| spelling(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let mask_bits = mask.bits();
        let mut to_filter = Vec::new();
        // With no class in the mask Asterisk sends no event: no filter.
        for &n in dropped.iter().filter(|_| mask_bits != 0) {
            if event_class_bits(n).is_some_and(|c| !ami_proto::mask_allows(mask_bits, c)) {
                continue; // the mask already keeps it away
            }
            if !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                notes.push(format!(
                    "{} is not filtered: only names of A-Z a-z 0-9 _ - are",
                    spelling(n)
                ));
                continue;
            }
            to_filter.push(n);
        }
        let (filters, filtered, left) = exclude_filters(&to_filter);
        if !left.is_empty() {
            notes.push(format!(
                "not filtered (more than {MAX_FILTERS} filters): {}",
                left.iter()
                    .map(|n| spelling(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        PushDown {
            mask,
            filters,
            filtered: filtered.iter().map(|n| spelling(n)).collect(),
            dropped: dropped.iter().map(|n| spelling(n)).collect(),
            kept: (!open).then(|| kept.iter().map(|n| spelling(n)).collect()),
            notes,
            enabled: true,
        }
    }

    /// The human-readable plan, for `check --explain-filters`.
    pub fn explain(&self, server: &str, configured: &EventMask) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "server {server}:");
        let _ = writeln!(
            s,
            "  push_down: {}",
            if self.enabled { "on" } else { "off" }
        );
        let _ = writeln!(
            s,
            "  Events: {} (configured: {})",
            self.mask.header_value(),
            configured.header_value()
        );
        if self.filters.is_empty() {
            let _ = writeln!(s, "  filters: none");
        }
        for f in &self.filters {
            let _ = writeln!(s, "  Filter: {f}");
        }
        if self.enabled {
            let _ = writeln!(s, "  dropped by the mappings: {}", list(&self.dropped));
            let _ = writeln!(s, "  filtered at the source: {}", list(&self.filtered));
            match &self.kept {
                Some(k) => {
                    let _ = writeln!(s, "  kept (closed set): {}", list(k));
                }
                None => {
                    let _ = writeln!(s, "  kept: any other name (open set)");
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The documented spelling of a lower-cased name, else the name.
fn spelling(lower: &str) -> String {
    documented_spelling(lower).map_or_else(|| lower.to_string(), str::to_string)
}

/// A mask of class bits, written as class names.
fn mask_of(bits: u32) -> EventMask {
    if bits == 0 {
        return EventMask::Off;
    }
    EventMask::Classes(
        CLASSES
            .iter()
            .filter(|(_, b)| bits & b != 0)
            .map(|(n, _)| n.to_string())
            .collect(),
    )
}

/// `name` as a POSIX ERE that matches it in any ASCII case (`[Vv][Aa]…`);
/// `-` and `_` stand for themselves in both POSIX and Rust regexes.
fn any_case(name: &str) -> String {
    let mut s = String::with_capacity(name.len() * 4);
    for c in name.chars() {
        if c.is_ascii_alphabetic() {
            s.push('[');
            s.push(c.to_ascii_uppercase());
            s.push(c.to_ascii_lowercase());
            s.push(']');
        } else {
            s.push(c);
        }
    }
    s
}

/// Exclude filters for `names`, each at most [`MAX_FILTER_BYTES`], at
/// most [`MAX_FILTERS`]; returns the filters, the names they cover and
/// the names left out.
fn exclude_filters<'a>(names: &[&'a str]) -> (Vec<String>, Vec<&'a str>, Vec<&'a str>) {
    const HEAD: &str = "!^Event: (";
    const TAIL: &str = ")[[:space:]]";
    let mut filters = Vec::new();
    let mut covered = Vec::new();
    let mut left = Vec::new();
    let mut cur = String::new();
    for &n in names {
        let alt = any_case(n);
        if HEAD.len() + alt.len() + TAIL.len() > MAX_FILTER_BYTES {
            left.push(n);
            continue;
        }
        if !cur.is_empty() && HEAD.len() + cur.len() + 1 + alt.len() + TAIL.len() > MAX_FILTER_BYTES
        {
            filters.push(format!("{HEAD}{cur}{TAIL}"));
            cur.clear();
        }
        if cur.is_empty() && filters.len() == MAX_FILTERS {
            left.push(n);
            continue;
        }
        if !cur.is_empty() {
            cur.push('|');
        }
        cur.push_str(&alt);
        covered.push(n);
    }
    if !cur.is_empty() {
        filters.push(format!("{HEAD}{cur}{TAIL}"));
    }
    (filters, covered, left)
}

/// What the routes do with events named `name` (lower-cased), or with a
/// name no route names (`None`).
fn fate(router: &Router, name: Option<&str>) -> Fate {
    let mut certain = false;
    match walk(router, &router.normal, name, &mut certain) {
        Fate::Kept => return Fate::Kept,
        Fate::Dropped if certain => return Fate::Dropped,
        Fate::Dropped => {}
    }
    // No ordinary route is certain to match: the fallbacks may run.
    walk(router, &router.fallback, name, &mut false)
}

/// One tier's routes for `name`, in order. Sets `certain` when a route is
/// sure to match (then the fallback tier is never reached).
fn walk(router: &Router, tier: &Index, name: Option<&str>, certain: &mut bool) -> Fate {
    let named = name
        .and_then(|n| tier.by_name.get(n))
        .map_or(&[][..], Vec::as_slice);
    let mut order: Vec<usize> = named.iter().chain(tier.any.iter()).copied().collect();
    order.sort_unstable();
    order.dedup();
    for i in order {
        let r = &router.routes[i];
        if !may_take(r, name) {
            continue;
        }
        if !r.drop {
            return Fate::Kept;
        }
        let unconditional = r.events_regex.is_none() && r.when.is_empty() && r.absent.is_empty();
        if unconditional {
            *certain = true;
            if r.stop {
                break;
            }
        }
    }
    Fate::Dropped
}

/// Whether route `r` could take events named `name` (any name: `None`).
fn may_take(r: &CompiledRoute, name: Option<&str>) -> bool {
    let (Some(re), Some(name)) = (&r.events_regex, name) else {
        return true;
    };
    // The wire may spell the name in any case: a regex that is not
    // certain to keep its case sensitivity (an inline `-i`) could match.
    let pattern = re.as_str();
    if pattern.contains("-i") || pattern.contains("-Ui") {
        return true;
    }
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map_or(true, |ci| ci.is_match(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::load_str;

    fn router(toml: &str) -> Router {
        load_str(&[("t.toml".into(), toml.to_string())]).expect("valid mappings")
    }

    const PUBLISH: &str = "exchange = \"x\"\nrouting_key = \"k\"\n";

    fn route(name: &str, body: &str) -> String {
        format!("[[route]]\nname = \"{name}\"\n{body}\n")
    }

    #[test]
    fn open_set_filters_the_dropped_names() {
        let r = router(&format!(
            "{}{}{}",
            route(
                "noise",
                "events = [\"VarSet\", \"Newexten\", \"CEL\"]\ndrop = true\nstop = true"
            ),
            route("calls", &format!("events = [\"Hangup\"]\n{PUBLISH}")),
            route(
                "rest",
                &format!("events = [\"*\"]\nfallback = true\n{PUBLISH}")
            ),
        ));
        let p = PushDown::plan(&r, &EventMask::On);
        assert_eq!(p.mask, EventMask::On);
        assert_eq!(p.kept, None);
        assert_eq!(p.dropped, ["CEL", "NewExten", "VarSet"]);
        assert_eq!(
            p.filters,
            [
                "!^Event: ([Cc][Ee][Ll]|[Nn][Ee][Ww][Ee][Xx][Tt][Ee][Nn]|[Vv][Aa][Rr][Ss][Ee][Tt])[[:space:]]"
            ]
        );
        // The filter is one Asterisk accepts and drops what it should.
        let f = ami_proto::EventFilter::new(None, &p.filters[0]).unwrap();
        let mut set = ami_proto::FilterSet::default();
        set.add(f);
        for (name, pass) in [
            ("VarSet", false),
            ("Newexten", false),
            ("CEL", false),
            ("VarSetX", true),
            ("Hangup", true),
            ("UserEvent", true),
        ] {
            let text = format!("Event: {name}\r\nPrivilege: call,all\r\n\r\n");
            assert_eq!(
                set.should_send(name.as_bytes(), text.as_bytes()),
                pass,
                "{name}"
            );
        }
        let text = b"Event: UserEvent\r\nUserEvent: VarSet\r\n\r\n";
        assert!(set.should_send(b"UserEvent", text));
    }

    #[test]
    fn conditions_keep_a_name() {
        // A drop with a condition may not match: the name is kept.
        let r = router(&format!(
            "{}{}",
            route(
                "normal hangups",
                "events = [\"Hangup\"]\nwhen = { Cause = '^16$' }\ndrop = true\nstop = true"
            ),
            route("hangups", &format!("events = [\"Hangup\"]\n{PUBLISH}")),
        ));
        let p = PushDown::plan(&r, &EventMask::On);
        assert!(p.dropped.is_empty(), "{p:?}");
        assert_eq!(p.kept.as_deref(), Some(&["Hangup".to_string()][..]));
        // Closed set of one call-class name: the mask narrows to call.
        assert_eq!(p.mask, EventMask::Classes(vec!["call".into()]));
        assert!(p.filters.is_empty());
    }

    #[test]
    fn a_drop_without_stop_lets_later_routes_publish() {
        let r = router(&format!(
            "{}{}",
            route("d", "events = [\"VarSet\"]\ndrop = true"),
            route("v", &format!("events = [\"VarSet\"]\n{PUBLISH}")),
        ));
        assert_eq!(PushDown::plan(&r, &EventMask::On).kept.unwrap(), ["VarSet"]);
    }

    #[test]
    fn unnamed_events_with_no_route_and_no_fallback_close_the_set() {
        let r = router(&route(
            "cdr",
            &format!("events = [\"Cdr\", \"Hangup\"]\n{PUBLISH}"),
        ));
        let p = PushDown::plan(&r, &EventMask::On);
        assert_eq!(p.kept.unwrap(), ["Cdr", "Hangup"]);
        assert_eq!(p.mask.header_value(), "call,cdr");
        // Never wider than configured.
        let conf = EventMask::Classes(vec!["cdr".into(), "user".into()]);
        assert_eq!(PushDown::plan(&r, &conf).mask.header_value(), "cdr");
    }

    #[test]
    fn an_unknown_class_keeps_the_mask() {
        let r = router(&route(
            "q",
            &format!("events = [\"QueueMember\"]\n{PUBLISH}"),
        ));
        let p = PushDown::plan(&r, &EventMask::On);
        assert_eq!(p.mask, EventMask::On);
        assert!(p.notes[0].contains("QueueMember") || p.notes[0].contains("queuemember"));
    }

    #[test]
    fn a_regex_route_may_take_names_in_any_case() {
        // '^Var' could match "varset" as sent in another case.
        let r = router(&format!(
            "{}{}",
            route(
                "d",
                "events = [\"varset\", \"Hangup\"]\ndrop = true\nstop = true"
            ),
            route("v", &format!("events_regex = '^VAR'\n{PUBLISH}")),
        ));
        let p = PushDown::plan(&r, &EventMask::On);
        // The drop+stop comes first for both names: both dropped.
        assert_eq!(p.dropped, ["Hangup", "VarSet"]);
        let r = router(&format!(
            "{}{}",
            route("v", &format!("events_regex = '^VAR'\n{PUBLISH}")),
            route(
                "d",
                "events = [\"varset\", \"Hangup\"]\ndrop = true\nstop = true"
            ),
        ));
        let p = PushDown::plan(&r, &EventMask::On);
        assert_eq!(p.dropped, ["Hangup"]);
        assert_eq!(p.kept, None, "the regex route may publish other names");
    }

    #[test]
    fn a_catch_all_drop_closes_the_set_and_may_turn_events_off() {
        let r = router(&route("all", "events = [\"*\"]\ndrop = true\nstop = true"));
        let p = PushDown::plan(&r, &EventMask::On);
        assert_eq!(p.kept.unwrap(), Vec::<String>::new());
        assert_eq!(p.mask, EventMask::Off);
        // A fallback that publishes is never reached past a certain drop,
        // but is reached past a conditional one.
        let r = router(&format!(
            "{}{}",
            route(
                "d",
                "events = [\"VarSet\"]\nwhen = { Variable = 'x' }\ndrop = true\nstop = true"
            ),
            route(
                "f",
                &format!("events = [\"*\"]\nfallback = true\n{PUBLISH}")
            ),
        ));
        let p = PushDown::plan(&r, &EventMask::On);
        assert!(p.dropped.is_empty());
    }

    #[test]
    fn dropped_names_the_mask_excludes_get_no_filter() {
        let r = router(&format!(
            "{}{}",
            route("d", "events = [\"VarSet\"]\ndrop = true\nstop = true"),
            route("c", &format!("events = [\"Cdr\"]\n{PUBLISH}")),
        ));
        let p = PushDown::plan(&r, &EventMask::On);
        assert_eq!(p.mask.header_value(), "cdr");
        assert_eq!(p.dropped, ["VarSet"]);
        assert!(p.filters.is_empty(), "{p:?}");
    }

    #[test]
    fn no_filters_when_no_event_is_sent() {
        let r = router(&format!(
            "{}{}",
            route(
                "d",
                "events = [\"SomethingUndocumented\"]\ndrop = true\nstop = true"
            ),
            route(
                "rest",
                &format!("events = [\"*\"]\nfallback = true\n{PUBLISH}")
            ),
        ));
        assert_eq!(PushDown::plan(&r, &EventMask::On).filters.len(), 1);
        let p = PushDown::plan(&r, &EventMask::Off);
        assert_eq!((p.mask, p.filters.len()), (EventMask::Off, 0));
    }

    /// The events of a real capture, plus names in other cases and one no
    /// mapping names, as (message, wire text).
    fn sample_events() -> Vec<(crate::ami::Message, Vec<u8>)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/traces/calls_small.ami");
        let data = std::fs::read(path).expect("trace");
        let mut out: Vec<(crate::ami::Message, Vec<u8>)> = Vec::new();
        for f in crate::ami::decode_all(&data, crate::ami::Limits::default()) {
            if let crate::ami::Frame::Message(m) = f
                && m.kind() == crate::ami::Kind::Event
            {
                let mut text = m.raw().to_vec();
                text.extend_from_slice(b"\r\n\r\n");
                out.push((m, text));
            }
        }
        for (name, privilege) in [
            ("VARSET", "dialplan,all"),
            ("newexten", "dialplan,all"),
            ("cel", "call,all"),
            ("SomethingNew", "call,all"),
            ("QueueMember", "agent,all"),
        ] {
            let text =
                format!("Event: {name}\r\nPrivilege: {privilege}\r\nChannel: PJSIP/a-1\r\n\r\n");
            let m = crate::ami::Message::from_pairs([
                ("Event", name),
                ("Privilege", privilege),
                ("Channel", "PJSIP/a-1"),
            ]);
            out.push((m, text.into_bytes()));
        }
        out
    }

    /// The promise push-down rests on: an event for which the set
    /// publishes a message passes the plan's mask and filters.
    fn assert_sound(r: &Router, events: &[(crate::ami::Message, Vec<u8>)], what: &str) {
        let p = PushDown::plan(r, &EventMask::On);
        let mut set = ami_proto::FilterSet::default();
        for f in &p.filters {
            set.add(ami_proto::EventFilter::new(None, f).expect("filter compiles"));
        }
        let mask = p.mask.bits();
        for (m, text) in events {
            let mut out = Vec::new();
            let ctx = crate::mapping::EventCtx {
                server: "pbx1",
                seq: 1,
                received_at: std::time::UNIX_EPOCH,
                message: m,
                instance: "t",
            };
            r.route(&ctx, &mut out);
            if out.is_empty() {
                continue;
            }
            let name = m.event_name().unwrap_or_default();
            let class = m
                .get_bytes("Privilege")
                .map_or(0, ami_proto::privilege_bits);
            assert!(
                ami_proto::mask_allows(mask, class),
                "{what}: {name} is published but the mask {} keeps it away",
                p.mask.header_value()
            );
            assert!(
                set.should_send(name.as_bytes(), text),
                "{what}: {name} is published but {:?} filter it",
                p.filters
            );
        }
    }

    /// Routes to draw sets from: drops with and without `stop` and
    /// conditions, named, `"*"`, regex and fallback routes.
    const POOL: &[&str] = &[
        "events = [\"VarSet\", \"Newexten\", \"CEL\"]\ndrop = true\nstop = true",
        "events = [\"varset\"]\ndrop = true",
        "events = [\"Hangup\"]\nwhen = { Cause = '^16$' }\ndrop = true\nstop = true",
        "events = [\"*\"]\ndrop = true\nstop = true",
        "events = [\"*\"]\nwhen = { Channel = 'PJSIP' }\ndrop = true\nstop = true",
        "events = [\"Hangup\", \"Cdr\", \"VarSet\"]\nexchange = \"x\"\nrouting_key = \"k\"",
        "events = [\"Newexten\"]\nwhen = { Context = 'test' }\nexchange = \"x\"\nrouting_key = \"k\"",
        "events = [\"DialBegin\", \"QueueMember\"]\nexchange = \"x\"\nrouting_key = \"k\"\nstop = true",
        "events_regex = '^(Var|New)'\nexchange = \"x\"\nrouting_key = \"k\"",
        "events_regex = '^Dial'\ndrop = true\nstop = true",
        "events = [\"*\"]\nfallback = true\nexchange = \"x\"\nrouting_key = \"k\"",
        "events = [\"Cel\"]\nfallback = true\nexchange = \"x\"\nrouting_key = \"k\"",
        "events = [\"*\"]\nexchange = \"x\"\nrouting_key = \"k\"",
    ];

    #[test]
    fn every_published_event_passes_the_plan_of_the_shipped_sets() {
        let events = sample_events();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut sets = vec![vec![root.join("mappings")]];
        for e in std::fs::read_dir(root.join("mappings/examples")).unwrap() {
            sets.push(vec![root.join("mappings"), e.unwrap().path()]);
        }
        for dirs in sets {
            let r = crate::mapping::load_dirs(&dirs).unwrap();
            assert_sound(&r, &events, &format!("{dirs:?}"));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
        #[test]
        fn every_published_event_passes_the_plan(
            picks in proptest::collection::vec(0..POOL.len(), 1..7)
        ) {
            let toml: String = picks
                .iter()
                .enumerate()
                .map(|(i, &k)| route(&format!("r{i}"), POOL[k]))
                .collect();
            let r = router(&toml);
            assert_sound(&r, &sample_events(), &toml);
        }
    }

    #[test]
    fn filters_stay_within_asterisk_limits() {
        let names: Vec<String> = (0..2000).map(|i| format!("Event{i:04}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (filters, covered, left) = exclude_filters(&refs);
        assert_eq!(filters.len(), MAX_FILTERS);
        assert_eq!(covered.len() + left.len(), 2000);
        assert!(!left.is_empty());
        for f in &filters {
            assert!(f.len() <= MAX_FILTER_BYTES, "{}", f.len());
            let action = crate::ami::Message::from_pairs([
                ("Action", "Filter"),
                ("Operation", "Add"),
                ("Filter", f.as_str()),
            ]);
            ami_proto::check_request(&action).expect("Asterisk accepts the line");
            ami_proto::EventFilter::new(None, f).expect("compiles");
        }
    }
}
