//! Deleting what a test created on the shared broker, also when it panics.
//!
//! The shared node outlives every test run: a durable queue or exchange a
//! test leaves behind stays there for good, and enough of them make the
//! node slow to boot (CI's took over 60 s with 1555 durable queues). A test
//! that creates queues or exchanges there (itself, or through a bridge it
//! runs) records their names in a [`BrokerCleanup`], which deletes exactly
//! those names when it is dropped: at the end of the test, or while a
//! failing test unwinds. It never deletes a name nobody recorded, so names
//! shared by several runs (`ami.unroutable`, `ami.events`) are never
//! recorded: only names made unique with [`super::procs::unique`].
//!
//! Drop the processes that use the names (a bridge's [`super::procs::Proc`])
//! before the guard: a bridge still running would declare them again when
//! it notices. Locals drop in reverse order, so declaring the guard (or the
//! setup holding it) before starting the bridge is enough.
//!
//! `Drop` cannot await: it connects from a thread of its own with its own
//! runtime and waits for it (at most [`LIMIT`]), so it works from sync
//! tests, from any kind of tokio test, and during a panic.

use std::sync::Mutex;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};

use super::broker::shared_amqp_url;

/// How long a cleanup may take in all (connect + deletes).
pub const LIMIT: Duration = Duration::from_secs(15);

/// Queue and exchange names to delete from one broker on drop.
pub struct BrokerCleanup {
    url: String,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

impl Default for BrokerCleanup {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerCleanup {
    /// For the shared node ([`shared_amqp_url`]).
    pub fn new() -> Self {
        Self::on(&shared_amqp_url())
    }

    /// For the broker at `url`.
    pub fn on(url: &str) -> Self {
        BrokerCleanup {
            url: url.to_string(),
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
        }
    }

    /// Records a queue to delete (whether or not it exists yet).
    pub fn queue(&self, name: &str) -> &Self {
        push(&self.queues, name);
        self
    }

    /// Records an exchange to delete (whether or not it exists yet).
    pub fn exchange(&self, name: &str) -> &Self {
        push(&self.exchanges, name);
        self
    }

    /// The names recorded so far: (queues, exchanges).
    pub fn names(&self) -> (Vec<String>, Vec<String>) {
        (take_copy(&self.queues), take_copy(&self.exchanges))
    }

    /// Deletes every recorded name now (queues first, then exchanges) and
    /// forgets them; `Err` lists what failed. Blocks (on a thread of its
    /// own), so it may be called from async code too.
    pub fn delete_now(&self) -> Result<(), String> {
        let queues = std::mem::take(&mut *lock(&self.queues));
        let exchanges = std::mem::take(&mut *lock(&self.exchanges));
        if queues.is_empty() && exchanges.is_empty() {
            return Ok(());
        }
        let url = self.url.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("runtime: {e}"))?;
            rt.block_on(async {
                tokio::time::timeout(LIMIT, delete(&url, &queues, &exchanges))
                    .await
                    .unwrap_or_else(|_| Err(format!("timed out after {LIMIT:?}")))
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the cleanup thread panicked".into()))
    }
}

impl Drop for BrokerCleanup {
    fn drop(&mut self) {
        if let Err(e) = self.delete_now() {
            // No panic in drop (it may run while unwinding): say it.
            eprintln!("BrokerCleanup: {e}");
        }
    }
}

fn lock(m: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn push(m: &Mutex<Vec<String>>, name: &str) {
    let mut v = lock(m);
    if !name.is_empty() && !v.iter().any(|n| n == name) {
        v.push(name.to_string());
    }
}

fn take_copy(m: &Mutex<Vec<String>>) -> Vec<String> {
    lock(m).clone()
}

/// Deletes `queues` then `exchanges` on one connection; a channel the
/// broker closes after a failed delete is replaced. Deleting a name that
/// does not exist succeeds in RabbitMQ.
async fn delete(url: &str, queues: &[String], exchanges: &[String]) -> Result<(), String> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let mut failed = Vec::new();
    let mut ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    for q in queues {
        if !ch.status().connected() {
            ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        }
        if let Err(e) = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            failed.push(format!("queue {q}: {e}"));
        }
    }
    for x in exchanges {
        if !ch.status().connected() {
            ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        }
        if let Err(e) = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await
        {
            failed.push(format!("exchange {x}: {e}"));
        }
    }
    let _ = conn.close(200, "cleanup".into()).await;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
