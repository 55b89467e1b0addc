//! Operator tools: `check`, `map` (the dry run) and `tail`.
//!
//! These are how an operator changes routing without fear: `check` says
//! whether the config and mappings are valid (every problem with its
//! `file:line:col`), `map` shows exactly which messages a captured trace
//! would produce with the mappings on disk, and `tail` shows what really
//! arrives on the bus. They share the library code the bridge runs, so what
//! they show is what the bridge does.

mod doctor;

pub use doctor::doctor;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ami_proto::{EventLists, ListStep};
use futures::StreamExt;

use crate::ami::{Frame, Kind, Limits};
use crate::amqp::connect::{
    Broker, CLI_CLOSE_TIMEOUT, CliConnectError, close_bounded, connect_cli, is_not_found,
};
use crate::config::Config;
use crate::mapping::load::{overlay_files, show_dirs};
use crate::mapping::{EventCtx, LoadError, Outgoing, Render, load_dirs, load_files};

/// `ami2amqp check`: validates the config file (if given) and the mappings.
/// Prints one line per problem (and per warning, such as a secret file
/// others can read) and returns the process exit code. The config goes
/// through the same checks as at `run`'s start (`Config::load`). The
/// mapping directories are `mappings` when given (later ones overlaying
/// earlier ones), else the config's, else `mappings`.
///
/// With `explain_filters`, a valid set is followed by push-down's plan
/// (`mapping::PushDown::explain`) for every `[[server]]` of the config
/// (without a config: for one server with `events = "on"` and
/// `push_down = true`).
pub fn check(
    config: Option<&Path>,
    mappings: &[PathBuf],
    explain_filters: bool,
    out: &mut dyn Write,
) -> i32 {
    let mut ok = true;
    let mut dirs = mappings.to_vec();
    let mut loaded = None;
    if let Some(c) = config {
        match Config::load(c) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    let _ = writeln!(out, "{w}");
                }
                match cfg.server_specs() {
                    Ok(specs) => {
                        let _ = writeln!(out, "{}: ok ({} server(s))", c.display(), specs.len());
                    }
                    Err(e) => {
                        ok = false;
                        let _ = writeln!(out, "{e}");
                    }
                }
                if dirs.is_empty() {
                    dirs = cfg.mappings.dirs();
                }
                loaded = Some(cfg);
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "{e}");
            }
        }
    }
    if dirs.is_empty() {
        dirs.push(PathBuf::from("mappings"));
    }
    match check_mappings(&dirs, out) {
        Ok(router) if explain_filters => explain_filters_of(&router, loaded.as_ref(), out),
        Ok(_) => {}
        Err(e) => {
            ok = false;
            let _ = writeln!(out, "{e}");
        }
    }
    if ok { 0 } else { 1 }
}

/// `check --explain-filters`: push-down's plan per server.
fn explain_filters_of(router: &crate::mapping::Router, cfg: Option<&Config>, out: &mut dyn Write) {
    use crate::mapping::PushDown;
    match cfg {
        Some(cfg) => {
            let facade = cfg.facade.listen().is_some();
            for s in &cfg.servers {
                let p = PushDown::for_server(router, s, facade);
                let _ = write!(out, "{}", p.explain(s.name(), &s.events.mask()));
            }
        }
        None => {
            let on = crate::ami::EventMask::On;
            let p = PushDown::plan(router, &on);
            let _ = write!(
                out,
                "{}",
                p.explain("(no --config: events = \"on\", push_down = true)", &on)
            );
        }
    }
}

/// Loads the set of `dirs` and prints what `check` says about a valid one:
/// its size, its exchanges, and which files the overlays replace or add.
fn check_mappings(
    dirs: &[PathBuf],
    out: &mut dyn Write,
) -> Result<crate::mapping::Router, LoadError> {
    let files = overlay_files(dirs)?;
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    let r = load_files(&paths)?;
    let _ = writeln!(
        out,
        "{}: ok ({} route(s) in {} file(s), exchanges: {})",
        show_dirs(dirs),
        r.len(),
        r.files().len(),
        r.exchanges()
            .iter()
            .map(|(e, t)| format!("{e} ({})", t.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let first = dirs.first().map(PathBuf::as_path);
    for f in files.iter().filter(|f| f.path.parent() != first) {
        let _ = match &f.replaces {
            Some(old) => writeln!(out, "  {} replaces {}", f.path.display(), old.display()),
            None => writeln!(out, "  {} added", f.path.display()),
        };
    }
    Ok(r)
}

/// What the dry run saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MapSummary {
    pub events: u64,
    pub messages: u64,
    pub malformed: u64,
    /// Events of event lists (answers to the capturing client), skipped.
    pub list_items: u64,
    pub errors: u64,
    /// (exchange, routing key) → count
    pub keys: BTreeMap<(String, String), u64>,
    /// event name → count, for events no route matched
    pub unmatched: BTreeMap<String, u64>,
    /// route error text → count
    pub error_texts: BTreeMap<String, u64>,
}

/// Why `map` stopped; the command line prints the text.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error(transparent)]
    Mappings(#[from] LoadError),
    #[error("{}: {source}", path.display())]
    Trace {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `emit` failed (writing the output).
    #[error(transparent)]
    Emit(#[from] std::io::Error),
}

/// `ami2amqp map`: feeds traces through the mappings (the merged files of
/// `mappings`, later directories overlaying earlier ones). Each message is
/// passed to `emit`; the summary is returned. Timestamps are derived from
/// a fixed clock (the Unix epoch plus the event's index in milliseconds)
/// and the instance id is `dryrun`, so the output is the same every run.
pub fn map_traces(
    mappings: &[PathBuf],
    server: &str,
    traces: &[PathBuf],
    emit: impl FnMut(&Outgoing) -> std::io::Result<()>,
) -> Result<MapSummary, MapError> {
    map_with(mappings, server, traces, Render::Full, emit)
}

/// `ami2amqp map --summary`: [`map_traces`] counting messages by exchange
/// and routing key without building their bodies (`Render::KeysOnly`):
/// the same routes match and the same mapping errors are counted.
pub fn map_summary(
    mappings: &[PathBuf],
    server: &str,
    traces: &[PathBuf],
) -> Result<MapSummary, MapError> {
    map_with(mappings, server, traces, Render::KeysOnly, |_| Ok(()))
}

fn map_with(
    mappings: &[PathBuf],
    server: &str,
    traces: &[PathBuf],
    render: Render,
    mut emit: impl FnMut(&Outgoing) -> std::io::Result<()>,
) -> Result<MapSummary, MapError> {
    let router = load_dirs(mappings)?;
    let mut s = MapSummary::default();
    let mut keys = KeyCounts::default();
    for t in traces {
        let trace_err = |source| MapError::Trace {
            path: t.clone(),
            source,
        };
        let frames = crate::trace::file::stream_trace(t, Limits::default()).map_err(trace_err)?;
        let mut open_lists = EventLists::new();
        let mut out = Vec::new();
        for f in frames {
            let m = match f.map_err(trace_err)? {
                Frame::Message(m) => m,
                Frame::Malformed(_) => {
                    s.malformed += 1;
                    continue;
                }
                Frame::Banner(_) => continue,
            };
            // Items of an event list answer the capturing client's action;
            // Asterisk sends them to nobody else, so the bridge never sees
            // them on its event connection: skip them here too.
            if let ListStep::Item { .. } = open_lists.observe(&m) {
                s.list_items += 1;
                continue;
            }
            if m.kind() != Kind::Event {
                continue;
            }
            s.events += 1;
            let ctx = EventCtx {
                server,
                seq: s.events,
                received_at: UNIX_EPOCH + Duration::from_millis(s.events),
                message: &m,
                instance: "dryrun",
            };
            out.clear();
            let o = router.route_as(&ctx, render, &mut out);
            if o.matched == 0 {
                *s.unmatched
                    .entry(m.event_name().unwrap_or_default().into_owned())
                    .or_default() += 1;
            }
            for e in o.errors {
                s.errors += 1;
                *s.error_texts.entry(e.to_string()).or_default() += 1;
            }
            for msg in &out {
                s.messages += 1;
                keys.add(&msg.exchange, &msg.routing_key);
                emit(msg)?;
            }
        }
    }
    s.keys = keys.into_sorted();
    Ok(s)
}

/// Messages per (exchange, routing key), counted without allocating for a
/// key already seen (a trace has millions of messages and few keys).
#[derive(Default)]
struct KeyCounts(HashMap<Arc<str>, HashMap<String, u64>>);

impl KeyCounts {
    fn add(&mut self, exchange: &Arc<str>, key: &str) {
        let per = match self.0.get_mut(exchange) {
            Some(per) => per,
            None => self.0.entry(exchange.clone()).or_default(),
        };
        match per.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                per.insert(key.to_owned(), 1);
            }
        }
    }

    fn into_sorted(self) -> BTreeMap<(String, String), u64> {
        self.0
            .into_iter()
            .flat_map(|(ex, per)| per.into_iter().map(move |(k, n)| ((ex.to_string(), k), n)))
            .collect()
    }
}

/// Prints the `--summary` table.
pub fn print_summary(s: &MapSummary, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "events: {}  messages: {}  unmatched: {}  mapping errors: {}  malformed: {}  event-list items skipped: {}",
        s.events,
        s.messages,
        s.unmatched.values().sum::<u64>(),
        s.errors,
        s.malformed,
        s.list_items
    )?;
    writeln!(out, "\n{:>8}  {:<20} routing key", "count", "exchange")?;
    let mut rows: Vec<_> = s.keys.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for ((ex, key), n) in rows {
        writeln!(out, "{n:>8}  {ex:<20} {key}")?;
    }
    if !s.unmatched.is_empty() {
        writeln!(out, "\nevents that matched no route:")?;
        for (e, n) in &s.unmatched {
            writeln!(out, "{n:>8}  {e}")?;
        }
    }
    if !s.error_texts.is_empty() {
        writeln!(out, "\nmapping errors:")?;
        for (e, n) in &s.error_texts {
            writeln!(out, "{n:>8}  {e}")?;
        }
    }
    Ok(())
}

/// Why `tail` stopped early; the command line prints the text.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Connect(#[from] CliConnectError),
    #[error("cannot use exchange {exchange:?}: {source}")]
    Exchange {
        exchange: String,
        source: lapin::Error,
    },
    #[error("exchange {0:?} still does not exist")]
    NoExchange(String),
    #[error(
        "cannot bind to exchange {exchange:?} (does it exist? the bridge declares it at start): {source}"
    )]
    Bind {
        exchange: String,
        source: lapin::Error,
    },
    /// Any other broker operation (the text is lapin's).
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    /// Writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Returns a channel once `exchange` exists. On a fresh broker the bridge
/// declares its exchanges when it first connects, and an operator often
/// starts `tail` first: wait for it (saying so once) rather than fail.
async fn wait_for_exchange(
    conn: &lapin::Connection,
    exchange: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<lapin::Channel, TailError> {
    use lapin::options::ExchangeDeclareOptions;
    use lapin::types::FieldTable;
    let short = crate::amqp::publisher::short;
    let mut said = false;
    loop {
        let ch = conn.create_channel().await?;
        if exchange.is_empty() {
            return Ok(ch);
        }
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let kind = lapin::ExchangeKind::Topic; // ignored by a passive declare
        match ch
            .exchange_declare(short(exchange), kind, passive, FieldTable::default())
            .await
        {
            Ok(()) => return Ok(ch),
            Err(e) if is_not_found(&e) => {
                if !said {
                    eprintln!(
                        "ami2amqp: exchange {exchange:?} does not exist yet; waiting for the bridge to declare it (it does when it connects)"
                    );
                    said = true;
                }
            }
            Err(source) => {
                let exchange = exchange.to_string();
                return Err(TailError::Exchange { exchange, source });
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() + Duration::from_secs(1) > d) {
            return Err(TailError::NoExchange(exchange.to_string()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An exclusive, auto-deleted queue on `ch` bound to `exchange` with
/// `bindings` (default `#`), consumed without acks.
async fn tail_consumer(
    ch: &lapin::Channel,
    exchange: &str,
    bindings: &[String],
) -> Result<lapin::Consumer, TailError> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let short = crate::amqp::publisher::short;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(short(""), exclusive, FieldTable::default())
        .await?;
    let qname = q.name().clone();
    let default = ["#".to_string()];
    let binds = if bindings.is_empty() {
        &default[..]
    } else {
        bindings
    };
    for b in binds {
        let options = QueueBindOptions::default();
        ch.queue_bind(
            qname.clone(),
            short(exchange),
            short(b),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|source| TailError::Bind {
            exchange: exchange.to_string(),
            source,
        })?;
    }
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = ch
        .basic_consume(qname, short("ami2amqp-tail"), no_ack, FieldTable::default())
        .await?;
    Ok(consumer)
}

/// One line of `tail`'s output: `KEY  BODY`, or a JSON object with the
/// exchange, key, main properties and body.
fn tail_line(d: &lapin::message::Delivery, json: bool) -> String {
    let key = d.routing_key.as_str();
    let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&d.data).into_owned())
    });
    if !json {
        return format!("{key}  {body}");
    }
    let p = &d.properties;
    serde_json::json!({
        "exchange": d.exchange.as_str(),
        "routing_key": key,
        "properties": {
            "type": p.kind().as_ref().map(|s| s.as_str()),
            "message_id": p.message_id().as_ref().map(|s| s.as_str()),
            "content_type": p.content_type().as_ref().map(|s| s.as_str()),
            "delivery_mode": p.delivery_mode(),
        },
        "body": body,
    })
    .to_string()
}

/// `ami2amqp tail`: binds a temporary queue to `exchange` with `bindings`
/// (default `#`) and prints what arrives until `limit` messages or
/// `duration` or Ctrl-C.
pub async fn tail(
    broker: &Broker,
    exchange: &str,
    bindings: &[String],
    json: bool,
    limit: Option<u64>,
    duration: Option<Duration>,
    out: &mut (dyn Write + Send),
) -> Result<u64, TailError> {
    let conn = connect_cli(&broker.url, &broker.tls).await?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let ch = wait_for_exchange(&conn, exchange, deadline).await?;
    let mut consumer = tail_consumer(&ch, exchange, bindings).await?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut n = 0u64;
    loop {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, consumer.next())
                    .await
                    .ok()
                    .flatten(),
                None => consumer.next().await,
            }
        };
        let d = tokio::select! {
            d = next => d,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(d) = d else { break };
        let d = d?;
        n += 1;
        writeln!(out, "{}", tail_line(&d, json))?;
        let _ = out.flush();
    }
    close_bounded(&conn, "bye", CLI_CLOSE_TIMEOUT).await;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_says_which_step_failed_with_the_url_redacted() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f");
        let mut out = Vec::new();
        let e = tail(
            &Broker::plain_settings(url),
            "x",
            &[],
            false,
            Some(1),
            None,
            &mut out,
        )
        .await
        .expect_err("nothing listens");
        assert!(matches!(e, TailError::Connect(_)), "{e:?}");
        let text = e.to_string();
        let want = format!("cannot connect to amqp://guest:***@127.0.0.1:{port}/");
        assert!(text.starts_with(&want), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    /// `--summary` skips the bodies: it must still count the same
    /// messages under the same keys and the same template errors, in the
    /// routing key, the type, the message id and the headers.
    #[test]
    fn summary_counts_what_the_full_dry_run_produces() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("50-odd.toml"),
            r#"
[[route]]
name = "key needs Cause"
events = ["Hangup"]
exchange = "ami.events"
routing_key = "{server}.hangup.{Cause}.{NoSuchField}"
stop = false

[[route]]
name = "type needs a field"
events = ["Newchannel"]
exchange = "other"
routing_key = "{server}.{Channel|default:none}"
properties = { type = "{NoSuchField}" }

[[route]]
name = "id and header"
events = ["VarSet", "Newstate"]
exchange = "ami.events"
routing_key = "{server}.{Event}"
properties = { message_id = "{Uniqueid}", headers = { "x-v" = "{Value}" } }
"#,
        )
        .expect("mapping");
        let dirs = [PathBuf::from("mappings"), dir.path().to_path_buf()];
        let traces = [
            PathBuf::from("tests/traces/calls_small.ami"),
            PathBuf::from("tests/traces/calls_busy.ami.zst"),
        ];
        let full = map_traces(&dirs, "pbx", &traces, |_| Ok(())).expect("full");
        let summary = map_summary(&dirs, "pbx", &traces).expect("summary");
        assert!(full.errors > 0 && full.messages > 100_000, "{full:?}");
        assert_eq!(full, summary);
    }

    #[test]
    fn map_names_the_trace_it_cannot_read_and_keeps_the_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.ami");
        let mappings = [PathBuf::from("mappings")];
        let e = map_traces(&mappings, "pbx", std::slice::from_ref(&missing), |_| Ok(()))
            .expect_err("no such trace");
        let MapError::Trace { path, source } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(path, &missing);
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(
            e.to_string().starts_with(&missing.display().to_string()),
            "{e}"
        );
    }
}
