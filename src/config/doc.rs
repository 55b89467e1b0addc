//! Doc comments kept beside each config field, for `ami2amqp config example`.
//!
//! A section's struct is declared inside [`documented!`]: the struct comes
//! out unchanged, and its [`Documented`] impl lists every field with the
//! text of its `///` comment, so the comment written beside a field is the
//! one the generated example prints (no second copy to keep in step).
//! [`render`] prints a section from its `Default` (serialized) and those
//! comments.

use std::fmt::Write;

use serde::Serialize;

/// A config section whose fields carry their documentation.
pub trait Documented: Serialize {
    /// The section's own doc comment.
    const DOC: &'static str;
    /// `(key, doc comment)` of every field, in declaration order.
    const KEYS: &'static [(&'static str, &'static str)];
}

/// The text of one `#[doc = "…"]` attribute plus a newline; nothing for
/// any other attribute.
macro_rules! doc_line {
    (doc = $d:literal) => {
        concat!($d, "\n")
    };
    ($($t:tt)*) => {
        ""
    };
}
pub(crate) use doc_line;

/// Declares a config struct and its [`Documented`] impl (field names as
/// keys: do not `rename` fields of a documented struct).
macro_rules! documented {
    (
        $(#[$($sattr:tt)*])*
        $vis:vis struct $name:ident {
            $( $(#[$($fattr:tt)*])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$($sattr)*])*
        $vis struct $name {
            $( $(#[$($fattr)*])* $fvis $field: $ty ),*
        }
        impl $crate::config::doc::Documented for $name {
            const DOC: &'static str =
                concat!($( $crate::config::doc::doc_line!($($sattr)*) ),*);
            const KEYS: &'static [(&'static str, &'static str)] = &[$(
                (
                    stringify!($field),
                    concat!($( $crate::config::doc::doc_line!($($fattr)*) ),*),
                )
            ),*];
        }
    };
}
pub(crate) use documented;

/// `text` as `# ` comment lines (one leading space of each doc line
/// dropped, intra-doc link brackets kept as written).
pub fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        let line = line.strip_prefix(' ').unwrap_or(line);
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            let _ = writeln!(out, "# {line}");
        }
    }
}

/// The keys `value` serializes to, in no particular order.
#[cfg(test)]
pub fn serialized_keys<T: Serialize>(value: &T) -> Result<Vec<String>, String> {
    let t = toml::Table::try_from(value).map_err(|e| e.to_string())?;
    Ok(t.keys().cloned().collect())
}

/// Prints `header` (`[amqp]`, `[[server]]`) and every key of `value` with
/// its doc comment above it. A key `value` does not serialize (an
/// `Option` that is `None`) is printed commented out, as not set.
pub fn render<T: Documented>(out: &mut String, header: &str, value: &T) -> Result<(), String> {
    let table = toml::Table::try_from(value).map_err(|e| format!("{header}: {e}"))?;
    comment(out, T::DOC);
    let _ = writeln!(out, "{header}");
    for (key, doc) in T::KEYS {
        out.push('\n');
        comment(out, doc);
        match table.get(*key) {
            Some(v) => {
                let _ = writeln!(out, "{key} = {v}");
            }
            None => {
                let _ = writeln!(out, "# {key} = (not set)");
            }
        }
    }
    out.push('\n');
    Ok(())
}
