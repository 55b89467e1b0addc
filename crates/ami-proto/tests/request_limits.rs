//! Asterisk's request limits, used at both ends, agree with each other.
//!
//! The bridge refuses an action [`check_request`] rejects before sending
//! it; the trace replay (a fake Asterisk) decodes what clients send under
//! [`Limits::asterisk_request`]. Property: every action `check_request`
//! accepts, with the one `ActionID` line a client adds, decodes under those
//! limits as exactly that message. The generator aims at the edges (lines
//! of about 1022 bytes, about 128 lines), where two copies of the numbers
//! would drift apart first.

use ami_proto::{Frame, Limits, Message, REQUEST_MAX_LINE, REQUEST_MAX_LINES};
use ami_proto::{check_request, decode_all};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// A key: letters only (the decoder splits at the first `:`).
fn key() -> impl Strategy<Value = String> {
    "[A-Za-z]{1,12}"
}

/// A value: any bytes but line breaks, not starting with a blank (the
/// decoder skips blanks after the colon), often close to the line limit.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![0usize..40, (REQUEST_MAX_LINE - 30)..(REQUEST_MAX_LINE + 5),];
    len.prop_flat_map(|n| {
        proptest::collection::vec(
            any::<u8>().prop_filter("no line break", |b| *b != b'\r' && *b != b'\n'),
            n,
        )
    })
    .prop_map(|mut v| {
        if let Some(first) = v.first_mut()
            && (*first == b' ' || *first == b'\t')
        {
            *first = b'x';
        }
        v
    })
}

/// An action with a line count around the limit, or a short one.
fn action() -> impl Strategy<Value = Message> {
    let lines = prop_oneof![0usize..8, (REQUEST_MAX_LINES - 4)..(REQUEST_MAX_LINES + 2)];
    (lines, proptest::collection::vec((key(), value()), 1..4)).prop_map(|(n, pairs)| {
        let mut all: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"Action".to_vec(), b"Originate".to_vec())];
        for i in 0..n {
            let (k, v) = &pairs[i % pairs.len()];
            all.push((k.clone().into_bytes(), v.clone()));
        }
        Message::from_pairs(all)
    })
}

proptest! {
    #![proptest_config(Config { cases: 400, failure_persistence: None, ..Config::default() })]

    #[test]
    fn accepted_actions_decode_under_asterisks_limits(action in action()) {
        prop_assume!(check_request(&action).is_ok());
        let mut sent = action.clone();
        sent.push("ActionID", "bridge-1-42");
        let frames = decode_all(&sent.to_wire(), Limits::asterisk_request());
        prop_assert_eq!(frames.len(), 1, "{:?}", frames);
        match &frames[0] {
            Frame::Message(m) => prop_assert_eq!(
                m.iter_bytes().collect::<Vec<_>>(),
                sent.iter_bytes().collect::<Vec<_>>()
            ),
            other => prop_assert!(false, "not a message: {:?}", other),
        }
    }
}
