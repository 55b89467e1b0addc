//! SIGHUP reloads the mapping set. Alone in its own test binary because the
//! signal goes to the whole process.

use std::time::Duration;

use ami2amqp::mapping::{Mappings, ReloadOutcome};
use tokio::sync::mpsc;

#[tokio::test]
async fn sighup_reloads_the_mapping_set() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("10-a.toml");
    std::fs::write(
        &f,
        "[[route]]\nname = \"a\"\nevents = [\"*\"]\nexchange = \"x\"\nrouting_key = \"{Event}\"\n",
    )
    .unwrap();
    let m = Mappings::load(&[dir.path().to_path_buf()]).unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let task = m
        .spawn_watcher(false, Duration::from_millis(50), Some(tx))
        .unwrap();
    let pid = std::process::id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a reload within 10 s")
        .expect("an outcome");
    assert!(matches!(o, ReloadOutcome::Applied { routes: 1 }), "{o:?}");
    task.abort();
}
