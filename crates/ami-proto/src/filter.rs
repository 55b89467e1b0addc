//! Event filters as Asterisk applies them to a manager session.
//!
//! A session (or a user in `manager.conf`) may hold filters that decide
//! which events it is sent; the `Filter` action adds one. This module is
//! that logic, read from Asterisk 22's `main/manager.c`
//! (`manager_add_filter`, `filter_cmp_fn`, `should_send_event`), with no
//! I/O, so that an AMI-compatible listener filters exactly as Asterisk
//! does:
//!
//! - A filter is either **legacy** — a POSIX extended regular expression
//!   over the whole event text, CRLFs included, `!` in front making it an
//!   exclude filter — or **advanced** (`MatchCriteria:` of the `Filter`
//!   action, `eventfilter(...)` in `manager.conf`): any of
//!   `action(include|exclude)`, `name(<event>)`, `header(<name>)` and
//!   `method(regex|exact|starts_with|ends_with|contains|none)`.
//! - The set decides: no filters → every event; include filters only → an
//!   event one of them matches; exclude filters only → an event none of
//!   them matches; both → one include matches and no exclude does.
//! - Regexes: Asterisk compiles with `REG_EXTENDED` and no `REG_NEWLINE`,
//!   so `.` matches a line break and `^`/`$` anchor the whole text. The
//!   Rust `regex` crate is used with the same settings, byte-wise.
//!   Where the two dialects differ (GNU back-references such as `\1` are
//!   refused here; Perl classes such as `\d` are accepted here), the
//!   filter is refused or accepted accordingly; the facade docs list it.
//!
//! Filters only ever apply to events: responses and list items are not
//! filtered (that is the caller's business).

use regex::bytes::{Regex, RegexBuilder};

/// Compiled regexes are bounded: a hostile pattern cannot take more memory
/// than this (it fails to compile instead).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a filter was refused, with the reply Asterisk gives for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The criteria or pattern are not a filter (Asterisk's
    /// `FILTER_FORMAT_ERROR`); the text says what is wrong.
    #[error("filter formatted incorrectly: {0}")]
    Format(&'static str),
    /// The pattern is not a regular expression this engine accepts
    /// (Asterisk's `FILTER_COMPILE_FAIL`).
    #[error("filter did not compile: {0}")]
    Compile(String),
}

impl FilterError {
    /// The `Message:` of Asterisk's error response to a `Filter` action.
    pub fn asterisk_message(&self) -> &'static str {
        match self {
            FilterError::Format(_) => {
                "Filter was formatted incorrectly.  Check the syntax of the filter given."
            }
            FilterError::Compile(_) => {
                "Filter did not compile.  Check the syntax of the filter given."
            }
        }
    }
}

/// How a filter compares its pattern with the text it looks at.
#[derive(Debug, Clone)]
enum Method {
    Regex(Regex),
    Exact(Vec<u8>),
    StartsWith(Vec<u8>),
    EndsWith(Vec<u8>),
    Contains(Vec<u8>),
    /// Matches whatever passes the name/header conditions.
    None,
}

/// Which method an advanced filter asked for, before compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MethodKind {
    Regex,
    Exact,
    StartsWith,
    EndsWith,
    Contains,
    None,
}

impl Method {
    fn matches(&self, text: &[u8]) -> bool {
        match self {
            Method::Regex(r) => r.is_match(text),
            Method::Exact(p) => text == p.as_slice(),
            Method::StartsWith(p) => text.starts_with(p),
            Method::EndsWith(p) => text.ends_with(p),
            Method::Contains(p) => memchr::memmem::find(text, p).is_some(),
            Method::None => true,
        }
    }
}

/// One event filter.
#[derive(Debug, Clone)]
pub struct EventFilter {
    exclude: bool,
    /// Only events of this name (compared exactly, as Asterisk compares
    /// the name's hash).
    name: Option<Vec<u8>>,
    /// Only the values of lines starting with this (`Header:`).
    header: Option<Vec<u8>>,
    method: Method,
}

/// The parts of an advanced filter's criteria.
#[derive(Default)]
struct Options {
    exclude: Option<bool>,
    name: Option<Vec<u8>>,
    header: Option<Vec<u8>>,
    method: Option<MethodKind>,
}

impl EventFilter {
    /// A filter as the `Filter` action gives it: `MatchCriteria` (absent or
    /// empty: a legacy filter) and `Filter` (the pattern; a leading `!`
    /// makes an exclude filter unless `action(...)` says otherwise).
    pub fn new(match_criteria: Option<&str>, pattern: &str) -> Result<Self, FilterError> {
        let (bang, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let criteria = match_criteria.filter(|c| !c.is_empty());
        let Some(criteria) = criteria else {
            if pattern.is_empty() {
                return Err(FilterError::Format("a legacy filter needs a pattern"));
            }
            return Ok(EventFilter {
                exclude: bang,
                name: None,
                header: None,
                method: Method::Regex(compile(pattern)?),
            });
        };
        // Asterisk wraps MatchCriteria as `eventfilter(<criteria>)` and
        // parses what follows the first `(`.
        let opts = parse_options(&format!("{criteria})"))?;
        let kind = opts.method.unwrap_or(MethodKind::None);
        check_combination(&opts, kind, pattern)?;
        Ok(EventFilter {
            exclude: opts.exclude.unwrap_or(bang),
            name: opts.name,
            header: opts.header,
            method: method(kind, pattern)?,
        })
    }

    /// A filter written the way `manager.conf`'s `eventfilter` lines and
    /// the facade's preset `filters` are: a legacy pattern (`"!Event:
    /// VarSet"`).
    pub fn legacy(pattern: &str) -> Result<Self, FilterError> {
        EventFilter::new(None, pattern)
    }

    /// True for an exclude filter.
    pub fn is_exclude(&self) -> bool {
        self.exclude
    }

    /// Whether this filter matches the event `name` whose whole text
    /// (every line with its CRLF, the final blank line included) is `text`.
    pub fn matches(&self, name: &[u8], text: &[u8]) -> bool {
        if self.name.as_deref().is_some_and(|n| n != name) {
            return false;
        }
        let Some(header) = &self.header else {
            return self.method.matches(text);
        };
        lines(text).any(|line| {
            let Some(rest) = line.strip_prefix(header.as_slice()) else {
                return false;
            };
            let value = skip_blanks(rest);
            !value.is_empty() && self.method.matches(value)
        })
    }
}

fn compile(pattern: &str) -> Result<Regex, FilterError> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .dot_matches_new_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| FilterError::Compile(short_reason(&e.to_string())))
}

/// The regex crate's error ends with the reason on its last line.
fn short_reason(s: &str) -> String {
    s.lines()
        .last()
        .unwrap_or(s)
        .trim()
        .chars()
        .take(200)
        .collect()
}

fn method(kind: MethodKind, pattern: &str) -> Result<Method, FilterError> {
    let p = || pattern.as_bytes().to_vec();
    Ok(match kind {
        MethodKind::Regex => Method::Regex(compile(pattern)?),
        MethodKind::Exact => Method::Exact(p()),
        MethodKind::StartsWith => Method::StartsWith(p()),
        MethodKind::EndsWith => Method::EndsWith(p()),
        MethodKind::Contains => Method::Contains(p()),
        MethodKind::None => Method::None,
    })
}

/// The rules Asterisk checks once all options are read.
fn check_combination(opts: &Options, kind: MethodKind, pattern: &str) -> Result<(), FilterError> {
    let any = opts.exclude.is_some()
        || opts.name.is_some()
        || opts.header.is_some()
        || opts.method.is_some();
    if !any {
        return Err(FilterError::Format(
            "no action, name, header or method option",
        ));
    }
    if pattern.is_empty() && kind != MethodKind::None {
        return Err(FilterError::Format("this method needs a pattern"));
    }
    if !pattern.is_empty() && kind == MethodKind::None {
        return Err(FilterError::Format("method none takes no pattern"));
    }
    if opts.name.is_none() && opts.header.is_none() && kind == MethodKind::None {
        return Err(FilterError::Format(
            "no name or header option and no pattern",
        ));
    }
    Ok(())
}

/// Parses `opt(arg),opt(arg))`: what follows the `(` of `eventfilter(`.
/// Options are separated by spaces, commas and `)`, in any order; each is
/// recognised by its first letters, as Asterisk does.
fn parse_options(after_paren: &str) -> Result<Options, FilterError> {
    let body = after_paren.trim();
    if body.is_empty() || !body.ends_with(')') {
        return Err(FilterError::Format("options not formatted correctly"));
    }
    let mut opts = Options::default();
    for option in body.split([' ', ',', ')']).filter(|o| !o.is_empty()) {
        parse_option(option, &mut opts)?;
    }
    Ok(opts)
}

fn parse_option(option: &str, opts: &mut Options) -> Result<(), FilterError> {
    let arg = || {
        option
            .split_once('(')
            .map(|(_, a)| a.trim())
            .filter(|a| !a.is_empty())
            .ok_or(FilterError::Format("an option without its (argument)"))
    };
    if option.starts_with("action") {
        opts.exclude = Some(match arg()? {
            "include" => false,
            "exclude" => true,
            _ => return Err(FilterError::Format("action is neither include nor exclude")),
        });
    } else if option.starts_with("name") {
        opts.name = Some(arg()?.as_bytes().to_vec());
    } else if option.starts_with("header") {
        let h = arg()?;
        let mut h = h.as_bytes().to_vec();
        if !h.ends_with(b":") {
            h.push(b':');
        }
        opts.header = Some(h);
    } else if option.starts_with("method") {
        opts.method = Some(method_kind(arg()?)?);
    } else {
        return Err(FilterError::Format("unknown filter option"));
    }
    Ok(())
}

fn method_kind(s: &str) -> Result<MethodKind, FilterError> {
    Ok(match s {
        "regex" => MethodKind::Regex,
        "exact" => MethodKind::Exact,
        "starts_with" => MethodKind::StartsWith,
        "ends_with" => MethodKind::EndsWith,
        "contains" => MethodKind::Contains,
        "none" => MethodKind::None,
        _ => return Err(FilterError::Format("unknown method")),
    })
}

/// The lines of an event's text without their line ends, as Asterisk's
/// `ast_read_line_from_buffer` gives them.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fn skip_blanks(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// A session's filters: which events it is sent.
#[derive(Debug, Clone, Default)]
pub struct FilterSet {
    include: Vec<EventFilter>,
    exclude: Vec<EventFilter>,
}

impl FilterSet {
    /// Adds a filter (filters are only ever added, as in Asterisk).
    pub fn add(&mut self, f: EventFilter) {
        if f.exclude {
            self.exclude.push(f);
        } else {
            self.include.push(f);
        }
    }

    /// How many filters the set holds.
    pub fn len(&self) -> usize {
        self.include.len() + self.exclude.len()
    }

    /// True when the set holds no filter (every event passes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an event passes the set: Asterisk's `should_send_event`.
    pub fn should_send(&self, name: &[u8], text: &[u8]) -> bool {
        let included =
            self.include.is_empty() || self.include.iter().any(|f| f.matches(name, text));
        included && !self.exclude.iter().any(|f| f.matches(name, text))
    }
}

#[cfg(test)]
mod tests;
