//! Mapping files: which AMI event becomes which AMQP message.
//!
//! Operators decide routing by editing TOML files in `mappings/`
//! (docs/mapping.md describes the format). This module turns those files
//! into a [`Router`]: [`schema`] is the file format, [`template`] the
//! `{Field|filter}` language, [`load`] validation with `file:line:col`
//! errors, [`router`] the compiled, indexed rules that map one event to
//! zero or more [`Outgoing`] messages.

pub mod config;
pub mod load;
pub mod reload;
pub mod router;
pub mod schema;
pub mod template;

pub use load::{Diagnostic, LoadError, load_dir, load_dirs, load_files, load_str};
pub use router::{EventCtx, MessageProps, Outgoing, RouteError, RouteOutcome, Router};
#[cfg(test)]
mod tests;
