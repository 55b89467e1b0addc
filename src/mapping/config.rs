//! `[mappings]`: where the mapping files are (docs/config.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::doc::documented;

documented! {
    /// Where the mapping files are (docs/mapping.md describes them).
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct MappingsConfig {
        /// One directory; with neither dir nor dirs: "mappings" (relative to
        /// the working directory).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub dir: Option<PathBuf>,
        /// Several directories, in order: later ones add files or replace the
        /// files of the same name (["mappings", "mappings/examples/x"]).
        /// Give dir or dirs, not both.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub dirs: Option<Vec<PathBuf>>,
        /// Reload when a file in one of the directories changes (SIGHUP always
        /// reloads).
        pub watch: bool,
    }
}

impl Default for MappingsConfig {
    fn default() -> Self {
        MappingsConfig {
            dir: None,
            dirs: None,
            watch: true,
        }
    }
}

impl MappingsConfig {
    /// The directories to load, in order (`dir`, `dirs`, or `mappings`).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match (&self.dir, &self.dirs) {
            (_, Some(v)) => v.clone(),
            (Some(d), None) => vec![d.clone()],
            (None, None) => vec![PathBuf::from("mappings")],
        }
    }

    /// The rules [`Self::dirs`] relies on: (key, message) of the problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match (&self.dir, &self.dirs) {
            (Some(_), Some(_)) => Err((
                "mappings.dirs",
                "give `dir` or `dirs`, not both (`dirs` lists every directory, the default set first)"
                    .into(),
            )),
            (_, Some(v)) if v.is_empty() => Err((
                "mappings.dirs",
                "is empty: list at least one directory (e.g. [\"mappings\"])".into(),
            )),
            _ => Ok(()),
        }
    }
}
