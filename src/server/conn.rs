//! Accepted connections: the connection cap, Nagle off, the TLS handshake and its timeout, and
//! the idle timer.
//!
//! An accept task takes connections off the listener and hands them to tonic through a
//! channel. A connection past the cap is closed at once. A TLS handshake runs in a task of its
//! own, so a slow or silent peer never delays the next accept, and is abandoned after
//! `handshake_timeout`. Every connection then carries an [`Activity`] record, shared through
//! the request extensions with [`ActivityLayer`], which counts the calls open on it:
//! - a connection with no open call for `idle_timeout` is closed (its reads end), which also
//!   ends connections that never finish the HTTP/2 preface or a request's headers;
//! - a connection holding a response the client does not take for `stall_timeout` (the request
//!   timeout) is closed with an error, which frees every answer it holds. Large responses are
//!   handed to HTTP/2 in copied 16 KiB pieces, so hyper takes the next piece only when the
//!   client's flow-control window has room: an answer a client does not read stays in its
//!   body, where the in-flight limit (whose place the body holds) bounds how many there are,
//!   and this timer sees it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinHandle,
    time::{Instant, Sleep},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::{Limits, tls::ServerTls};

/// The largest piece of a response body handed to HTTP/2 at once (its default frame size).
const PIECE: usize = 16 * 1024;

/// How many calls one connection has open, since when it has had none, and whether its client
/// is taking its answers.
#[derive(Debug)]
pub(crate) struct Activity {
    open: AtomicUsize,
    /// Response bodies not yet taken to their end.
    unsent: AtomicUsize,
    born: Instant,
    /// Milliseconds after `born` when the last open call ended (or the connection opened).
    idle_since_ms: AtomicU64,
    /// Milliseconds after `born` when a response body last gave hyper a frame, or appeared.
    taken_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            unsent: AtomicUsize::new(0),
            born: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
            taken_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn opened(self: &Arc<Self>) -> OpenCall {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenCall(Arc::clone(self))
    }

    fn answered(self: &Arc<Self>) -> Unsent {
        self.took();
        self.unsent.fetch_add(1, Ordering::AcqRel);
        Unsent(Arc::clone(self))
    }

    fn took(&self) {
        self.taken_ms.fetch_max(self.now_ms(), Ordering::AcqRel);
    }

    /// When the client has left an answer untaken too long, or `None` while none waits.
    fn stall_deadline(&self, stall_timeout: Duration) -> Option<Instant> {
        if self.unsent.load(Ordering::Acquire) == 0 {
            return None;
        }
        let taken = Duration::from_millis(self.taken_ms.load(Ordering::Acquire));
        Some(self.born + taken + stall_timeout)
    }

    /// When the connection becomes idle enough to close, or `None` while a call is open.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.born + since + idle_timeout)
    }
}

/// One open call; dropping it (with the response body, or the call) closes it.
#[derive(Debug)]
pub(crate) struct OpenCall(Arc<Activity>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = activity.now_ms();
        if activity.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        }
    }
}

/// One response body not yet taken to its end.
#[derive(Debug)]
pub(crate) struct Unsent(Arc<Activity>);

impl Drop for Unsent {
    fn drop(&mut self) {
        self.0.unsent.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What each request learns about its connection (tonic copies it into the extensions).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, plain or TLS, holding its place under the cap until it closes.
/// (Unpin, as tonic requires: the timer is boxed.)
pub(crate) struct Accepted {
    io: Io,
    info: ConnInfo,
    bounds: Bounds,
    timer: Pin<Box<Sleep>>,
    _place: OwnedSemaphorePermit,
}

impl Accepted {
    fn new(io: Io, tcp: TcpConnectInfo, bounds: Bounds, place: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            info: ConnInfo {
                tcp,
                activity: Activity::new(),
            },
            bounds,
            timer: Box::pin(tokio::time::sleep(bounds.idle.min(bounds.stall))),
            _place: place,
        }
    }
}

impl Connected for Accepted {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// Delegates an `AsyncRead`/`AsyncWrite` method to whichever stream the connection is.
macro_rules! delegate {
    ($io:expr, $method:ident($($arg:expr),*)) => {
        match $io {
            Io::Plain(io) => Pin::new(io).$method($($arg),*),
            Io::Tls(io) => Pin::new(io.as_mut()).$method($($arg),*),
        }
    };
}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(read) = delegate!(&mut this.io, poll_read(cx, buf)) {
            return Poll::Ready(read);
        }
        // Nothing to read: idle or stalled for long enough? The timer re-arms itself at least
        // every min(idle, stall), so no wake-up from elsewhere is needed.
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let (activity, bounds, now) = (&this.info.activity, this.bounds, Instant::now());
            let peer = this.info.tcp.remote_addr;
            let stall = activity.stall_deadline(bounds.stall);
            if stall.is_some_and(|deadline| deadline <= now) {
                tracing::debug!(
                    ?peer,
                    "closing a connection whose client does not take its answers"
                );
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not take its answers within the request timeout",
                )));
            }
            let idle = activity.idle_deadline(bounds.idle);
            if idle.is_some_and(|deadline| deadline <= now) {
                tracing::debug!(?peer, "closing an idle connection");
                return Poll::Ready(Ok(())); // end of stream: hyper closes the connection
            }
            let next = [stall, idle].into_iter().flatten().min();
            let next = next.unwrap_or(now + bounds.idle.min(bounds.stall));
            this.timer.as_mut().reset(next);
        }
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(&mut self.get_mut().io, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(&mut self.get_mut().io, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(&mut self.get_mut().io, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(&mut self.get_mut().io, poll_shutdown(cx))
    }
}

/// The server's connections, ready for HTTP/2; see the module docs. Dropping it stops the
/// accept task.
pub(crate) struct Incoming {
    ready: mpsc::Receiver<io::Result<Accepted>>,
    accept: JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Stream for Incoming {
    type Item = io::Result<Accepted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx)
    }
}

/// Accepts connections on `listener` within `limits`, over TLS when `tls` is given.
pub(crate) fn incoming(listener: TcpListener, limits: &Limits, tls: Option<ServerTls>) -> Incoming {
    let (ready_tx, ready) = mpsc::channel(64);
    let accept = tokio::spawn(accept_loop(
        listener,
        Arc::new(Semaphore::new(limits.max_connections.max(1))),
        Bounds {
            handshake: limits.handshake_timeout,
            idle: limits.idle_timeout,
            stall: limits.request_timeout,
        },
        tls,
        ready_tx,
    ));
    Incoming { ready, accept }
}

#[derive(Clone, Copy)]
struct Bounds {
    handshake: Duration,
    idle: Duration,
    /// How long an answer may wait for its client to take it.
    stall: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    places: Arc<Semaphore>,
    bounds: Bounds,
    tls: Option<ServerTls>,
    ready: mpsc::Sender<io::Result<Accepted>>,
) {
    let local_addr = listener.local_addr().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say: the next accept may succeed once some close.
                tracing::warn!(%err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached: closing a new connection");
            continue;
        };
        // Small unary answers must not wait for the peer's delayed ACK (40 ms a call).
        let _ = tcp.set_nodelay(true);
        let info = TcpConnectInfo {
            local_addr,
            remote_addr: Some(peer),
        };
        match &tls {
            None => {
                let conn = Accepted::new(Io::Plain(tcp), info, bounds, place);
                if ready.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let handshake = tls.acceptor().accept(tcp);
                let ready = ready.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(bounds.handshake, handshake).await {
                        Ok(Ok(stream)) => {
                            let io = Io::Tls(Box::new(stream));
                            let _ = ready.send(Ok(Accepted::new(io, info, bounds, place))).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Counts each call as open on its connection until its response body is gone, for the idle
/// timer; also gives the request tonic's own `TcpConnectInfo`, so `Request::remote_addr` works.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService { inner }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub(crate) struct ActivityService<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<Request<B>> for ActivityService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<CallBody<RB>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let open = req.extensions().get::<ConnInfo>().map(|info| {
            let open = info.activity.opened();
            let tcp = info.tcp.clone();
            (open, tcp)
        });
        let open = open.map(|(open, tcp)| {
            req.extensions_mut().insert(tcp);
            open
        });
        CallFuture {
            inner: self.inner.call(req),
            open,
        }
    }
}

pin_project! {
    /// Response future of [`ActivityService`]: the call stays open into the body.
    pub(crate) struct CallFuture<F> {
        #[pin]
        inner: F,
        open: Option<OpenCall>,
    }
}

impl<F, RB, E> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<CallBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let open = this.open.take();
        let unsent = open.as_ref().map(|open| open.0.answered());
        Poll::Ready(Ok(response.map(|inner| CallBody {
            inner,
            rest: Bytes::new(),
            unsent,
            _open: open,
        })))
    }
}

pin_project! {
    /// A response body that keeps its call open until it is dropped, hands large frames over
    /// in copied pieces of at most [`PIECE`] bytes (so the original is freed once the last
    /// piece is taken), and tells the connection when the client takes a frame.
    pub(crate) struct CallBody<B> {
        #[pin]
        inner: B,
        // What is left of a large frame.
        rest: Bytes,
        unsent: Option<Unsent>,
        _open: Option<OpenCall>,
    }
}

impl<B> http_body::Body for CallBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if this.rest.is_empty() {
            match ready!(this.inner.poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.len() > PIECE => *this.rest = data,
                    frame => {
                        if let Some(unsent) = this.unsent {
                            unsent.0.took();
                        }
                        let frame = frame.map_or_else(|trailers| trailers, http_body::Frame::data);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                end => {
                    this.unsent.take();
                    return Poll::Ready(end);
                }
            }
        }
        let n = this.rest.len().min(PIECE);
        let piece = Bytes::copy_from_slice(&this.rest[..n]);
        this.rest.advance(n);
        if this.rest.is_empty() {
            *this.rest = Bytes::new(); // frees the original frame
        }
        if let Some(unsent) = this.unsent {
            unsent.0.took();
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.rest.is_empty() {
            self.inner.size_hint()
        } else {
            http_body::SizeHint::default()
        }
    }
}
