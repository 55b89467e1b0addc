//! Decoding a whole buffer (a trace file, a test's bytes) at once.
//!
//! A socket feeds [`AmiCodec`] in reads; a buffer already in memory is one
//! read followed by the end of the stream. [`DecodeAll`] is that loop,
//! written once: `decode` until it needs more bytes, then `decode_eof`
//! (which reports a final message cut off by the end of the data).

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::codec::{AmiCodec, Frame};
use crate::limits::Limits;

/// The frames of a whole buffer, in order (see the module docs).
#[derive(Debug)]
pub struct DecodeAll {
    codec: AmiCodec,
    buf: BytesMut,
    /// Bytes of the input the codec has consumed so far.
    consumed: usize,
    /// True once `decode` returned `None` (then only `decode_eof` is left).
    at_eof: bool,
    done: bool,
}

impl DecodeAll {
    pub fn new(data: &[u8], limits: Limits) -> Self {
        DecodeAll {
            codec: AmiCodec::new(limits),
            buf: BytesMut::from(data),
            consumed: 0,
            at_eof: false,
            done: false,
        }
    }

    /// How many bytes of the input the frames returned so far came from:
    /// after a frame, the offset just past it.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl Iterator for DecodeAll {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.done {
            return None;
        }
        let before = self.buf.len();
        // The decoder reports bad input as `Frame::Malformed` and never
        // fails on bytes in memory; an `Err` would end the iteration.
        let item = if self.at_eof {
            self.codec.decode_eof(&mut self.buf)
        } else {
            match self.codec.decode(&mut self.buf) {
                Ok(None) => {
                    self.at_eof = true;
                    self.codec.decode_eof(&mut self.buf)
                }
                other => other,
            }
        };
        self.consumed += before - self.buf.len();
        match item {
            Ok(Some(frame)) => Some(frame),
            Ok(None) | Err(_) => {
                self.done = true;
                None
            }
        }
    }
}

/// Decodes a whole buffer into frames, including a final message cut off by
/// the end of the data.
pub fn decode_all(data: &[u8], limits: Limits) -> Vec<Frame> {
    DecodeAll::new(data, limits).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::MalformedKind;

    #[test]
    fn offsets_end_each_frame_and_the_tail_is_reported() {
        let data =
            b"Asterisk Call Manager/5.0.1\r\nEvent: A\r\n\r\nbad line\r\n\r\nEvent: Cut\r\nK: v";
        let mut all = DecodeAll::new(data, Limits::default());
        let mut ends = Vec::new();
        let mut kinds = Vec::new();
        while let Some(frame) = all.next() {
            ends.push(all.consumed());
            kinds.push(match frame {
                Frame::Banner(_) => "banner",
                Frame::Message(_) => "message",
                Frame::Malformed(m) if m.kind == MalformedKind::Truncated => "truncated",
                Frame::Malformed(_) => "malformed",
            });
        }
        assert_eq!(kinds, ["banner", "message", "malformed", "truncated"]);
        let banner = b"Asterisk Call Manager/5.0.1\r\n".len();
        let event = b"Event: A\r\n\r\n".len();
        // A malformed frame is reported once its line is read; the blank
        // line that ends the bad message is skipped with the next frame.
        let bad = b"bad line\r\n".len();
        assert_eq!(
            ends,
            [banner, banner + event, banner + event + bad, data.len()]
        );
        assert_eq!(all.next(), None);
    }

    /// Frames with the excerpts of malformed input dropped: an excerpt
    /// shows what was buffered when the error was found.
    fn without_excerpts(frames: Vec<Frame>) -> Vec<Frame> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Malformed(mut m) => {
                    m.excerpt = Default::default();
                    Frame::Malformed(m)
                }
                f => f,
            })
            .collect()
    }

    /// The same frames as a socket that delivers the bytes one at a time.
    #[test]
    fn same_frames_as_reads() {
        let data =
            b"Event: A\r\n\r\nResponse: Follows\r\nout\n--END COMMAND--\r\n\r\nx\r\n\r\nEvent: B";
        let mut codec = AmiCodec::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut read = Vec::new();
        for &b in data.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                read.push(f);
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
            read.push(f);
        }
        assert_eq!(read.len(), 4);
        assert_eq!(
            without_excerpts(decode_all(data, Limits::default())),
            without_excerpts(read)
        );
    }
}
