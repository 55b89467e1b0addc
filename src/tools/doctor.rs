//! `ami2amqp doctor`: connect to every Asterisk and broker of a config once
//! and say, line by line, what works and what does not.
//!
//! Each check prints one line, `ok`, `warn` or `FAIL`, the part it is
//! about (`pbx1`, `broker`), the check and what it found. The checks use
//! the bridge's own connection code (the AMI client, the AMQP connect), so
//! what doctor sees is what `run` will see; it only reads (passive
//! declares, `ListCommands`, `manager show user`), never publishes or
//! declares anything. The exit status is 0 only when nothing failed.

use std::io::Write;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::ami::{Client, ConnState, Incoming, Message, ServerSpec};
use crate::config::Config;
use crate::logs::clip;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Something to look at by hand; not counted.
    Info,
    Warn,
    Fail,
}

/// The report: one line per check, written as it is made.
pub struct Report<'a> {
    out: &'a mut dyn Write,
    pub failed: usize,
    pub warned: usize,
}

impl<'a> Report<'a> {
    pub fn new(out: &'a mut dyn Write) -> Self {
        Report {
            out,
            failed: 0,
            warned: 0,
        }
    }

    pub fn line(&mut self, status: Status, part: &str, check: &str, text: &str) {
        let tag = match status {
            Status::Ok => "ok  ",
            Status::Info => "info",
            Status::Warn => {
                self.warned += 1;
                "warn"
            }
            Status::Fail => {
                self.failed += 1;
                "FAIL"
            }
        };
        let _ = writeln!(self.out, "{tag}  {part:<12} {check:<12} {text}");
    }
}

/// How long doctor listens for events on each server.
const LISTEN: Duration = Duration::from_secs(3);

/// Runs every check of `cfg`; returns the exit status (0: nothing failed).
pub async fn doctor(cfg: &Config, out: &mut dyn Write) -> i32 {
    let mut r = Report::new(out);
    match cfg.server_specs() {
        Ok(specs) => {
            for spec in specs {
                server(cfg, spec, &mut r).await;
            }
        }
        Err(e) => r.line(Status::Fail, "config", "secrets", &e.0),
    }
    for url in cfg.amqp.urls() {
        broker(cfg, &url, &mut r).await;
    }
    let _ = writeln!(
        r.out,
        "{} check(s) failed, {} warning(s)",
        r.failed, r.warned
    );
    i32::from(r.failed > 0)
}

/// DNS and TCP to `address` (host:port); false when either fails.
async fn reach(part: &str, address: &str, timeout: Duration, r: &mut Report<'_>) -> bool {
    let addrs: Vec<_> = match tokio::net::lookup_host(address).await {
        Ok(a) => a.collect(),
        Err(e) => {
            r.line(
                Status::Fail,
                part,
                "dns",
                &format!("{}: {e}", clip(address)),
            );
            return false;
        }
    };
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    r.line(
        Status::Ok,
        part,
        "dns",
        &format!("{} → {}", clip(address), shown.join(", ")),
    );
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addrs[..])).await {
        Ok(Ok(_)) => {
            r.line(
                Status::Ok,
                part,
                "tcp",
                &format!("{} accepts connections", clip(address)),
            );
            true
        }
        Ok(Err(e)) => {
            r.line(
                Status::Fail,
                part,
                "tcp",
                &format!("{}: {e}", clip(address)),
            );
            false
        }
        Err(_) => {
            let msg = format!(
                "{}: no answer within {timeout:?} (firewall?)",
                clip(address)
            );
            r.line(Status::Fail, part, "tcp", &msg);
            false
        }
    }
}

/// One Asterisk server: reachable, login, what its user may do.
async fn server(cfg: &Config, mut spec: ServerSpec, r: &mut Report<'_>) {
    let name = spec.client.server.to_string();
    let timeout = spec.client.connect_timeout;
    if !reach(&name, &spec.client.address, timeout, r).await {
        return;
    }
    spec.client.role = "doctor".into();
    // The doctor only looks: no snapshot lists on its connection (it
    // checks that the user may run them instead).
    let snapshot = std::mem::take(&mut spec.client.snapshot);
    spec.client.backoff.initial = Duration::from_secs(3600);
    let (tx, mut rx) = mpsc::channel(4096);
    let client = Client::spawn(spec.client.clone(), Some(tx));
    if let Err(why) = first_attempt(&client, timeout + Duration::from_secs(1)).await {
        // A handshake failure is the TLS line's, anything else the login's.
        let tls_failed = spec.client.tls.is_some() && why.contains("TLS");
        r.line(
            Status::Fail,
            &name,
            if tls_failed { "tls" } else { "login" },
            &why,
        );
        client.shutdown();
        return;
    }
    if let Some(tls) = &spec.client.tls {
        let msg = format!("certificate verified for {:?}", tls.server_name());
        r.line(Status::Ok, &name, "tls", &msg);
    }
    if let ConnState::Connected { banner } = &*client.state().borrow() {
        let user = &spec.client.credentials.username;
        r.line(
            Status::Ok,
            &name,
            "login",
            &format!("as {user:?}: {banner}"),
        );
    }
    permissions(cfg, &name, &client, &snapshot, r).await;
    user_perms(&spec, &name, &client, r).await;
    write_timeout(&name, r);
    events(&name, &mut rx, r).await;
    client.shutdown();
}

/// Waits for the client's first connection attempt to end: logged in, or
/// why not.
async fn first_attempt(client: &Client, timeout: Duration) -> Result<(), String> {
    let mut state = client.state();
    let ended = tokio::time::timeout(timeout, async {
        loop {
            match &*state.borrow_and_update() {
                ConnState::Connected { .. } => return Ok(()),
                ConnState::Disconnected { reason } => return Err(reason.clone()),
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err("the connection task stopped".to_string());
            }
        }
    })
    .await;
    ended.unwrap_or_else(|_| Err(format!("no login within {timeout:?}")))
}

/// The actions the allow-list names, against what this user may run.
async fn permissions(
    cfg: &Config,
    name: &str,
    client: &Client,
    snapshot: &[crate::ami::SnapshotKind],
    r: &mut Report<'_>,
) {
    let list = Message::from_pairs([("Action", "ListCommands")]);
    let res = match client
        .send_action(list, Some(Duration::from_secs(10)))
        .await
    {
        Ok(res) if res.is_success() => res,
        Ok(res) => {
            let msg = res.response.get("Message").unwrap_or_default().into_owned();
            r.line(
                Status::Fail,
                name,
                "actions",
                &format!("ListCommands refused: {msg}"),
            );
            return;
        }
        Err(e) => {
            r.line(Status::Fail, name, "actions", &format!("ListCommands: {e}"));
            return;
        }
    };
    let table = ami_proto::ActionClasses::from_list_commands(&res.response);
    r.line(
        Status::Ok,
        name,
        "actions",
        &format!("this user may run {} action(s)", table.len()),
    );
    snapshot_permissions(&table, name, snapshot, r);
    if !cfg.actions.enabled {
        return;
    }
    let mut wanted: Vec<&str> = cfg
        .actions
        .allow
        .iter()
        .flat_map(|e| e.actions.iter().map(String::as_str))
        .filter(|a| *a != "*")
        .collect();
    wanted.sort_unstable_by_key(|a| a.to_ascii_lowercase());
    wanted.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    for a in wanted {
        if table.authority(a).is_none() {
            let msg = format!(
                "[[actions.allow]] grants {:?}, but this AMI user may not run it: add its class to write= in manager.conf",
                clip(a)
            );
            r.line(Status::Warn, name, "actions", &msg);
        }
    }
}

/// Whether the user may run the actions of the configured snapshot kinds
/// (docs/snapshots.md); a kind it may not is left out of the snapshots.
fn snapshot_permissions(
    table: &ami_proto::ActionClasses,
    name: &str,
    snapshot: &[crate::ami::SnapshotKind],
    r: &mut Report<'_>,
) {
    if snapshot.is_empty() {
        return;
    }
    let (may, may_not): (Vec<_>, Vec<_>) = snapshot
        .iter()
        .partition(|k| table.authority(k.action()).is_some());
    let names = |v: &[&crate::ami::SnapshotKind]| {
        v.iter()
            .map(|k| format!("{} ({})", k.name(), k.action()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if may_not.is_empty() {
        let msg = format!("this user may list every snapshot kind: {}", names(&may));
        r.line(Status::Ok, name, "snapshot", &msg);
    } else {
        let msg = format!(
            "this AMI user may not run {}: left out of the snapshots (add reporting to write= in manager.conf, or take them out of [[server]] snapshot)",
            names(&may_not)
        );
        r.line(Status::Warn, name, "snapshot", &msg);
    }
}

/// The user's read and write classes as `manager show user` prints them
/// (needs write = command), against the `events` classes this server's
/// table asks for: a class the user may not read never arrives.
async fn user_perms(spec: &ServerSpec, name: &str, client: &Client, r: &mut Report<'_>) {
    let user = &spec.client.credentials.username;
    let cmd = format!("manager show user {user}");
    let action = Message::from_pairs([("Action", "Command"), ("Command", cmd.as_str())]);
    let output = match client
        .send_action(action, Some(Duration::from_secs(10)))
        .await
    {
        Ok(res) if res.is_success() => res.output(),
        _ => {
            let msg =
                "`manager show user` not allowed (write = command): read/write classes not checked";
            r.line(Status::Info, name, "manager.conf", msg);
            return;
        }
    };
    let Some((read, write)) = perms_of(&output) else {
        r.line(
            Status::Info,
            name,
            "manager.conf",
            "no read/write perm in `manager show user` output",
        );
        return;
    };
    r.line(
        Status::Ok,
        name,
        "manager.conf",
        &format!("read = {read}; write = {write}"),
    );
    let missing = unreadable(&read, &spec.client.events);
    if !missing.is_empty() {
        let msg = format!(
            "events asks for {} but this user may not read them: add them to read= in manager.conf",
            missing.join(", ")
        );
        r.line(Status::Warn, name, "manager.conf", &msg);
    }
}

/// `read perm` and `write perm` of `manager show user` output.
fn perms_of(output: &[String]) -> Option<(String, String)> {
    let field = |key: &str| {
        output.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    Some((field("read perm")?, field("write perm")?))
}

/// The classes `events` names that `read` does not allow (none for
/// `events = "on"`: it means "whatever this user may read").
fn unreadable(read: &str, events: &crate::ami::EventMask) -> Vec<&'static str> {
    if matches!(events, crate::ami::EventMask::On) {
        return Vec::new();
    }
    let readable = ami_proto::EventMask::parse(read).bits();
    let wanted = events.bits();
    ami_proto::CLASSES
        .iter()
        .filter(|(_, bit)| wanted & bit != 0 && readable & bit == 0)
        .map(|(c, _)| *c)
        .collect()
}

/// Asterisk reports a user's `writetimeout` nowhere over AMI (`manager
/// show user` leaves it out), yet it decides whether a short stall drops
/// the bridge's session: say so, once per server.
fn write_timeout(name: &str, r: &mut Report<'_>) {
    let msg = "not readable over AMI: check writetimeout in this user's manager.conf section (5000 suggested: docs/deploy.md)";
    r.line(Status::Info, name, "writetimeout", msg);
}

/// Listens for events a few seconds: which classes arrive.
async fn events(name: &str, rx: &mut mpsc::Receiver<Incoming>, r: &mut Report<'_>) {
    let mut n = 0usize;
    let mut classes = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + LISTEN;
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let Incoming::Event(ev) = item {
            n += 1;
            if let Some(p) = ev.message.get("Privilege") {
                classes.extend(
                    p.split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| c != "all"),
                );
            }
        }
    }
    if n == 0 {
        let msg = format!(
            "none in {LISTEN:?}: an idle server, or read= in manager.conf lacks the classes the mappings route"
        );
        r.line(Status::Warn, name, "events", &msg);
    } else {
        let seen: Vec<String> = classes.into_iter().collect();
        let msg = format!("{n} in {LISTEN:?}, classes: {}", seen.join(", "));
        r.line(Status::Ok, name, "events", &msg);
    }
}

/// One broker URL: reachable, login, the exchanges and queues the bridge uses.
async fn broker(cfg: &Config, url: &str, r: &mut Report<'_>) {
    let shown = crate::config::redact_url(url);
    let part = "broker";
    let address = match crate::config::parse_amqp_url(url) {
        Ok(u) => format!("{}:{}", u.authority.host, u.authority.port),
        Err(e) => {
            r.line(Status::Fail, part, "url", &format!("{shown}: {e}"));
            return;
        }
    };
    if !reach(part, &address, Duration::from_secs(10), r).await {
        return;
    }
    let tls = match cfg.amqp.tls() {
        Ok(t) => t,
        Err(e) => {
            r.line(Status::Fail, part, "tls", &e);
            return;
        }
    };
    let conn = match crate::amqp::connect::connect(url, &tls, Duration::from_secs(10)).await {
        Ok(c) => c,
        Err(e) => {
            r.line(Status::Fail, part, "login", &format!("{shown}: {e}"));
            return;
        }
    };
    r.line(Status::Ok, part, "login", &shown);
    for n in needed(cfg) {
        exchange_check(&conn, cfg, &n, r).await;
    }
    let msg =
        "not checked: doctor never publishes (write permission on the exchanges above is needed)";
    r.line(Status::Info, part, "publish", msg);
    let _ = conn.close(200, "doctor done".into()).await;
}

/// The exchanges the bridge publishes to or consumes from, their type, and
/// whether the bridge declares them with its event-side settings.
fn needed(cfg: &Config) -> Vec<Needed> {
    use crate::mapping::schema::ExchangeType;
    let mut v: Vec<Needed> = Vec::new();
    if let Ok(m) = crate::mapping::Mappings::load(&cfg.mappings.dirs()) {
        for (name, t) in m.current().exchanges() {
            v.push(Needed {
                name: name.to_string(),
                kind: Some(*t),
                what: "events",
            });
        }
    }
    if !v.iter().any(|n| n.name == cfg.status.exchange) {
        v.push(Needed {
            name: cfg.status.exchange.clone(),
            kind: Some(ExchangeType::Topic),
            what: "status messages",
        });
    }
    if cfg.actions.enabled {
        v.push(Needed {
            name: cfg.actions.exchange.clone(),
            kind: None,
            what: "action requests",
        });
    }
    v
}

/// One exchange the bridge uses.
struct Needed {
    name: String,
    /// Its type when the publisher declares it (event side); `None` for
    /// the action path's, which is only looked up.
    kind: Option<crate::mapping::schema::ExchangeType>,
    what: &'static str,
}

/// A passive declare: the exchange exists, is missing (the bridge declares
/// it at start: it needs configure permission) or is refused. An existing
/// event-side exchange is then declared again exactly as the publisher does
/// at every connect (a no-op that needs configure permission).
async fn exchange_check(conn: &lapin::Connection, cfg: &Config, n: &Needed, r: &mut Report<'_>) {
    let part = "broker";
    let check = format!("exchange {}", clip(&n.name));
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = declare(
        conn,
        &n.name,
        lapin::ExchangeKind::Topic,
        passive,
        Default::default(),
    )
    .await;
    match found {
        Ok(()) => {}
        Err(e) if crate::amqp::connect::is_not_found(&e) => {
            let msg = format!(
                "missing ({}): the bridge declares it at start, which needs configure permission on it",
                n.what
            );
            r.line(Status::Warn, part, &check, &msg);
            return;
        }
        Err(e) => {
            r.line(Status::Fail, part, &check, &e.to_string());
            return;
        }
    }
    let (Some(kind), true) = (n.kind, cfg.amqp.declare_exchanges) else {
        r.line(Status::Ok, part, &check, &format!("exists ({})", n.what));
        return;
    };
    let durable = lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let args = crate::amqp::publisher::exchange_args(&cfg.amqp.alternate_exchange);
    let kind = crate::amqp::publisher::kind_of(kind);
    match declare(conn, &n.name, kind, durable, args).await {
        Ok(()) => r.line(
            Status::Ok,
            part,
            &check,
            &format!("exists ({}), and this user may declare it", n.what),
        ),
        Err(e) if e.to_string().contains("ACCESS_REFUSED") => {
            let msg = format!(
                "no configure permission: the bridge declares its exchanges at every connect ({e})"
            );
            r.line(Status::Fail, part, &check, &msg);
        }
        Err(e) => {
            let msg = format!(
                "exists with other settings than the bridge declares (it will use it as it is): {e}"
            );
            r.line(Status::Warn, part, &check, &msg);
        }
    }
}

/// One exchange declare on a channel of its own (an error closes it).
async fn declare(
    conn: &lapin::Connection,
    name: &str,
    kind: lapin::ExchangeKind,
    opts: lapin::options::ExchangeDeclareOptions,
    args: lapin::types::FieldTable,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    let res = ch.exchange_declare(name.into(), kind, opts, args).await;
    if res.is_ok() {
        let _ = ch.close(200, "doctor".into()).await;
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::EventMask;

    #[test]
    fn manager_show_user_perms_and_missing_classes() {
        let out: Vec<String> = [
            "          username: bridge",
            "         read perm: system,call,agent",
            "        write perm: system,call,originate",
        ]
        .map(String::from)
        .to_vec();
        let (read, write) = perms_of(&out).unwrap();
        assert_eq!(
            (read.as_str(), write.as_str()),
            ("system,call,agent", "system,call,originate")
        );
        assert!(perms_of(&out[..1]).is_none());
        let want = EventMask::Classes(vec!["call".into(), "cdr".into(), "agent".into()]);
        assert_eq!(unreadable(&read, &want), vec!["cdr"]);
        assert!(unreadable(&read, &EventMask::On).is_empty());
        assert!(unreadable("all", &want).is_empty());
    }
}
