//! Fuzz target: arbitrary `Filter` actions and events through `ami_proto`'s
//! event filters.
//!
//! The input is split at its first two NUL bytes into MatchCriteria,
//! Filter and an event text (all from a client or from Asterisk, so all
//! hostile). Checked on every input:
//! - building a filter answers (a filter or an error) and never panics,
//!   whatever the criteria and pattern;
//! - an error always has one of Asterisk's two reply texts;
//! - matching any bytes never panics, and a set holding only an include
//!   filter sends exactly what that filter matches (only an exclude
//!   filter: exactly what it does not).
#![no_main]

use ami_proto::{EventFilter, FilterSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let criteria = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let pattern = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let text = parts.next().unwrap_or_default();
    let criteria = (!criteria.is_empty()).then_some(&*criteria);
    let filter = match EventFilter::new(criteria, &pattern) {
        Ok(f) => f,
        Err(e) => {
            assert!(e.asterisk_message().starts_with("Filter "), "{e}");
            return;
        }
    };
    let hit = filter.matches(b"Newchannel", text);
    let exclude = filter.is_exclude();
    let mut set = FilterSet::default();
    set.add(filter);
    assert_eq!(set.should_send(b"Newchannel", text), hit != exclude);
});
