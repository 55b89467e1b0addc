//! Pure arithmetic over what was measured: latency percentiles, Prometheus
//! text, the bridge's /metrics samples, and the backlog over time.

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pcts {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

/// Percentiles (nearest rank) of durations in µs, reported in ms.
pub(crate) fn pcts(mut v: Vec<u64>) -> Pcts {
    if v.is_empty() {
        return Pcts::default();
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    Pcts {
        n: v.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: *v.last().unwrap_or(&0) as f64 / 1000.0,
    }
}

/// Sum of all series of a counter or gauge.
pub(crate) fn prom_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// A Prometheus histogram's cumulative buckets (le, count).
pub(crate) fn prom_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut v: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// `histogram_quantile` (linear within the bucket), in ms.
pub(crate) fn bucket_quantile(b: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in b {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0 * 1000.0);
            }
            let frac = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return Some((prev.0 + (le - prev.0) * frac) * 1000.0);
        }
        prev = (le, c);
    }
    None
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) t_us: u64,
    pub(crate) events: f64,
    pub(crate) published: f64,
    pub(crate) confirmed: f64,
    pub(crate) spool: f64,
}

pub(crate) fn e2e_latencies(arrivals: &[u64], delivered: &[u64]) -> Vec<u64> {
    arrivals
        .iter()
        .zip(delivered)
        .filter(|(a, d)| **a > 0 && **d > 0)
        .map(|(a, d)| d.saturating_sub(*a))
        .collect()
}

/// The first sample time at which `f` reached `v`, interpolated between
/// polls.
pub(crate) fn first_at_least(
    samples: &[Sample],
    f: impl Fn(&Sample) -> f64,
    v: f64,
) -> Option<u64> {
    let i = samples.iter().position(|x| f(x) >= v)?;
    if i == 0 {
        return Some(samples[0].t_us);
    }
    let (a, b) = (&samples[i - 1], &samples[i]);
    let (fa, fb) = (f(a), f(b));
    let frac = if fb > fa { (v - fa) / (fb - fa) } else { 1.0 };
    Some(a.t_us + ((b.t_us - a.t_us) as f64 * frac) as u64)
}

/// Backlog over time: arrived − delivered, sampled every 10 ms.
pub(crate) struct Backlog {
    pub(crate) peak: usize,
    pub(crate) peak_at_s: f64,
    /// Intervals (s after the start) with more than `threshold` waiting.
    pub(crate) episodes: Vec<(f64, f64, usize)>,
}

pub(crate) fn backlog(
    arrivals: &[u64],
    delivered: &[u64],
    start: u64,
    threshold: usize,
) -> Backlog {
    let mut a: Vec<u64> = arrivals.iter().copied().filter(|&x| x > 0).collect();
    let mut d: Vec<u64> = delivered.iter().copied().filter(|&x| x > 0).collect();
    a.sort_unstable();
    d.sort_unstable();
    let end = a
        .last()
        .copied()
        .unwrap_or(start)
        .max(d.last().copied().unwrap_or(start));
    let (mut i, mut j) = (0, 0);
    let mut b = Backlog {
        peak: 0,
        peak_at_s: 0.0,
        episodes: vec![],
    };
    let mut open: Option<(f64, usize)> = None;
    let mut t = start;
    while t <= end + 10_000 {
        while i < a.len() && a[i] <= t {
            i += 1;
        }
        while j < d.len() && d[j] <= t {
            j += 1;
        }
        let q = i.saturating_sub(j);
        let ts = t.saturating_sub(start) as f64 / 1e6;
        if q > b.peak {
            b.peak = q;
            b.peak_at_s = ts;
        }
        match (&mut open, q > threshold) {
            (None, true) => open = Some((ts, q)),
            (Some((_, p)), true) => *p = (*p).max(q),
            (Some((s0, p)), false) => {
                b.episodes.push((*s0, ts, *p));
                open = None;
            }
            (None, false) => {}
        }
        t += 10_000;
    }
    if let Some((s0, p)) = open {
        b.episodes
            .push((s0, end.saturating_sub(start) as f64 / 1e6, p));
    }
    b
}
