//! Framing: bytes from an AMI socket into [`Frame`]s, and messages back to bytes.
//!
//! AMI is a line protocol. A session opens with a banner line
//! (`Asterisk Call Manager/11.0.0`, no blank line after it); every message
//! after that is `Key: Value` lines ended by an empty line. Lines end in
//! CRLF, but older tools and hand-typed requests send bare LF, so both are
//! accepted (and mixed).
//!
//! One exception breaks the "blank line ends a message" rule: Asterisk 13
//! and older answer the `Command` action with `Response: Follows`, then the
//! raw command output (bare-LF lines, blank lines included), then
//! `--END COMMAND--`. The decoder recognises that form and turns the output
//! into repeated `Output` headers, which is exactly the form Asterisk 14+
//! sends, so nothing downstream has to know there were two.
//!
//! ## Errors never end the stream
//!
//! A peer that sends a 10 MB line, a message with ten thousand lines or a
//! line that is not `Key: Value` must not kill the connection, and must not
//! make us buffer without bound. The decoder therefore has limits
//! ([`Limits`]); past one it yields [`Frame::Malformed`] (an ordinary item,
//! not a stream error, because `tokio_util`'s `FramedRead` ends the stream
//! after the first `Err`) and then skips bytes up to the next blank line,
//! keeping only a counter, so memory stays bounded. Only I/O errors are
//! `Err`.
//!
//! Legacy `Follows` output obeys the same limits as any message (it becomes
//! one message of `Output` headers). Its output may contain blank lines, so
//! after an error inside it the decoder skips to `--END COMMAND--` rather
//! than to the next blank line: the rest of an overlong output is never
//! read as AMI messages. [`Malformed::action_id`] carries the `ActionID` of
//! the message given up on, so the action waiting for it can be answered.

use std::ops::ControlFlow;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::limits::Limits;
use crate::message::{Message, MessageBuilder};

/// The first characters of the AMI banner.
pub const BANNER_PREFIX: &[u8] = b"Asterisk Call Manager/";

/// What went wrong with a piece of input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKind {
    #[error("line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("message larger than {limit} bytes")]
    MessageTooLarge { limit: usize },
    #[error("message has more than {limit} lines")]
    TooManyLines { limit: usize },
    #[error("line {line} of the message is not `Key: Value`")]
    NotKeyValue { line: usize },
    #[error("the stream ended in the middle of a message")]
    Truncated,
}

/// Input the decoder could not turn into a message. `excerpt` holds the
/// start of the offending input (at most [`Malformed::EXCERPT`] bytes) so a
/// log line or a dead-letter message can show what arrived.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed AMI input: {kind}")]
pub struct Malformed {
    pub kind: MalformedKind,
    pub excerpt: Bytes,
    /// The `ActionID` of the message given up on, when its header had been
    /// read: the response (or list event) an action is waiting for.
    pub action_id: Option<String>,
}

impl Malformed {
    pub const EXCERPT: usize = 512;
}

/// One decoded item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `Asterisk Call Manager/X.Y.Z` — the AMI version, not Asterisk's.
    Banner(String),
    Message(Message),
    Malformed(Malformed),
}

#[derive(Debug)]
enum State {
    /// Collecting `Key: Value` lines of a message.
    Headers,
    /// Inside legacy `Response: Follows` command output.
    Follows { headers_done: bool, ended: bool },
    /// Skipping input until a blank line after an error. `partial` is the
    /// length of the current, unfinished line; `partial_cr` is true when all
    /// of it was a single `\r`.
    Discarding { partial: usize, partial_cr: bool },
    /// Skipping the rest of a legacy `Follows` output after an error, up to
    /// and including the line ending in `--END COMMAND--`. `tail` holds the
    /// last bytes of the current, unfinished line.
    SkippingFollows { tail: LineTail },
}

/// The last [`LineTail::CAP`] bytes of a line read in pieces: enough to
/// tell whether it ends in `--END COMMAND--` (plus a CR).
#[derive(Clone, Copy, Debug, Default)]
struct LineTail {
    buf: [u8; LineTail::CAP],
    len: usize,
}

impl LineTail {
    const CAP: usize = END_COMMAND.len() + 1;

    fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= Self::CAP {
            self.buf.copy_from_slice(&bytes[bytes.len() - Self::CAP..]);
            self.len = Self::CAP;
            return;
        }
        let keep = self.len.min(Self::CAP - bytes.len());
        self.buf.copy_within(self.len - keep..self.len, 0);
        self.buf[keep..keep + bytes.len()].copy_from_slice(bytes);
        self.len = keep + bytes.len();
    }

    /// True when the line (ended here, without its `\n`) ends with the
    /// marker, a final `\r` ignored.
    fn ends_command(&self) -> bool {
        ends_command(&self.buf[..self.len])
    }
}

/// True when `line` (without its `\n`) ends in `--END COMMAND--`, a final
/// `\r` ignored.
fn ends_command(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.ends_with(END_COMMAND)
}

/// The AMI decoder and encoder, for both ends of the connection (it decodes
/// what Asterisk sends and what clients send alike).
#[derive(Debug)]
pub struct AmiCodec {
    limits: Limits,
    state: State,
    /// Offset in the buffer up to which complete lines were scanned.
    scanned: usize,
    /// (key start, key len, value start, value len) of the lines scanned.
    spans: Vec<(usize, usize, usize, usize)>,
    /// Output lines of a legacy `Follows` response, as (start, len).
    output: Vec<(usize, usize)>,
}

impl Default for AmiCodec {
    fn default() -> Self {
        AmiCodec::new(Limits::default())
    }
}

impl AmiCodec {
    pub fn new(limits: Limits) -> Self {
        AmiCodec {
            limits,
            state: State::Headers,
            scanned: 0,
            spans: Vec::with_capacity(32),
            output: Vec::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn reset(&mut self) {
        self.state = State::Headers;
        self.scanned = 0;
        self.spans.clear();
        self.output.clear();
    }

    /// Gives up on the message being collected: reports it and skips to
    /// the next blank line. `consumed` bytes of `src` (whole lines) are
    /// dropped now; the discard state takes over from there.
    fn start_discard(&mut self, src: &mut BytesMut, kind: MalformedKind, in_line: bool) -> Frame {
        let excerpt = Bytes::copy_from_slice(&src[..src.len().min(Malformed::EXCERPT)]);
        let action_id = self.action_id(src);
        // Inside legacy output (its end not read yet), skip to the end
        // marker: the output may hold blank lines.
        let in_output = matches!(self.state, State::Follows { ended: false, .. });
        let mut tail = LineTail::default();
        if in_line {
            tail.push(&src[self.scanned..]);
        }
        let last_line_ended_output = !in_line && {
            let done = &src[..self.scanned];
            let done = done.strip_suffix(b"\n").unwrap_or(done);
            ends_command(done)
        };
        // Drop the complete lines scanned so far; if the error is inside an
        // unfinished line, drop that too and remember its length.
        let drop_now = if in_line { src.len() } else { self.scanned };
        let partial = if in_line { src.len() - self.scanned } else { 0 };
        src.advance(drop_now);
        self.spans.clear();
        self.output.clear();
        self.scanned = 0;
        self.state = match (in_output, last_line_ended_output) {
            (true, false) => State::SkippingFollows { tail },
            // The offending line was the last of the output: done.
            (true, true) => State::Headers,
            (false, _) => State::Discarding {
                partial,
                partial_cr: false,
            },
        };
        Frame::Malformed(Malformed {
            kind,
            excerpt,
            action_id,
        })
    }

    /// The `ActionID` among the header lines read so far, if any.
    fn action_id(&self, src: &[u8]) -> Option<String> {
        self.spans.iter().find_map(|&(ks, kl, vs, vl)| {
            let key = src.get(ks..ks + kl)?;
            if !key.eq_ignore_ascii_case(b"ActionID") {
                return None;
            }
            src.get(vs..vs + vl)
                .map(|v| v.iter().map(|&b| b as char).collect())
        })
    }

    /// Skips legacy output up to and including the line that ends in
    /// `--END COMMAND--`. Returns true when it was found (normal decoding
    /// resumes; the blank line after the marker is skipped as a blank line
    /// between messages).
    fn skip_follows(&mut self, src: &mut BytesMut) -> bool {
        let State::SkippingFollows { mut tail } = self.state else {
            return true;
        };
        loop {
            match memchr::memchr(b'\n', src) {
                Some(i) => {
                    tail.push(&src[..i]);
                    src.advance(i + 1);
                    if tail.ends_command() {
                        self.reset();
                        return true;
                    }
                    tail = LineTail::default();
                }
                None => {
                    tail.push(src);
                    src.clear();
                    self.state = State::SkippingFollows { tail };
                    return false;
                }
            }
        }
    }

    /// Skips input up to and including a blank line. Returns true when the
    /// blank line was found (normal decoding resumes).
    fn discard(&mut self, src: &mut BytesMut) -> bool {
        let State::Discarding {
            mut partial,
            mut partial_cr,
        } = self.state
        else {
            return true;
        };
        loop {
            match memchr::memchr(b'\n', src) {
                Some(i) => {
                    let blank = (partial == 0 && (i == 0 || (i == 1 && src[0] == b'\r')))
                        || (partial == 1 && partial_cr && i == 0);
                    src.advance(i + 1);
                    partial = 0;
                    partial_cr = false;
                    if blank {
                        self.reset();
                        return true;
                    }
                }
                None => {
                    let n = src.len();
                    if n > 0 {
                        partial_cr = partial == 0 && n == 1 && src[0] == b'\r';
                        partial = partial.saturating_add(n);
                    }
                    src.clear();
                    self.state = State::Discarding {
                        partial,
                        partial_cr,
                    };
                    return false;
                }
            }
        }
    }

    /// Builds the message of a legacy `Follows` response from its headers
    /// and output lines.
    fn build_follows(&self, msg: &[u8]) -> Message {
        let mut b = MessageBuilder::default();
        for &(ks, kl, vs, vl) in &self.spans {
            b.push(&msg[ks..ks + kl], &msg[vs..vs + vl]);
        }
        for &(s, l) in &self.output {
            b.push(b"Output", &msg[s..s + l]);
        }
        b.build()
    }
}

/// Splits a line at its first `:` and skips the blanks after it, as
/// Asterisk does. Returns (key len, value start offset) within the line.
#[inline]
fn split_line(line: &[u8]) -> Option<(usize, usize)> {
    let colon = memchr::memchr(b':', line)?;
    let mut v = colon + 1;
    while v < line.len() && (line[v] == b' ' || line[v] == b'\t') {
        v += 1;
    }
    Some((colon, v))
}

const END_COMMAND: &[u8] = b"--END COMMAND--";

/// One complete line in the buffer: `start..end` is its content (without
/// the line ending), `next` the offset just past its `\n`.
#[derive(Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
    next: usize,
}

impl Line {
    fn len(self) -> usize {
        self.end - self.start
    }
}

/// What a decoding step decided: `Continue` with the next line, or
/// `Break` with what `decode` returns.
type Step<T = ()> = ControlFlow<Option<Frame>, T>;

impl AmiCodec {
    /// Finds the next complete line after `scanned`, enforcing the line
    /// and message limits on input that is still pending.
    #[inline]
    fn next_line(&mut self, src: &mut BytesMut) -> Step<Line> {
        let Some(nl) = memchr::memchr(b'\n', &src[self.scanned..]) else {
            return ControlFlow::Break(self.check_pending(src));
        };
        let start = self.scanned;
        let next = start + nl + 1;
        let mut end = start + nl; // index of '\n'
        if end > start && src[end - 1] == b'\r' {
            end -= 1;
        }
        let line = Line { start, end, next };
        if line.len() > self.limits.max_line {
            let limit = self.limits.max_line;
            self.scanned = next;
            let kind = MalformedKind::LineTooLong { limit };
            return ControlFlow::Break(Some(self.start_discard(src, kind, false)));
        }
        ControlFlow::Continue(line)
    }

    /// No complete line: checks the limits on what is pending. A final
    /// `\r` may be the first half of a CRLF split across reads: it is not
    /// part of the line.
    fn check_pending(&mut self, src: &mut BytesMut) -> Option<Frame> {
        let mut pending_line = src.len() - self.scanned;
        if src.last() == Some(&b'\r') {
            pending_line -= 1;
        }
        if pending_line > self.limits.max_line {
            let limit = self.limits.max_line;
            let kind = MalformedKind::LineTooLong { limit };
            return Some(self.start_discard(src, kind, true));
        }
        if src.len() > self.limits.max_message + self.limits.max_line {
            let limit = self.limits.max_message;
            let kind = MalformedKind::MessageTooLarge { limit };
            return Some(self.start_discard(src, kind, true));
        }
        None
    }

    /// After a line was taken into the message (`scanned` already past
    /// it): enforces the line-count limit.
    #[inline]
    fn check_lines(&mut self, src: &mut BytesMut, lines: usize) -> Step {
        if lines > self.limits.max_lines {
            let limit = self.limits.max_lines;
            let kind = MalformedKind::TooManyLines { limit };
            return ControlFlow::Break(Some(self.start_discard(src, kind, false)));
        }
        ControlFlow::Continue(())
    }

    /// Enforces the message size limit on the lines scanned so far.
    #[inline]
    fn check_size(&mut self, src: &mut BytesMut) -> Step {
        if self.scanned > self.limits.max_message {
            let limit = self.limits.max_message;
            let kind = MalformedKind::MessageTooLarge { limit };
            return ControlFlow::Break(Some(self.start_discard(src, kind, false)));
        }
        ControlFlow::Continue(())
    }

    /// A line in state `Headers`: a header, the blank line ending the
    /// message, the banner, or garbage.
    #[inline]
    fn header_line(&mut self, src: &mut BytesMut, line: Line) -> Step {
        if line.len() == 0 {
            return self.end_of_headers(src, line);
        }
        let bytes = &src[line.start..line.end];
        match split_line(bytes) {
            Some((kl, vs)) => {
                if self.spans.is_empty()
                    && bytes[..kl].eq_ignore_ascii_case(b"Response")
                    && bytes[vs..].eq_ignore_ascii_case(b"Follows")
                {
                    self.state = State::Follows {
                        headers_done: false,
                        ended: false,
                    };
                }
                self.spans
                    .push((line.start, kl, line.start + vs, line.len() - vs));
            }
            None => {
                if self.spans.is_empty() && bytes.starts_with(BANNER_PREFIX) {
                    let banner = String::from_utf8_lossy(bytes).into_owned();
                    src.advance(line.next);
                    self.scanned = 0;
                    return ControlFlow::Break(Some(Frame::Banner(banner)));
                }
                let n = self.spans.len() + 1;
                self.scanned = line.next;
                let kind = MalformedKind::NotKeyValue { line: n };
                return ControlFlow::Break(Some(self.start_discard(src, kind, false)));
            }
        }
        self.scanned = line.next;
        self.check_lines(src, self.spans.len())?;
        self.check_size(src)
    }

    /// A blank line in state `Headers`: skipped between messages, else the
    /// end of the message (whose raw bytes exclude the blank line).
    #[inline]
    fn end_of_headers(&mut self, src: &mut BytesMut, line: Line) -> Step {
        if self.spans.is_empty() {
            src.advance(line.next);
            self.scanned = 0;
            return ControlFlow::Continue(());
        }
        let mut msg = src.split_to(line.next);
        msg.truncate(line.start);
        let spans = std::mem::take(&mut self.spans);
        self.spans = Vec::with_capacity(spans.len());
        self.scanned = 0;
        let m = Message::from_parts(msg.freeze(), spans);
        ControlFlow::Break(Some(Frame::Message(m)))
    }

    /// A line in state `Follows`: a leading `Privilege`/`ActionID` header,
    /// an output line (possibly carrying `--END COMMAND--`), or, after the
    /// marker, what closes the message.
    fn follows_line(
        &mut self,
        src: &mut BytesMut,
        line: Line,
        headers_done: bool,
        ended: bool,
    ) -> Step {
        let bytes = &src[line.start..line.end];
        if ended {
            // After --END COMMAND--: a blank line closes the message;
            // anything else starts the next message.
            let end = if bytes.is_empty() {
                line.next
            } else {
                line.start
            };
            let msg_bytes = src.split_to(end).freeze();
            let m = self.build_follows(&msg_bytes);
            self.reset();
            return ControlFlow::Break(Some(Frame::Message(m)));
        }
        if !headers_done && let Some((kl, vs)) = split_line(bytes) {
            let key = &bytes[..kl];
            if key.eq_ignore_ascii_case(b"Privilege") || key.eq_ignore_ascii_case(b"ActionID") {
                self.spans
                    .push((line.start, kl, line.start + vs, line.len() - vs));
                self.scanned = line.next;
                return ControlFlow::Continue(());
            }
        }
        let is_end = bytes.ends_with(END_COMMAND);
        let content_len = if is_end {
            line.len() - END_COMMAND.len()
        } else {
            line.len()
        };
        if !is_end || content_len > 0 {
            // Output lines are bare-LF text; drop a CR only when the
            // marker follows it.
            let mut l = content_len;
            if is_end && l > 0 && src[line.start + l - 1] == b'\r' {
                l -= 1;
            }
            self.output.push((line.start, l));
        }
        self.scanned = line.next;
        // Checked before the state records the end marker: an overlong
        // output whose last line carries it needs no skipping.
        self.check_lines(src, self.output.len() + self.spans.len())?;
        self.state = State::Follows {
            headers_done: true,
            ended: is_end,
        };
        self.check_size(src)
    }
}

impl Decoder for AmiCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        loop {
            if let State::Discarding { .. } = self.state
                && !self.discard(src)
            {
                return Ok(None);
            }
            if let State::SkippingFollows { .. } = self.state
                && !self.skip_follows(src)
            {
                return Ok(None);
            }
            let line = match self.next_line(src) {
                ControlFlow::Continue(line) => line,
                ControlFlow::Break(out) => return Ok(out),
            };
            let step = match self.state {
                State::Headers => self.header_line(src, line),
                State::Follows {
                    headers_done,
                    ended,
                } => self.follows_line(src, line, headers_done, ended),
                State::Discarding { .. } | State::SkippingFollows { .. } => {
                    unreachable!("handled above")
                }
            };
            if let ControlFlow::Break(out) = step {
                return Ok(out);
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        match self.decode(buf)? {
            Some(f) => Ok(Some(f)),
            None => {
                // A message cut off by the end of the stream is reported,
                // not silently dropped.
                let skipping = matches!(
                    self.state,
                    State::Discarding { .. } | State::SkippingFollows { .. }
                );
                if !buf.is_empty() && !skipping {
                    let action_id = self.action_id(buf);
                    let excerpt = buf.split().freeze();
                    let excerpt = excerpt.slice(..excerpt.len().min(Malformed::EXCERPT));
                    self.reset();
                    return Ok(Some(Frame::Malformed(Malformed {
                        kind: MalformedKind::Truncated,
                        excerpt,
                        action_id,
                    })));
                }
                buf.clear();
                self.reset();
                Ok(None)
            }
        }
    }
}

impl Encoder<Message> for AmiCodec {
    type Error = std::io::Error;
    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        item.encode(dst);
        Ok(())
    }
}

impl Encoder<&Message> for AmiCodec {
    type Error = std::io::Error;
    fn encode(&mut self, item: &Message, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        item.encode(dst);
        Ok(())
    }
}

/// Raw bytes pass through unchanged (the banner, a replayed trace).
impl Encoder<Bytes> for AmiCodec {
    type Error = std::io::Error;
    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_all;

    fn frames(input: &[u8]) -> Vec<Frame> {
        decode_all(input, Limits::default())
    }

    fn msg(f: &Frame) -> &Message {
        match f {
            Frame::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn banner_then_messages_crlf() {
        let f = frames(b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nMessage: Authentication accepted\r\n\r\nEvent: FullyBooted\r\nPrivilege: system,all\r\n\r\n");
        assert_eq!(f.len(), 3);
        assert_eq!(f[0], Frame::Banner("Asterisk Call Manager/11.0.0".into()));
        assert_eq!(
            msg(&f[1]).get("Message").as_deref(),
            Some("Authentication accepted")
        );
        assert_eq!(msg(&f[2]).event_name().as_deref(), Some("FullyBooted"));
    }

    #[test]
    fn bare_lf_and_mixed_endings() {
        let f = frames(b"Action: Ping\nActionID: 1\n\nAction: Logoff\r\n\n");
        assert_eq!(f.len(), 2);
        assert_eq!(msg(&f[0]).get("ActionID").as_deref(), Some("1"));
        assert_eq!(msg(&f[1]).get("Action").as_deref(), Some("Logoff"));
    }

    #[test]
    fn values_with_colons_and_empty_values() {
        let f = frames(b"Event: X\r\nAppData: a: b: c\r\nAccountCode: \r\nEmpty:\r\n\r\n");
        let m = msg(&f[0]);
        assert_eq!(m.get("AppData").as_deref(), Some("a: b: c"));
        assert_eq!(m.get("AccountCode").as_deref(), Some(""));
        assert_eq!(m.get("Empty").as_deref(), Some(""));
    }

    #[test]
    fn partial_input_resumes() {
        let input = b"Event: A\r\nKey: V\r\n\r\nEvent: B\r\n\r\n";
        for cut in 0..input.len() {
            let mut c = AmiCodec::default();
            let mut buf = BytesMut::from(&input[..cut]);
            let mut out = Vec::new();
            while let Some(f) = c.decode(&mut buf).unwrap() {
                out.push(f);
            }
            buf.extend_from_slice(&input[cut..]);
            while let Some(f) = c.decode(&mut buf).unwrap() {
                out.push(f);
            }
            assert_eq!(out.len(), 2, "cut at {cut}");
            assert_eq!(msg(&out[1]).event_name().as_deref(), Some("B"));
        }
    }

    #[test]
    fn legacy_follows_command_output() {
        let input = b"Response: Follows\r\nPrivilege: Command\r\nActionID: c1\r\nAsterisk 13.1 built by x\n\nline: with colon\n--END COMMAND--\r\n\r\nEvent: After\r\n\r\n";
        let f = frames(input);
        assert_eq!(f.len(), 2, "{f:?}");
        let m = msg(&f[0]);
        assert_eq!(m.get("Response").as_deref(), Some("Follows"));
        assert_eq!(m.action_id().as_deref(), Some("c1"));
        let out: Vec<_> = m.get_all("Output").collect();
        assert_eq!(
            out,
            vec!["Asterisk 13.1 built by x", "", "line: with colon"]
        );
        assert_eq!(msg(&f[1]).event_name().as_deref(), Some("After"));
    }

    #[test]
    fn legacy_follows_marker_on_last_line() {
        let f = frames(
            b"Response: Follows\r\nPrivilege: Command\r\nno newline at end--END COMMAND--\r\n\r\n",
        );
        let m = msg(&f[0]);
        let out: Vec<_> = m.get_all("Output").collect();
        assert_eq!(out, vec!["no newline at end"]);
    }

    /// A legacy output block with blank lines and `Key: Value`-looking
    /// lines, `n` lines long.
    fn follows_block(id: &str, n: usize) -> Vec<u8> {
        let mut v =
            format!("Response: Follows\r\nPrivilege: Command\r\nActionID: {id}\r\n").into_bytes();
        for i in 0..n {
            let line = match i % 3 {
                0 => "Event: Forged\n".to_string(),
                1 => "\n".to_string(),
                _ => format!("line {i} of the output\n"),
            };
            v.extend_from_slice(line.as_bytes());
        }
        v.extend_from_slice(b"--END COMMAND--\r\n\r\nEvent: After\r\n\r\n");
        v
    }

    fn only_after(f: &[Frame], kind: fn(&MalformedKind) -> bool) {
        assert_eq!(f.len(), 2, "{f:?}");
        match &f[0] {
            Frame::Malformed(m) => {
                assert!(kind(&m.kind), "{:?}", m.kind);
                assert_eq!(m.action_id.as_deref(), Some("c9"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(msg(&f[1]).event_name().as_deref(), Some("After"));
    }

    #[test]
    fn overlong_follows_is_skipped_to_its_end_marker() {
        let input = follows_block("c9", 3000);
        let lines = Limits {
            max_lines: 100,
            ..Limits::default()
        };
        only_after(&decode_all(&input, lines), |k| {
            matches!(k, MalformedKind::TooManyLines { limit: 100 })
        });
        let bytes = Limits {
            max_message: 2000,
            ..Limits::default()
        };
        only_after(&decode_all(&input, bytes), |k| {
            matches!(k, MalformedKind::MessageTooLarge { limit: 2000 })
        });
        // The same in reads of every size from 1 to 64 bytes.
        for size in 1..64 {
            let mut c = AmiCodec::new(bytes);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in input.chunks(size) {
                buf.extend_from_slice(chunk);
                while let Some(f) = c.decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            only_after(&out, |k| matches!(k, MalformedKind::MessageTooLarge { .. }));
        }
    }

    #[test]
    fn overlong_line_in_follows_is_skipped_to_its_end_marker() {
        let mut input = b"Response: Follows\r\nActionID: c9\r\n\nEvent: Forged\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 500));
        input.extend_from_slice(b"\n\nEvent: Forged2\n--END COMMAND--\r\n\r\nEvent: After\r\n\r\n");
        let limits = Limits {
            max_line: 100,
            ..Limits::default()
        };
        only_after(&decode_all(&input, limits), |k| {
            matches!(k, MalformedKind::LineTooLong { limit: 100 })
        });
    }

    #[test]
    fn follows_over_the_limit_on_its_last_line_ends_there() {
        let input =
            b"Response: Follows\r\nActionID: c9\r\nabc--END COMMAND--\r\n\r\nEvent: After\r\n\r\n";
        let limits = Limits {
            max_lines: 2,
            ..Limits::default()
        };
        only_after(&decode_all(input, limits), |k| {
            matches!(k, MalformedKind::TooManyLines { .. })
        });
    }

    /// Without a blank line after the marker, the next message follows at
    /// once: the decoder must not be left skipping to a blank line.
    #[test]
    fn follows_over_the_limit_on_its_last_line_keeps_the_next_message() {
        let input =
            b"Response: Follows\r\nActionID: c9\r\nabc--END COMMAND--\r\nEvent: After\r\n\r\n";
        let limits = Limits {
            max_lines: 2,
            ..Limits::default()
        };
        only_after(&decode_all(input, limits), |k| {
            matches!(k, MalformedKind::TooManyLines { .. })
        });
    }

    #[test]
    fn malformed_response_carries_its_action_id() {
        let f = frames(b"Response: Success\r\nActionID: a2a-1\r\nno colon\r\n\r\n");
        match &f[0] {
            Frame::Malformed(m) => assert_eq!(m.action_id.as_deref(), Some("a2a-1")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modern_output_lines() {
        let f = frames(b"Response: Success\r\nActionID: c2\r\nOutput: one\r\nOutput: \r\nOutput: three\r\n\r\n");
        let out: Vec<_> = msg(&f[0]).get_all("Output").collect();
        assert_eq!(out, vec!["one", "", "three"]);
    }

    #[test]
    fn line_too_long_recovers() {
        let mut input = b"Event: Big\r\nData: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 200));
        input.extend_from_slice(b"\r\nMore: y\r\n\r\nEvent: Next\r\n\r\n");
        let limits = Limits {
            max_line: 64,
            ..Limits::default()
        };
        let f = decode_all(&input, limits);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(matches!(
            &f[0],
            Frame::Malformed(Malformed {
                kind: MalformedKind::LineTooLong { limit: 64 },
                ..
            })
        ));
        assert_eq!(msg(&f[1]).event_name().as_deref(), Some("Next"));
    }

    #[test]
    fn endless_line_is_bounded() {
        // A peer that never sends a newline: the buffer must not grow.
        let limits = Limits {
            max_line: 100,
            ..Limits::default()
        };
        let mut c = AmiCodec::new(limits);
        let mut buf = BytesMut::new();
        let mut errors = 0;
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'z'; 1000]);
            while let Some(f) = c.decode(&mut buf).unwrap() {
                assert!(matches!(f, Frame::Malformed(_)));
                errors += 1;
            }
            assert!(buf.len() <= 1100, "buffer grew to {}", buf.len());
        }
        assert_eq!(errors, 1);
        buf.extend_from_slice(b"\r\n\r\nEvent: Ok\r\n\r\n");
        let f = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(msg(&f).event_name().as_deref(), Some("Ok"));
    }

    #[test]
    fn too_many_lines_recovers() {
        let mut input = b"Event: Many\r\n".to_vec();
        for i in 0..50 {
            input.extend_from_slice(format!("K{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\nEvent: Next\r\n\r\n");
        let limits = Limits {
            max_lines: 10,
            ..Limits::default()
        };
        let f = decode_all(&input, limits);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(matches!(
            &f[0],
            Frame::Malformed(Malformed {
                kind: MalformedKind::TooManyLines { .. },
                ..
            })
        ));
        assert_eq!(msg(&f[1]).event_name().as_deref(), Some("Next"));
    }

    #[test]
    fn message_too_large_recovers() {
        let mut input = b"Event: Large\r\n".to_vec();
        for i in 0..100 {
            input.extend_from_slice(format!("Key{i}: {}\r\n", "v".repeat(50)).as_bytes());
        }
        input.extend_from_slice(b"\r\nEvent: Next\r\n\r\n");
        let limits = Limits {
            max_message: 1000,
            ..Limits::default()
        };
        let f = decode_all(&input, limits);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(matches!(
            &f[0],
            Frame::Malformed(Malformed {
                kind: MalformedKind::MessageTooLarge { .. },
                ..
            })
        ));
        assert_eq!(msg(&f[1]).event_name().as_deref(), Some("Next"));
    }

    #[test]
    fn not_key_value_is_reported_with_excerpt() {
        let f = frames(b"Event: Bad\r\nthis line has no colon\r\nK: v\r\n\r\nEvent: Good\r\n\r\n");
        assert_eq!(f.len(), 2, "{f:?}");
        match &f[0] {
            Frame::Malformed(m) => {
                assert_eq!(m.kind, MalformedKind::NotKeyValue { line: 2 });
                assert!(m.excerpt.starts_with(b"Event: Bad"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(msg(&f[1]).event_name().as_deref(), Some("Good"));
    }

    #[test]
    fn truncated_tail_is_reported() {
        let f = frames(b"Event: A\r\n\r\nEvent: Cut\r\nKey: v");
        assert_eq!(f.len(), 2);
        assert!(matches!(
            &f[1],
            Frame::Malformed(Malformed {
                kind: MalformedKind::Truncated,
                ..
            })
        ));
    }

    #[test]
    fn crlf_split_across_reads_in_discard() {
        let limits = Limits {
            max_line: 10,
            ..Limits::default()
        };
        let mut c = AmiCodec::new(limits);
        let mut buf = BytesMut::from(&b"Event: aaaaaaaaaaaaaaaaaaaa\r\n\r"[..]);
        let f = c.decode(&mut buf).unwrap();
        assert!(matches!(f, Some(Frame::Malformed(_))));
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\nEvent: B\r\n\r\n");
        let f = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(msg(&f).event_name().as_deref(), Some("B"));
    }

    #[test]
    fn encode_decode_round_trip() {
        let m = Message::from_pairs([
            ("Action", "Originate"),
            ("Variable", "A=1"),
            ("Variable", "B=2"),
        ]);
        let mut c = AmiCodec::default();
        let mut buf = BytesMut::new();
        c.encode(&m, &mut buf).unwrap();
        let back = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            msg(&back).iter().collect::<Vec<_>>(),
            m.iter().collect::<Vec<_>>()
        );
    }
}
