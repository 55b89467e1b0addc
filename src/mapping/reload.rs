//! Hot reload: a new mapping set goes live without a restart, or not at all.
//!
//! The running [`Router`] lives in an [`ArcSwap`]: the event path loads the
//! current pointer per batch (a couple of atomic operations, no lock) and a
//! reload replaces it in one step. A reload is triggered by a change in any
//! of the mappings directories (each watched with `notify`; later ones
//! overlay earlier ones, see [`super::load::overlay_files`]) or by SIGHUP,
//! the Unix convention operators already use. The new set is loaded and validated in
//! full first; if anything is wrong the errors are logged exactly as
//! `ami2amqp check` prints them and the running set stays in force. Editors
//! save files in several steps (truncate, write, rename), so file events are
//! debounced before loading.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::load::{LoadError, load_dirs, show_dirs};
use super::router::Router;

/// The live mapping set, shared by everyone who routes events.
#[derive(Clone)]
pub struct Mappings {
    /// The directories, later ones overlaying earlier ones.
    dirs: Vec<PathBuf>,
    current: Arc<ArcSwap<Router>>,
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The new set is live (its number of routes).
    Applied { routes: usize },
    /// The new set was invalid; the old one stays.
    Rejected(LoadError),
}

impl Mappings {
    /// Loads the merged files of `dirs` (later directories add files or
    /// replace files of the same name); fails when the initial set is
    /// invalid.
    pub fn load(dirs: &[PathBuf]) -> Result<Mappings, LoadError> {
        let r = load_dirs(dirs)?;
        Ok(Mappings {
            dirs: dirs.to_vec(),
            current: Arc::new(ArcSwap::from_pointee(r)),
        })
    }

    /// The set in force now. Hold the returned `Arc` for a batch of events,
    /// not forever: a reload only frees the old set when nobody holds it.
    pub fn current(&self) -> Arc<Router> {
        self.current.load_full()
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Loads the directories again and swaps the new set in if it is valid.
    pub fn reload(&self) -> ReloadOutcome {
        match load_dirs(&self.dirs) {
            Ok(r) => {
                let routes = r.len();
                self.current.store(Arc::new(r));
                crate::internal_events::mapping::MappingReloaded {
                    dirs: &show_dirs(&self.dirs),
                    routes,
                }
                .emit();
                ReloadOutcome::Applied { routes }
            }
            Err(e) => {
                crate::internal_events::mapping::MappingReloadRejected {
                    dirs: &show_dirs(&self.dirs),
                    error: &e,
                }
                .emit();
                ReloadOutcome::Rejected(e)
            }
        }
    }

    /// Watches every directory (when `watch_files`) and SIGHUP until the
    /// returned task is aborted.
    /// `outcomes` (optional) receives the result of every reload, for tests
    /// and status reporting.
    pub fn spawn_watcher(
        &self,
        watch_files: bool,
        debounce: Duration,
        outcomes: Option<mpsc::Sender<ReloadOutcome>>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let (tx, mut rx) = mpsc::channel::<()>(16);
        let file_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let relevant = ev
                    .paths
                    .iter()
                    .any(|p| p.extension().is_some_and(|x| x == "toml"));
                if relevant && !ev.kind.is_access() {
                    let _ = file_tx.try_send(());
                }
            }
        })
        .map_err(std::io::Error::other)?;
        if watch_files {
            for d in &self.dirs {
                watcher
                    .watch(d, RecursiveMode::NonRecursive)
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", d.display())))?;
            }
        } else {
            tracing::info!("mappings.watch = false: file changes are ignored, reload with SIGHUP");
        }
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            // The watcher stops when dropped: keep it in the task.
            let _watcher = watcher;
            loop {
                tokio::select! {
                    r = rx.recv() => {
                        if r.is_none() { break; }
                        // Debounce: wait until the files have been quiet.
                        while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
                        tracing::info!("mapping files changed; reloading");
                    }
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received; reloading mappings");
                    }
                }
                let outcome = this.reload();
                if let Some(o) = &outcomes {
                    let _ = o.send(outcome).await;
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "[[route]]\nname = \"a\"\nevents = [\"*\"]\nexchange = \"x\"\nrouting_key = \"{Event}\"\n";
    const GOOD2: &str = "[[route]]\nname = \"a\"\nevents = [\"*\"]\nexchange = \"x\"\nrouting_key = \"v2.{Event}\"\n[[route]]\nname = \"b\"\nevents = [\"*\"]\nexchange = \"y\"\nrouting_key = \"b\"\n";
    const BAD: &str = "[[route]]\nname = \"a\"\nevents = [\"*\"]\nexchange = \"x\"\nrouting_key = \"{Event|nope}\"\n";

    #[tokio::test]
    async fn file_change_swaps_valid_sets_and_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("10-a.toml");
        std::fs::write(&f, GOOD).unwrap();
        let m = Mappings::load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(m.current().len(), 1);
        let (tx, mut rx) = mpsc::channel(8);
        let task = m
            .spawn_watcher(true, Duration::from_millis(100), Some(tx))
            .unwrap();

        std::fs::write(&f, BAD).unwrap();
        let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match o {
            ReloadOutcome::Rejected(e) => {
                assert!(e.to_string().contains("unknown filter `nope`"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.current().len(), 1, "old set stays");

        std::fs::write(&f, GOOD2).unwrap();
        let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(o, ReloadOutcome::Applied { routes: 2 }), "{o:?}");
        assert_eq!(m.current().len(), 2);
        task.abort();
    }

    #[tokio::test]
    async fn a_change_in_a_later_directory_reloads_the_merged_set() {
        let base = tempfile::tempdir().unwrap();
        let over = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("10-a.toml"), GOOD).unwrap();
        std::fs::write(over.path().join("50-z.toml"), "# nothing yet\n").unwrap();
        let dirs = [base.path().to_path_buf(), over.path().to_path_buf()];
        let m = Mappings::load(&dirs).unwrap();
        assert_eq!(m.current().len(), 1);
        let (tx, mut rx) = mpsc::channel(8);
        let task = m
            .spawn_watcher(true, Duration::from_millis(100), Some(tx))
            .unwrap();

        // The overlay replaces 10-a.toml: its two routes replace the one.
        std::fs::write(over.path().join("10-a.toml"), GOOD2).unwrap();
        let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a reload within 10 s")
            .unwrap();
        assert!(matches!(o, ReloadOutcome::Applied { routes: 2 }), "{o:?}");
        assert_eq!(m.current().files()[0], over.path().join("10-a.toml"));

        // An error in the overlay names the overlay's file; the set stays.
        std::fs::write(over.path().join("10-a.toml"), BAD).unwrap();
        let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a reload within 10 s")
            .unwrap();
        match o {
            ReloadOutcome::Rejected(e) => {
                let at = format!("{}:5:", over.path().join("10-a.toml").display());
                assert!(e.to_string().starts_with(&at), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.current().len(), 2, "old set stays");
        task.abort();
    }
}
