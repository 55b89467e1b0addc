//! Log lines that input can trigger: rate-limited and with values made safe.
//!
//! Anything a peer sends (AMI bytes, AMQP request bodies and properties,
//! HTTP requests) can make the bridge log. Two rules keep that bounded:
//!
//! - **One line per interval per kind of warning.** A [`Throttle`] lets one
//!   line through per interval and counts what it held back, so the next
//!   line that goes through can say how many were suppressed. Counters
//!   (metrics) carry the full numbers; logs are for a human to notice.
//! - **Values are clipped and escaped.** [`clip`] cuts a value to a few
//!   hundred bytes and escapes control characters (CR, LF, ESC, NUL, …),
//!   so a value can neither flood the log nor forge a line of it nor drive
//!   a terminal.
//!
//! A warning site (the unit test `usage_as_documented` runs this):
//!
//! ```text
//! static BAD_INPUT: Throttle = Throttle::new(Duration::from_secs(10));
//! let value = "evil\r\nlevel=ERROR forged line";
//! if let Some(suppressed) = BAD_INPUT.allow() {
//!     tracing::warn!(value = %clip(value), suppressed, "bad input");
//! }
//! assert_eq!(clip(value).to_string(), "evil\\r\\nlevel=ERROR forged line");
//! ```

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many bytes of a value [`clip`] shows by default.
pub const CLIP_BYTES: usize = 200;

/// Lets one event through per interval; counts the others.
///
/// Lock-free and usable from a `static`, so a warning site needs no state
/// of its own: `static T: Throttle = Throttle::new(Duration::from_secs(10));`.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] of the last line let through, plus one
    /// (0 = never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    /// A throttle letting through one line per `interval`.
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held
    /// back since the last one; `None` (and one more counted) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A value shown at most [`CLIP_BYTES`] bytes long with control characters
/// escaped; see [`clip`].
#[derive(Clone, Copy)]
pub struct Clipped<'a> {
    text: &'a str,
    max: usize,
}

/// `text` as it may appear in a log line: control characters escaped
/// (`\r`, `\n`, `\t`, `\0`, `\x1b`, …), cut after [`CLIP_BYTES`] bytes with
/// `…(N bytes)` telling the full length.
pub fn clip(text: &str) -> Clipped<'_> {
    clip_to(text, CLIP_BYTES)
}

/// [`clip`] with another length.
pub fn clip_to(text: &str, max: usize) -> Clipped<'_> {
    Clipped { text, max }
}

/// Bytes that may not be UTF-8 (raw AMI input), read as Latin-1 like the
/// rest of the bridge does, clipped and escaped.
pub fn clip_bytes(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(CLIP_BYTES)];
    let latin1: String = shown.iter().map(|&b| b as char).collect();
    let mut out = clip_to(&latin1, usize::MAX).to_string();
    if bytes.len() > shown.len() {
        out.push_str(&format!("…({} bytes)", bytes.len()));
    }
    out
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut end = self.text.len().min(self.max);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        for c in self.text[..end].chars() {
            write_escaped(f, c)?;
        }
        if end < self.text.len() {
            write!(f, "…({} bytes)", self.text.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\r' => f.write_str("\\r"),
        '\n' => f.write_str("\\n"),
        '\t' => f.write_str("\\t"),
        '\0' => f.write_str("\\0"),
        '\\' => f.write_str("\\\\"),
        c if c.is_control() => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "{c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_as_documented() {
        static BAD_INPUT: Throttle = Throttle::new(Duration::from_secs(10));
        let value = "evil\r\nlevel=ERROR forged line";
        if let Some(suppressed) = BAD_INPUT.allow() {
            tracing::warn!(value = %clip(value), suppressed, "bad input");
        }
        assert_eq!(clip(value).to_string(), "evil\\r\\nlevel=ERROR forged line");
        assert_eq!(
            BAD_INPUT.allow(),
            None,
            "a second line within the interval is held back"
        );
    }

    #[test]
    fn throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.allow(), Some(1000));
        assert_eq!(t.allow(), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        let s = "a\r\nb\u{1b}[31mred\u{0}\u{7f}\\";
        assert_eq!(clip(s).to_string(), "a\\r\\nb\\x1b[31mred\\0\\x7f\\\\");
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary_with_the_length() {
        let s = "é".repeat(150); // 300 bytes
        let shown = clip(&s).to_string();
        assert!(shown.ends_with("…(300 bytes)"), "{shown}");
        assert_eq!(shown.chars().filter(|&c| c == 'é').count(), 100);
        assert_eq!(clip("short").to_string(), "short");
    }

    #[test]
    fn raw_bytes_are_latin1_clipped_and_escaped() {
        let mut b = b"Event: X\r\n\xff".to_vec();
        assert_eq!(clip_bytes(&b), "Event: X\\r\\n\u{ff}");
        b.resize(10_000, b'x');
        let shown = clip_bytes(&b);
        assert!(shown.ends_with("…(10000 bytes)"), "{shown}");
        assert!(shown.len() < 300);
    }
}
