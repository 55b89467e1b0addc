//! Mapping files: which AMI event becomes which AMQP message.
//!
//! Operators decide routing by editing TOML files in `mappings/`
//! (docs/mapping.md describes the format). This module turns those files
//! into a [`Router`]: [`schema`] is the file format, [`template`] the
//! `{Field|filter}` language, [`load`] validation with `file:line:col`
//! errors, [`router`] the compiled, indexed rules that map one event to
//! zero or more [`Outgoing`] messages.

pub(crate) mod config;
pub(crate) mod load;
pub(crate) mod push_down;
pub(crate) mod reload;
pub(crate) mod router;
pub(crate) mod schema;
pub(crate) mod template;

pub use load::{Diagnostic, LoadError, load_dir, load_dirs, load_files, load_str, mapping_files};
pub use push_down::{Feed as PushDownFeed, PushDown};
pub use reload::{Mappings, ReloadOutcome};
pub use router::{EventCtx, MessageProps, Outgoing, Render, RouteError, RouteOutcome, Router};
pub use template::{FILTERS, Lookup, Template};
#[cfg(test)]
mod tests;
