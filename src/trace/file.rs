//! Trace files on disk: reading (plain or zstd), splitting into messages with
//! their exact bytes, timing files, and writing.
//!
//! ## Why split with exact bytes
//!
//! The codec turns bytes into [`Message`]s, and a decoded message keeps its
//! wire text *without* the blank line that ended it. A replay must send what
//! Asterisk sent, byte for byte (a bare-LF blank line stays bare LF), and the
//! timing file speaks in byte offsets of the original stream. So
//! [`Frames`] runs the ordinary decoder over the trace
//! ([`ami_proto::DecodeAll`], with its offsets) and, for every
//! frame, also reports where it sits in the file: its exact bytes (a
//! zero-copy slice of the trace) and the offset just past it.
//!
//! ## Compression
//!
//! zstd is recognised by the `.zst` extension *or* by its magic bytes, so a
//! compressed file renamed without the extension still works, and a file
//! named `.zst` that is not compressed is read as is (with the magic check
//! deciding).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use ami_proto::DecodeAll;
use bytes::Bytes;

use super::TraceError;
use crate::ami::{Frame, Limits, Malformed, Message};

/// The four bytes every zstd frame starts with.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fn has_zst_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zst") || e.eq_ignore_ascii_case("zstd"))
}

/// Reads a whole trace (or timing, or `.sent`) file into memory,
/// decompressing it when it is zstd (by magic bytes; the extension alone is
/// not trusted, see the module docs).
pub fn read_trace(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let data = std::fs::read(path.as_ref())?;
    if data.starts_with(&ZSTD_MAGIC) {
        zstd::stream::decode_all(&data[..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad zstd data: {e}")))
    } else {
        Ok(data)
    }
}

/// [`read_trace`] with the path in the error, as the commands report it.
pub fn load(path: &Path) -> Result<Bytes, TraceError> {
    read_trace(path)
        .map(Bytes::from)
        .map_err(|source| TraceError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// The frames of a trace file, read and decoded a chunk at a time: memory
/// stays at one chunk plus the codec's limits (`Limits::max_message`),
/// whatever the size of the file (a day of a busy PBX is gigabytes).
/// zstd is recognised by its magic bytes, as in [`read_trace`]. The frames
/// are exactly those [`DecodeAll`] gives for the whole file at once (a
/// test checks it with chunks of every small size).
pub struct StreamFrames<R> {
    reader: R,
    codec: ami_proto::AmiCodec,
    buf: bytes::BytesMut,
    chunk: usize,
    eof: bool,
    done: bool,
    read: u64,
}

/// Bytes read from the file at a time.
const STREAM_CHUNK: usize = 256 * 1024;

/// Opens `path` for [`StreamFrames`].
pub fn stream_trace(
    path: &Path,
    limits: Limits,
) -> io::Result<StreamFrames<Box<dyn io::Read + Send>>> {
    use std::io::BufRead;
    let mut file = io::BufReader::with_capacity(STREAM_CHUNK, File::open(path)?);
    let zstd = file.fill_buf()?.starts_with(&ZSTD_MAGIC);
    let reader: Box<dyn io::Read + Send> = if zstd {
        Box::new(zstd::stream::read::Decoder::with_buffer(file)?)
    } else {
        Box::new(file)
    };
    Ok(StreamFrames::new(reader, limits, STREAM_CHUNK))
}

impl<R: io::Read> StreamFrames<R> {
    /// Frames of `reader`, read `chunk` bytes at a time.
    pub fn new(reader: R, limits: Limits, chunk: usize) -> Self {
        StreamFrames {
            reader,
            codec: ami_proto::AmiCodec::new(limits),
            buf: bytes::BytesMut::new(),
            chunk: chunk.max(1),
            eof: false,
            done: false,
            read: 0,
        }
    }

    /// Bytes of (decompressed) input read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads one more chunk; false at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        let start = self.buf.len();
        self.buf.resize(start + self.chunk, 0);
        let n = loop {
            match self.reader.read(&mut self.buf[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let n = n.inspect_err(|_| self.buf.truncate(start))?;
        self.buf.truncate(start + n);
        self.read += n as u64;
        Ok(n > 0)
    }
}

impl<R: io::Read> Iterator for StreamFrames<R> {
    type Item = io::Result<Frame>;

    fn next(&mut self) -> Option<io::Result<Frame>> {
        use tokio_util::codec::Decoder;
        while !self.done {
            let item = if self.eof {
                self.done = true;
                self.codec.decode_eof(&mut self.buf)
            } else {
                self.codec.decode(&mut self.buf)
            };
            match item {
                Ok(Some(f)) => {
                    // decode_eof may have more frames to give.
                    self.done = false;
                    return Some(Ok(f));
                }
                Ok(None) if self.eof => return None,
                Ok(None) => match self.fill() {
                    Ok(true) => {}
                    Ok(false) => self.eof = true,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// One item of a trace, with where it was in the file.
#[derive(Clone, Debug)]
pub enum TraceFrame {
    /// The `Asterisk Call Manager/X.Y.Z` line with its line ending, as
    /// sent.
    Banner { bytes: Bytes },
    /// A message. `bytes` is its exact wire text including the blank line
    /// that ended it; `end` the offset just past it in the trace.
    Message {
        message: Message,
        bytes: Bytes,
        end: usize,
    },
    /// Input the codec could not decode; `end` is the offset the decoder
    /// had consumed when it reported it.
    Malformed { malformed: Malformed, end: usize },
}

/// Splits a whole trace into [`TraceFrame`]s (see the module docs).
pub struct Frames {
    frames: DecodeAll,
    data: Bytes,
}

impl Frames {
    pub fn new(data: Bytes) -> Self {
        Frames::with_limits(data, Limits::default())
    }

    pub fn with_limits(data: Bytes, limits: Limits) -> Self {
        Frames {
            frames: DecodeAll::new(&data, limits),
            data,
        }
    }

    /// The exact bytes of a message that ended at `end`. The decoded raw
    /// text is the message without its terminating blank line; it normally
    /// sits right before that blank line in the trace, which is checked. A
    /// message the codec rebuilt (legacy `Response: Follows` output) does
    /// not match and is re-encoded instead.
    fn message_bytes(&self, message: &Message, end: usize) -> Bytes {
        let raw = message.raw();
        let d = &self.data[..end];
        let blank = if d.ends_with(b"\r\n") && d.len() >= 3 && d[d.len() - 3] == b'\n' {
            2
        } else if d.ends_with(b"\n") {
            1
        } else {
            0
        };
        if let Some(start) = end.checked_sub(blank + raw.len())
            && self.data[start..end - blank] == raw[..]
        {
            return self.data.slice(start..end);
        }
        message.to_wire()
    }

    fn banner_bytes(&self, line: &str, end: usize) -> Bytes {
        let d = &self.data[..end];
        let body = d.strip_suffix(b"\n").unwrap_or(d);
        let start = memchr::memrchr(b'\n', body).map_or(0, |i| i + 1);
        if self.data[start..end].starts_with(crate::ami::codec::BANNER_PREFIX) {
            self.data.slice(start..end)
        } else {
            Bytes::from(format!("{line}\r\n"))
        }
    }
}

impl Iterator for Frames {
    type Item = TraceFrame;

    fn next(&mut self) -> Option<TraceFrame> {
        let frame = self.frames.next()?;
        let end = self.frames.consumed();
        Some(match frame {
            Frame::Banner(line) => {
                let bytes = self.banner_bytes(&line, end);
                TraceFrame::Banner { bytes }
            }
            Frame::Message(message) => {
                let bytes = self.message_bytes(&message, end);
                TraceFrame::Message {
                    message,
                    bytes,
                    end,
                }
            }
            Frame::Malformed(malformed) => TraceFrame::Malformed { malformed, end },
        })
    }
}

/// One line of a timing file: after `secs` seconds since connect, `bytes`
/// bytes had been received in total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimingPoint {
    pub secs: f64,
    pub bytes: u64,
}

/// Reads a timing file (plain or zstd). Lines are `<secs> <bytes>`; blank
/// lines are skipped; anything else is an error naming the line.
pub fn read_timing(path: &Path) -> Result<Vec<TimingPoint>, TraceError> {
    let data = read_trace(path).map_err(|source| TraceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_timing(&data).map_err(|message| TraceError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses the text of a timing file (see [`read_timing`]).
pub fn parse_timing(data: &[u8]) -> Result<Vec<TimingPoint>, String> {
    let text = std::str::from_utf8(data).map_err(|_| "timing file is not text".to_string())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(s), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "line {}: expected `<seconds> <cumulative bytes>`, got {line:?}",
                i + 1
            ));
        };
        let secs: f64 = s
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("line {}: bad seconds {s:?}", i + 1))?;
        let bytes: u64 = b
            .parse()
            .map_err(|_| format!("line {}: bad byte count {b:?}", i + 1))?;
        out.push(TimingPoint { secs, bytes });
    }
    Ok(out)
}

/// Writes a trace (or timing) file, zstd-compressed when the name ends in
/// `.zst`. Call [`TraceWriter::finish`] at the end: a zstd stream that was
/// not finished is unreadable.
pub struct TraceWriter {
    path: PathBuf,
    inner: WriterInner,
}

enum WriterInner {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl TraceWriter {
    pub fn create(path: &Path) -> Result<Self, TraceError> {
        let err = |source| TraceError::Write {
            path: path.to_path_buf(),
            source,
        };
        let f = BufWriter::with_capacity(256 * 1024, File::create(path).map_err(err)?);
        let inner = if has_zst_extension(path) {
            WriterInner::Zstd(zstd::stream::write::Encoder::new(f, 3).map_err(err)?)
        } else {
            WriterInner::Plain(f)
        };
        Ok(TraceWriter {
            path: path.to_path_buf(),
            inner,
        })
    }

    pub fn write_all(&mut self, data: &[u8]) -> Result<(), TraceError> {
        let r = match &mut self.inner {
            WriterInner::Plain(w) => w.write_all(data),
            WriterInner::Zstd(w) => w.write_all(data),
        };
        r.map_err(|source| TraceError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Ends the zstd stream (if any) and flushes everything to disk.
    pub fn finish(self) -> Result<(), TraceError> {
        let path = self.path;
        let r = match self.inner {
            WriterInner::Plain(mut w) => w.flush().and_then(|_| w.get_ref().sync_data()),
            WriterInner::Zstd(w) => w
                .finish()
                .and_then(|mut f| f.flush().and_then(|_| f.get_ref().sync_data())),
        };
        r.map_err(|source| TraceError::Write { path, source })
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn frames_of(data: &[u8], chunk: usize) -> Vec<Frame> {
        StreamFrames::new(data, Limits::default(), chunk)
            .map(|f| f.expect("in-memory reads do not fail"))
            .collect()
    }

    #[test]
    fn streamed_frames_equal_the_whole_buffer_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces");
        for name in [
            "calls_small.ami",
            "actions.ami",
            "login_fail.ami",
            "prelogin.ami",
        ] {
            let data = read_trace(dir.join(name)).unwrap();
            let whole: Vec<Frame> = DecodeAll::new(&data, Limits::default()).collect();
            for chunk in [1, 2, 3, 7, 64, 4096, 1 << 20] {
                assert_eq!(frames_of(&data, chunk), whole, "{name}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn odd_endings_stream_like_the_whole_decode() {
        for data in [
            &b"Asterisk Call Manager/1.0\r\nEvent: A\r\nX: 1"[..],
            b"Event: A\n\n\nEvent: B\r\n\r\nbad line\r\n\r\n",
            b"",
            b"\r\n\r\n\r\n",
        ] {
            // A malformed frame's excerpt is what was buffered when the
            // decoder gave up on it, so it may be shorter when streamed.
            let kinds = |v: Vec<Frame>| -> Vec<String> {
                v.into_iter()
                    .map(|f| match f {
                        Frame::Malformed(m) => format!("malformed {:?}", m.kind),
                        f => format!("{f:?}"),
                    })
                    .collect()
            };
            let whole = kinds(DecodeAll::new(data, Limits::default()).collect());
            for chunk in [1, 2, 5, 1024] {
                assert_eq!(
                    kinds(frames_of(data, chunk)),
                    whole,
                    "{data:?} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn zstd_files_stream_too() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces");
        let whole = read_trace(dir.join("calls_busy.ami.zst")).unwrap();
        let n_whole = DecodeAll::new(&whole, Limits::default()).count();
        let mut n = 0;
        for f in stream_trace(&dir.join("calls_busy.ami.zst"), Limits::default()).unwrap() {
            f.unwrap();
            n += 1;
        }
        assert_eq!(n, n_whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_exact_bytes() {
        let input: &[u8] = b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nMessage: ok\r\n\r\n\r\nEvent: A\nK: v\n\nEvent: B\r\nK: v\r\n\n";
        let data = Bytes::from_static(input);
        let frames: Vec<_> = Frames::new(data).collect();
        assert_eq!(frames.len(), 4, "{frames:?}");
        let mut joined = Vec::new();
        for f in &frames {
            match f {
                TraceFrame::Banner { bytes } => joined.extend_from_slice(bytes),
                TraceFrame::Message { bytes, end, .. } => {
                    joined.extend_from_slice(bytes);
                    assert!(input[..*end].ends_with(bytes));
                }
                TraceFrame::Malformed { .. } => panic!("unexpected"),
            }
        }
        // Everything but the stray blank line between messages.
        let mut expected = input.to_vec();
        let stray = b"\r\n\r\n\r\nEvent";
        let at = expected
            .windows(stray.len())
            .position(|w| w == stray)
            .expect("stray");
        expected.drain(at + 4..at + 6);
        assert_eq!(joined, expected);
    }

    #[test]
    fn frames_end_offsets_match_real_trace() {
        let data = Bytes::from(read_trace("tests/traces/login_plain.ami").expect("trace"));
        let mut total = 0;
        let mut last_end = 0;
        for f in Frames::new(data.clone()) {
            match f {
                TraceFrame::Banner { bytes } => total += bytes.len(),
                TraceFrame::Message { bytes, end, .. } => {
                    total += bytes.len();
                    last_end = end;
                }
                TraceFrame::Malformed { .. } => panic!("malformed"),
            }
        }
        assert_eq!(total, data.len());
        assert_eq!(last_end, data.len());
    }

    #[test]
    fn zstd_by_magic_and_extension() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = b"Asterisk Call Manager/11.0.0\r\n".to_vec();
        let z = zstd::stream::encode_all(&plain[..], 3).expect("zstd");
        let named = dir.path().join("a.ami.zst");
        let hidden = dir.path().join("b.ami");
        std::fs::write(&named, &z).expect("write");
        std::fs::write(&hidden, &z).expect("write");
        assert_eq!(read_trace(&named).expect("read"), plain);
        assert_eq!(read_trace(&hidden).expect("read"), plain);
    }

    #[test]
    fn writer_round_trip_zstd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.ami.zst");
        let mut w = TraceWriter::create(&p).expect("create");
        w.write_all(b"hello ").expect("write");
        w.write_all(b"world").expect("write");
        w.finish().expect("finish");
        assert_eq!(read_trace(&p).expect("read"), b"hello world");
    }

    #[test]
    fn timing_parse() {
        let t = parse_timing(b"0.011711 30\n0.012178 102\n\n").expect("parse");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].bytes, 102);
        assert!(parse_timing(b"0.1\n").is_err());
        assert!(parse_timing(b"x 1\n").is_err());
    }
}
