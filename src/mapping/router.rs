//! The compiled mapping: events in, AMQP messages out.
//!
//! A [`Router`] is built once per load of the mapping files (see
//! [`super::load`]) and then only read, so it can be shared by reference
//! and swapped atomically on reload. Everything that can be prepared is
//! prepared at load time: regexes are compiled, templates parsed, and
//! routes are indexed by event name, so an event only meets the routes that
//! name it (plus the few that use `events_regex` or `"*"`), in file order.
//!
//! Per event, [`Router::route`] tries the candidate routes in order. A route
//! matches when its event filter, every `when` regex and every `absent`
//! condition hold; its named capture groups become template variables. A
//! matching route produces one [`Outgoing`] (unless it is a `drop` route);
//! `stop = true` ends the search. When no ordinary route matched, the
//! `fallback` routes get their turn; when none of those match either, the
//! event is unmatched (counted by the caller).
//!
//! Routes with `snapshot = true` form a tier of their own: they take only
//! the items and markers of snapshots ([`Router::route_snapshot`]), and the
//! other routes never see those, so a mapping set written for live events
//! is not disturbed by them (docs/snapshots.md).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use regex::Regex;
use serde::Serialize;

use super::schema::{BodyFormat, ExchangeType};
use super::template::{Lookup, RenderError, Template};
use crate::ami::Message;
use crate::support::time::rfc3339_millis;

/// An event with the context templates and bodies need.
#[derive(Clone, Copy, Debug)]
pub struct EventCtx<'a> {
    /// The configured name of the server the event came from.
    pub server: &'a str,
    /// Per-server sequence number, increasing for the life of the process.
    pub seq: u64,
    pub received_at: SystemTime,
    pub message: &'a Message,
    /// Distinguishes this process's message ids from an earlier run's.
    pub instance: &'a str,
}

/// AMQP properties of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessageProps {
    pub persistent: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_ms: Option<u64>,
    pub content_type: Arc<str>,
    #[serde(rename = "type")]
    pub kind: String,
    pub message_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_headers")]
    pub headers: Vec<(Arc<str>, String)>,
}

fn ser_headers<S: serde::Serializer>(h: &[(Arc<str>, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(h.len()))?;
    for (k, v) in h {
        m.serialize_entry(&**k, v)?;
    }
    m.end()
}

/// One message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub exchange: Arc<str>,
    pub routing_key: String,
    pub props: MessageProps,
    /// JSON bytes.
    pub body: Vec<u8>,
    /// The route that produced it.
    pub route: Arc<str>,
}

impl Outgoing {
    /// The dry-run view: `{"route","exchange","routing_key","properties","body"}`.
    /// [`Outgoing::to_json`] written straight into `out` as one line
    /// (with its `\n`), without building a `serde_json::Value`: the body,
    /// already JSON, is copied as it is (a body that is not JSON becomes a
    /// string, as in `to_json`). `map` writes every message this way.
    pub fn write_json_line(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"route\":");
        serde_json::to_writer(&mut *out, &*self.route)?;
        out.extend_from_slice(b",\"exchange\":");
        serde_json::to_writer(&mut *out, &*self.exchange)?;
        out.extend_from_slice(b",\"routing_key\":");
        serde_json::to_writer(&mut *out, &self.routing_key)?;
        out.extend_from_slice(b",\"properties\":");
        serde_json::to_writer(&mut *out, &self.props)?;
        out.extend_from_slice(b",\"body\":");
        if is_compact_json(&self.body) {
            out.extend_from_slice(&self.body);
        } else {
            serde_json::to_writer(&mut *out, &self.to_json()["body"])?;
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
        });
        serde_json::json!({
            "route": &*self.route,
            "exchange": &*self.exchange,
            "routing_key": self.routing_key,
            "properties": self.props,
            "body": body,
        })
    }
}

/// Whether `body` is JSON that re-serializing would not change: valid,
/// and without the whitespace a `serde_json::Value` round trip removes.
/// The bodies the bridge renders are `serde_json` output, so this holds
/// for them; anything else takes the `to_json` path.
fn is_compact_json(body: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            return false;
        }
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// A route that matched but could not produce its message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("route {route:?}: {error}")]
pub struct RouteError {
    pub route: Arc<str>,
    pub error: RenderError,
}

/// What happened to one event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteOutcome {
    /// Routes that matched (including drop routes and failed renders).
    pub matched: usize,
    pub errors: Vec<RouteError>,
}

#[derive(Debug)]
pub(crate) struct BodySpec {
    pub format: BodyFormat,
    /// Lowercased names.
    pub include: Option<Vec<String>>,
    pub exclude: Vec<String>,
    /// Lowercased name → new name.
    pub rename: HashMap<String, String>,
}

#[derive(Debug)]
pub(crate) struct PropsSpec {
    pub persistent: bool,
    pub priority: Option<u8>,
    pub expiration_ms: Option<u64>,
    pub content_type: Arc<str>,
    pub kind: Option<Template>,
    pub message_id: Option<Template>,
    pub headers: Vec<(Arc<str>, Template)>,
}

#[derive(Debug)]
pub(crate) struct FieldMatch {
    pub field: String,
    pub regex: Regex,
    /// Whether the regex has named groups (skip capture work otherwise).
    pub has_names: bool,
}

#[derive(Debug)]
pub(crate) struct CompiledRoute {
    pub name: Arc<str>,
    pub events_regex: Option<Regex>,
    pub when: Vec<FieldMatch>,
    pub absent: Vec<String>,
    pub drop: bool,
    pub stop: bool,
    pub exchange: Arc<str>,
    pub routing_key: Option<Template>,
    pub body: BodySpec,
    pub props: PropsSpec,
}

/// Route indexes for one tier (ordinary or fallback).
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Lowercased event name → route indexes, in order.
    pub by_name: HashMap<String, Vec<usize>>,
    /// Routes matching on a regex or `*`: tried for every event.
    pub any: Vec<usize>,
}

impl Index {
    /// Candidate route indexes for an event name, in route order: the
    /// routes naming the event merged with the ones tried for every event
    /// (both lists are sorted; no allocation).
    fn candidates<'a>(&'a self, event_lower: &str) -> Merge<'a> {
        let named = self
            .by_name
            .get(event_lower)
            .map_or(&[][..], |v| v.as_slice());
        Merge {
            a: named,
            b: &self.any,
        }
    }
}

/// Two sorted index lists, merged.
pub(crate) struct Merge<'a> {
    a: &'a [usize],
    b: &'a [usize],
}

impl Iterator for Merge<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let list = if take_a { &mut self.a } else { &mut self.b };
        let (&first, rest) = list.split_first()?;
        *list = rest;
        Some(first)
    }
}

/// How much of each message [`Router::route_as`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Render {
    /// The whole message, as the bridge publishes it.
    Full,
    /// Exchange, routing key and every template (so a template that fails
    /// still fails), but an empty body and, without a `message_id`
    /// template, an empty id: for counting messages by key (`map
    /// --summary`), where the body would be most of the work and thrown
    /// away.
    KeysOnly,
}

/// The compiled mapping set.
#[derive(Debug, Default)]
pub struct Router {
    pub(crate) routes: Vec<CompiledRoute>,
    pub(crate) normal: Index,
    pub(crate) fallback: Index,
    /// Routes with `snapshot = true`: only for snapshot items and markers.
    pub(crate) snapshot: Index,
    /// Every exchange the routes publish to, with its type.
    pub(crate) exchanges: Vec<(Arc<str>, ExchangeType)>,
    /// The files the set was loaded from.
    pub(crate) files: Vec<std::path::PathBuf>,
}

/// Template variables for one event under one route.
struct Env<'a> {
    ctx: &'a EventCtx<'a>,
    event: &'a str,
    captures: &'a [(String, String)],
}

impl Lookup for Env<'_> {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some((_, v)) = self.captures.iter().find(|(n, _)| n == name) {
            return Some(Cow::Borrowed(v));
        }
        match name {
            "server" => return Some(Cow::Borrowed(self.ctx.server)),
            "seq" => return Some(Cow::Owned(self.ctx.seq.to_string())),
            "Event" | "event" => return Some(Cow::Borrowed(self.event)),
            _ => {}
        }
        self.ctx.message.get(name)
    }
}

impl Router {
    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Route names in order.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| &*r.name)
    }

    /// Every exchange the routes publish to, with its type (for declaring
    /// them at start).
    pub fn exchanges(&self) -> &[(Arc<str>, ExchangeType)] {
        &self.exchanges
    }

    /// The mapping files this set came from.
    pub fn files(&self) -> &[std::path::PathBuf] {
        &self.files
    }

    /// True when a route names this event (by name, not by a regex or
    /// `*`), ignoring ASCII case: the event names this set knows, a set
    /// bounded by the mapping files (fit for metric labels).
    pub fn names_event(&self, event: &str) -> bool {
        let lower = event.to_ascii_lowercase();
        self.normal.by_name.contains_key(&lower) || self.fallback.by_name.contains_key(&lower)
    }

    /// Maps one event; messages are appended to `out`.
    pub fn route(&self, ctx: &EventCtx<'_>, out: &mut Vec<Outgoing>) -> RouteOutcome {
        self.route_as(ctx, Render::Full, out)
    }

    /// [`Router::route`], building only what `render` asks for: the same
    /// routes match and the same errors are reported either way.
    pub fn route_as(
        &self,
        ctx: &EventCtx<'_>,
        render: Render,
        out: &mut Vec<Outgoing>,
    ) -> RouteOutcome {
        self.route_tiers(&[&self.normal, &self.fallback], ctx, render, out)
    }

    /// Maps one snapshot item or marker with the `snapshot = true` routes
    /// only; messages are appended to `out`.
    pub fn route_snapshot(&self, ctx: &EventCtx<'_>, out: &mut Vec<Outgoing>) -> RouteOutcome {
        self.route_tiers(&[&self.snapshot], ctx, Render::Full, out)
    }

    /// True when the set has routes for snapshots.
    pub fn has_snapshot_routes(&self) -> bool {
        !self.snapshot.any.is_empty() || !self.snapshot.by_name.is_empty()
    }

    fn route_tiers(
        &self,
        tiers: &[&Index],
        ctx: &EventCtx<'_>,
        render: Render,
        out: &mut Vec<Outgoing>,
    ) -> RouteOutcome {
        let mut outcome = RouteOutcome::default();
        let Some(event) = ctx.message.event_name() else {
            return outcome;
        };
        let mut lower_buf = [0u8; 64];
        let lower_owned;
        let lower: &str = if event.len() <= lower_buf.len() {
            let b = &mut lower_buf[..event.len()];
            b.copy_from_slice(event.as_bytes());
            b.make_ascii_lowercase();
            // ASCII lowercasing keeps valid UTF-8 valid.
            std::str::from_utf8(b).unwrap_or("")
        } else {
            lower_owned = event.to_ascii_lowercase();
            &lower_owned
        };
        let mut caps: Vec<(String, String)> = Vec::new();
        for tier in tiers {
            for i in tier.candidates(lower) {
                let r = &self.routes[i];
                caps.clear();
                if !r.matches(&event, ctx.message, &mut caps) {
                    continue;
                }
                outcome.matched += 1;
                if !r.drop {
                    let env = Env {
                        ctx,
                        event: &event,
                        captures: &caps,
                    };
                    match r.produce(i, &env, render) {
                        Ok(o) => out.push(o),
                        Err(error) => outcome.errors.push(RouteError {
                            route: r.name.clone(),
                            error,
                        }),
                    }
                }
                if r.stop {
                    break;
                }
            }
            if outcome.matched > 0 {
                break;
            }
        }
        outcome
    }
}

impl CompiledRoute {
    fn matches(&self, event: &str, m: &Message, caps: &mut Vec<(String, String)>) -> bool {
        if let Some(re) = &self.events_regex
            && !re.is_match(event)
        {
            return false;
        }
        for a in &self.absent {
            if m.contains(a) {
                return false;
            }
        }
        for w in &self.when {
            let Some(v) = m.get(&w.field) else {
                return false;
            };
            if w.has_names {
                let Some(c) = w.regex.captures(&v) else {
                    return false;
                };
                for name in w.regex.capture_names().flatten() {
                    if let Some(g) = c.name(name) {
                        caps.push((name.to_string(), g.as_str().to_string()));
                    }
                }
            } else if !w.regex.is_match(&v) {
                return false;
            }
        }
        true
    }

    fn produce(
        &self,
        index: usize,
        env: &Env<'_>,
        render: Render,
    ) -> Result<Outgoing, RenderError> {
        let ctx = env.ctx;
        let mut routing_key = String::with_capacity(64);
        if let Some(t) = &self.routing_key {
            t.render_key(env, &mut routing_key)?;
        }
        let kind = match &self.props.kind {
            Some(t) => {
                let mut s = String::new();
                t.render(env, &mut s)?;
                s
            }
            None => env.event.to_string(),
        };
        let message_id = match &self.props.message_id {
            Some(t) => {
                let mut s = String::new();
                t.render(env, &mut s)?;
                s
            }
            None if render == Render::KeysOnly => String::new(),
            None => default_message_id(ctx, index),
        };
        let mut headers = Vec::with_capacity(self.props.headers.len());
        for (k, t) in &self.props.headers {
            let mut s = String::new();
            t.render(env, &mut s)?;
            headers.push((k.clone(), s));
        }
        let mut body = Vec::new();
        if render == Render::Full {
            body.reserve(ctx.message.raw().len() + 128);
            self.body.write(ctx, env.event, &mut body);
        }
        Ok(Outgoing {
            exchange: self.exchange.clone(),
            routing_key,
            props: MessageProps {
                persistent: self.props.persistent,
                priority: self.props.priority,
                expiration_ms: self.props.expiration_ms,
                content_type: self.props.content_type.clone(),
                kind,
                message_id,
                headers,
            },
            body,
            route: self.name.clone(),
        })
    }
}

impl BodySpec {
    fn keep(&self, key: &str) -> bool {
        let lk = |v: &String| v.eq_ignore_ascii_case(key);
        if let Some(inc) = &self.include
            && !inc.iter().any(lk)
        {
            return false;
        }
        !self.exclude.iter().any(lk)
    }

    fn write(&self, ctx: &EventCtx<'_>, event: &str, out: &mut Vec<u8>) {
        if self.format == BodyFormat::Envelope {
            out.extend_from_slice(b"{\"server\":");
            json_str(ctx.server, out);
            out.extend_from_slice(b",\"event\":");
            json_str(event, out);
            out.extend_from_slice(b",\"seq\":");
            out.extend_from_slice(itoa::Buffer::new().format(ctx.seq).as_bytes());
            out.extend_from_slice(b",\"received_at\":\"");
            rfc3339_millis(ctx.received_at, out);
            out.extend_from_slice(b"\",\"fields\":");
        }
        self.write_fields(ctx.message, out);
        if self.format == BodyFormat::Envelope {
            out.push(b'}');
        }
    }

    /// The fields as a JSON object: repeated keys become arrays (in order),
    /// under the spelling of their first occurrence.
    fn write_fields(&self, m: &Message, out: &mut Vec<u8>) {
        // Fields and their prints on the stack for ordinary events (no
        // allocation per event); a heap copy only for very long messages.
        const STACK: usize = 64;
        if m.len() <= STACK {
            let mut f: [(&[u8], &[u8]); STACK] = [(&[], &[]); STACK];
            let mut p = [0u64; STACK];
            for (i, kv) in m.iter_bytes().enumerate() {
                f[i] = kv;
                p[i] = key_print(kv.0);
            }
            self.write_field_list(&f[..m.len()], &p[..m.len()], out);
        } else {
            let f: Vec<(&[u8], &[u8])> = m.iter_bytes().collect();
            let p: Vec<u64> = f.iter().map(|(k, _)| key_print(k)).collect();
            self.write_field_list(&f, &p, out);
        }
    }

    /// `prints[i]` is [`key_print`] of `fields[i].0`: a cheap
    /// case-insensitive fingerprint, so that finding repeated keys compares
    /// integers, not strings (this loop is the hot path of every event).
    fn write_field_list(&self, fields: &[(&[u8], &[u8])], prints: &[u64], out: &mut Vec<u8>) {
        out.push(b'{');
        // 256-bit maps of the prints seen once and seen again: a key whose
        // bit is not in `twice` is certainly unique, and needs no scan.
        let mut once = [0u64; 4];
        let mut twice = [0u64; 4];
        for &p in prints {
            let h = (p.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize;
            let (w, bit) = (h >> 6, 1u64 << (h & 63));
            twice[w] |= once[w] & bit;
            once[w] |= bit;
        }
        let maybe_repeated = |p: u64| {
            let h = (p.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize;
            twice[h >> 6] & (1u64 << (h & 63)) != 0
        };
        let mut first = true;
        // Names written so far (only needed when renaming: a rename onto a
        // name the event also carries must not write the key twice; the
        // first one written wins).
        let mut written: Vec<String> = Vec::new();
        for (i, &(k, v)) in fields.iter().enumerate() {
            let p = prints[i];
            let repeated = maybe_repeated(p);
            let same = |j: usize| prints[j] == p && fields[j].0.eq_ignore_ascii_case(k);
            if repeated && (0..i).any(same) {
                continue; // already written with its first occurrence
            }
            if self.include.is_none() && self.exclude.is_empty() && self.rename.is_empty() {
                // The common case: every field, under its own name.
                if !first {
                    out.push(b',');
                }
                first = false;
                json_bytes(k, out);
            } else {
                let key = crate::ami::bytes_to_text(k);
                if !self.keep(&key) {
                    continue;
                }
                let name = if self.rename.is_empty() {
                    key.as_ref()
                } else {
                    let name = self
                        .rename
                        .get(&key.to_ascii_lowercase())
                        .map_or(key.as_ref(), |s| s.as_str());
                    if written.iter().any(|w| w.eq_ignore_ascii_case(name)) {
                        continue;
                    }
                    written.push(name.to_string());
                    name
                };
                if !first {
                    out.push(b',');
                }
                first = false;
                json_str(name, out);
            }
            out.push(b':');
            if repeated && (i + 1..fields.len()).any(same) {
                out.push(b'[');
                json_bytes(v, out);
                for (j, (_, nv)) in fields.iter().enumerate().skip(i + 1) {
                    if same(j) {
                        out.push(b',');
                        json_bytes(nv, out);
                    }
                }
                out.push(b']');
            } else {
                json_bytes(v, out);
            }
        }
        out.push(b'}');
    }
}

/// `<instance>:<server>:<seq>:<index>`, the default `message_id`: unique
/// per message, and the same when a message is published again. Built
/// without `format!`: it runs once per message.
fn default_message_id(ctx: &EventCtx<'_>, index: usize) -> String {
    let mut digits = itoa::Buffer::new();
    let mut s = String::with_capacity(ctx.instance.len() + ctx.server.len() + 24);
    s.push_str(ctx.instance);
    s.push(':');
    s.push_str(ctx.server);
    s.push(':');
    s.push_str(digits.format(ctx.seq));
    s.push(':');
    s.push_str(digits.format(index));
    s
}

/// Length and ASCII-lowercased first and last bytes of a key, packed: equal
/// keys (ignoring ASCII case) always have equal prints.
fn key_print(k: &[u8]) -> u64 {
    let f = k.first().map_or(0, |c| c.to_ascii_lowercase()) as u64;
    let l = k.last().map_or(0, |c| c.to_ascii_lowercase()) as u64;
    let m = k.get(k.len() / 2).map_or(0, |c| c.to_ascii_lowercase()) as u64;
    (k.len() as u64) << 24 | f << 16 | m << 8 | l
}

/// Bytes that JSON strings cannot hold as they are: `"`, `\\` and controls.
static ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Writes raw AMI bytes as a JSON string: one pass for the usual plain
/// ASCII value; text with other bytes goes through [`bytes_to_text`]
/// (UTF-8, else Latin-1) and [`json_str`].
///
/// [`bytes_to_text`]: crate::ami::bytes_to_text
pub fn json_bytes(b: &[u8], out: &mut Vec<u8>) {
    if is_plain(b) {
        out.reserve(b.len() + 2);
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
    } else {
        json_str(&crate::ami::bytes_to_text(b), out);
    }
}

/// True when `b` is ASCII with nothing to escape, checked eight bytes at a
/// time (this runs on every key and value of every event).
fn is_plain(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        let x = u64::from_le_bytes(a);
        // Exact "some byte is …" tests: below 0x20, '"', '\\', or >= 0x80.
        let lt20 = x.wrapping_sub(ONES * 0x20) & !x;
        let q = x ^ (ONES * b'"' as u64);
        let zq = q.wrapping_sub(ONES) & !q;
        let bs = x ^ (ONES * b'\\' as u64);
        let zb = bs.wrapping_sub(ONES) & !bs;
        if (lt20 | zq | zb | x) & HIGH != 0 {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&c| c < 0x80 && !ESCAPE[c as usize])
}

/// Writes `s` as a JSON string.
pub fn json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if !ESCAPE[c as usize] {
            continue;
        }
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_detection_is_exact() {
        for i in 0u32..256 {
            let c = i as u8;
            for pos in 0..17 {
                let mut v = vec![b'a'; 17];
                v[pos] = c;
                let want = (0x20..0x80).contains(&c) && c != b'"' && c != b'\\';
                assert_eq!(is_plain(&v), want, "byte {c:#x} at {pos}");
            }
        }
    }

    #[test]
    fn json_strings_escape() {
        let mut o = Vec::new();
        json_str("a\"b\\c\nd\u{1}é", &mut o);
        let s = String::from_utf8(o).unwrap();
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }
}
