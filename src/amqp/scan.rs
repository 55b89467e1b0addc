//! Finding the records of a spool segment, damaged or not: pure functions
//! over byte slices (no I/O), so that recovery can be property-tested.
//!
//! A record is `u32 length | u32 crc32(payload) | payload` (little endian).
//! A segment is a run of records. Damage (a flipped byte, a zeroed block, a
//! cut) makes one record fail its check; the scan then **resyncs**: it looks
//! at every later byte offset for a position where a whole record validates
//! (length within bounds, payload inside the segment, CRC matches, length
//! not zero) and goes on from there. What lies between is a [`Hole`].
//!
//! How many records a hole held cannot always be known (the lengths inside
//! it may be damaged). [`lost_in`] follows the length fields from the start
//! of the hole: if that chain lands exactly on the hole's end, it is the
//! number of records lost (exact when only payload or CRC bytes were hit, the
//! usual case of a flipped bit); otherwise the hole counts as one record (a
//! lower bound) — `spool_corrupt_bytes_total` then tells the size.
//!
//! A CRC-32 match on damaged bytes has a chance of 2⁻³² per offset tried, so
//! a resync that lands on a false record is possible in principle but not
//! expected in the life of a spool. Content made on purpose is another
//! matter: a message whose own bytes embed a well-formed record (length,
//! matching CRC, payload) would be found by a resync that starts inside
//! it, that is only if damage hits that very record. JSON bodies cannot
//! carry the NUL bytes a length field under 16 MiB needs; routing keys and
//! header values are built from AMI values and are not checked for them.

/// Bytes before a record's payload.
pub const HEADER: usize = 8;
/// Largest record accepted (a sanity bound when scanning).
pub const MAX_RECORD: u32 = 64 << 20;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The payload length of the record header at `off`, if it is within
/// bounds (the payload fits in `b`); the CRC is not checked.
fn framed_len(b: &[u8], off: usize) -> Option<usize> {
    let len = u32_at(b, off)?;
    if len > MAX_RECORD {
        return None;
    }
    let end = off.checked_add(HEADER)?.checked_add(len as usize)?;
    (end <= b.len()).then_some(len as usize)
}

/// The total size (header + payload) of a valid record at `off`. A record
/// is never empty: 8 zero bytes (a zeroed block, a hole in a sparse file)
/// would otherwise pass for one, so the writer never writes one.
pub fn record_at(b: &[u8], off: usize) -> Option<usize> {
    let len = framed_len(b, off).filter(|&l| l > 0)?;
    let crc = u32_at(b, off + 4)?;
    let payload = &b[off + HEADER..off + HEADER + len];
    (crc32fast::hash(payload) == crc).then_some(HEADER + len)
}

/// Records up to this size are CRC-checked at every offset a resync tries;
/// larger candidates must first look followed by a record (see [`resync`]).
const SMALL_RECORD: usize = 64 << 10;

/// Whether `at` could be where a record starts: the end of `b`, a torn
/// header, or a header whose length is within bounds.
fn header_like(b: &[u8], at: usize) -> bool {
    b.len() - at.min(b.len()) < HEADER || u32_at(b, at).is_some_and(|l| l > 0 && l <= MAX_RECORD)
}

/// Cheap checks before a CRC at `o`: in random bytes one offset in 64
/// holds a length that fits, and checking its CRC costs up to `MAX_RECORD`
/// bytes, so a megabyte of garbage would cost hundreds of gigabytes of
/// CRC. A candidate over [`SMALL_RECORD`] must also be followed by
/// something header-like, which cuts those candidates 64-fold again.
fn worth_a_crc(b: &[u8], o: usize) -> bool {
    match framed_len(b, o) {
        Some(l) if l > 0 => l <= SMALL_RECORD || header_like(b, o + HEADER + l),
        _ => false,
    }
}

/// The first offset at or after `from` where a record validates. (A record
/// over [`SMALL_RECORD`] bytes that lies between two damaged regions is
/// not found: the price of a bounded scan through garbage.)
pub fn resync(b: &[u8], from: usize) -> Option<usize> {
    let last = b.len().checked_sub(HEADER + 1)?;
    (from..=last).find(|&o| worth_a_crc(b, o) && record_at(b, o).is_some())
}

/// How many records the damaged region `b[start..end]` held, as well as can
/// be told (see the module docs): at least 1.
pub fn lost_in(b: &[u8], start: usize, end: usize) -> u64 {
    let mut pos = start;
    let mut n = 0u64;
    while pos < end {
        match framed_len(&b[..end], pos) {
            Some(len) if len > 0 => {
                pos += HEADER + len;
                n += 1;
            }
            _ => return 1,
        }
    }
    if pos == end { n.max(1) } else { 1 }
}

/// A damaged region of a segment, in offsets relative to the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    pub start: u64,
    pub end: u64,
    /// Records lost in it (see [`lost_in`]).
    pub lost: u64,
}

/// What a scan of one segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegScan {
    /// Offsets of the valid records, in order.
    pub records: Vec<u64>,
    /// Damaged regions skipped, in order.
    pub holes: Vec<Hole>,
    /// Length of the segment to keep: all of it, except a torn tail.
    pub len: u64,
    /// Bytes of the torn tail (only ever in the last segment).
    pub torn: u64,
}

impl SegScan {
    /// Whether `off` is a position a cursor may hold: a record's start, the
    /// start of a hole (the end of the record before it), or the end.
    pub fn is_boundary(&self, off: u64) -> bool {
        off == self.len
            || self.records.binary_search(&off).is_ok()
            || self.holes.iter().any(|h| h.start == off)
    }
}

/// Scans a whole segment. In the `last` segment, a damaged region with no
/// valid record after it is a torn tail (the process died in the middle of
/// a write) and is cut; anywhere else, damage is a hole and the scan goes
/// on after it.
pub fn scan(b: &[u8], last: bool) -> SegScan {
    let mut s = SegScan::default();
    let mut off = 0usize;
    while off < b.len() {
        if let Some(n) = record_at(b, off) {
            s.records.push(off as u64);
            off += n;
            continue;
        }
        match resync(b, off + 1) {
            Some(next) => {
                s.holes.push(Hole {
                    start: off as u64,
                    end: next as u64,
                    lost: lost_in(b, off, next),
                });
                off = next;
            }
            None if last => {
                s.torn = (b.len() - off) as u64;
                s.len = off as u64;
                return s;
            }
            None => {
                s.holes.push(Hole {
                    start: off as u64,
                    end: b.len() as u64,
                    lost: lost_in(b, off, b.len()),
                });
                break;
            }
        }
    }
    s.len = b.len() as u64;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut b = Vec::new();
        let mut at = Vec::new();
        for p in payloads {
            at.push((b.len(), HEADER + p.len()));
            b.extend_from_slice(&(p.len() as u32).to_le_bytes());
            b.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            b.extend_from_slice(p);
        }
        (b, at)
    }

    fn payloads(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!("{{\"event\":\"E{i}\",\"pad\":\"{}\"}}", "x".repeat(i % 37)).into_bytes()
            })
            .collect()
    }

    #[test]
    fn clean_segment() {
        let (b, at) = frame(&payloads(20));
        let s = scan(&b, true);
        assert_eq!(s.records, at.iter().map(|x| x.0 as u64).collect::<Vec<_>>());
        assert!(s.holes.is_empty());
        assert_eq!((s.len, s.torn), (b.len() as u64, 0));
    }

    #[test]
    fn flipped_byte_in_the_middle_loses_exactly_one_record() {
        let (mut b, at) = frame(&payloads(20));
        b[at[7].0 + HEADER + 3] ^= 0x40;
        for last in [true, false] {
            let s = scan(&b, last);
            assert_eq!(s.records.len(), 19);
            assert_eq!(
                s.holes,
                vec![Hole {
                    start: at[7].0 as u64,
                    end: at[8].0 as u64,
                    lost: 1
                }]
            );
            assert_eq!((s.len, s.torn), (b.len() as u64, 0));
        }
    }

    #[test]
    fn zeroed_block_over_several_records_counts_what_it_can() {
        let (mut b, at) = frame(&payloads(20));
        // From inside record 3 to inside record 6: 3, 4, 5 and 6 lost.
        for x in &mut b[at[3].0 + 10..at[6].0 + 12] {
            *x = 0;
        }
        let s = scan(&b, false);
        assert_eq!(s.records.len(), 16);
        assert_eq!(s.holes.len(), 1);
        assert_eq!(
            (s.holes[0].start, s.holes[0].end),
            (at[3].0 as u64, at[7].0 as u64)
        );
        // The zeroed headers break the chain of lengths: the count is the
        // lower bound, and the bytes tell the size.
        assert_eq!(s.holes[0].lost, 1);
    }

    #[test]
    fn damaged_payloads_of_several_records_are_counted_exactly() {
        let (mut b, at) = frame(&payloads(20));
        for i in 3..7 {
            b[at[i].0 + HEADER + 1] ^= 0x10;
        }
        let s = scan(&b, false);
        assert_eq!(s.records.len(), 16);
        assert_eq!(s.holes.len(), 1, "{:?}", s.holes);
        assert_eq!(s.holes[0].lost, 4);
    }

    #[test]
    fn zeroed_header_is_not_an_empty_record() {
        let (mut b, at) = frame(&payloads(5));
        b[..HEADER].fill(0);
        let s = scan(&b, false);
        assert_eq!(
            s.records,
            at[1..].iter().map(|a| a.0 as u64).collect::<Vec<_>>()
        );
        assert_eq!(
            s.holes,
            vec![Hole {
                start: 0,
                end: at[1].0 as u64,
                lost: 1
            }]
        );
    }

    #[test]
    fn broken_length_counts_one() {
        let (mut b, at) = frame(&payloads(10));
        b[at[4].0] ^= 0x01;
        let s = scan(&b, false);
        assert_eq!(s.records.len(), 9);
        assert_eq!(s.holes[0].lost, 1);
    }

    #[test]
    fn torn_tail_only_at_the_end_of_the_last_segment() {
        let (mut b, at) = frame(&payloads(5));
        b.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'p', b'a']);
        let s = scan(&b, true);
        assert_eq!(s.records.len(), 5);
        assert_eq!((s.len, s.torn), ((at[4].0 + at[4].1) as u64, 10));
        assert!(s.holes.is_empty());
        let s = scan(&b, false);
        assert_eq!((s.len, s.torn), (b.len() as u64, 0));
        assert_eq!(s.holes.len(), 1);
        assert_eq!(s.holes[0].lost, 1);
    }

    #[test]
    fn boundaries() {
        let (mut b, at) = frame(&payloads(5));
        b[at[2].0 + HEADER] ^= 1;
        let s = scan(&b, true);
        assert!(s.is_boundary(0));
        assert!(s.is_boundary(at[2].0 as u64)); // hole start
        assert!(s.is_boundary(at[3].0 as u64));
        assert!(s.is_boundary(b.len() as u64));
        assert!(!s.is_boundary(at[3].0 as u64 + 1));
        assert!(!s.is_boundary(b.len() as u64 + 8));
    }

    #[test]
    fn a_megabyte_of_random_bytes_is_scanned_through_quickly() {
        // Big records after the garbage, as a long event list would make.
        let big: Vec<Vec<u8>> = (0..24).map(|i| vec![b'a' + i as u8; 1 << 20]).collect();
        let (records, _) = frame(&big);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut b: Vec<u8> = (0..(1 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let garbage = b.len();
        b.extend_from_slice(&records);
        let t = std::time::Instant::now();
        let s = scan(&b, false);
        let took = t.elapsed();
        assert_eq!(s.records.len(), 24);
        assert_eq!(s.holes.len(), 1);
        assert_eq!(s.holes[0].end, garbage as u64);
        // Without the checks before the CRC this takes minutes (about 16,000
        // candidates of ~12 MiB each); with them, well under a second in a
        // release build. The bound is loose for debug builds on a busy box.
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Random damage (flips, a zeroed or random block): every record the
        /// damage did not touch is found, and nothing that was not written is
        /// invented.
        #[test]
        fn damage_keeps_every_intact_record(
            n in 1usize..40,
            at_frac in 0.0f64..1.0,
            len in 1usize..300,
            mode in 0u8..3,
            seed in any::<u64>(),
            last in any::<bool>(),
        ) {
            let (mut b, at) = frame(&payloads(n));
            let start = ((b.len() as f64) * at_frac) as usize % b.len();
            let end = (start + len).min(b.len());
            let mut x = seed | 1;
            for (i, byte) in b[start..end].iter_mut().enumerate() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                *byte = match mode {
                    0 if i == 0 => *byte ^ (1 << (x % 8)),
                    0 => *byte,
                    1 => 0,
                    _ => x as u8,
                };
            }
            let s = scan(&b, last);
            let originals: Vec<u64> = at.iter().map(|a| a.0 as u64).collect();
            for r in &s.records {
                prop_assert!(originals.contains(r), "invented a record at {}", r);
            }
            for &(o, l) in &at {
                if o + l <= start || o >= end {
                    prop_assert!(s.records.contains(&(o as u64)), "lost intact record at {}", o);
                }
            }
            // A cut is only ever the tail of the last segment, from the
            // damaged record on.
            if s.torn > 0 {
                prop_assert!(last);
                prop_assert!(s.len as usize <= start);
            }
            let lost: u64 = s.holes.iter().map(|h| h.lost).sum();
            prop_assert!(s.records.len() as u64 + lost <= n as u64);
        }
    }
}
