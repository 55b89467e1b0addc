//! Fuzz target: arbitrary bytes through `AmiCodec`, in reads of arbitrary size.
//!
//! The first input byte sets the read size (1..=256 bytes); the rest is the
//! stream. Limits are small so that every limit (line, message, lines per
//! message) is reached often. Checked on every input:
//! - `decode` / `decode_eof` never fail and never panic;
//! - between reads the decoder keeps at most `max_message + max_line` bytes,
//!   so the memory held per connection is bounded whatever the peer sends;
//! - every message respects `max_line`, `max_lines` and `max_message`
//!   (legacy `Response: Follows` output included, counted as read), has no
//!   line break in a key or value, and a malformed frame's excerpt is at
//!   most `Malformed::EXCERPT` bytes;
//! - after `decode_eof` nothing is left in the buffer.
//!
//! The decoder comes from the `ami-proto` crate (crates/ami-proto), an
//! ordinary dependency: the protocol without the rest of ami2amqp.
#![no_main]

use ami_proto::{AmiCodec, Frame, Limits, Malformed};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMITS: Limits = Limits {
    max_line: 64,
    max_message: 256,
    max_lines: 16,
};

fn check(frame: &Frame, limits: &Limits) {
    match frame {
        Frame::Message(m) => {
            assert!(!m.is_empty(), "empty message");
            assert!(m.len() <= limits.max_lines, "{} lines: {m:?}", m.len());
            // Legacy `Command` output is held to max_message as read; the
            // message built from it spells each output line `Output: …\r\n`,
            // up to 9 bytes more per line than the bytes read.
            let legacy = m.iter_bytes().next().is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case(b"Response") && v.eq_ignore_ascii_case(b"Follows")
            });
            let slack = if legacy { 9 * m.len() } else { 0 };
            assert!(
                m.raw().len() <= limits.max_message + slack,
                "message over max_message: {m:?}"
            );
            for (k, v) in m.iter_bytes() {
                assert!(
                    !k.contains(&b'\n') && !v.contains(&b'\n'),
                    "line break in {m:?}"
                );
                assert!(
                    v.len() <= limits.max_line,
                    "value longer than max_line: {m:?}"
                );
                if k != b"Output" {
                    assert!(
                        k.len() + 1 + v.len() <= limits.max_line,
                        "line longer than max_line: {m:?}"
                    );
                }
            }
        }
        Frame::Malformed(m) => assert!(m.excerpt.len() <= Malformed::EXCERPT),
        Frame::Banner(b) => assert!(b.starts_with("Asterisk Call Manager/")),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let read = usize::from(first) + 1;
    let limits = LIMITS;
    let bound = limits.max_message + limits.max_line;

    let mut codec = AmiCodec::new(limits);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(read) {
        buf.extend_from_slice(piece);
        while let Some(frame) = codec.decode(&mut buf).expect("decode failed") {
            check(&frame, &limits);
        }
        assert!(
            buf.len() <= bound,
            "decoder keeps {} bytes, more than max_message + max_line = {bound}",
            buf.len()
        );
    }
    while let Some(frame) = codec.decode_eof(&mut buf).expect("decode_eof failed") {
        check(&frame, &limits);
    }
    assert!(buf.is_empty(), "{} bytes left after decode_eof", buf.len());
});
