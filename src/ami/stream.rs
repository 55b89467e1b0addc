//! The socket of one AMI connection: plain TCP, or TLS to Asterisk's
//! manager TLS listener (`tlsenable` in manager.conf, port 5039 by
//! default). [`open`] connects; with TLS configured the handshake must
//! succeed, and a failure is an error naming its cause — never a retry in
//! plain text.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::tls::{self, ClientFiles};

/// TLS towards one Asterisk server: whom to trust, what to present, and
/// the name its certificate must carry.
#[derive(Clone)]
pub struct AmiTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for AmiTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmiTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl AmiTls {
    /// Loads the files (`tls_ca_file`, `tls_cert_file`, `tls_key_file`)
    /// and parses `server_name` (`tls_server_name`, or the host of
    /// `address`). Errors name the key and the file.
    pub fn new(files: &ClientFiles, server_name: &str) -> Result<AmiTls, String> {
        let config = tls::client_config(files, ["tls_ca_file", "tls_cert_file", "tls_key_file"])?;
        let server_name =
            tls::server_name(server_name).map_err(|e| format!("tls_server_name: {e}"))?;
        Ok(AmiTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The name the server's certificate must carry.
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }
}

/// A connected AMI socket.
pub enum AmiStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connects `tcp` (already connected to the server) through TLS when
/// `tls` is set. The error is one line: the TLS cause, or the I/O error.
pub async fn open(tcp: TcpStream, tls: Option<&AmiTls>) -> Result<AmiStream, String> {
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(AmiStream::Plain(tcp)),
        Some(t) => t
            .connector
            .connect(t.server_name.clone(), tcp)
            .await
            .map(|s| AmiStream::Tls(Box::new(s)))
            .map_err(|e| tls::describe_io(&e)),
    }
}

impl AsyncRead for AmiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AmiStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AmiStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AmiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AmiStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AmiStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AmiStream::Plain(s) => Pin::new(s).poll_flush(cx),
            AmiStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AmiStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AmiStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AmiStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AmiStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AmiStream::Plain(s) => s.is_write_vectored(),
            AmiStream::Tls(s) => s.is_write_vectored(),
        }
    }
}
