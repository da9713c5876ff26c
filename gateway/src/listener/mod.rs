//! Listeners: accept, TLS handshake, HTTP/1.1 or HTTP/2 by ALPN, and the connection-level limits.
//!
//! Limits enforced here: a global cap on open connections (accepting pauses at the cap instead of
//! queueing sockets in memory), the TLS handshake timeout, the header size and count, the header
//! read timeout (hyper also applies it while an HTTP/1.1 keep-alive connection waits for its next
//! request), and an idle timeout that closes connections with no request in progress and no bytes
//! moving. Shutdown stops accepting, lets requests in progress finish for the grace period, then
//! closes what is left. An HTTP/1.1 request carrying both Content-Length and Transfer-Encoding is
//! refused with 400 before any handler sees it (`framing`).

pub mod framing;
pub mod tls;

use crate::body::{Guarded, ResponseBody};
use crate::config::Limits;
use crate::invoker::ConnInfo;
use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// Which listener a connection came in on; a metric label.
#[derive(Debug, Clone, Copy)]
pub enum ListenerKind {
    Public,
    Plaintext,
    Admin,
}

impl ListenerKind {
    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Public => "public",
            ListenerKind::Plaintext => "plaintext",
            ListenerKind::Admin => "admin",
        }
    }
}

/// Serves one listener until `shutdown` flips to true; returns when accepting has stopped.
pub async fn serve<H, F>(
    listener: TcpListener,
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    connections: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(ConnInfo, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let open = metrics::gauge!(crate::telemetry::CONNECTIONS_OPEN, "listener" => kind.label());
    let total = metrics::counter!(crate::telemetry::CONNECTIONS_TOTAL, "listener" => kind.label());
    let handshake_failed =
        metrics::counter!(crate::telemetry::TLS_HANDSHAKE_FAILURES, "listener" => kind.label());
    let limits = Arc::new(limits);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays up.
                    tracing::warn!(listener = kind.label(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        total.increment(1);
        let (tls, limits, handler, shutdown) = (
            tls.clone(),
            limits.clone(),
            handler.clone(),
            shutdown.clone(),
        );
        let (open, handshake_failed) = (open.clone(), handshake_failed.clone());
        tokio::spawn(async move {
            let _permit = permit;
            open.increment(1.0);
            let conn = ConnInfo {
                peer,
                tls: tls.is_some(),
            };
            let activity = Arc::new(Activity::new());
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(
                        limits.tls_handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => {
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                            let io = Tracked::new(s, activity.clone(), !h2);
                            // The admin listener upgrades HTTP/1.1 to WebSocket (instance login).
                            let upgrades = matches!(kind, ListenerKind::Admin);
                            serve_conn(
                                io, h2, false, upgrades, conn, &limits, activity, shutdown, handler,
                            )
                            .await;
                        }
                        _ => handshake_failed.increment(1),
                    }
                }
                None => {
                    // Plaintext may be h2c; the framing tracker stops at its preface.
                    let io = Tracked::new(stream, activity.clone(), true);
                    serve_conn(
                        io, false, true, false, conn, &limits, activity, shutdown, handler,
                    )
                    .await;
                }
            }
            open.decrement(1.0);
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_conn<IO, H, F>(
    io: IO,
    h2: bool,
    sniff: bool,
    upgrades: bool,
    info: ConnInfo,
    limits: &Limits,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(ConnInfo, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let act = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = act.enter();
        let refuse = act
            .framing
            .get()
            .is_some_and(|e| e.conflicting(req.headers()));
        // The handler's future is several kilobytes: boxed once here, hyper moves a pointer
        // (its dispatcher moves the service's future a few times on the way to polling it).
        let fut = if refuse {
            Either::Right(std::future::ready(refuse_conflicting_framing(info)))
        } else {
            Either::Left(Box::pin(handler(info, req)))
        };
        async move {
            let resp = fut.await;
            Ok::<_, std::convert::Infallible>(resp.map(|b| Guarded { inner: b, guard }))
        }
    });
    let io = TokioIo::new(io);
    if sniff {
        // Plaintext: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart by the preface.
        let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            .max_buf_size(limits.max_header_bytes.max(8192));
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_h2_streams)
            .max_header_list_size(limits.max_header_bytes as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let conn = b.serve_connection(io, service);
        drive(conn, |c| c.graceful_shutdown(), limits, &activity, shutdown).await;
    } else if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_h2_streams)
            .max_header_list_size(limits.max_header_bytes as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let conn = b.serve_connection(io, service);
        drive(conn, |c| c.graceful_shutdown(), limits, &activity, shutdown).await;
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_bytes);
        if upgrades {
            let conn = b.serve_connection(io, service).with_upgrades();
            drive(conn, |c| c.graceful_shutdown(), limits, &activity, shutdown).await;
        } else {
            let conn = b.serve_connection(io, service);
            drive(conn, |c| c.graceful_shutdown(), limits, &activity, shutdown).await;
        }
    }
}

/// The answer to a request framed both by Content-Length and Transfer-Encoding: 400, and the
/// connection closes after it (hyper has marked it so; `Connection: close` says it). Its body
/// is never read, so nothing after its head is taken for a request.
fn refuse_conflicting_framing(info: ConnInfo) -> Response<ResponseBody> {
    let id = crate::telemetry::next_request_id();
    tracing::warn!(
        peer = %info.peer,
        request_id = id.as_str(),
        "refused a request with both Content-Length and Transfer-Encoding"
    );
    let mut resp = crate::error::GatewayError::BadRequest(
        "a request may not carry both Content-Length and Transfer-Encoding (RFC 9112 §6.1)".into(),
    )
    .into_response(id.as_str());
    let h = resp.headers_mut();
    h.insert(crate::backend::X_REQUEST_ID.clone(), id.header_value());
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

/// Runs a connection to completion, closing it gracefully on shutdown or when idle.
async fn drive<C, E>(
    conn: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    limits: &Limits,
    activity: &Activity,
    mut shutdown: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    let mut closing = false;
    let check = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(check);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            r = shutdown.changed(), if !closing => {
                if r.is_err() || *shutdown.borrow() {
                    closing = true;
                    graceful_shutdown(conn.as_mut());
                }
            }
            _ = check.as_mut(), if !closing => {
                let idle = activity.idle_for();
                if activity.active() == 0 && idle >= limits.idle_timeout {
                    closing = true;
                    graceful_shutdown(conn.as_mut());
                } else {
                    let wait = limits.idle_timeout.saturating_sub(idle).max(Duration::from_millis(100));
                    check.as_mut().reset(tokio::time::Instant::now() + wait);
                }
            }
        }
    }
}

/// Requests in progress and the time of the last byte moved on one connection, and what the
/// framing tracker found in its HTTP/1.1 requests.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    last_ms: AtomicU64,
    epoch: Instant,
    /// Set once the connection speaks HTTP/1.1 (or may: plaintext), before any byte is read.
    framing: OnceLock<framing::Evidence>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            framing: OnceLock::new(),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// Held by a request's response body; the connection is not idle while one exists.
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// An IO stream that records when bytes last moved and, for HTTP/1.1, follows the framing of
/// the requests read.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    framing: Option<framing::Framing>,
}

impl<S> Tracked<S> {
    fn new(inner: S, activity: Arc<Activity>, http1: bool) -> Self {
        activity.touch();
        let framing = http1.then(|| {
            let _ = activity.framing.set(framing::Evidence::default());
            framing::Framing::default()
        });
        Tracked {
            inner,
            activity,
            framing,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
            let this = &mut *self;
            if let (Some(f), Some(ev)) = (this.framing.as_mut(), this.activity.framing.get()) {
                f.feed(ev, &buf.filled()[before..]);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds a TCP listener with a large backlog.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
