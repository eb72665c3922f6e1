//! The HTTP client towards WeChat: one pooled, keep-alive client per channel, with the four
//! timeouts of [`Timeouts`] each enforced on its own phase, so an error says which ran out.
//!
//! reqwest cannot tell a TCP connect from a TLS handshake, nor time "request sent → headers"
//! apart from the connection set-up, so this client is built one layer down, on the same
//! pieces reqwest uses: hyper-util's pooled client, rustls (ring, webpki roots) and hickory's
//! caching DNS resolver, with a connector of our own:
//!
//! | phase | timeout | measured from → to |
//! |---|---|---|
//! | connect | `timeouts.connect` | DNS lookup (cached by TTL) + TCP connect |
//! | TLS | `timeouts.tlsHandshake` | TCP connected → TLS handshake done |
//! | response headers | `timeouts.responseHeader` | request handed to a connection → headers received (connection set-up time is excluded) |
//! | request | `timeouts.request` | the whole attempt, body included |
//!
//! The response-header clock excludes connection set-up by noting, through a task-local
//! `PhaseClock`, how long the connector ran on this request's behalf; set-up has its own two
//! timeouts. A request that was given a pooled connection while the connect it started
//! finishes in the background may get up to `connect + tlsHandshake` more; the whole-request
//! timeout bounds every case.
//!
//! Idle connections close themselves, paced: each one's `IdleWatch` times its idleness and
//! asks the pool-wide `Closer` (`super::idle`) whether it may close; hyper's own idle sweep,
//! which closed every expired connection at one tick, is off.
//!
//! **Why one file of about 930 lines.** The client and its connector share one clock (the
//! task-local `PhaseClock` that moves connection set-up out of the response-header timeout) and
//! one pool bookkeeping (`Conns`: the spare connections a new request may wait for, the live
//! count the idle closes keep above the recent load); split apart, each half would expose its
//! internals only for the other. The pacing decision itself is in `idle.rs`; the tests live in
//! `client_tests.rs`.

use std::error::Error as StdError;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::idle::{Closer, Verdict};
use crate::metrics::TimeoutPhase;
use crate::policy::{Pool, Timeouts};
use crate::send::ErrorKind;

/// How long a new connection waits at most for a connection that is on its way back to the
/// pool ([`Conns::wait_for_a_spare`]).
const SPARE_WAIT: Duration = Duration::from_millis(100);

/// WeChat's answers are a few hundred bytes; anything past this is not WeChat.
const MAX_BODY: usize = 256 * 1024;

/// The phase of an HTTP attempt whose timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// DNS + TCP connect (`timeouts.connect`).
    Connect,
    /// TLS handshake (`timeouts.tlsHandshake`).
    TlsHandshake,
    /// Waiting for the response headers (`timeouts.responseHeader`).
    ResponseHeader,
    /// The whole attempt (`timeouts.request`).
    Request,
}

impl Phase {
    /// The [`crate::send::SendError::kind`] of this timeout.
    pub fn kind(self) -> ErrorKind {
        match self {
            Self::Connect => ErrorKind::TimeoutConnect,
            Self::TlsHandshake => ErrorKind::TimeoutTls,
            Self::ResponseHeader => ErrorKind::TimeoutResponseHeader,
            Self::Request => ErrorKind::TimeoutRequest,
        }
    }

    /// The `phase` label of `wxpush_send_timeouts_total`.
    pub fn label(self) -> TimeoutPhase {
        match self {
            Self::Connect => TimeoutPhase::Connect,
            Self::TlsHandshake => TimeoutPhase::TlsHandshake,
            Self::ResponseHeader => TimeoutPhase::ResponseHeader,
            Self::Request => TimeoutPhase::Request,
        }
    }
}

/// Why an HTTP attempt failed. Messages never hold the URL (it carries the access_token or
/// the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// One of the four timeouts ran out.
    #[error("{} timeout ran out after {after:?}", .phase.label().as_str())]
    Timeout {
        /// Which.
        phase: Phase,
        /// Its configured length.
        after: Duration,
    },
    /// The connection could not be set up (DNS, refused, TLS failure): the request was
    /// certainly not sent.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The connection broke while the request was under way (reset, closed early, bad HTTP):
    /// whether WeChat got it is unknown.
    #[error("transport error: {0}")]
    Transport(String),
    /// The pusher is stopping: the request waited for a slot of the concurrency gate and was
    /// never sent (a drain lets the requests under way finish, and starts no new one).
    #[error("not sent: the pusher is stopping")]
    Stopping,
}

impl HttpError {
    /// The [`crate::send::SendError::kind`] of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Timeout { phase, .. } => phase.kind(),
            Self::Connect(_) | Self::Transport(_) | Self::Stopping => ErrorKind::Transport,
        }
    }

    /// Whether the request certainly never reached WeChat.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Self::Connect(_)
                | Self::Stopping
                | Self::Timeout {
                    phase: Phase::Connect | Phase::TlsHandshake,
                    ..
                }
        )
    }
}

/// An HTTP answer: status and (small) body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// The base URL is not an http(s) URL with a host.
    #[error("invalid apiBaseUrl: {0}")]
    BaseUrl(String),
    /// TLS or DNS set-up failed.
    #[error("{0}")]
    Setup(String),
}

/// What a client counts (metrics, shared with the registry).
#[derive(Debug, Clone, Default)]
pub struct ClientCounters {
    /// Connections set up: TCP connected, TLS done (`wxpush_wechat_connections_opened_total`).
    pub opened: Counter,
    /// Most requests under way at once since start (`wxpush_wechat_requests_peak`).
    pub peak: Gauge,
    /// Idle connections closed by the pool's pacing
    /// (`wxpush_wechat_connections_closed_total{reason="idle"}`).
    pub closed_idle: Counter,
    /// Connections that ended otherwise: closed by WeChat, broken, dropped with an abandoned
    /// request, or at shutdown (`wxpush_wechat_connections_closed_total{reason="other"}`).
    pub closed_other: Counter,
}

/// The pooled HTTP client of one channel. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    conns: Arc<Conns>,
    /// `scheme://authority` plus any path prefix, without a trailing slash.
    base: String,
    header_timeout: Duration,
    request_timeout: Duration,
}

impl HttpClient {
    /// A client for `base_url` with the system's DNS configuration. An unset
    /// `pool.maxIdlePerHost` keeps every connection opened (the caller bounds how many are
    /// opened); [`Pool::idle_per_host`] resolves it against `concurrency.maxInFlight`.
    pub fn new(base_url: &str, timeouts: &Timeouts, pool: &Pool) -> Result<Self, ClientBuildError> {
        Self::build(base_url, timeouts, pool, None, ClientCounters::default())
    }

    /// As [`Self::new`], counting connections and requests in `counters`.
    pub fn counted(
        base_url: &str,
        timeouts: &Timeouts,
        pool: &Pool,
        counters: ClientCounters,
    ) -> Result<Self, ClientBuildError> {
        Self::build(base_url, timeouts, pool, None, counters)
    }

    /// A client resolving names through the given DNS configuration (tests, special set-ups).
    pub fn with_dns(
        base_url: &str,
        timeouts: &Timeouts,
        pool: &Pool,
        dns: (ResolverConfig, ResolverOpts),
    ) -> Result<Self, ClientBuildError> {
        Self::build(
            base_url,
            timeouts,
            pool,
            Some(dns),
            ClientCounters::default(),
        )
    }

    fn build(
        base_url: &str,
        timeouts: &Timeouts,
        pool: &Pool,
        dns: Option<(ResolverConfig, ResolverOpts)>,
        counters: ClientCounters,
    ) -> Result<Self, ClientBuildError> {
        let url =
            url::Url::parse(base_url).map_err(|e| ClientBuildError::BaseUrl(e.to_string()))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(ClientBuildError::BaseUrl(format!("scheme {other}"))),
        };
        let host = url
            .host_str()
            .ok_or_else(|| ClientBuildError::BaseUrl("no host".into()))?;
        let is_ip = host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        let resolver = match (is_ip, dns) {
            (true, _) => None,
            (false, Some((config, opts))) => Some(
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                    .with_options(opts)
                    .build(),
            ),
            (false, None) => Some(
                TokioResolver::builder_tokio()
                    .map_err(|e| ClientBuildError::Setup(format!("DNS configuration: {e}")))?
                    .build(),
            ),
        };
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientBuildError::Setup(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let conns = Arc::new(Conns {
            live: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            peak_gauge: counters.peak,
            closer: Closer::new(
                pool.idle_timeout.get(),
                pool.closes_per_second,
                counters.closed_idle,
            ),
        });
        let connector = Connector {
            inner: Arc::new(ConnectorInner {
                resolver,
                tls: TlsConnector::from(Arc::new(tls)),
                https,
                connect_timeout: timeouts.connect.get(),
                tls_timeout: timeouts.tls_handshake.get(),
                keepalive: pool.tcp_keepalive.get(),
                quiet: pool.idle_timeout.get().max(timeouts.request.get()),
                opened: counters.opened,
                closed_other: counters.closed_other,
                conns: Arc::clone(&conns),
            }),
        };
        let client = Client::builder(TokioExecutor::new())
            // Idle connections close themselves, paced (`IdleWatch`, `super::idle`): hyper's
            // sweep would close every expired one at one tick.
            .pool_idle_timeout(None::<Duration>)
            .pool_max_idle_per_host(
                pool.max_idle_per_host
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(usize::MAX),
            )
            .pool_timer(TokioTimer::new())
            .build(connector);
        let mut base = format!("{}://{}", url.scheme(), url.authority());
        base.push_str(url.path().trim_end_matches('/'));
        Ok(Self {
            client,
            conns,
            base,
            header_timeout: timeouts.response_header.get(),
            request_timeout: timeouts.request.get(),
        })
    }

    /// `GET base + path_and_query`.
    pub async fn get(&self, path_and_query: &str) -> Result<HttpResponse, HttpError> {
        self.execute(hyper::Method::GET, path_and_query, Bytes::new())
            .await
    }

    /// `POST base + path_and_query` with a JSON body.
    pub async fn post_json(
        &self,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<HttpResponse, HttpError> {
        self.execute(hyper::Method::POST, path_and_query, body)
            .await
    }

    /// As [`Self::post_json`], waiting at most `header_timeout` for the response headers
    /// (never longer than the configured `timeouts.responseHeader`).
    pub async fn post_json_within(
        &self,
        path_and_query: &str,
        body: Bytes,
        header_timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        self.execute_within(
            hyper::Method::POST,
            path_and_query,
            body,
            header_timeout.min(self.header_timeout),
        )
        .await
    }

    /// The configured response-header timeout.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    async fn execute(
        &self,
        method: hyper::Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<HttpResponse, HttpError> {
        self.execute_within(method, path_and_query, body, self.header_timeout)
            .await
    }

    async fn execute_within(
        &self,
        method: hyper::Method,
        path_and_query: &str,
        body: Bytes,
        header_timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path_and_query}", self.base))
            .header(hyper::header::USER_AGENT, "wxpush");
        if method == hyper::Method::POST {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| HttpError::Transport("invalid request (path or query)".into()))?;
        let clock = Arc::new(PhaseClock::default());
        let start = Instant::now();
        let work = async {
            let _request = self.conns.request();
            let response =
                with_header_timeout(self.client.request(request), &clock, header_timeout, start)
                    .await?
                    .map_err(|e| classify_client_error(&e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Transport(format!("reading the body: {e}")))?
                .to_bytes();
            // The connection goes back to the pool from a task of hyper's, woken by the end of
            // the body. Let it run before the caller frees its concurrency slot: the next
            // request then finds the connection idle instead of opening another (which the
            // pool would keep, one spare connection per such race).
            tokio::task::yield_now().await;
            Ok(HttpResponse { status, body })
        };
        match tokio::time::timeout(self.request_timeout, PHASE_CLOCK.scope(clock.clone(), work))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout {
                phase: Phase::Request,
                after: self.request_timeout,
            }),
        }
    }
}

/// Waits for `fut` (the response headers) at most `limit` after `start`, not counting the time
/// the connector spent setting up a connection for it.
async fn with_header_timeout<F: Future>(
    fut: F,
    clock: &PhaseClock,
    limit: Duration,
    start: Instant,
) -> Result<F::Output, HttpError> {
    tokio::pin!(fut);
    loop {
        let deadline = start + limit + clock.connecting(Instant::now());
        tokio::select! {
            biased;
            out = &mut fut => return Ok(out),
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if now >= start + limit + clock.connecting(now) {
                    return Err(HttpError::Timeout { phase: Phase::ResponseHeader, after: limit });
                }
            }
        }
    }
}

fn classify_client_error(error: &hyper_util::client::legacy::Error) -> HttpError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    let mut chain = Vec::new();
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Timeout { phase, after } => HttpError::Timeout {
                    phase: *phase,
                    after: *after,
                },
                other => HttpError::Connect(other.to_string()),
            };
        }
        chain.push(e.to_string());
        source = e.source();
    }
    chain.dedup();
    let text = chain.join(": ");
    if error.is_connect() {
        HttpError::Connect(text)
    } else {
        HttpError::Transport(text)
    }
}

tokio::task_local! {
    static PHASE_CLOCK: Arc<PhaseClock>;
}

/// How long the connector has worked on behalf of one request.
#[derive(Debug, Default)]
struct PhaseClock {
    inner: Mutex<ClockInner>,
}

#[derive(Debug, Default)]
struct ClockInner {
    started: Option<Instant>,
    spent: Duration,
}

impl PhaseClock {
    fn begin(&self) {
        self.inner.lock().started = Some(Instant::now());
    }

    fn end(&self) {
        let mut inner = self.inner.lock();
        if let Some(started) = inner.started.take() {
            inner.spent += started.elapsed();
        }
    }

    fn connecting(&self, now: Instant) -> Duration {
        let inner = self.inner.lock();
        inner.spent
            + inner
                .started
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}

/// Ends the connector's stint on a [`PhaseClock`] however the connect future finishes.
struct ConnectStint(Option<Arc<PhaseClock>>);

impl Drop for ConnectStint {
    fn drop(&mut self) {
        if let Some(clock) = &self.0 {
            clock.end();
        }
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{} timeout ran out after {after:?}", .phase.label().as_str())]
    Timeout { phase: Phase, after: Duration },
    #[error("DNS lookup of {host} failed: {message}")]
    Dns { host: String, message: String },
    #[error("TCP connect failed: {0}")]
    Tcp(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone)]
struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    resolver: Option<TokioResolver>,
    tls: TlsConnector,
    https: bool,
    connect_timeout: Duration,
    tls_timeout: Duration,
    keepalive: Duration,
    /// How long a connection must have moved no byte before it counts as idle: at least
    /// `timeouts.request`, so no request can still be reading from it (see `IdleWatch`).
    quiet: Duration,
    /// Connections set up.
    opened: Counter,
    /// Connections that ended other than by the pacing.
    closed_other: Counter,
    conns: Arc<Conns>,
}

/// Connections and requests of one client, so that a request opens a connection only when
/// none can come back to it.
#[derive(Debug)]
struct Conns {
    /// Connections open or being set up.
    live: AtomicUsize,
    /// Requests under way (from before the pool's checkout to the end of the body).
    requests: AtomicUsize,
    /// Most requests under way at once, also kept in `peak_gauge`.
    peak: AtomicUsize,
    peak_gauge: Gauge,
    /// Decides when an idle connection may close.
    closer: Closer,
}

/// What a [`Live`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// One of [`Conns::requests`].
    Request,
    /// One of [`Conns::live`].
    Conn,
    /// A connection the [`Closer`] already took off [`Conns::live`].
    Released,
}

/// One of [`Conns::live`] (or of [`Conns::requests`]) while it exists.
#[derive(Debug)]
struct Live(Arc<Conns>, Slot);

impl Drop for Live {
    fn drop(&mut self) {
        match self.1 {
            Slot::Request => self.0.requests.fetch_sub(1, Ordering::AcqRel),
            Slot::Conn => self.0.live.fetch_sub(1, Ordering::AcqRel),
            Slot::Released => 0,
        };
    }
}

impl Conns {
    fn request(self: &Arc<Self>) -> Live {
        let now = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        if self.peak.fetch_max(now, Ordering::AcqRel) < now {
            self.peak_gauge
                .set(i64::try_from(self.peak.load(Ordering::Acquire)).unwrap_or(i64::MAX));
        }
        self.closer.saw_in_flight(now);
        Live(Arc::clone(self), Slot::Request)
    }

    /// Called by a request that found no idle connection. The pool races the new connection
    /// against other requests handing theirs back and keeps whichever loses as a spare; a
    /// request ends (and frees its concurrency slot) a moment before its connection is back
    /// in the pool. So while there are more connections than requests (one of them must be
    /// on its way back), wait for it, at most [`SPARE_WAIT`]. When an idle connection served
    /// the request meanwhile, hyper has moved this connect into a task of its own (outside the
    /// request's task-local clock): then nothing is opened. Against WeChat a connection costs
    /// a TCP and a TLS handshake, far more than this wait.
    async fn wait_for_a_spare(self: &Arc<Self>) -> Result<Live, ConnectError> {
        self.live.fetch_add(1, Ordering::AcqRel);
        let live = Live(Arc::clone(self), Slot::Conn);
        let until = Instant::now() + SPARE_WAIT;
        while self.live.load(Ordering::Acquire) > self.requests.load(Ordering::Acquire)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if PHASE_CLOCK.try_with(|_| ()).is_err() {
                return Err(ConnectError::Other(
                    "not needed: an idle connection served the request".into(),
                ));
            }
        }
        Ok(live)
    }
}

impl std::fmt::Debug for ConnectorInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorInner")
            .field("https", &self.https)
            .field("caching_dns", &self.resolver.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("tls_timeout", &self.tls_timeout)
            .finish_non_exhaustive()
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Io>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Called from inside the request's task: note whose request this connect serves.
        let clock = PHASE_CLOCK.try_with(Arc::clone).ok();
        if let Some(clock) = &clock {
            clock.begin();
        }
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let _stint = ConnectStint(clock);
            let live = inner.conns.wait_for_a_spare().await?;
            let stream = inner.connect(&uri).await?;
            inner.opened.inc();
            Ok(TokioIo::new(Io {
                stream,
                watch: IdleWatch::new(live, inner.quiet, inner.closed_other.clone()),
            }))
        })
    }
}

impl ConnectorInner {
    async fn connect(&self, uri: &Uri) -> Result<Stream, ConnectError> {
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::Other("URL without a host".into()))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if self.https { 443 } else { 80 });
        let tcp = tokio::time::timeout(self.connect_timeout, self.tcp(&host, port))
            .await
            .map_err(|_| ConnectError::Timeout {
                phase: Phase::Connect,
                after: self.connect_timeout,
            })??;
        // Best effort: failing to tune the socket does not stop a send.
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(self.keepalive);
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        let keepalive = keepalive.with_interval(self.keepalive);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        if !self.https {
            return Ok(Stream::Plain(tcp));
        }
        let name = ServerName::try_from(host)
            .map_err(|e| ConnectError::Other(format!("TLS server name: {e}")))?;
        let tls = tokio::time::timeout(self.tls_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout {
                phase: Phase::TlsHandshake,
                after: self.tls_timeout,
            })?
            .map_err(ConnectError::Tls)?;
        Ok(Stream::Tls(Box::new(tls)))
    }

    async fn tcp(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let addrs: Vec<IpAddr> = match (host.parse::<IpAddr>(), &self.resolver) {
            (Ok(ip), _) => vec![ip],
            (Err(_), Some(resolver)) => resolver
                .lookup_ip(host)
                .await
                .map_err(|e| ConnectError::Dns {
                    host: host.to_string(),
                    message: e.to_string(),
                })?
                .iter()
                .collect(),
            (Err(_), None) => {
                return Err(ConnectError::Other(format!("no DNS resolver for {host}")));
            }
        };
        let mut last = None;
        for ip in addrs {
            match TcpStream::connect((ip, port)).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || ConnectError::Dns {
                host: host.to_string(),
                message: "no addresses".into(),
            },
            ConnectError::Tcp,
        ))
    }
}

/// A connection: plain TCP or TLS over TCP.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection to WeChat, counted in [`Conns::live`] while it exists.
#[derive(Debug)]
struct Io {
    stream: Stream,
    watch: IdleWatch,
}

/// A connection's own idle clock: once it has moved no byte for `quiet` with no request
/// waiting for an answer, it asks the pool's [`Closer`] whether it may close, and closes by
/// reporting the end of the stream to hyper.
///
/// hyper reads from an idle pooled connection only to notice that the server closed it; an
/// end of stream there makes hyper drop the connection and take it out of the pool. A request
/// that picked the connection in that instant has not been written: hyper hands it back and
/// the pooled client retries it on another connection. A connection is never closed while a
/// request waits for an answer: after a write, it counts as busy until a byte is read; and
/// `quiet` is at least `timeouts.request`, so a request still reading a response from it has
/// run out of time and been dropped (which closes the connection anyway).
#[derive(Debug)]
struct IdleWatch {
    live: Live,
    quiet: Duration,
    /// A request was written and no byte of its answer was read yet.
    writing: bool,
    last_io: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Closed by the pacing: reads report the end of the stream.
    closed: bool,
    closed_other: Counter,
}

impl IdleWatch {
    fn new(live: Live, quiet: Duration, closed_other: Counter) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            live,
            quiet,
            writing: false,
            last_io: now,
            timer: Box::pin(tokio::time::sleep_until(now + quiet)),
            closed: false,
            closed_other,
        }
    }

    fn read(&mut self) {
        self.writing = false;
        self.last_io = tokio::time::Instant::now();
    }

    fn wrote(&mut self) {
        self.writing = true;
        self.last_io = tokio::time::Instant::now();
    }

    /// Polled while the connection has nothing to read: whether it closes now. The timer
    /// is not moved by each byte; when it fires it is set again from the last I/O.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> bool {
        // Bounded: each turn either returns or sets the timer to a later instant.
        for _ in 0..4 {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = tokio::time::Instant::now();
            let conns = &self.live.0;
            let next = if self.writing {
                now + self.quiet
            } else if now < self.last_io + self.quiet {
                self.last_io + self.quiet
            } else {
                let in_flight = conns.requests.load(Ordering::Acquire);
                match conns.closer.ask(now, &conns.live, in_flight) {
                    Verdict::Close => {
                        self.live.1 = Slot::Released;
                        self.closed = true;
                        return true;
                    }
                    Verdict::AskAt(at) => at,
                }
            };
            self.timer
                .as_mut()
                .reset(next.max(now + Duration::from_millis(1)));
        }
        false
    }
}

impl Drop for IdleWatch {
    fn drop(&mut self) {
        if !self.closed {
            self.closed_other.inc();
        }
    }
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.watch.closed {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.watch.read(),
            Poll::Pending if this.watch.poll_close(cx) => return Poll::Ready(Ok(())),
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
