//! What one side did in one scenario, as the report reads it.

use crate::stats::{Pcts, Sample};

/// What one side did in one scenario.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) n: usize,
    /// Start of the clock (µs since the epoch).
    pub(crate) start_us: u64,
    /// Last delivery at the consumer.
    pub(crate) last_delivery_us: u64,
    /// Raw: last confirm. Bridge: when /metrics first showed every
    /// message confirmed (polled).
    pub(crate) last_confirm_us: Option<u64>,
    pub(crate) cpu_s: f64,
    /// Context switches of the process's threads during the run.
    pub(crate) ctx_switches: u64,
    pub(crate) hwm: Option<u64>,
    pub(crate) rss_idle: Option<u64>,
    /// Bridge only: `spool_fsyncs_total` at the end of the run.
    pub(crate) spool_fsyncs: Option<f64>,
    /// Arrival → consumer delivery.
    pub(crate) e2e: Pcts,
    /// Raw: publish → confirm (exact). Bridge: read → confirm (histogram).
    pub(crate) confirm: Pcts,
    pub(crate) confirm_from_histogram: bool,
    /// Arrivals and deliveries (for the backlog).
    pub(crate) arrivals: Vec<u64>,
    pub(crate) delivered: Vec<u64>,
    /// Bridge only: AMI send checks.
    pub(crate) send: Option<SendCheck>,
    /// Bridge only: /metrics samples.
    pub(crate) samples: Vec<Sample>,
    pub(crate) notes: Vec<String>,
    pub(crate) ok: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SendCheck {
    /// First to last event handed to the bridge's socket, s.
    pub(crate) duration: f64,
    /// Largest (event handed over − its place in the schedule), ms.
    pub(crate) max_lag_ms: f64,
    /// Where in the schedule (s) the worst lag was.
    pub(crate) max_lag_at_s: f64,
    /// Longest wait in one write to the bridge's socket (ms), when (s after
    /// the first event), and all waits together (ms).
    pub(crate) longest_write_ms: f64,
    pub(crate) longest_write_at_s: f64,
    pub(crate) write_wait_ms: f64,
    /// When /metrics `ami_events_total` first showed every event, s after
    /// the first event.
    pub(crate) read_all_s: Option<f64>,
}

impl Outcome {
    pub(crate) fn throughput(&self) -> f64 {
        let d = self.last_delivery_us.saturating_sub(self.start_us) as f64 / 1e6;
        if d > 0.0 { self.n as f64 / d } else { 0.0 }
    }
    pub(crate) fn throughput_confirm(&self) -> Option<f64> {
        let d = self.last_confirm_us?.saturating_sub(self.start_us) as f64 / 1e6;
        (d > 0.0).then(|| self.n as f64 / d)
    }
    pub(crate) fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_s * 1e6 / self.n.max(1) as f64
    }
}
