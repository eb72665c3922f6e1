//! The sandbox's TCP side: a listener that can really go away (outages refuse connections) and
//! connections that can be reset with a TCP RST on demand.
//!
//! - Outage: at its start the listening socket is closed (new connections are refused) and open
//!   API connections are dropped; at its end the same address is bound again. Connections that
//!   have served an admin route (`/__…`) survive, so a test can still talk to the sandbox.
//! - Reset: a handler flags its connection; the next read or write sets `SO_LINGER` 0 and fails,
//!   so hyper drops the socket and the kernel sends RST instead of a response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::stats::{FaultKind, Stats};

/// An outage window, in tokio time.
pub(crate) type Window = Option<(Instant, Instant)>;

/// Shared control over the listener and its connections.
#[derive(Debug)]
pub(crate) struct NetControl {
    outage: watch::Sender<Window>,
    generation: Mutex<CancellationToken>,
    stats: Arc<Stats>,
}

impl NetControl {
    pub(crate) fn new(stats: Arc<Stats>) -> Arc<Self> {
        let (outage, _) = watch::channel(None);
        Arc::new(Self {
            outage,
            generation: Mutex::new(CancellationToken::new()),
            stats,
        })
    }

    /// Schedules an outage (replacing any other), or cancels it with `None`.
    pub(crate) fn schedule_outage(&self, window: Window) {
        self.outage.send_replace(window);
    }

    /// Whether an outage is in progress.
    pub(crate) fn in_outage(&self) -> bool {
        let now = Instant::now();
        self.outage
            .borrow()
            .is_some_and(|(from, until)| from <= now && now < until)
    }

    fn current_generation(&self) -> CancellationToken {
        self.generation.lock().clone()
    }

    /// Drops every open API connection (a new generation starts for later ones).
    fn close_connections(&self) {
        let old = std::mem::replace(&mut *self.generation.lock(), CancellationToken::new());
        old.cancel();
    }
}

/// Per-connection flags, reachable from handlers through `ConnectInfo<ConnInfo>`.
#[derive(Debug, Default)]
pub(crate) struct ConnFlags {
    reset: AtomicBool,
    admin: AtomicBool,
    /// Has carried a WeChat API request.
    api: AtomicBool,
}

/// The handle handlers get for their connection, with the peer's address.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo(Arc<ConnFlags>, SocketAddr);

impl ConnInfo {
    /// Resets the connection instead of answering.
    pub(crate) fn reset(&self) {
        self.0.reset.store(true, Ordering::Release);
    }

    /// The address the connection came from (what WeChat checks against the IP allowlist).
    pub(crate) fn peer(&self) -> SocketAddr {
        self.1
    }

    /// Marks the connection as one that carried a WeChat API request; true the first time.
    pub(crate) fn first_api_request(&self) -> bool {
        !self.0.api.swap(true, Ordering::Relaxed)
    }

    /// Marks the connection as an admin one (it survives outages).
    pub(crate) fn mark_admin(&self) {
        self.0.admin.store(true, Ordering::Relaxed);
    }
}

impl Connected<IncomingStream<'_, SandboxListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, SandboxListener>) -> Self {
        ConnInfo(Arc::clone(&stream.io().flags), *stream.remote_addr())
    }
}

/// One accepted connection.
#[derive(Debug)]
pub(crate) struct ConnIo {
    stream: TcpStream,
    flags: Arc<ConnFlags>,
    generation: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    stats: Arc<Stats>,
}

impl ConnIo {
    /// Whether the connection must die now; arranges an RST when it was asked to reset.
    fn doomed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.flags.reset.load(Ordering::Acquire) {
            let _ = self.stream.set_zero_linger();
            return Some(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        if let Some(generation) = self.generation.as_mut()
            && generation.as_mut().poll(cx).is_ready()
        {
            self.generation = None;
            if !self.flags.admin.load(Ordering::Relaxed) {
                self.stats.fault(FaultKind::OutageConnectionsClosed);
                let _ = self.stream.set_zero_linger();
                // Make every later poll fail too.
                self.flags.reset.store(true, Ordering::Release);
                return Some(io::Error::from(io::ErrorKind::ConnectionAborted));
            }
        }
        None
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.doomed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.doomed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.doomed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The listener axum serves from.
#[derive(Debug)]
pub(crate) struct SandboxListener {
    addr: SocketAddr,
    listener: Option<TcpListener>,
    outage: watch::Receiver<Window>,
    ctl: Arc<NetControl>,
}

impl SandboxListener {
    /// Binds `addr` (port 0 picks one; rebinds after outages reuse the port picked).
    pub(crate) async fn bind(addr: SocketAddr, ctl: Arc<NetControl>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let outage = ctl.outage.subscribe();
        Ok(Self {
            addr,
            listener: Some(listener),
            outage,
            ctl,
        })
    }
}

impl Listener for SandboxListener {
    type Io = ConnIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let window = *self.outage.borrow_and_update();
            let now = Instant::now();
            if let Some((from, until)) = window
                && from <= now
                && now < until
            {
                if self.listener.take().is_some() {
                    self.ctl.stats.fault(FaultKind::Outage);
                    self.ctl.close_connections();
                    tracing::info!(addr = %self.addr, "outage: listener closed");
                }
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    _ = self.outage.changed() => {}
                }
                continue;
            }
            if self.listener.is_none() {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => {
                        tracing::info!(addr = %self.addr, "outage over: listening again");
                        self.listener = Some(l);
                    }
                    Err(e) => {
                        tracing::warn!(addr = %self.addr, error = %e, "cannot rebind; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            let Some(listener) = self.listener.as_ref() else {
                continue;
            };
            let wake = window.map(|(from, _)| from).filter(|from| now < *from);
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = self.outage.changed() => continue,
                () = async {
                    match wake {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => continue,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let generation = self.ctl.current_generation().cancelled_owned();
                    let io = ConnIo {
                        stream,
                        flags: Arc::default(),
                        generation: Some(Box::pin(generation)),
                        stats: Arc::clone(&self.ctl.stats),
                    };
                    return (io, peer);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
