//! `record`: capture a live Asterisk's AMI stream into a trace file.
//!
//! A trace must be the bytes the server sent, exactly (see [`super`]). The
//! obvious approach — decode messages and write them back out — would
//! normalise line endings, drop stray blank lines and lose whatever the codec
//! could not parse, which are precisely the things a trace is for. So the
//! socket is wrapped in a [`Tee`]: every chunk the socket delivers is copied
//! to the recorder *before* the codec sees it, and the codec only drives the
//! session (banner, login, counting events, the final `Logoff`). The file
//! therefore starts with the banner and holds everything received, byte for
//! byte, in the order and the chunks it arrived.
//!
//! With `tls` the stream is that of Asterisk's manager TLS listener,
//! verified like the bridge's (`crate::ami::AmiTls`): the trace holds the
//! decrypted bytes, and the clock starts once the handshake is done.
//!
//! The timing file gets one line per socket read: seconds since the TCP
//! connection was established and the cumulative number of bytes received,
//! which is what [`super::replay`] needs to reproduce the pace.
//!
//! Disk writes (and zstd compression, for names ending in `.zst`) happen on
//! a blocking thread fed by a channel, so a slow disk never stalls the
//! socket; Asterisk drops clients that read too slowly.
//!
//! Recording stops after the configured duration, on the `stop` future
//! (SIGINT/SIGTERM in the CLI) or when the server closes the connection.
//! Unless the server closed, a `Logoff` is sent and its `Goodbye` recorded,
//! so a trace ends the way a real session does. The files are finished
//! (zstd frame closed) and flushed before [`record`] returns.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::TraceError;
use super::file::TraceWriter;
use crate::ami::login::{Credentials, EventMask, login};
use crate::ami::stream::open;
use crate::ami::{AmiCodec, AmiTls, Frame, Kind, Message};
use crate::support::time::sleep_until_opt;

/// Everything `record` needs.
#[derive(Clone, Debug)]
pub struct RecordConfig {
    /// `host:port` of the Asterisk manager.
    pub server: String,
    pub credentials: Credentials,
    /// What to ask for on login (`Events:`).
    pub events: EventMask,
    /// The trace file (zstd when it ends in `.zst`).
    pub out: PathBuf,
    /// The timing file, if wanted (zstd when it ends in `.zst`).
    pub timing: Option<PathBuf>,
    /// Stop after this long; `None`: until stopped or the server closes.
    pub duration: Option<Duration>,
    /// For the TCP connection and for the login exchange, each.
    pub connect_timeout: Duration,
    /// How long to wait for the `Goodbye` after `Logoff`.
    pub logoff_timeout: Duration,
    /// TLS to the manager's TLS listener (`--tls`); `None`: plain TCP.
    /// The trace holds the decrypted bytes, as with plain TCP.
    pub tls: Option<AmiTls>,
}

impl RecordConfig {
    pub fn new(
        server: impl Into<String>,
        credentials: Credentials,
        out: impl Into<PathBuf>,
    ) -> Self {
        RecordConfig {
            server: server.into(),
            credentials,
            events: EventMask::On,
            out: out.into(),
            timing: None,
            duration: None,
            connect_timeout: Duration::from_secs(10),
            logoff_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// Why recording ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Duration,
    Stopped,
    ServerClosed,
}

/// What was recorded.
#[derive(Clone, Debug)]
pub struct RecordStats {
    pub bytes: u64,
    pub reads: u64,
    pub events: u64,
    pub elapsed: Duration,
    pub reason: StopReason,
}

/// One chunk as the socket delivered it.
struct Chunk {
    at: Duration,
    data: Bytes,
}

/// An I/O stream that copies every byte read from it to a channel, before
/// anyone decodes it (see the module docs).
pub struct Tee<S> {
    inner: S,
    tx: mpsc::UnboundedSender<Chunk>,
    start: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let chunk = Chunk {
                    at: this.start.elapsed(),
                    data: Bytes::copy_from_slice(new),
                };
                if this.tx.send(chunk).is_err() {
                    // The disk writer stopped (its error is reported by
                    // `record`): recording further would lose data.
                    return Poll::Ready(Err(io::Error::other("the trace writer stopped")));
                }
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Writes chunks to the trace (and timing) file until the channel closes.
/// Returns (bytes, reads).
fn disk_writer(
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    mut out: TraceWriter,
    mut timing: Option<TraceWriter>,
) -> Result<(u64, u64), TraceError> {
    let mut total = 0u64;
    let mut reads = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        out.write_all(&chunk.data)?;
        total += chunk.data.len() as u64;
        reads += 1;
        if let Some(t) = &mut timing {
            t.write_all(format!("{:.6} {}\n", chunk.at.as_secs_f64(), total).as_bytes())?;
        }
    }
    out.finish()?;
    if let Some(t) = timing {
        t.finish()?;
    }
    Ok((total, reads))
}

/// Records until `stop` completes, the duration is over or the server
/// closes (see the module docs).
pub async fn record(
    config: RecordConfig,
    stop: impl Future<Output = ()>,
) -> Result<RecordStats, TraceError> {
    // Files first: a bad output path is reported before connecting.
    let out = TraceWriter::create(&config.out)?;
    let timing = match &config.timing {
        Some(p) => Some(TraceWriter::create(p)?),
        None => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::task::spawn_blocking(move || disk_writer(rx, out, timing));
    let session = run_session(&config, tx, stop).await;
    // The Tee (and with it the sender) is gone: the writer finishes.
    let disk = writer
        .await
        .map_err(|e| TraceError::Config(format!("trace writer failed: {e}")))?;
    let (bytes, reads) = disk?;
    if session.is_err() && bytes == 0 {
        // Nothing was received (no connection, say): leave no empty files
        // that look like a recording.
        let _ = std::fs::remove_file(&config.out);
        if let Some(t) = &config.timing {
            let _ = std::fs::remove_file(t);
        }
    }
    let (events, elapsed, reason) = session?;
    let stats = RecordStats {
        bytes,
        reads,
        events,
        elapsed,
        reason,
    };
    tracing::info!(
        out = %config.out.display(),
        bytes = stats.bytes,
        events = stats.events,
        seconds = format_args!("{:.3}", stats.elapsed.as_secs_f64()),
        reason = ?stats.reason,
        "recording finished"
    );
    Ok(stats)
}

async fn run_session(
    config: &RecordConfig,
    tx: mpsc::UnboundedSender<Chunk>,
    stop: impl Future<Output = ()>,
) -> Result<(u64, Duration, StopReason), TraceError> {
    let addr = config.server.clone();
    let connect = async {
        let tcp = TcpStream::connect(&addr).await?;
        // With TLS: the handshake or a one-line cause, never plain text.
        open(tcp, config.tls.as_ref())
            .await
            .map_err(io::Error::other)
    };
    let stream = match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(TraceError::Connect { addr, source }),
        Err(_) => {
            return Err(TraceError::Connect {
                addr,
                source: io::Error::new(io::ErrorKind::TimedOut, "connection timed out"),
            });
        }
    };
    let start = Instant::now();
    let tee = Tee {
        inner: stream,
        tx,
        start,
    };
    let mut framed = Framed::new(tee, AmiCodec::default());
    let ok = login(
        &mut framed,
        &config.credentials,
        &config.events,
        config.connect_timeout,
    )
    .await
    .map_err(|source| TraceError::Login {
        addr: addr.clone(),
        source,
    })?;
    tracing::info!(server = %addr, banner = %ok.banner, "logged in, recording");
    let mut events = ok.early_events.len() as u64;
    let deadline = config.duration.map(|d| Instant::now() + d);
    tokio::pin!(stop);
    let reason = loop {
        tokio::select! {
            () = &mut stop => break StopReason::Stopped,
            () = sleep_until_opt(deadline) => break StopReason::Duration,
            item = framed.next() => match item {
                None => break StopReason::ServerClosed,
                Some(Err(e)) => return Err(TraceError::Io(e)),
                Some(Ok(Frame::Message(m))) => {
                    if m.kind() == Kind::Event {
                        events += 1;
                    }
                }
                Some(Ok(Frame::Malformed(m))) => {
                    tracing::warn!(error = %m, "malformed AMI input (recorded as received)");
                }
                Some(Ok(Frame::Banner(_))) => {}
            },
        }
    };
    if reason != StopReason::ServerClosed {
        logoff(&mut framed, config.logoff_timeout, &mut events).await;
    }
    Ok((events, start.elapsed(), reason))
}

/// Sends `Logoff` and reads (recording) until the `Goodbye`, the end of
/// the connection or the timeout.
async fn logoff<S>(framed: &mut Framed<Tee<S>, AmiCodec>, timeout: Duration, events: &mut u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let msg = Message::from_pairs([("Action", "Logoff"), ("ActionID", "record-logoff")]);
    if let Err(e) = framed.send(msg).await {
        tracing::debug!(error = %e, "sending Logoff failed");
        return;
    }
    let wait = async {
        while let Some(item) = framed.next().await {
            match item {
                Ok(Frame::Message(m)) => match m.kind() {
                    Kind::Event => *events += 1,
                    Kind::Response if m.action_id().as_deref() == Some("record-logoff") => break,
                    _ => {}
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "read after Logoff failed");
                    break;
                }
            }
        }
    };
    if tokio::time::timeout(timeout, wait).await.is_err() {
        tracing::warn!("no Goodbye after Logoff within {timeout:?}");
    }
}
