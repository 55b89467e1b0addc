//! Clocks and timestamp formats: every place that turns a `SystemTime`
//! into numbers or text for the outside world uses these.

use std::time::{SystemTime, UNIX_EPOCH};

/// Sleeps until `deadline`, or forever without one: the arm of a
/// `select!` for an optional timer.
pub async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Microseconds since the Unix epoch; 0 for a time before it.
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The current time in microseconds since the Unix epoch.
pub fn now_unix_micros() -> u64 {
    unix_micros(SystemTime::now())
}

/// `1795730181.136000`: seconds and microseconds since the Unix epoch, as
/// Asterisk writes times in AMI (`Timestamp:` of events and of `Pong`).
pub fn ami_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// Appends `t` as RFC 3339 in UTC with milliseconds:
/// `2026-11-26T21:56:21.136Z`. A time before the epoch is the epoch.
pub fn rfc3339_millis(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let millis = d.subsec_millis();
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    // Written digit by digit: this runs once per event (the envelope's
    // `received_at`), and `format!` was a visible share of the event
    // path's profile.
    if (0..=9999).contains(&year) {
        push_digits(out, year as u32, 4);
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(year).as_bytes());
    }
    out.push(b'-');
    push_digits(out, month as u32, 2);
    out.push(b'-');
    push_digits(out, day as u32, 2);
    out.push(b'T');
    push_digits(out, (rem / 3600) as u32, 2);
    out.push(b':');
    push_digits(out, ((rem / 60) % 60) as u32, 2);
    out.push(b':');
    push_digits(out, (rem % 60) as u32, 2);
    out.push(b'.');
    push_digits(out, millis, 3);
    out.push(b'Z');
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for d in out[start..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rfc(t: SystemTime) -> String {
        let mut o = Vec::new();
        rfc3339_millis(t, &mut o);
        String::from_utf8(o).expect("ascii")
    }

    #[test]
    fn rfc3339_timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_730_181_136);
        assert_eq!(rfc(t), "2026-11-26T21:56:21.136Z");
        assert_eq!(rfc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29: a leap day of a century leap year.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc(leap), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        // The last moment of a year, and a year past 9999 (written in
        // full, with more than four digits).
        let eve = UNIX_EPOCH + Duration::from_millis(1_798_761_599_999);
        assert_eq!(rfc(eve), "2026-12-31T23:59:59.999Z");
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(rfc(far), "10000-01-01T00:00:00.000Z");
    }

    #[test]
    fn micros_and_ami_timestamps() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_730_181_136_042);
        assert_eq!(unix_micros(t), 1_795_730_181_136_042);
        assert_eq!(ami_timestamp(t), "1795730181.136042");
        assert_eq!(unix_micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(ami_timestamp(UNIX_EPOCH), "0.000000");
    }
}
