//! Templates: `{server}.call.{Event}.{Channel|tech|lower}`.
//!
//! A template is literal text with `{NAME|filter|filter:arg}` holes. It is
//! parsed once when the mapping files load (so a typo in a filter name is a
//! load error with a line number, not a surprise at 3 a.m.) and rendered per
//! event with no parsing at all.
//!
//! Names resolve in this order: capture-group variables of the route's
//! `when` regexes, then `server`, `seq`, `Event`, then event fields
//! (case-insensitively, as Asterisk compares header names). A name that
//! resolves to nothing is an error for that message unless a `default:`
//! filter supplies a value: an empty word in a routing key is how events end
//! up somewhere nobody listens.
//!
//! `{{` and `}}` stand for literal braces.
//!
//! ## Routing keys
//!
//! In a routing key the dots written in the template are the word
//! separators. Values put into a key are made safe first
//! ([`sanitize_key_value`]): `.` becomes `_` (so `PJSIP/10.0.0.1-00000001`
//! stays one word), `*` and `#` (topic wildcards) become `_`, and an empty
//! word becomes `_`. A key longer than 255 bytes is cut deterministically
//! ([`shorten_key`]).

use std::fmt;

/// A filter applied to a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Lower,
    Upper,
    /// Used when the value is missing *or empty*.
    Default(String),
    /// The part of a channel name before `/` (`PJSIP/alice-0001` → `PJSIP`).
    Tech,
    /// The channel name without technology and the `-0000abcd` suffix
    /// (`PJSIP/alice-00000001` → `alice`; `Local/100@test-00000001;1` →
    /// `100@test`).
    Peer,
    /// Every occurrence of the first argument replaced by the second.
    Replace(String, String),
    /// The text before the first `,` (`call,all` → `call`).
    First,
    /// At most N characters.
    Truncate(usize),
}

/// The filter names, for error messages.
pub const FILTERS: &str =
    "lower, upper, default:VALUE, tech, peer, replace:FROM:TO, first, truncate:N";

impl Filter {
    fn parse(s: &str) -> Result<Filter, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a)),
            None => (s.trim(), None),
        };
        let no_arg = |f: Filter| match arg {
            None => Ok(f),
            Some(_) => Err(format!("filter `{name}` takes no argument")),
        };
        match name {
            "lower" => no_arg(Filter::Lower),
            "upper" => no_arg(Filter::Upper),
            "tech" => no_arg(Filter::Tech),
            "peer" => no_arg(Filter::Peer),
            "first" => no_arg(Filter::First),
            "default" => Ok(Filter::Default(arg.unwrap_or("").to_string())),
            "replace" => {
                let a = arg.ok_or("filter `replace` needs `replace:FROM:TO`")?;
                let (from, to) = a
                    .split_once(':')
                    .ok_or("filter `replace` needs `replace:FROM:TO`")?;
                if from.is_empty() {
                    return Err("filter `replace` needs a non-empty FROM".into());
                }
                Ok(Filter::Replace(from.to_string(), to.to_string()))
            }
            "truncate" => {
                let n = arg
                    .and_then(|a| a.trim().parse::<usize>().ok())
                    .ok_or("filter `truncate` needs `truncate:N` with a number N")?;
                Ok(Filter::Truncate(n))
            }
            other => Err(format!("unknown filter `{other}` (known: {FILTERS})")),
        }
    }

    fn apply(&self, v: &str) -> String {
        match self {
            Filter::Lower => v.to_lowercase(),
            Filter::Upper => v.to_uppercase(),
            Filter::Default(d) => {
                if v.is_empty() {
                    d.clone()
                } else {
                    v.to_string()
                }
            }
            Filter::Tech => v.split_once('/').map_or(v, |(t, _)| t).to_string(),
            Filter::Peer => channel_peer(v).to_string(),
            Filter::Replace(a, b) => v.replace(a.as_str(), b),
            Filter::First => v.split(',').next().unwrap_or("").to_string(),
            Filter::Truncate(n) => v.chars().take(*n).collect(),
        }
    }
}

/// `PJSIP/alice-00000001` → `alice`, `Local/100@test-0000000a;2` → `100@test`.
fn channel_peer(v: &str) -> &str {
    let rest = v.split_once('/').map_or(v, |(_, r)| r);
    let rest = rest.split_once(';').map_or(rest, |(r, _)| r);
    match rest.rsplit_once('-') {
        Some((p, suffix))
            if !suffix.is_empty() && suffix.bytes().all(|c| c.is_ascii_hexdigit()) =>
        {
            p
        }
        _ => rest,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var { name: String, filters: Vec<Filter> },
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    source: String,
}

/// A template syntax error; `offset` is the byte offset in the template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where a template looks up names.
pub trait Lookup {
    fn lookup(&self, name: &str) -> Option<std::borrow::Cow<'_, str>>;
}

/// Why a template could not be rendered for one message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template `{template}`: no value for `{name}` (add `|default:…` if it may be missing)")]
pub struct RenderError {
    pub template: String,
    pub name: String,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'{' if b.get(i + 1) == Some(&b'{') => {
                    lit.push('{');
                    i += 2;
                }
                b'}' if b.get(i + 1) == Some(&b'}') => {
                    lit.push('}');
                    i += 2;
                }
                b'}' => {
                    return Err(TemplateError {
                        offset: i,
                        message: "`}` without `{` (write `}}` for a literal brace)".into(),
                    });
                }
                b'{' => {
                    let Some(close) = s[i + 1..].find('}') else {
                        return Err(TemplateError {
                            offset: i,
                            message: "`{` is never closed".into(),
                        });
                    };
                    let inner = &s[i + 1..i + 1 + close];
                    let mut pieces = inner.split('|');
                    let name = pieces.next().unwrap_or("").trim();
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(TemplateError {
                            offset: i + 1,
                            message: format!(
                                "`{{{inner}}}`: a name of letters, digits, `_` or `-` is expected before any `|`"
                            ),
                        });
                    }
                    let mut filters = Vec::new();
                    for f in pieces {
                        filters.push(Filter::parse(f).map_err(|message| TemplateError {
                            offset: i + 1,
                            message,
                        })?);
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var {
                        name: name.to_string(),
                        filters,
                    });
                    i += close + 2;
                }
                _ => {
                    let ch_len = s[i..].chars().next().map_or(1, |c| c.len_utf8());
                    lit.push_str(&s[i..i + ch_len]);
                    i += ch_len;
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            parts,
            source: s.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The byte offset (in the template source) of a `*` or `#` written in
    /// the literal text, if any.
    pub fn literal_wildcard(&self) -> Option<usize> {
        let mut in_hole = false;
        for (i, c) in self.source.char_indices() {
            match c {
                '{' => in_hole = true,
                '}' => in_hole = false,
                '*' | '#' if !in_hole => return Some(i),
                _ => {}
            }
        }
        None
    }

    /// True when the template has no `{…}` holes.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The names the template refers to.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { name, .. } => Some(name.as_str()),
            Part::Lit(_) => None,
        })
    }

    fn value<'a>(
        &self,
        name: &str,
        filters: &[Filter],
        env: &'a dyn Lookup,
    ) -> Result<std::borrow::Cow<'a, str>, RenderError> {
        let v = env.lookup(name);
        if filters.is_empty() {
            return v.ok_or_else(|| self.missing(name));
        }
        let has_default = filters.iter().any(|f| matches!(f, Filter::Default(_)));
        let mut cur: String = match v {
            Some(v) => v.into_owned(),
            None if has_default => String::new(),
            None => return Err(self.missing(name)),
        };
        for f in filters {
            cur = f.apply(&cur);
        }
        Ok(std::borrow::Cow::Owned(cur))
    }

    fn missing(&self, name: &str) -> RenderError {
        RenderError {
            template: self.source.clone(),
            name: name.to_string(),
        }
    }

    /// Renders as plain text (bodies, headers, properties).
    pub fn render(&self, env: &dyn Lookup, out: &mut String) -> Result<(), RenderError> {
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var { name, filters } => out.push_str(&self.value(name, filters, env)?),
            }
        }
        Ok(())
    }

    /// Renders as an AMQP routing key: values are made safe with
    /// [`sanitize_key_value`], empty words become `_`, and the result is cut
    /// to 255 bytes with [`shorten_key`].
    pub fn render_key(&self, env: &dyn Lookup, out: &mut String) -> Result<(), RenderError> {
        let start = out.len();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var { name, filters } => {
                    sanitize_key_value(&self.value(name, filters, env)?, out)
                }
            }
        }
        fix_empty_words(out, start);
        shorten_key(out, start);
        Ok(())
    }
}

/// Appends `v` to a routing key as part of one word: `.`, `*` and `#`
/// become `_`.
pub fn sanitize_key_value(v: &str, out: &mut String) {
    if !v.bytes().any(|c| matches!(c, b'.' | b'*' | b'#')) {
        out.push_str(v);
        return;
    }
    out.extend(v.chars().map(|c| match c {
        '.' | '*' | '#' => '_',
        c => c,
    }));
}

/// Replaces empty words (leading, trailing or doubled dots) with `_`.
fn fix_empty_words(key: &mut String, start: usize) {
    let s = &key[start..];
    if !(s.is_empty() || s.starts_with('.') || s.ends_with('.') || s.contains("..")) {
        return;
    }
    let fixed: Vec<&str> = s
        .split('.')
        .map(|w| if w.is_empty() { "_" } else { w })
        .collect();
    let fixed = fixed.join(".");
    key.truncate(start);
    key.push_str(&fixed);
}

/// The longest routing key AMQP allows, in bytes.
pub const MAX_KEY: usize = 255;

/// Cuts a key longer than 255 bytes: the first 238 bytes (at a character
/// boundary), then `~` and 16 hex digits of the FNV-1a 64-bit hash of the
/// whole key. The same long key always gives the same short key, and two
/// long keys that share a prefix still differ.
pub fn shorten_key(key: &mut String, start: usize) {
    let s = &key[start..];
    if s.len() <= MAX_KEY {
        return;
    }
    let hash = fnv1a64(s.as_bytes());
    let mut cut = MAX_KEY - 17;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    key.truncate(start + cut);
    key.push_str(&format!("~{hash:016x}"));
}

/// FNV-1a, 64 bits: tiny, stable across versions and platforms.
pub fn fnv1a64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in b {
        h ^= c as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::collections::HashMap;

    struct Env(HashMap<&'static str, &'static str>);
    impl Lookup for Env {
        fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.get(name).map(|v| Cow::Borrowed(*v))
        }
    }

    fn env() -> Env {
        Env(HashMap::from([
            ("server", "pbx1"),
            ("Event", "Newchannel"),
            ("Channel", "PJSIP/10.0.0.1-00000001"),
            ("Local", "Local/100@test-0000000a;2"),
            ("Empty", ""),
            ("Star", "a*b#c"),
        ]))
    }

    fn key(t: &str) -> Result<String, RenderError> {
        let mut s = String::new();
        Template::parse(t).unwrap().render_key(&env(), &mut s)?;
        Ok(s)
    }

    #[test]
    fn filters() {
        assert_eq!(key("{Channel|tech|lower}").unwrap(), "pjsip");
        assert_eq!(key("{Channel|peer}").unwrap(), "10_0_0_1");
        assert_eq!(key("{Local|peer}").unwrap(), "100@test");
        assert_eq!(key("{Event|upper}").unwrap(), "NEWCHANNEL");
        assert_eq!(key("{Missing|default:none}").unwrap(), "none");
        assert_eq!(key("{Empty|default:none}").unwrap(), "none");
        assert_eq!(key("{Event|replace:chan:CHAN}").unwrap(), "NewCHANnel");
        assert_eq!(key("{Event|truncate:3}").unwrap(), "New");
    }

    #[test]
    fn key_values_cannot_add_words_or_wildcards() {
        assert_eq!(
            key("{server}.call.{Channel}").unwrap(),
            "pbx1.call.PJSIP/10_0_0_1-00000001"
        );
        assert_eq!(key("x.{Star}").unwrap(), "x.a_b_c");
        assert_eq!(key("{server}.{Empty}.end").unwrap(), "pbx1._.end");
        assert_eq!(key("{Empty}").unwrap(), "_");
    }

    #[test]
    fn missing_without_default_is_an_error() {
        let e = key("{server}.{Nope}").unwrap_err();
        assert_eq!(e.name, "Nope");
    }

    #[test]
    fn long_keys_are_cut_deterministically() {
        let long = "a".repeat(300);
        let mut k1 = long.clone();
        shorten_key(&mut k1, 0);
        let mut k2 = long.clone();
        shorten_key(&mut k2, 0);
        assert_eq!(k1, k2);
        assert_eq!(k1.len(), MAX_KEY);
        let mut k3 = format!("{long}b");
        shorten_key(&mut k3, 0);
        assert_ne!(k1, k3);
        // multibyte characters are not split
        let mut k4 = "é".repeat(200);
        shorten_key(&mut k4, 0);
        assert!(k4.len() <= MAX_KEY);
    }

    #[test]
    fn parse_errors() {
        assert!(
            Template::parse("{a|nope}")
                .unwrap_err()
                .message
                .contains("unknown filter `nope`")
        );
        assert!(Template::parse("{a").is_err());
        assert!(Template::parse("a}").is_err());
        assert!(Template::parse("{}").is_err());
        assert!(Template::parse("{a|replace:x}").is_err());
        let t = Template::parse("{{lit}}.{a}").unwrap();
        let mut s = String::new();
        t.render(&Env(HashMap::from([("a", "v")])), &mut s).unwrap();
        assert_eq!(s, "{lit}.v");
    }
}
