//! What one server may be made to hold: message sizes, streams, calls and connections, each
//! with a default sized for a small machine, and the connection cap that enforces one of them.
//!
//! Every limit turns an abuse into a prompt, defined answer instead of unbounded memory or
//! queueing: an oversized message is refused before it is read (RESOURCE_EXHAUSTED), calls past
//! the in-flight limit are shed at once (RESOURCE_EXHAUSTED), a call past its deadline ends
//! (DEADLINE_EXCEEDED), a connection past the cap is closed as soon as it is accepted, and a
//! peer that stops answering HTTP/2 pings is disconnected.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// The server's limits. `Limits::default()` fits every valid request and a few thousand
/// concurrent callers on one small machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message read, in bytes (default: the largest valid Put, 1 KiB key and
    /// 1 MiB value, plus 63 KiB). Larger ones are refused before they are read.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (calls) one connection may have open at once (default 256).
    pub max_concurrent_streams: u32,
    /// KvService calls worked on at once across all connections (default 1024); more are
    /// refused at once with RESOURCE_EXHAUSTED. Health and reflection are never refused.
    pub max_in_flight: usize,
    /// Open connections (default 4096); more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest a call may run (default 30 s); a shorter `grpc-timeout` from the caller wins.
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings to each client (default 30 s).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed (default 10 s).
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: MAX_KEY_BYTES + MAX_VALUE_BYTES + 63 * 1024,
            max_concurrent_streams: 256,
            max_in_flight: 1024,
            max_connections: 4096,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

pin_project! {
    /// An accepted connection holding its place under the connection cap until it closes.
    pub(crate) struct CappedConnection {
        #[pin]
        io: TcpStream,
        _place: OwnedSemaphorePermit,
    }
}

/// Accepted connections (Nagle off, see `super::incoming`), at most `max` open at once:
/// connections beyond it are closed at once, and the peer sees the connection reset.
pub(crate) fn capped_incoming(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<CappedConnection>> {
    let places = Arc::new(Semaphore::new(max.max(1)));
    super::incoming(listener).filter_map(move |accepted| match accepted {
        Ok(io) => match Arc::clone(&places).try_acquire_owned() {
            Ok(place) => Some(Ok(CappedConnection { io, _place: place })),
            Err(_) => {
                tracing::debug!("connection cap reached: closing a new connection");
                None
            }
        },
        Err(err) => Some(Err(err)),
    })
}

impl Connected for CappedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for CappedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
