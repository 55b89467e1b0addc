//! The consumer side of both runs: a durable queue bound with `#` to the
//! run's exchange, consumed (auto-ack) by this process, which matches each
//! message to its event by the seq in its `message_id`, checks its `type`,
//! and counts duplicates and messages out of order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ami2amqp::amqp::short;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use crate::Res;
use crate::outcome::Outcome;
use crate::setup::Setup;
use crate::trace::now_us;

/// Collects the deliveries of one queue.
pub(crate) struct Sink {
    ch: lapin::Channel,
    queue: String,
    tag: String,
    counts: Arc<Counts>,
}

/// What the consumer task saw, shared with the [`Sink`].
struct Counts {
    /// Delivery time (µs) of each event's message, 0 = not yet.
    deliver: Mutex<Vec<u64>>,
    count: AtomicUsize,
    wrong: AtomicUsize,
    dups: AtomicUsize,
    /// Deliveries with a lower seq than one delivered before (order lost).
    reordered: AtomicUsize,
}

impl Setup {
    /// Declares and binds `queue`, and consumes it in a task.
    pub(crate) async fn sink(&self, queue: &str) -> Res<Sink> {
        let ch = self
            .admin
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        declare_bound_queue(&ch, queue, &self.exchange, self.queue_version).await?;
        let tag = format!("{queue}.consumer");
        let mut consumer = ch
            .basic_consume(
                short(queue),
                short(&tag),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consume: {e}"))?;
        let n = self.names.len();
        let counts = Arc::new(Counts {
            deliver: Mutex::new(vec![0u64; n]),
            count: AtomicUsize::new(0),
            wrong: AtomicUsize::new(0),
            dups: AtomicUsize::new(0),
            reordered: AtomicUsize::new(0),
        });
        let (c2, names) = (counts.clone(), self.names.clone());
        tokio::spawn(async move {
            let mut last = 0usize;
            while let Some(Ok(d)) = consumer.next().await {
                c2.record(&d, &names, &mut last);
            }
        });
        Ok(Sink {
            ch,
            queue: queue.to_string(),
            tag,
            counts,
        })
    }
}

/// The run's durable queue (`x-queue-version` as asked, and an expiry as a
/// safety net) bound with `#` to `exchange`.
async fn declare_bound_queue(
    ch: &lapin::Channel,
    queue: &str,
    exchange: &str,
    queue_version: i64,
) -> Res<()> {
    let mut args = FieldTable::default();
    args.insert(
        short("x-queue-version"),
        AMQPValue::LongLongInt(queue_version),
    );
    // A safety net: a queue left by a killed bench goes away by itself.
    args.insert(short("x-expires"), AMQPValue::LongLongInt(600_000));
    ch.queue_declare(
        short(queue),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map_err(|e| format!("declare queue: {e}"))?;
    ch.queue_bind(
        short(queue),
        short(exchange),
        short("#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| format!("bind: {e}"))
}

impl Counts {
    /// Accounts one delivery; `last` is the highest seq seen so far.
    fn record(&self, d: &Delivery, names: &[String], last: &mut usize) {
        let t = now_us();
        let kind = d.properties.kind().as_ref().map(|k| k.as_str().to_string());
        if kind.as_deref() == Some("BridgeStatus") {
            return; // the bridge's connected/stopped messages
        }
        let seq = d
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().rsplit(':').nth(1)?.parse::<usize>().ok());
        let Some(seq) = seq.filter(|&s| s >= 1 && s <= names.len()) else {
            self.wrong.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if kind.as_deref() != Some(names[seq - 1].as_str()) {
            self.wrong.fetch_add(1, Ordering::Relaxed);
        }
        if seq < *last {
            self.reordered.fetch_add(1, Ordering::Relaxed);
        }
        *last = (*last).max(seq);
        let mut v = self.deliver.lock().unwrap_or_else(|p| p.into_inner());
        if v[seq - 1] != 0 {
            self.dups.fetch_add(1, Ordering::Relaxed);
        } else {
            v[seq - 1] = t;
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Sink {
    /// Waits until every event's message arrived (or `deadline`).
    pub(crate) async fn wait_all(&self, n: usize, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.counts.count.load(Ordering::Relaxed) >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn deliveries(&self) -> Vec<u64> {
        self.counts
            .deliver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds to `o`'s notes what went wrong at the consumer.
    pub(crate) fn note(&self, o: &mut Outcome) {
        let n = self.counts.count.load(Ordering::Relaxed);
        if n < o.n {
            o.notes
                .push(format!("only {n} of {} messages reached the consumer", o.n));
        }
        let w = self.counts.wrong.load(Ordering::Relaxed);
        if w > 0 {
            o.notes
                .push(format!("{w} messages did not match their event (type/seq)"));
        }
        let d = self.counts.dups.load(Ordering::Relaxed);
        if d > 0 {
            o.notes.push(format!("{d} duplicate deliveries"));
        }
        let r = self.counts.reordered.load(Ordering::Relaxed);
        if r > 0 {
            o.notes.push(format!("{r} messages arrived out of order"));
        }
    }

    pub(crate) async fn close(self) {
        let _ = self
            .ch
            .basic_cancel(short(&self.tag), BasicCancelOptions::default())
            .await;
        let _ = self
            .ch
            .queue_delete(short(&self.queue), QueueDeleteOptions::default())
            .await;
        let _ = self.ch.close(200, short("bye")).await;
    }
}
