//! The workload: the trace both sides send, its pace, and the decoding and
//! routing every side does with the library before its clock starts.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ami2amqp::ami::{AmiCodec, Frame, Limits, Message};
use ami2amqp::mapping::{EventCtx, Outgoing, Router};
use ami2amqp::trace::replay::EventStream;
use bytes::BytesMut;

use crate::Res;
use crate::common::procs::repo;

pub(crate) const TRACE: &str = "tests/traces/calls_busy.ami.zst";
pub(crate) const TIMING: &str = "tests/traces/calls_busy.timing.zst";
/// Same length as the bridge's instance ids (12 hex digits), so message ids
/// have the same size on both sides.
pub(crate) const RAW_INSTANCE: &str = "000000000raw";
pub(crate) const SERVER: &str = "pbx1";

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(crate) fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Decodes one event's exact bytes.
pub(crate) fn decode_event(bytes: &[u8]) -> Res<Message> {
    let mut codec = AmiCodec::new(Limits::default());
    let mut buf = BytesMut::from(bytes);
    let f = match codec.decode_frame(&mut buf)? {
        Some(f) => f,
        None => return Err("event bytes do not decode".into()),
    };
    match f {
        Frame::Message(m) => Ok(m),
        other => Err(format!("not a message: {other:?}")),
    }
}

trait DecodeFrame {
    fn decode_frame(&mut self, buf: &mut BytesMut) -> Res<Option<Frame>>;
}

impl DecodeFrame for AmiCodec {
    fn decode_frame(&mut self, buf: &mut BytesMut) -> Res<Option<Frame>> {
        use tokio_util::codec::Decoder;
        match self.decode(buf) {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => self.decode_eof(buf).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Routes one event the way the bridge does (server `pbx1`, the raw
/// instance id), replacing what `out` held.
pub(crate) fn route_event(
    router: &Router,
    server: &Arc<str>,
    seq: u64,
    received_at: SystemTime,
    message: &Message,
    out: &mut Vec<Outgoing>,
) {
    let ctx = EventCtx {
        server,
        seq,
        received_at,
        message,
        instance: RAW_INSTANCE,
    };
    out.clear();
    router.route(&ctx, out);
}

/// When each message is due, relative to the start.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Pace {
    Max,
    Rate(f64),
    Timing,
}

impl Pace {
    pub(crate) fn env(&self) -> String {
        match self {
            Pace::Max => "max".into(),
            Pace::Rate(r) => format!("rate:{r}"),
            Pace::Timing => "timing".into(),
        }
    }

    pub(crate) fn parse(s: &str) -> Res<Pace> {
        match s {
            "max" => Ok(Pace::Max),
            "timing" => Ok(Pace::Timing),
            _ => s
                .strip_prefix("rate:")
                .and_then(|r| r.parse().ok())
                .map(Pace::Rate)
                .ok_or_else(|| format!("bad pace {s:?}")),
        }
    }

    pub(crate) fn replay_args(&self) -> Vec<String> {
        match self {
            Pace::Max => vec![],
            Pace::Rate(r) => vec!["--rate".into(), format!("{r}")],
            Pace::Timing => vec!["--timing".into(), repo().join(TIMING).display().to_string()],
        }
    }

    /// How long a side may take for the whole trace at this pace.
    pub(crate) fn limit(&self, n: usize) -> Duration {
        match self {
            Pace::Max => Duration::from_secs(180),
            Pace::Rate(r) => Duration::from_secs_f64(n as f64 / r + 120.0),
            Pace::Timing => Duration::from_secs(150),
        }
    }
}

pub(crate) fn load_stream(timed: bool) -> Res<EventStream> {
    let trace = [repo().join(TRACE)];
    let timing = [repo().join(TIMING)];
    EventStream::load(&trace, timed.then_some(&timing[..]), false).map_err(|e| e.to_string())
}
