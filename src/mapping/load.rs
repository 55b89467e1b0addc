//! Loading and validating mapping files, with `file:line:column` errors.
//!
//! Operators edit these files by hand on a production box, so every mistake
//! must be reported where it is, in words, and all at once (not one per
//! run). Loading never half-succeeds: either every file is valid and a new
//! [`Router`] comes out, or the caller gets the full list of
//! [`Diagnostic`]s and keeps the set it had.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;

use super::router::{BodySpec, CompiledRoute, FieldMatch, PropsSpec, Router};
use super::schema::{self, ExchangeType};
use super::template::Template;
use crate::support::text::line_col;

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not in a particular place.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// All the problems found in a mapping set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError(pub Vec<Diagnostic>);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        });
    }

    /// A template at `span` (the span of the TOML string, quotes included).
    fn template(&mut self, what: &str, span: Range<usize>, src: &str) -> Option<Template> {
        match Template::parse(src) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = span.start + locate(self.text, &span, src, e.offset);
                self.err(at..at, format!("{what}: {}", e.message));
                None
            }
        }
    }

    /// A routing-key template: also rejects `*` and `#` written in the
    /// template itself (they would make a published key a pattern).
    fn key_template(&mut self, what: &str, span: Range<usize>, src: &str) -> Option<Template> {
        let t = self.template(what, span.clone(), src)?;
        if let Some(off) = t.literal_wildcard() {
            let at = span.start + locate(self.text, &span, src, off);
            self.err(
                at..at,
                format!("{what}: `*` and `#` are binding wildcards and cannot appear in a published routing key"),
            );
            return None;
        }
        Some(t)
    }

    fn regex(&mut self, what: &str, span: Range<usize>, src: &str) -> Option<Regex> {
        match Regex::new(src) {
            Ok(r) => Some(r),
            Err(e) => {
                let msg = e.to_string().replace('\n', "\n    ");
                self.err(span, format!("{what}: invalid regex:\n    {msg}"));
                None
            }
        }
    }
}

/// Where byte `offset` of a parsed string value lies within its TOML
/// source at `span` (quotes, escapes and multi-line strings included): the
/// text from `offset` to the end of its line is searched for in the
/// source; when it cannot be found (escapes in that part), the start of the
/// value is used.
fn locate(text: &str, span: &Range<usize>, value: &str, offset: usize) -> usize {
    let raw = text.get(span.clone()).unwrap_or("");
    let tail = value.get(offset..).unwrap_or("");
    let needle = tail.split('\n').next().unwrap_or("");
    if !needle.is_empty()
        && let Some(i) = raw.find(needle)
    {
        return i;
    }
    0
}

/// The `.toml` files of a directory, in name order (not recursive, so
/// `mappings/examples/` is not loaded with the default set).
pub fn mapping_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| dir_error(dir, format!("cannot read the mappings directory: {e}")))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(dir_error(dir, "no .toml mapping files in this directory"));
    }
    Ok(files)
}

fn dir_error(dir: &Path, message: impl Into<String>) -> LoadError {
    LoadError(vec![Diagnostic {
        file: dir.to_path_buf(),
        line: 0,
        column: 0,
        message: message.into(),
    }])
}

/// One file of a merged set: where it is read from, and the file of an
/// earlier directory it replaces (same name), if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingFile {
    pub path: PathBuf,
    pub replaces: Option<PathBuf>,
}

/// Merges directory listings, earliest first: a file of a later directory
/// replaces the file of the same name of an earlier one, or joins the set.
/// The result is in file-name order, the order a single directory loads in.
/// `listings` are the files of each directory (paths whose file names are
/// unique within one listing).
pub fn merge_overlays(listings: &[Vec<PathBuf>]) -> Vec<MappingFile> {
    let mut by_name: std::collections::BTreeMap<&std::ffi::OsStr, MappingFile> =
        std::collections::BTreeMap::new();
    for path in listings.iter().flatten() {
        let Some(name) = path.file_name() else {
            continue;
        };
        let replaces = by_name.remove(name).map(|old| old.path);
        let path = path.clone();
        by_name.insert(name, MappingFile { path, replaces });
    }
    by_name.into_values().collect()
}

/// `dirs` as one line for messages: `mappings + mappings/examples/x`.
pub fn show_dirs(dirs: &[PathBuf]) -> String {
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    shown.join(" + ")
}

/// The merged `.toml` files of `dirs` (see [`merge_overlays`]). Every
/// directory must be readable and hold at least one mapping file, and none
/// may be listed twice; all such problems are reported at once.
pub fn overlay_files(dirs: &[PathBuf]) -> Result<Vec<MappingFile>, LoadError> {
    let mut diags = Vec::new();
    if dirs.is_empty() {
        diags.push(Diagnostic {
            file: PathBuf::new(),
            line: 0,
            column: 0,
            message: "no mappings directory given".into(),
        });
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut listings = Vec::new();
    for d in dirs {
        let same = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if seen.contains(&same) {
            diags.extend(dir_error(d, "listed twice in the mappings directories").0);
            continue;
        }
        seen.push(same);
        match mapping_files(d) {
            Ok(files) => listings.push(files),
            Err(e) => diags.extend(e.0),
        }
    }
    if diags.is_empty() {
        Ok(merge_overlays(&listings))
    } else {
        Err(LoadError(diags))
    }
}

/// Loads every mapping file of `dir`.
pub fn load_dir(dir: &Path) -> Result<Router, LoadError> {
    load_files(&mapping_files(dir)?)
}

/// Loads the merged files of `dirs`, later directories overlaying earlier
/// ones (see [`overlay_files`]); all or nothing, as [`load_files`].
pub fn load_dirs(dirs: &[PathBuf]) -> Result<Router, LoadError> {
    let files: Vec<PathBuf> = overlay_files(dirs)?.into_iter().map(|f| f.path).collect();
    load_files(&files)
}

/// Loads the given files, in the given order.
pub fn load_files(files: &[PathBuf]) -> Result<Router, LoadError> {
    let mut sources = Vec::new();
    let mut diags = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(t) => sources.push((f.clone(), t)),
            Err(e) => diags.push(Diagnostic {
                file: f.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let r = compile(&sources, &mut diags);
    if diags.is_empty() {
        Ok(r)
    } else {
        Err(LoadError(diags))
    }
}

/// Compiles mapping sources given as (name, text) pairs.
pub fn load_str(sources: &[(PathBuf, String)]) -> Result<Router, LoadError> {
    let mut diags = Vec::new();
    let r = compile(sources, &mut diags);
    if diags.is_empty() {
        Ok(r)
    } else {
        Err(LoadError(diags))
    }
}

fn compile(sources: &[(PathBuf, String)], diags: &mut Vec<Diagnostic>) -> Router {
    let mut router = Router::default();
    let mut names: HashMap<String, (PathBuf, usize)> = HashMap::new();
    let mut exchange_types: HashMap<Arc<str>, (ExchangeType, String)> = HashMap::new();
    for (file, text) in sources {
        router.files.push(file.clone());
        let mut cx = Ctx { file, text, diags };
        let parsed: schema::File = match toml::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let msg = e.message().trim().to_string();
                cx.err(span, msg);
                continue;
            }
        };
        for r in parsed.route {
            let name_span = r.name.span();
            let name = r.name.get_ref().trim().to_string();
            if name.is_empty() {
                cx.err(name_span.clone(), "route name is empty");
            }
            let (line, _) = line_col(text, name_span.start);
            if let Some((pf, pl)) = names.get(&name.to_ascii_lowercase()) {
                cx.err(
                    name_span.clone(),
                    format!(
                        "duplicate route name {name:?} (first defined at {}:{pl})",
                        pf.display()
                    ),
                );
            } else {
                names.insert(name.to_ascii_lowercase(), (file.clone(), line));
            }
            if let Some(c) = compile_route(&mut cx, r, &name, &mut exchange_types) {
                let idx = router.routes.len();
                let (tier, filter) = c;
                let route = filter.0;
                let index = match tier {
                    Tier::Fallback => &mut router.fallback,
                    Tier::Snapshot => &mut router.snapshot,
                    Tier::Normal => &mut router.normal,
                };
                match filter.1 {
                    EventFilter::Any => index.any.push(idx),
                    EventFilter::Names(ns) => {
                        for n in ns {
                            let v = index.by_name.entry(n.to_ascii_lowercase()).or_default();
                            if v.last() != Some(&idx) {
                                v.push(idx);
                            }
                        }
                    }
                }
                router.routes.push(route);
            }
        }
    }
    let mut ex: Vec<(Arc<str>, ExchangeType)> = exchange_types
        .into_iter()
        .map(|(k, (t, _))| (k, t))
        .collect();
    ex.sort();
    router.exchanges = ex;
    router
}

enum EventFilter {
    Any,
    Names(Vec<String>),
}

/// Which index a route goes into.
enum Tier {
    Normal,
    Fallback,
    Snapshot,
}

type Compiled = (Tier, (CompiledRoute, EventFilter));

/// Compiles one route; `None` when it has errors (reported in `cx`).
/// Diagnostics come in the order of the route's sections.
fn compile_route(
    cx: &mut Ctx<'_>,
    r: schema::Route,
    name: &str,
    exchange_types: &mut HashMap<Arc<str>, (ExchangeType, String)>,
) -> Option<Compiled> {
    let before = cx.diags.len();
    let (filter, events_regex) = route_events(cx, &r, name);
    let when = route_when(cx, &r, name);
    let exchange = route_exchange(cx, &r, name, exchange_types);
    let routing_key = route_key(cx, &r, name);
    let props = route_props(cx, &r, name);
    let body = route_body(cx, &r, name);
    if r.fallback && r.snapshot {
        cx.err(
            r.name.span(),
            format!(
                "route {name:?}: `fallback` and `snapshot` exclude each other (a snapshot route only sees snapshot items and markers)"
            ),
        );
    }
    if cx.diags.len() != before {
        return None;
    }
    let filter = filter?;
    let tier = if r.snapshot {
        Tier::Snapshot
    } else if r.fallback {
        Tier::Fallback
    } else {
        Tier::Normal
    };
    Some((
        tier,
        (
            CompiledRoute {
                name: Arc::from(name),
                events_regex,
                when,
                absent: r.absent.clone(),
                drop: r.drop,
                stop: r.stop,
                exchange,
                routing_key,
                body,
                props,
            },
            filter,
        ),
    ))
}

/// How a route's field is named in messages.
fn what(name: &str, field: &str) -> String {
    format!("route {name:?}, `{field}`")
}

/// Which events a route takes: `events` (names or `*`) or `events_regex`.
fn route_events(
    cx: &mut Ctx<'_>,
    r: &schema::Route,
    name: &str,
) -> (Option<EventFilter>, Option<Regex>) {
    match (&r.events, &r.events_regex) {
        (Some(_), Some(re)) => cx.err(
            re.span(),
            format!("route {name:?}: use `events` or `events_regex`, not both"),
        ),
        (None, None) => cx.err(
            r.name.span(),
            format!("route {name:?}: says nothing about which events it takes: add `events = [\"Name\", …]` (or [\"*\"]) or `events_regex`"),
        ),
        (Some(ev), None) => {
            let list = ev.get_ref();
            if list.is_empty() {
                cx.err(ev.span(), format!("{}: the list is empty", what(name, "events")));
            } else if list.iter().any(|e| e == "*") {
                return (Some(EventFilter::Any), None);
            } else if let Some(bad) = list.iter().find(|e| e.trim().is_empty() || e.contains(char::is_whitespace)) {
                cx.err(ev.span(), format!("{}: {bad:?} is not an event name", what(name, "events")));
            } else {
                return (Some(EventFilter::Names(list.clone())), None);
            }
        }
        (None, Some(re)) => {
            let regex = cx.regex(&what(name, "events_regex"), re.span(), re.get_ref());
            return (Some(EventFilter::Any), regex);
        }
    }
    (None, None)
}

/// The route's `when` conditions (field regexes).
fn route_when(cx: &mut Ctx<'_>, r: &schema::Route, name: &str) -> Vec<FieldMatch> {
    let mut when = Vec::new();
    for (field, re) in &r.when {
        if let Some(regex) = cx.regex(
            &format!("route {name:?}, `when.{field}`"),
            re.span(),
            re.get_ref(),
        ) {
            let has_names = regex.capture_names().flatten().next().is_some();
            when.push(FieldMatch {
                field: field.clone(),
                regex,
                has_names,
            });
        }
    }
    when
}

/// The route's exchange (empty for `drop` routes); one exchange keeps one
/// type across all routes (`exchange_types` remembers the first).
fn route_exchange(
    cx: &mut Ctx<'_>,
    r: &schema::Route,
    name: &str,
    exchange_types: &mut HashMap<Arc<str>, (ExchangeType, String)>,
) -> Arc<str> {
    let exchange: Arc<str> = match &r.exchange {
        Some(e) if !e.get_ref().trim().is_empty() => Arc::from(e.get_ref().trim()),
        Some(e) => {
            cx.err(
                e.span(),
                format!("{}: empty exchange name", what(name, "exchange")),
            );
            Arc::from("")
        }
        None if r.drop => Arc::from(""),
        None => {
            cx.err(
                r.name.span(),
                format!("route {name:?}: `exchange` is missing (or set `drop = true`)"),
            );
            Arc::from("")
        }
    };
    if !exchange.is_empty() {
        match exchange_types.get(&exchange) {
            Some((t, by)) if *t != r.exchange_type => {
                let span = r.exchange.as_ref().map_or(r.name.span(), |e| e.span());
                cx.err(
                    span,
                    format!(
                        "route {name:?}: exchange {exchange:?} is declared `{}` here but `{}` by route {by:?}",
                        r.exchange_type.as_str(),
                        t.as_str()
                    ),
                );
            }
            Some(_) => {}
            None => {
                exchange_types.insert(exchange.clone(), (r.exchange_type, name.to_string()));
            }
        }
    }
    exchange
}

/// The routing key template: required unless the route drops or the
/// exchange type ignores keys.
fn route_key(cx: &mut Ctx<'_>, r: &schema::Route, name: &str) -> Option<Template> {
    match &r.routing_key {
        Some(k) => cx.key_template(&what(name, "routing_key"), k.span(), k.get_ref()),
        None if r.drop => None,
        None if matches!(
            r.exchange_type,
            ExchangeType::Fanout | ExchangeType::Headers
        ) =>
        {
            None
        }
        None => {
            cx.err(
                r.name.span(),
                format!("route {name:?}: `routing_key` is missing"),
            );
            None
        }
    }
}

/// The AMQP message properties.
fn route_props(cx: &mut Ctx<'_>, r: &schema::Route, name: &str) -> PropsSpec {
    let p = &r.properties;
    let kind = p
        .kind
        .as_ref()
        .and_then(|t| cx.template(&what(name, "properties.type"), t.span(), t.get_ref()));
    let message_id = p
        .message_id
        .as_ref()
        .and_then(|t| cx.template(&what(name, "properties.message_id"), t.span(), t.get_ref()));
    let mut headers = Vec::new();
    for (k, t) in &p.headers {
        if let Some(t) = cx.template(
            &format!("route {name:?}, `properties.headers.{k}`"),
            t.span(),
            t.get_ref(),
        ) {
            headers.push((Arc::from(k.as_str()), t));
        }
    }
    if let Some(pr) = p.priority
        && pr > 9
    {
        cx.err(r.name.span(), format!("route {name:?}: `properties.priority` is {pr}; use 0–9 (RabbitMQ priority queues support at most a few levels)"));
    }
    PropsSpec {
        persistent: p.persistent.unwrap_or(true),
        priority: p.priority,
        expiration_ms: p.expiration_ms,
        content_type: Arc::from(p.content_type.as_deref().unwrap_or("application/json")),
        kind,
        message_id,
        headers,
    }
}

/// The body spec; renames must not write one JSON key twice.
fn route_body(cx: &mut Ctx<'_>, r: &schema::Route, name: &str) -> BodySpec {
    let b = &r.body;
    let mut targets: Vec<String> = Vec::new();
    for (from, to) in &b.rename {
        // Two renames to one name, or a rename onto a field the route
        // explicitly includes, would write one JSON key twice.
        let clash = targets.iter().any(|t| t.eq_ignore_ascii_case(to))
            || (!from.eq_ignore_ascii_case(to)
                && !b.rename.keys().any(|k| k.eq_ignore_ascii_case(to))
                && b.include
                    .as_ref()
                    .is_some_and(|inc| inc.iter().any(|i| i.eq_ignore_ascii_case(to))));
        if clash {
            cx.err(
                r.name.span(),
                format!("route {name:?}: `body.rename` maps {from:?} to {to:?}, which is already a field name in the body (JSON keys must be unique)"),
            );
        }
        targets.push(to.clone());
    }
    BodySpec {
        format: b.format,
        include: b.include.clone(),
        exclude: b.exclude.clone(),
        rename: b
            .rename
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
    }
}
