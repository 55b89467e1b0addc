//! Fuzz target: arbitrary bytes as a spool segment, through the recovery scan.
//!
//! The spool reads its segments back after a crash or from a damaged disk,
//! so a segment's bytes are input like any other. The first input byte
//! says whether the segment is the last one (torn tails are cut only
//! there); the rest is the segment. Checked on every input:
//! - `scan` never panics;
//! - every record it reports validates (`record_at`), records and holes
//!   are in order and do not overlap, and together with the torn tail they
//!   cover the segment exactly;
//! - a torn tail only ever appears in the last segment;
//! - `resync` from every record boundary finds the next reported record.
//!
//! Like the decoder target, the scan's source file is compiled in as it is:
//! it has no dependency on the rest of the crate.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/amqp/scan.rs"]
mod scan;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, seg)) = data.split_first() else {
        return;
    };
    let last = flag & 1 == 1;
    let s = scan::scan(seg, last);
    if s.torn > 0 {
        assert!(last, "torn tail in a segment that is not the last");
    }
    assert_eq!(s.len + s.torn, seg.len() as u64, "{s:?}");
    // Walk records and holes in order: they must tile [0, len).
    let mut pos = 0u64;
    let mut holes = s.holes.iter().peekable();
    let mut records = s.records.iter().peekable();
    while pos < s.len {
        if let Some(&&r) = records.peek().filter(|&&&r| r == pos) {
            let n = scan::record_at(seg, r as usize).expect("reported record does not validate");
            records.next();
            pos = r + n as u64;
        } else if let Some(h) = holes.peek().filter(|h| h.start == pos) {
            assert!(h.end > h.start && h.lost >= 1, "{h:?}");
            if let Some(&&r) = records.peek() {
                assert_eq!(scan::resync(seg, pos as usize + 1), Some(r as usize));
            }
            pos = h.end;
            holes.next();
        } else {
            panic!("nothing starts at {pos}: {s:?}");
        }
    }
    assert_eq!(pos, s.len, "{s:?}");
    assert!(records.next().is_none() && holes.next().is_none(), "{s:?}");
});
