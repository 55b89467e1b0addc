//! Driving the bridge with the fake Asterisk: `ami2amqp replay` serves the
//! trace, and a small TCP relay in this process sits between it and the
//! bridge. The relay holds the AMI connection closed until the bridge is
//! connected to the broker (so the clock starts when the events do) and
//! stamps the time at which each event's last byte is handed to the
//! bridge's socket.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ami2amqp::ami::{AmiCodec, Frame, Kind, Limits};
use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::Res;
use crate::common::procs::repo;
use crate::setup::Setup;
use crate::trace::{Pace, TRACE, now_us};
/// What the relay saw.
#[derive(Default)]
pub(crate) struct Relay {
    /// When the gate opened (µs).
    pub(crate) opened_us: u64,
    /// Time each event's last byte was handed to the bridge's socket.
    pub(crate) times: Vec<u64>,
    pub(crate) wrong_names: usize,
    /// Longest single write to the bridge's socket (µs) and when it
    /// started: a write only waits when the bridge stops reading and the
    /// socket buffer is full.
    pub(crate) longest_write_us: u64,
    pub(crate) longest_write_at_us: u64,
    /// Total time spent waiting in writes to the bridge's socket (µs).
    pub(crate) write_wait_us: u64,
}

/// Accepts the bridge's AMI connection, waits for the gate, then connects
/// to the replay and relays both ways; with `track`, decodes what it
/// forwards to stamp every event.
pub(crate) async fn relay(
    listener: TcpListener,
    gate: tokio::sync::oneshot::Receiver<()>,
    replay: String,
    track: bool,
    names: Arc<Vec<String>>,
    state: Arc<Mutex<Relay>>,
) -> Res<()> {
    let (client, _) = listener.accept().await.map_err(|e| e.to_string())?;
    gate.await.map_err(|_| "gate dropped")?;
    state.lock().unwrap_or_else(|p| p.into_inner()).opened_us = now_us();
    let server = TcpStream::connect(&replay)
        .await
        .map_err(|e| format!("connect to replay: {e}"))?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut codec = AmiCodec::new(Limits::default());
    let mut pending = BytesMut::new();
    let mut times = Vec::with_capacity(if track { names.len() } else { 0 });
    let mut wrong = 0usize;
    let mut write_wait = 0u64;
    let mut longest = (0u64, 0u64);
    loop {
        let k = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        let t = now_us();
        if cw.write_all(&buf[..k]).await.is_err() {
            break;
        }
        let w = now_us().saturating_sub(t);
        write_wait += w;
        if w > longest.0 {
            longest = (w, t);
        }
        if track {
            use tokio_util::codec::Decoder;
            pending.extend_from_slice(&buf[..k]);
            while let Ok(Some(f)) = codec.decode(&mut pending) {
                if let Frame::Message(m) = f
                    && m.kind() == Kind::Event
                {
                    let i = times.len();
                    if names.get(i).map(|s| s.as_str()) != m.event_name().as_deref() {
                        wrong += 1;
                    }
                    times.push(t);
                }
            }
        }
    }
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.times = times;
    st.wrong_names = wrong;
    st.longest_write_us = longest.0;
    st.longest_write_at_us = longest.1;
    st.write_wait_us = write_wait;
    Ok(())
}

pub(crate) async fn start_replay(
    s: &Setup,
    pace: &Pace,
    log: &Path,
) -> Res<(tokio::process::Child, String)> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(&s.bin)
        .arg("replay")
        .args(["--listen", "127.0.0.1:0", "--once"])
        .args(pace.replay_args())
        .arg(repo().join(TRACE))
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start replay: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| "replay did not start")?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("replay said {line:?}"))?
        .to_string();
    // Keep reading its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}
