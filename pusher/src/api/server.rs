//! The HTTP server under the API: connection limits and timeouts (the `api` section).
//!
//! What is taken off the shelf:
//!
//! - the header read timeout is hyper's (`http1::Builder::header_read_timeout`); hyper starts
//!   it whenever it waits for a request head, so it also bounds an idle kept-alive connection;
//! - the body read timeout is tower-http's `RequestBodyTimeoutLayer` (a stalled body makes the
//!   handler's read fail; it answers 408) plus its `TimeoutLayer` over the whole request with the
//!   same duration (408), since the former is reset by every frame and a body trickled a byte at
//!   a time would pass it;
//! - the request cap is tower's `GlobalConcurrencyLimitLayer` behind `LoadShedLayer`, with
//!   axum's `HandleErrorLayer` turning the overload into 503 + `Retry-After` ([`limit_layer`]);
//! - `X-Content-Type-Options: nosniff` on every answer is tower-http's `SetResponseHeaderLayer`.
//!
//! What is written here, and why: `axum::serve` takes no limits at all, so the accept loop is
//! ours. It holds a semaphore of `maxConnections` permits (kept to half the open-file limit) and
//! closes a connection accepted without a permit at once; it backs off for 100 ms on accept
//! errors such as EMFILE instead of spinning (axum's loop sleeps a full second on them and
//! holds no cap, so idle connections could exhaust the descriptors for good). hyper has no
//! timer for a connection whose peer stops reading an answer, so each connection counts the
//! bytes it moves and a small watchdog closes it after `idleTimeout` without progress. The
//! listener speaks HTTP/1.1 only: hyper-util's protocol sniffing (for h2c) reads the preface
//! with no timeout of its own, which would reopen the slowloris door.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use super::error::ApiError;
use crate::config::ApiLimits;
use crate::error_code::ErrorCode;

/// How long to pause after an accept error (EMFILE and the like) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long open connections may finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The request cap, shared by every router it wraps (the API and the events route).
#[derive(Debug, Clone)]
pub struct RequestCap(Arc<Semaphore>);

impl RequestCap {
    /// `max` requests at once.
    pub fn new(max: u32) -> Self {
        Self(Arc::new(Semaphore::new(max.max(1) as usize)))
    }
}

/// Wraps `router` in the request cap: a request beyond it is answered 503 with
/// `Retry-After: 1` at once instead of queueing.
pub fn limit_layer<T: Clone + Send + Sync + 'static>(
    router: Router<T>,
    cap: &RequestCap,
) -> Router<T> {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
                Arc::clone(&cap.0),
            )),
    )
}

async fn overloaded(err: tower::BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "too many requests in progress (api.maxConcurrentRequests); retry shortly",
        )
        .retry_after(1)
        .into_response()
    } else {
        ApiError::internal("request failed").into_response()
    }
}

/// Gives an error answer made below the handlers (axum's 405, the request timeout's 408) the
/// API's JSON error body, keeping its `Allow`, `Retry-After` and `WWW-Authenticate` headers.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "this route does not take this method; the Allow header lists those it takes",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            ErrorCode::BodyTimeout,
            "the request did not arrive within api.bodyReadTimeout",
        ),
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::BodyTooLarge, "the body is too large"),
        s if s.is_server_error() => (ErrorCode::Internal, "the request failed"),
        _ => (ErrorCode::BadBody, "the request could not be read"),
    };
    let (parts, _) = resp.into_parts();
    let mut answer = ApiError::new(status, code, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, v.clone());
        }
    }
    answer
}

/// The connection cap actually used: `maxConnections`, but at most half of the soft open-file
/// limit (at least 16).
pub fn connection_cap(configured: u32) -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let by_fds = nofile.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    (configured as usize).min(by_fds).max(16)
}

/// Serves `app` on `listener` with the `limits` until `stop`, then lets open requests finish
/// for up to `SHUTDOWN_GRACE`.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: &ApiLimits,
    stop: CancellationToken,
) {
    let app = app.layer(
        ServiceBuilder::new()
            .layer(axum::middleware::map_response(json_errors))
            .layer(SetResponseHeaderLayer::overriding(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            // A body trickled a byte at a time passes the per-frame body timeout; the whole
            // request (reading the body included) is bounded as well.
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                limits.body_read_timeout.get(),
            ))
            .layer(RequestBodyTimeoutLayer::new(limits.body_read_timeout.get())),
    );
    let cap = connection_cap(limits.max_connections);
    let permits = Arc::new(Semaphore::new(cap));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .keep_alive(true);
    let idle = limits.idle_timeout.get();
    let tracker = TaskTracker::new();
    tracing::debug!(server = name, max_connections = cap, "accepting");
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: wait for connections to close, never spin.
                tracing::warn!(server = name, error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Over the cap: close at once rather than hold a descriptor for nothing.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let http = http.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let progress = Arc::new(AtomicU64::new(0));
            let io = TokioIo::new(Counted {
                inner: stream,
                progress: Arc::clone(&progress),
            });
            let conn = http.serve_connection(io, service);
            tokio::pin!(conn);
            let mut last = 0;
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    () = stop.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = tokio::time::sleep(idle) => {
                        let now = progress.load(Ordering::Relaxed);
                        if now == last {
                            tracing::debug!("connection idle too long; closed");
                            break;
                        }
                        last = now;
                    }
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
}

/// Errors that concern one connection only (it went away before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// A TCP stream that counts the bytes it moves, for the idle watchdog.
struct Counted {
    inner: TcpStream,
    progress: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.progress.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.progress.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
