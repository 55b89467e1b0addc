//! Semantic checks of a parsed configuration: everything `run` could not
//! use or would use dangerously, found before anything connects.
//!
//! `ami2amqp check` and `ami2amqp run` call the same [`check`], so a file
//! `check` accepts is a file `run` starts with. Each problem names its key
//! path (`bridge.max_line_bytes`, `server[1].name`); [`locate`] turns the
//! path into `line:col` of the value in the file when the key is written
//! there. Every numeric key has a range (no 0 where 0 makes no sense, an
//! upper bound where a huge value would exhaust memory or make a timeout
//! meaningless), every broker URL is parsed the way lapin parses it, and
//! server names are bounded so that the names derived from them (the action
//! queue `<queue_prefix><server>`, the status routing key) fit AMQP's 255
//! bytes and are safe routing-key words. Warnings (a secret file others can
//! read) do not stop the start; errors do.

use std::fmt::Display;
use std::path::Path;

use toml::Spanned;

use super::amqp_url::parse_amqp_url;
use super::{Config, ServerConfig};
use crate::ami::config::is_written;

/// A problem at a key path such as `bridge.max_line_bytes` or
/// `server[1].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub msg: String,
    /// The byte offset of the value in the file, when the value carries
    /// its position (`toml::Spanned`); otherwise [`locate`] finds it.
    pub at: Option<usize>,
}

#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Longest AMQP short string: exchange and queue names, routing keys.
const SHORTSTR: usize = 255;
/// Longest server name.
pub const MAX_SERVER_NAME: usize = 64;

impl Findings {
    fn err(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(Problem {
            key: key.into(),
            msg: msg.into(),
            at: None,
        });
    }

    /// An error about a value that knows where it was written (nothing
    /// when it was not written: a default has no position).
    fn err_at<T>(&mut self, key: impl Into<String>, v: &Spanned<T>, msg: impl Into<String>) {
        self.errors.push(Problem {
            key: key.into(),
            msg: msg.into(),
            at: is_written(v).then(|| v.span().start),
        });
    }

    fn warn(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.warnings.push(Problem {
            key: key.into(),
            msg: msg.into(),
            at: None,
        });
    }

    /// `lo <= v <= hi`, else an error saying so and why.
    fn range<T: PartialOrd + Display + Copy>(&mut self, key: &str, v: T, lo: T, hi: T, what: &str) {
        if v < lo || v > hi {
            self.err(
                key,
                format!("{v} is out of range: must be between {lo} and {hi} ({what})"),
            );
        }
    }

    fn name(&mut self, key: &str, v: &str) {
        if v.len() > SHORTSTR {
            self.err(
                key,
                format!(
                    "is {} bytes long: AMQP names are at most {SHORTSTR}",
                    v.len()
                ),
            );
        } else if v.chars().any(char::is_control) {
            self.err(key, "contains a control character");
        }
    }
}

/// Every check of the configuration.
pub fn check(cfg: &Config) -> Findings {
    let mut f = Findings::default();
    servers(cfg, &mut f);
    amqp(cfg, &mut f);
    bridge(cfg, &mut f);
    spool(cfg, &mut f);
    others(cfg, &mut f);
    facade(cfg, &mut f);
    fleet(cfg, &mut f);
    if let Err((key, msg)) = cfg.mappings.check() {
        f.err(key, msg);
    }
    f
}

fn servers(cfg: &Config, f: &mut Findings) {
    if cfg.servers.is_empty() {
        f.err(
            "server",
            "no [[server]] configured: the bridge needs at least one Asterisk server",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, s) in cfg.servers.iter().enumerate() {
        let k = |key: &str| format!("server[{i}].{key}");
        if !required(s, i, f) {
            continue;
        }
        server_name(cfg, &k("name"), &s.name, f);
        if !s.name().is_empty() && !seen.insert(s.name()) {
            f.err_at(
                k("name"),
                &s.name,
                format!("server name {:?} is used twice", s.name()),
            );
        }
        if let Err(e) = host_port(s.address.get_ref()) {
            f.err_at(
                k("address"),
                &s.address,
                format!(
                    "\"{}\" {e} (AMI listens on host:5038 by default)",
                    crate::logs::clip(s.address.get_ref())
                ),
            );
        }
        let user = s.username.get_ref();
        if user.is_empty() || user.chars().any(char::is_control) {
            f.err_at(
                k("username"),
                &s.username,
                "must be non-empty, without control characters",
            );
        }
        server_secret(s, &k, f);
        server_tls(s, &k, f);
        server_numbers(s, &k, f);
    }
}

/// `tls = true` loads its files here, so a missing, unreadable or
/// non-PEM file stops `check` and `run` alike. A `tls_*` key without
/// `tls = true` is an error: the bridge would otherwise talk plain text to
/// a server the file meant to reach over TLS.
fn server_tls(s: &ServerConfig, k: &dyn Fn(&str) -> String, f: &mut Findings) {
    if !s.tls {
        for key in s.tls_keys_set() {
            f.err(
                k(key),
                "is set but tls is not true: set tls = true (Asterisk's TLS port, 5039 by default) or remove it",
            );
        }
        return;
    }
    if let Err(e) = s.tls() {
        // The text starts with the key it is about ("tls_ca_file /x: …").
        let key = e
            .split([' ', ':'])
            .next()
            .filter(|w| w.starts_with("tls_"))
            .unwrap_or("tls");
        f.err(
            k(key),
            e.strip_prefix(key)
                .unwrap_or(&e)
                .trim_start_matches(':')
                .trim(),
        );
    }
    if let Some(p) = &s.tls_key_file
        && let Some(w) = others_can_access(p)
    {
        f.warn(k("tls_key_file"), w);
    }
}

/// `name`, `address` and `username` have no default: each must be
/// written (false when one is missing).
fn required(s: &ServerConfig, i: usize, f: &mut Findings) -> bool {
    let mut ok = true;
    for (key, v) in [
        ("name", &s.name),
        ("address", &s.address),
        ("username", &s.username),
    ] {
        if !is_written(v) {
            f.err(format!("server[{i}]"), format!("missing field `{key}`"));
            ok = false;
        }
    }
    ok
}

fn server_numbers(s: &ServerConfig, k: &dyn Fn(&str) -> String, f: &mut Findings) {
    f.range(
        &k("action_connections"),
        s.action_connections,
        0,
        16,
        "0: the event connection carries actions",
    );
    f.range(
        &k("keepalive_s"),
        s.keepalive_s,
        0,
        3600,
        "0 disables the keepalive Ping",
    );
    f.range(
        &k("action_timeout_s"),
        s.action_timeout_s,
        1,
        3600,
        "seconds",
    );
    f.range(
        &k("connect_timeout_s"),
        s.connect_timeout_s,
        1,
        300,
        "seconds",
    );
    reconnect(&k(""), s.reconnect_initial_ms, s.reconnect_max_ms, f);
}

/// A server name is a routing-key word and part of queue names.
fn server_name(cfg: &Config, key: &str, spanned: &Spanned<String>, f: &mut Findings) {
    let name = spanned.get_ref().as_str();
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if name.is_empty() || name.len() > MAX_SERVER_NAME || !ok_chars {
        f.err_at(
            key,
            spanned,
            format!(
                "server name \"{}\" must be 1 to {MAX_SERVER_NAME} characters of A-Z, a-z, 0-9, '-' and '_' (it is a routing-key word and part of queue names)",
                crate::logs::clip(name)
            ),
        );
        return;
    }
    let queue = cfg.actions.queue_prefix.len() + name.len();
    if queue > SHORTSTR {
        f.err_at(
            key,
            spanned,
            format!("the action queue name (actions.queue_prefix + name) would be {queue} bytes: AMQP names are at most {SHORTSTR}"),
        );
    }
    let status = cfg.status.routing_key.replace("{server}", name).len();
    if status > SHORTSTR {
        f.err_at(
            key,
            spanned,
            format!("the status routing key (status.routing_key) would be {status} bytes: at most {SHORTSTR}"),
        );
    }
}

fn server_secret(s: &ServerConfig, k: &dyn Fn(&str) -> String, f: &mut Findings) {
    let who = format!("server {:?}", s.name());
    secret_keys(&who, &s.secret, &s.secret_file, &s.secret_env, k, f);
}

/// `secret`, `secret_file`, `secret_env` of `who` (a `[[server]]` or a
/// `[[facade.user]]`): exactly one set, no control character, an
/// environment variable named, a file others cannot read.
fn secret_keys(
    who: &str,
    secret: &Option<String>,
    file: &Option<std::path::PathBuf>,
    env: &Option<String>,
    k: &dyn Fn(&str) -> String,
    f: &mut Findings,
) {
    let n = [secret.is_some(), file.is_some(), env.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if n != 1 {
        f.err(
            k("secret"),
            format!("{who}: set exactly one of `secret`, `secret_file`, `secret_env`"),
        );
    }
    if secret
        .as_deref()
        .is_some_and(|v| v.chars().any(char::is_control))
    {
        f.err(k("secret"), "contains a control character");
    }
    if env.as_deref().is_some_and(str::is_empty) {
        f.err(k("secret_env"), "is empty: name an environment variable");
    }
    if let Some(p) = file
        && let Some(w) = others_can_access(p)
    {
        f.warn(k("secret_file"), w);
    }
}

/// `[facade]` and every `[[facade.user]]`.
fn facade(cfg: &Config, f: &mut Findings) {
    let fc = &cfg.facade;
    if let Some(l) = &fc.listen
        && let Err(e) = host_port(l.get_ref())
    {
        f.err_at(
            "facade.listen",
            l,
            format!("\"{}\" {e}", crate::logs::clip(l.get_ref())),
        );
    }
    if fc.listen.is_some() && fc.user.is_empty() {
        f.warn(
            "facade.user",
            "the facade listens but has no [[facade.user]]: nobody can log in",
        );
    }
    f.range(
        "facade.writetimeout_ms",
        fc.writetimeout_ms,
        1,
        60_000,
        "milliseconds per message",
    );
    f.range("facade.authtimeout_s", fc.authtimeout_s, 1, 3600, "seconds");
    f.range("facade.authlimit", fc.authlimit, 1, 100_000, "sessions");
    f.range(
        "facade.max_sessions",
        fc.max_sessions,
        1,
        100_000,
        "sessions",
    );
    f.range(
        "facade.action_timeout_s",
        fc.action_timeout_s,
        1,
        86_400,
        "seconds",
    );
    f.range(
        "facade.queue_events",
        fc.queue_events,
        16,
        1 << 20,
        "events",
    );
    let v = &fc.version;
    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        f.err(
            "facade.version",
            format!(
                "\"{}\" is not an AMI version like 11.0.0",
                crate::logs::clip(v)
            ),
        );
    }
    if let Err(e) = fc.tls_server_config() {
        f.err("facade.tls_cert_file", e);
    }
    if let Some(p) = &fc.tls_key_file
        && let Some(w) = others_can_access(p)
    {
        f.warn("facade.tls_key_file", w);
    }
    let mut seen = std::collections::HashSet::new();
    for (i, u) in fc.user.iter().enumerate() {
        facade_user(cfg, i, u, &mut seen, f);
    }
}

fn facade_user(
    cfg: &Config,
    i: usize,
    u: &crate::config::FacadeUser,
    seen: &mut std::collections::HashSet<String>,
    f: &mut Findings,
) {
    let k = |key: &str| format!("facade.user[{i}].{key}");
    let name = u.name.get_ref();
    if name.is_empty()
        || name.len() > 64
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        f.err_at(
            k("name"),
            &u.name,
            "must be 1 to 64 characters, without spaces or control characters",
        );
    } else if !seen.insert(name.to_ascii_lowercase()) {
        f.err_at(
            k("name"),
            &u.name,
            format!("user {name:?} is used twice (names compare case-insensitively)"),
        );
    }
    let who = format!("facade user {name:?}");
    secret_keys(&who, &u.secret, &u.secret_file, &u.secret_env, &k, f);
    for (key, list) in [("read", &u.read), ("write", &u.write)] {
        for c in list.iter().filter(|c| !crate::facade::known_class(c)) {
            f.err(
                k(key),
                format!(
                    "unknown AMI class \"{}\" (one of all, {})",
                    crate::logs::clip(c),
                    ami_proto::CLASSES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    for s in u
        .servers
        .iter()
        .filter(|s| !cfg.servers.iter().any(|c| c.name() == s.as_str()))
    {
        f.err(
            k("servers"),
            format!(
                "unknown server \"{}\" (not a [[server]] name)",
                crate::logs::clip(s)
            ),
        );
    }
    for (j, flt) in u.filters.iter().enumerate() {
        if let Err(e) = ami_proto::EventFilter::legacy(flt) {
            f.err(
                format!("facade.user[{i}].filters[{j}]"),
                e.asterisk_message(),
            );
        }
    }
}

/// `host:port` (`[v6]:port` too) with a port from 1 to 65535.
fn host_port(a: &str) -> Result<(), String> {
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err("must be host:port".into());
    };
    if host.is_empty() || host == "[]" {
        return Err("has no host (host:port)".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "has port \"{}\": a port is a number from 1 to 65535",
            crate::logs::clip(port)
        )),
    }
}

/// `<prefix>reconnect_initial_ms` and `<prefix>reconnect_max_ms`.
fn reconnect(prefix: &str, initial: u64, max: u64, f: &mut Findings) {
    let ki = format!("{prefix}reconnect_initial_ms");
    let km = format!("{prefix}reconnect_max_ms");
    f.range(
        &ki,
        initial,
        1,
        600_000,
        "milliseconds; 0 would reconnect in a tight loop",
    );
    f.range(
        &km,
        max,
        initial.max(1),
        3_600_000,
        "milliseconds, at least reconnect_initial_ms",
    );
}

/// `[amqp] tls_*` apply to amqps:// URLs: set with no amqps:// URL they
/// are an error (the file meant TLS; the broker password would go out in
/// plain text). With one, the files are loaded here, so `check` and the
/// start fail alike on a missing or non-PEM file.
fn amqp_tls(cfg: &Config, f: &mut Findings) {
    let a = &cfg.amqp;
    let set = a.tls_keys_set();
    if set.is_empty() {
        return;
    }
    if !a.urls().iter().any(|u| u.starts_with("amqps://")) {
        for key in set {
            f.err(
                format!("amqp.{key}"),
                "is set but no broker URL is amqps://: use amqps:// URLs (RabbitMQ's TLS port, 5671 by default) or remove it",
            );
        }
        return;
    }
    if let Err(e) = a.tls() {
        let key = e
            .split([' ', ':'])
            .next()
            .filter(|w| w.starts_with("amqp.tls_"))
            .unwrap_or("amqp");
        f.err(
            key,
            e.strip_prefix(key)
                .unwrap_or(&e)
                .trim_start_matches(':')
                .trim(),
        );
    }
    if let Some(p) = &a.tls_key_file
        && let Some(w) = others_can_access(p)
    {
        f.warn("amqp.tls_key_file", w);
    }
}

fn amqp(cfg: &Config, f: &mut Findings) {
    let a = &cfg.amqp;
    let urls = a.url.iter().map(|u| ("amqp.url".to_string(), u));
    let list = a
        .urls
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("amqp.urls[{i}]"), u));
    for (key, u) in urls.chain(list) {
        if let Err(e) = parse_amqp_url(u.get_ref()) {
            f.err_at(
                key,
                u,
                format!("cannot be used: {e} ({})", super::redact_url(u.get_ref())),
            );
        }
    }
    f.range(
        "amqp.confirm_window",
        a.confirm_window,
        1,
        65_535,
        "publishes awaiting a confirm",
    );
    f.name("amqp.alternate_exchange", &a.alternate_exchange);
    amqp_tls(cfg, f);
    reconnect("amqp.", a.reconnect_initial_ms, a.reconnect_max_ms, f);
    f.range(
        "amqp.shutdown_timeout_s",
        a.shutdown_timeout_s,
        0,
        3600,
        "seconds",
    );
}

fn bridge(cfg: &Config, f: &mut Findings) {
    let b = &cfg.bridge;
    let (line, msg, buf) = (
        b.max_line_bytes as u64,
        b.max_message_bytes as u64,
        b.max_buffered_bytes as u64,
    );
    f.range(
        "bridge.max_line_bytes",
        line,
        KIB,
        msg.max(KIB),
        "bytes, at most max_message_bytes",
    );
    f.range("bridge.max_message_bytes", msg, 4 * KIB, 256 * MIB, "bytes");
    f.range(
        "bridge.max_buffered_bytes",
        buf,
        msg.max(4 * KIB),
        4 * GIB,
        "bytes, at least max_message_bytes",
    );
}

fn spool(cfg: &Config, f: &mut Findings) {
    let s = &cfg.spool;
    f.range("spool.max_bytes", s.max_bytes, MIB, 1 << 50, "bytes");
    f.range(
        "spool.segment_bytes",
        s.segment_bytes,
        64 * KIB,
        GIB,
        "bytes",
    );
    f.range(
        "spool.fsync_interval_ms",
        s.fsync_interval_ms,
        0,
        60_000,
        "milliseconds",
    );
}

fn others(cfg: &Config, f: &mut Findings) {
    if let Some(l) = cfg.metrics.listen()
        && let Err(e) = host_port(l)
    {
        f.err_at(
            "metrics.listen",
            &cfg.metrics.listen,
            format!(
                "\"{}\" {e} (\"\" disables the listener)",
                crate::logs::clip(l)
            ),
        );
    }
    f.name("status.exchange", &cfg.status.exchange);
    f.name("status.routing_key", &cfg.status.routing_key);
    let a = &cfg.actions;
    for (k, v) in [
        ("actions.exchange", &a.exchange),
        ("actions.queue_prefix", &a.queue_prefix),
        ("actions.unrouted", &a.unrouted),
        ("actions.expired", &a.expired),
    ] {
        f.name(k, v);
    }
    f.range(
        "actions.default_timeout_ms",
        a.default_timeout_ms,
        1,
        3_600_000,
        "milliseconds",
    );
    f.range(
        "actions.prefetch",
        a.prefetch,
        1,
        u16::MAX,
        "0 would mean no limit at all",
    );
    f.range(
        "actions.max_timeout_ms",
        a.max_timeout_ms,
        1,
        3_600_000,
        "milliseconds",
    );
    f.range(
        "actions.max_in_flight_per_user",
        a.max_in_flight_per_user,
        1,
        65_535,
        "requests",
    );
    f.range(
        "actions.max_reply_bytes",
        a.max_reply_bytes,
        4096,
        1 << 30,
        "bytes (keep it below the broker's max_message_size)",
    );
    if let Err(e) = crate::actions::allow::AllowList::new(&a.allow) {
        f.err("actions.allow", e);
    }
}

/// An instance name: 1 to 64 characters of A-Z, a-z, 0-9, '.', '-', '_'
/// (it is a label value, part of consumer tags and of message ids).
pub fn instance_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `instance` and `[fleet]`.
fn fleet(cfg: &Config, f: &mut Findings) {
    if let Some(i) = &cfg.instance
        && !instance_name_ok(i.get_ref())
    {
        f.err_at(
            "instance",
            i,
            format!(
                "\"{}\" must be 1 to {MAX_SERVER_NAME} characters of A-Z, a-z, 0-9, '.', '-' and '_'",
                crate::logs::clip(i.get_ref())
            ),
        );
    }
    let c = &cfg.fleet;
    f.name("fleet.exchange", &c.exchange);
    f.name("fleet.lease_prefix", &c.lease_prefix);
    f.range(
        "fleet.announce_interval_ms",
        c.announce_interval_ms,
        100,
        60_000,
        "milliseconds",
    );
    f.range(
        "fleet.peer_timeout_ms",
        c.peer_timeout_ms,
        c.announce_interval_ms.saturating_mul(2).max(200),
        600_000,
        "milliseconds, at least twice announce_interval_ms",
    );
    if !c.enabled {
        return;
    }
    if cfg.facade.listen().is_some() {
        f.warn(
            "fleet.enabled",
            "with the AMI facade on: this instance's facade clients see the events of the servers whose lease it holds, not of every server (docs/scaling.md)",
        );
    }
    for (i, s) in cfg.servers.iter().enumerate() {
        let q = c.lease_prefix.len() + s.name().len();
        if q > SHORTSTR {
            f.err(
                format!("server[{i}].name"),
                format!("the lease queue name (fleet.lease_prefix + name) would be {q} bytes: at most {SHORTSTR}"),
            );
        }
        if s.action_connections == 0 {
            f.err(
                format!("server[{i}].action_connections"),
                "must be at least 1 with [fleet] enabled: an instance that does not hold a server's lease runs its actions on an action connection",
            );
        }
    }
}

/// `Some(warning)` when users other than the owner and group can read or
/// write the file at `p` (as ssh warns about a private key). Nothing when
/// the file cannot be examined: reading it reports that.
pub fn others_can_access(p: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p).ok()?.permissions().mode();
    (mode & 0o007 != 0).then(|| {
        format!(
            "{} is accessible by every user (mode {:03o}): `chmod o-rwx` it",
            p.display(),
            mode & 0o777
        )
    })
}

/// `line:col` (1-based) of the value at `key` (`a.b`, `server[1].name`) in
/// the TOML `text`, when the key is written there.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut span = doc.span();
    let mut cur: Option<&DeValue<'_>> = None;
    let mut table = Some(doc.get_ref());
    for seg in key.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match seg.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let mut v = table?.get(name)?;
        if let Some(i) = index {
            let DeValue::Array(a) = v.get_ref() else {
                return None;
            };
            v = a.get(i)?;
        }
        span = v.span();
        cur = Some(v.get_ref());
        table = match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    cur?;
    Some(crate::support::text::line_col(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_values() {
        let t =
            "[bridge]\nmax_line_bytes = 0\n\n[[server]]\nname = \"a\"\n[[server]]\nname = \"b\"\n";
        assert_eq!(locate(t, "bridge.max_line_bytes"), Some((2, 18)));
        assert_eq!(locate(t, "server[1].name"), Some((7, 8)));
        assert_eq!(locate(t, "server[2].name"), None);
        assert_eq!(locate(t, "spool.max_bytes"), None);
    }

    #[test]
    fn host_ports() {
        assert!(host_port("127.0.0.1:5038").is_ok());
        assert!(host_port("[::1]:5038").is_ok());
        assert!(
            host_port("pbx:notaport")
                .unwrap_err()
                .contains("\"notaport\"")
        );
        assert!(host_port("pbx:0").is_err());
        assert!(host_port("pbx").is_err());
        assert!(host_port(":5038").is_err());
    }
}
