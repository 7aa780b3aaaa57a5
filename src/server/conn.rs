//! Accepted connections: the connection cap, Nagle off, the TLS handshake and its timeout, and
//! the idle timer.
//!
//! An accept task takes connections off the listener and hands them to the HTTP/2 server
//! ([`super::http2`]) through a channel. A connection past the cap is closed at once. A TLS
//! handshake runs in a task of its own, so a slow or silent peer never delays the next accept,
//! and is abandoned after `handshake_timeout`. Every connection then carries an [`Activity`]
//! record, shared with the [`ActivityService`] its calls go through, and a timer in its I/O,
//! which closes it when:
//! - it has no open call for `idle_timeout`, or has not started its first call within
//!   min(`handshake_timeout`, `idle_timeout`) (this also ends connections that never finish the
//!   HTTP/2 preface or a request's headers). Its reads end; bytes read in the last second (a
//!   request hyper has not started yet) postpone that by up to 10 s;
//! - an answer has waited `stall_timeout` (the request timeout; measured to within a
//!   sixteenth of it and a tick of the coarse clock, whose lag it allows for) for the client
//!   to take it, or its writes have been blocked that long (a client that stopped reading).
//!   Its I/O fails, which frees every answer it holds.
//!
//! "Waiting to be taken" is tracked per answer: from the moment a body hands hyper a frame (or
//! its head) until hyper comes back for more. A body waiting on its own service (a health
//! Watch between changes) does not count. Large frames are handed over in copied 16 KiB
//! pieces, so hyper takes the next piece only when the client's flow-control window has room:
//! an answer a client does not read stays in its body, counted by the in-flight limit (whose
//! place the body holds), and the stall timer sees it.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker, ready},
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

use super::{Limits, clock, tls::ServerTls};

/// The largest piece of a response body handed to HTTP/2 at once (its default frame size).
const PIECE: usize = 16 * 1024;

/// Bytes read this recently may be a call hyper has not started yet: the idle close waits.
const READ_GRACE: Duration = Duration::from_secs(1);

/// The idle close waits for fresh reads at most this long past its deadline (a slowloris
/// trickle gains no more).
const MAX_POSTPONE: Duration = Duration::from_secs(10);

/// Answers waiting on the client are counted in this many slots of time, a ring...
const WAIT_SLOTS: usize = 32;
/// ... each slot this share of the stall timeout: the ring spans twice the timeout, and the
/// oldest waiting answer is known to within a sixteenth of it.
const SLOTS_PER_STALL: u32 = 16;

/// How many calls one connection has open, since when it has had none, and which answers wait
/// for its client to take them.
#[derive(Debug)]
pub(crate) struct Activity {
    open: AtomicUsize,
    opened_any: AtomicBool,
    born: Instant,
    /// `born` on [`clock::nanos`].
    born_nanos: u64,
    /// Milliseconds after `born` when the last open call ended (or the connection opened).
    idle_since_ms: AtomicU64,
    /// Answers waiting for hyper to come back for them, counted by the slot of time (`slot_ms`
    /// long, numbered from `born`) they began in, slot `n` at `n % WAIT_SLOTS`. Counters, not a
    /// set under a lock: two atomic adds per answer frame. An answer still waiting after the
    /// ring came round again would be counted as younger, but the stall timer closes the
    /// connection long before (at the stall timeout plus one slot).
    waiting: [AtomicU32; WAIT_SLOTS],
    slot_ms: u64,
}

impl Activity {
    fn new(stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            opened_any: AtomicBool::new(false),
            born: Instant::now(),
            born_nanos: clock::nanos(),
            idle_since_ms: AtomicU64::new(0),
            waiting: std::array::from_fn(|_| AtomicU32::new(0)),
            // Rounded up, so the ring always spans at least twice the timeout.
            slot_ms: (stall.as_millis() as u64)
                .div_ceil(u64::from(SLOTS_PER_STALL))
                .max(1),
        })
    }

    /// Milliseconds since `born`, on the coarse clock: read twice a call, and these timers
    /// count seconds.
    fn now_ms(&self) -> u64 {
        clock::nanos().saturating_sub(self.born_nanos) / 1_000_000
    }

    /// A call opens; it closes when the returned record is dropped.
    fn opened(self: Arc<Self>) -> OpenCall {
        self.open.fetch_add(1, Ordering::AcqRel);
        // Written once, not on every call: a store is a write even when nothing changes.
        if !self.opened_any.load(Ordering::Relaxed) {
            self.opened_any.store(true, Ordering::Release);
        }
        OpenCall {
            activity: self,
            waiting: None,
        }
    }

    /// When the answer waiting longest will have waited too long (counted from the end of
    /// the slot it began in, and a tick later for the coarse clock's lag, so not early), or
    /// `None` if none waits.
    fn stall_deadline(&self, stall_timeout: Duration) -> Option<Instant> {
        let now = self.now_ms() / self.slot_ms;
        let oldest = (now.saturating_sub(WAIT_SLOTS as u64 - 1)..=now)
            .find(|slot| self.waiting[*slot as usize % WAIT_SLOTS].load(Ordering::Relaxed) > 0)?;
        Some(
            self.born
                + Duration::from_millis((oldest + 1) * self.slot_ms)
                + *clock::RESOLUTION
                + stall_timeout,
        )
    }

    /// When the connection becomes idle enough to close, or `None` while a call is open.
    fn idle_deadline(&self, bounds: &Bounds) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.opened_any.load(Ordering::Acquire) {
            return Some(self.born + bounds.first_call);
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.born + since + bounds.idle)
    }
}

/// One open call, and whether its answer waits for hyper to come back for it (the slot the
/// wait began in). Dropping it (with the response body, or the call) ends both.
#[derive(Debug)]
pub(crate) struct OpenCall {
    activity: Arc<Activity>,
    waiting: Option<u64>,
}

impl OpenCall {
    /// The answer starts waiting for hyper to take it.
    fn wait_begins(&mut self) {
        self.wait_ends();
        let activity = &self.activity;
        let slot = activity.now_ms() / activity.slot_ms;
        activity.waiting[slot as usize % WAIT_SLOTS].fetch_add(1, Ordering::Relaxed);
        self.waiting = Some(slot);
    }

    /// The answer no longer waits: hyper came back for it, a new wait begins, or it is gone.
    fn wait_ends(&mut self) {
        if let Some(slot) = self.waiting.take() {
            self.activity.waiting[slot as usize % WAIT_SLOTS].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.wait_ends();
        let activity = &self.activity;
        // The time first, then the count: a timer that sees no open call must also see when
        // the last one ended.
        activity
            .idle_since_ms
            .fetch_max(activity.now_ms(), Ordering::AcqRel);
        activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, plain or TLS, holding its place under the cap until it closes.
/// (Unpin, as hyper requires: the timer is boxed.)
pub(crate) struct Accepted {
    io: Io,
    peer: SocketAddr,
    activity: Arc<Activity>,
    bounds: Bounds,
    timer: Pin<Box<Sleep>>,
    /// The waker the timer last registered, while it has not fired: polled again with the same
    /// one, it would only register that waker again, so it is not (a few times a call). Only a
    /// poll made with coop budget left counts: out of budget, `Sleep` returns `Pending` without
    /// registering anything, and skipping the next polls would leave the timer deaf.
    timer_waker: Option<Waker>,
    last_read: Instant,
    /// Since when every write has been refused (the client is not reading).
    blocked_since: Option<Instant>,
    _place: OwnedSemaphorePermit,
}

/// Why the timer closes a connection.
enum Close {
    Idle,
    Stalled,
}

impl Accepted {
    fn new(io: Io, peer: SocketAddr, bounds: Bounds, place: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            peer,
            activity: Activity::new(bounds.stall),
            bounds,
            timer: Box::pin(tokio::time::sleep(bounds.first_call.min(bounds.stall))),
            timer_waker: None,
            last_read: Instant::now(),
            blocked_since: None,
            _place: place,
        }
    }

    /// The record of this connection's calls, for its [`ActivityService`].
    pub(crate) fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.activity)
    }

    /// Waits on the timer; `Ready` when the connection must close, and why. Re-arms itself at
    /// least every min(idle, stall), so no wake-up from elsewhere is needed.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Close> {
        if !self.timer.is_elapsed()
            && let Some(waker) = &self.timer_waker
            && waker.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        loop {
            let registers = tokio::task::coop::has_budget_remaining();
            if self.timer.as_mut().poll(cx).is_pending() {
                self.timer_waker = registers.then(|| cx.waker().clone());
                return Poll::Pending;
            }
            self.timer_waker = None;
            let (activity, bounds, now) = (&self.activity, &self.bounds, Instant::now());
            let peer = self.peer;
            let stall = activity.stall_deadline(bounds.stall);
            let blocked = self.blocked_since.map(|since| since + bounds.stall);
            if stall.is_some_and(|d| d <= now) || blocked.is_some_and(|d| d <= now) {
                tracing::debug!(
                    ?peer,
                    "closing a connection whose client does not take its answers"
                );
                return Poll::Ready(Close::Stalled);
            }
            let mut idle = activity.idle_deadline(bounds);
            if let Some(deadline) = idle.filter(|d| *d <= now) {
                let fresh = self.last_read + READ_GRACE;
                if fresh <= now || now >= deadline + MAX_POSTPONE {
                    tracing::debug!(?peer, "closing an idle connection");
                    return Poll::Ready(Close::Idle);
                }
                idle = Some(fresh);
            }
            let next = [stall, blocked, idle].into_iter().flatten().min();
            let next = next.unwrap_or(now + bounds.idle.min(bounds.stall));
            self.timer.as_mut().reset(next);
        }
    }

    /// Tracks whether writes go through; when they do not, the stall timer decides.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.blocked_since = None;
            return result;
        }
        self.blocked_since.get_or_insert_with(Instant::now);
        match self.poll_timer(cx) {
            Poll::Ready(Close::Stalled) => Poll::Ready(Err(stalled())),
            // Idle does not apply to a connection with writes pending; reads will see it.
            Poll::Ready(Close::Idle) | Poll::Pending => Poll::Pending,
        }
    }
}

fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not take its answers within the request timeout",
    )
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
        let before = buf.filled().len();
        if let Poll::Ready(read) = delegate!(&mut this.io, poll_read(cx, buf)) {
            if buf.filled().len() > before {
                this.last_read = Instant::now();
            }
            return Poll::Ready(read);
        }
        match this.poll_timer(cx) {
            Poll::Ready(Close::Idle) => Poll::Ready(Ok(())), // end of stream: hyper closes it
            Poll::Ready(Close::Stalled) => Poll::Ready(Err(stalled())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = delegate!(&mut this.io, poll_write(cx, buf));
        this.written(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = delegate!(&mut this.io, poll_write_vectored(cx, bufs));
        this.written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = delegate!(&mut this.io, poll_flush(cx));
        this.written(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(&mut self.get_mut().io, poll_shutdown(cx))
    }
}

/// The server's connections, ready for HTTP/2; see the module docs. Dropping it stops the
/// accept task, which closes the listener.
pub(crate) struct Incoming {
    ready: mpsc::Receiver<Accepted>,
    accept: JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Incoming {
    /// The next connection; `None` once the accept task is gone.
    pub(crate) async fn next(&mut self) -> Option<Accepted> {
        self.ready.recv().await
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
            first_call: limits.handshake_timeout.min(limits.idle_timeout),
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
    /// How long a new connection may take to start its first call.
    first_call: Duration,
    idle: Duration,
    /// How long an answer may wait for its client to take it.
    stall: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    places: Arc<Semaphore>,
    bounds: Bounds,
    tls: Option<ServerTls>,
    ready: mpsc::Sender<Accepted>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors or memory: the next accept may succeed once some close,
            // so wait a little instead of spinning.
            Err(err) if matches!(err.raw_os_error(), Some(12 | 23 | 24 | 105)) => {
                tracing::warn!(%err, "accepting a connection failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // A connection reset before we took it, say: only that one is lost.
            Err(err) => {
                tracing::debug!(%err, "accepting a connection failed");
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached: closing a new connection");
            continue;
        };
        // Small unary answers must not wait for the peer's delayed ACK (40 ms a call).
        let _ = tcp.set_nodelay(true);
        match &tls {
            None => {
                let conn = Accepted::new(Io::Plain(tcp), peer, bounds, place);
                if ready.send(conn).await.is_err() {
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
                            let _ = ready.send(Accepted::new(io, peer, bounds, place)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// One connection's calls: counts each as open on the connection until its response body is
/// gone, for the idle and stall timers.
#[derive(Debug, Clone)]
pub(crate) struct ActivityService<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> ActivityService<S> {
    /// `inner`, serving the connection `activity` records.
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        CallFuture {
            inner: self.inner.call(req),
            open: Some(Arc::clone(&self.activity).opened()),
        }
    }
}

pin_project! {
    /// Response future of [`ActivityService`]: the call stays open into the body.
    pub(crate) struct CallFuture<F> {
        #[pin]
        inner: F,
        // Handed to the response body when the answer comes.
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
        let mut open = this.open.take().expect("a call future completes once");
        // The head is an answer too: hyper may not be able to send even that.
        open.wait_begins();
        Poll::Ready(Ok(response.map(|inner| CallBody {
            inner,
            rest: Bytes::new(),
            open,
        })))
    }
}

pin_project! {
    /// A response body that keeps its call open until it is dropped, hands large frames over
    /// in copied pieces of at most [`PIECE`] bytes (so the original is freed once the last
    /// piece is taken), and counts as waiting on the client from each frame it hands hyper
    /// until hyper comes back for the next.
    pub(crate) struct CallBody<B> {
        #[pin]
        inner: B,
        // What is left of a large frame.
        rest: Bytes,
        open: OpenCall,
    }
}

/// The next piece of `rest`, copied; the original is freed with the last one.
fn next_piece(rest: &mut Bytes) -> http_body::Frame<Bytes> {
    let n = rest.len().min(PIECE);
    let piece = Bytes::copy_from_slice(&rest[..n]);
    rest.advance(n);
    if rest.is_empty() {
        *rest = Bytes::new(); // drops the last reference to the original frame
    }
    http_body::Frame::data(piece)
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
        let mut this = self.project();
        // hyper came back: whatever comes next, or does not, is not the client's doing.
        this.open.wait_ends();
        let frame = if this.rest.is_empty() {
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.len() > PIECE => {
                        *this.rest = data;
                        next_piece(this.rest)
                    }
                    frame => frame.map_or_else(|trailers| trailers, http_body::Frame::data),
                },
                end => return Poll::Ready(end),
            }
        } else {
            next_piece(this.rest)
        };
        let last = frame.is_trailers() || (this.rest.is_empty() && this.inner.is_end_stream());
        if !last {
            this.open.wait_begins();
        }
        Poll::Ready(Some(Ok(frame)))
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

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use tokio::task::coop;

    use super::*;

    /// Polled first with the task's coop budget spent, `Sleep` answers `Pending` without
    /// registering a waker: the connection's timer must still close an idle connection.
    #[tokio::test]
    async fn the_timer_fires_after_a_poll_out_of_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let short = Duration::from_millis(50);
        let bounds = Bounds {
            handshake: short,
            first_call: short,
            idle: short,
            stall: Duration::from_secs(60),
        };
        let place = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let mut conn = Accepted::new(Io::Plain(tcp), peer, bounds, place);
        let mut first = true;
        let closed = std::future::poll_fn(|cx| {
            if std::mem::take(&mut first) {
                while coop::has_budget_remaining() {
                    let _ = pin!(coop::consume_budget()).poll(cx);
                }
            }
            conn.poll_timer(cx)
        });
        // Idle after 50 ms, postponed to a second after the last read (the connection's birth).
        let close = tokio::time::timeout(Duration::from_secs(10), closed).await;
        assert!(
            matches!(close, Ok(Close::Idle)),
            "the idle connection was not closed"
        );
    }
}
