//! Reconnect timing shared by the AMI client and the AMQP side.

use std::time::Duration;

use rand::Rng;

/// Reconnect timing: the delay starts at `initial`, doubles after each
/// failed attempt up to `max`, and each wait is randomised by ±`jitter`
/// (a fraction, 0.2 = ±20 %).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt` (0 = first retry), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let j = self.jitter.clamp(0.0, 1.0);
        let factor = if j > 0.0 {
            rand::rng().random_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        base.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: 0.0,
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(10), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
        let j = Backoff { jitter: 0.5, ..b };
        for _ in 0..100 {
            let d = j.delay(1);
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(300),
                "{d:?}"
            );
        }
    }
}
