//! Wiring: the store, the WeChat sender, the dispatcher and the HTTP API of one pusher, and its
//! graceful shutdown.
//!
//! Shutdown (SIGTERM, or [`Pusher::shutdown`]): `/readyz` turns 503 and new messages get 503
//! `draining` at once; the dispatcher stops leasing and lets attempts in flight finish within
//! `shutdown.drainTimeout`; the store commits what is pending and closes; then the HTTP server
//! stops. Messages not yet delivered stay in the store for the next start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::PusherConfig;
use crate::coord::{Coordinator, RedisCoordinator};
use crate::dispatch::{DispatchState, Dispatcher};
use crate::events::http::EventsState;
use crate::metrics::Metrics;
use crate::policy::QueueKind;
use crate::store::embedded::EmbeddedOptions;
use crate::store::{EmbeddedStore, RedisStore, Store, StoreError};
use crate::wechat::{SenderError, WeChatSender};

/// Why a pusher could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A secret cannot be read, or what is built from it cannot be (every problem, each
    /// naming its field: the same list `check-config` prints).
    #[error("{0}")]
    Secrets(#[from] crate::preflight::Problems),
    /// The queue kind is not available in this build.
    #[error("queue: {0}")]
    Queue(String),
    /// The store cannot be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The WeChat sender cannot be built.
    #[error("wechat sender: {0}")]
    Sender(#[from] SenderError),
    /// The `callbacks` settings cannot be used (signing key unreadable, client set-up).
    #[error("{0}")]
    Callbacks(#[from] crate::callbacks::CallbackError),
    /// An address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running pusher.
#[derive(Debug)]
pub struct Pusher {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: CancellationToken,
    done: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

impl Pusher {
    /// Opens the store, builds the sender, binds the listeners and starts serving and
    /// dispatching. Must run inside a Tokio runtime.
    pub async fn start(config: PusherConfig) -> Result<Self, ServerError> {
        let metrics = Arc::new(Metrics::new(&config.channel));
        let secrets = crate::preflight::resolve(&config)?;
        metrics
            .daily_quota
            .set(i64::try_from(config.rate_limit.daily_quota).unwrap_or(i64::MAX));
        match config.queue.kind() {
            Some(QueueKind::Embedded(e)) => {
                let store = EmbeddedStore::open(&EmbeddedOptions {
                    path: PathBuf::from(&e.path),
                    max_messages: e.max_messages,
                    retention: e.retention.get(),
                    default_callback: config.callbacks.url.is_some(),
                    unhealthy_after: e.unhealthy_after.get(),
                    max_bytes: Some(disk_budget(e)?),
                    event_indexes: config.events.token.is_some(),
                })?;
                watch_disk(&store, Arc::clone(&metrics));
                Self::start_with(config, metrics, secrets, store, None).await
            }
            Some(QueueKind::Redis(_)) => {
                let options = secrets
                    .redis
                    .clone()
                    .ok_or_else(|| ServerError::Queue("queue.redis.url: not resolved".into()))?;
                let store = RedisStore::connect(options).await?;
                watch_redis(&store, Arc::clone(&metrics));
                let shared: Arc<dyn Coordinator> = Arc::new(RedisCoordinator::new(&store));
                Self::start_with(config, metrics, secrets, store, Some(shared)).await
            }
            None => Err(ServerError::Queue(
                "set exactly one queue kind: embedded or redis".into(),
            )),
        }
    }

    /// Builds the sender, binds the listeners and starts serving and dispatching on `store`.
    async fn start_with<S: Store + Clone>(
        config: PusherConfig,
        metrics: Arc<Metrics>,
        secrets: crate::preflight::Resolved,
        store: S,
        shared: Option<Arc<dyn Coordinator>>,
    ) -> Result<Self, ServerError> {
        let sender = Arc::new(WeChatSender::with_shared(
            &config,
            Arc::clone(&metrics),
            shared.clone(),
        )?);
        let templates = Arc::new(crate::templates::Registry::new(
            config.templates.clone(),
            sender.provider().template_lists(),
            Arc::clone(sender.http()),
            Arc::clone(sender.tokens()),
            shared,
            Arc::clone(&metrics),
        ));
        let listener = bind(config.listen).await?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

        let draining = Arc::new(AtomicBool::new(false));
        let dispatch_state = Arc::new(DispatchState::default());
        let state = Arc::new(ApiState {
            store: store.clone(),
            metrics: Arc::clone(&metrics),
            auth: secrets.auth,
            limits: config.api.clone(),
            draining: Arc::clone(&draining),
            dispatch: Arc::clone(&dispatch_state),
            targets: Arc::new(
                crate::callbacks::target::TargetPolicy::new(&config.callbacks.allow)
                    .map_err(crate::callbacks::CallbackError::Allow)?,
            ),
            templates: Arc::clone(&templates),
            sender: Arc::clone(&sender),
        });

        let stop = CancellationToken::new();
        let http_stop = CancellationToken::new();
        let registry_stop = CancellationToken::new();
        templates.spawn(registry_stop.clone());
        let servers = serve_http(
            &config,
            &state,
            (listener, metrics_listener),
            secrets.events,
            store.clone(),
            &http_stop,
        );

        let dispatch_stop = CancellationToken::new();
        let dispatcher = Dispatcher::new(
            store.clone(),
            sender,
            Arc::clone(&metrics),
            config.retry.clone(),
            config.concurrency.max_in_flight as usize,
            dispatch_state,
        );
        let drain = config.shutdown.drain_timeout.get();
        let dispatching = tokio::spawn(dispatcher.run(dispatch_stop.clone(), drain));
        // Outcome callbacks: their own task and HTTP client, never in the way of delivery.
        let callback_stop = CancellationToken::new();
        let callbacks = crate::callbacks::CallbackWorker::new(
            store.clone(),
            &config.callbacks,
            secrets.signing_key,
            Arc::clone(&metrics),
        )?;
        let calling = tokio::spawn(callbacks.run(callback_stop.clone()));

        let mut tasks = Tasks {
            draining,
            registry_stop,
            dispatch_stop,
            dispatching,
            drain,
            callback_stop,
            calling,
            store,
            http_stop,
            servers,
        };
        let supervisor_stop = stop.clone();
        let done = tokio::spawn(async move {
            supervisor_stop.cancelled().await;
            tasks.shut_down().await;
        });
        tracing::info!(%addr, ?metrics_addr, channel = %config.channel, "wxpush-pusher serving");
        Ok(Self {
            addr,
            metrics_addr,
            stop,
            done,
            metrics,
        })
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The separate metrics address, when `metricsListen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The pusher's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts the graceful shutdown (returns at once).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits until the pusher has stopped.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// The embedded store's disk budget: `maxBytes`, else 80% of the file system that holds (or
/// will hold) `path`.
pub fn disk_budget(e: &crate::policy::EmbeddedQueue) -> Result<u64, ServerError> {
    use crate::policy::disk;
    if let Some(b) = e.max_bytes.as_deref() {
        return disk::quantity_bytes(b).ok_or_else(|| {
            ServerError::Queue(format!("queue.embedded.maxBytes: {b} is not a size"))
        });
    }
    let mut at = std::path::Path::new(&e.path);
    while !at.exists() {
        at = at.parent().unwrap_or(std::path::Path::new("."));
    }
    let fs = rustix::fs::statvfs(at).map_err(|err| {
        ServerError::Queue(format!(
            "queue.embedded.path: cannot read the size of the file system holding {}: {err}",
            at.display()
        ))
    })?;
    let size = fs.f_blocks.saturating_mul(fs.f_frsize);
    let budget = disk::budget_of(size);
    tracing::info!(
        budget,
        file_system = size,
        "queue.embedded.maxBytes unset: the budget is {}% of the file system",
        disk::BUDGET_PERCENT
    );
    Ok(budget)
}

/// The `/wechat/events` state, or `None` while no events token is configured (the route then
/// answers 404).
fn events_state<S: Store>(
    config: &PusherConfig,
    secrets: Option<crate::preflight::EventSecrets>,
    store: S,
    metrics: &Arc<Metrics>,
) -> Option<EventsState<S>> {
    let secrets = secrets?;
    Some(EventsState {
        store,
        metrics: Arc::clone(metrics),
        token: secrets.token,
        cipher: secrets.cipher,
        match_wait: EVENT_MATCH_WAIT,
        replay: parking_lot::Mutex::new(crate::events::replay::ReplayGuard::new(
            config.events.max_clock_skew.get().as_secs(),
        )),
    })
}

/// How long an event whose message is not (yet) found is re-tried before it is acknowledged.
const EVENT_MATCH_WAIT: Duration = Duration::from_millis(1500);

/// Spawns the API server (the producers' routes, health checks, WeChat's events and, without
/// a separate listener, `/metrics`) and the separate metrics server, if any.
fn serve_http<S: Store + Clone>(
    config: &PusherConfig,
    state: &Arc<ApiState<S>>,
    (listener, metrics_listener): (TcpListener, Option<TcpListener>),
    events: Option<crate::preflight::EventSecrets>,
    store: S,
    http_stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut servers = Vec::new();
    // One request cap for the producers' routes and WeChat's events; health checks and
    // metrics stay outside it so that an overloaded pusher is not restarted for it.
    let cap = api::server::RequestCap::new(config.api.max_concurrent_requests);
    let mut app = api::router(Arc::clone(state), metrics_listener.is_none(), &cap);
    if let Some(events) = events_state(config, events, store, &state.metrics) {
        app = app.merge(api::server::limit_layer(
            crate::events::http::router(Arc::new(events)),
            &cap,
        ));
    }
    servers.push(spawn_server(
        "api",
        listener,
        app,
        config.api.clone(),
        http_stop.clone(),
    ));
    if let Some(l) = metrics_listener {
        let app = api::metrics_router(Arc::clone(state));
        servers.push(spawn_server(
            "metrics",
            l,
            app,
            config.api.clone(),
            http_stop.clone(),
        ));
    }
    servers
}

/// What a running pusher stops, in order, on shutdown.
struct Tasks<S> {
    draining: Arc<AtomicBool>,
    registry_stop: CancellationToken,
    dispatch_stop: CancellationToken,
    dispatching: JoinHandle<()>,
    drain: Duration,
    callback_stop: CancellationToken,
    calling: JoinHandle<()>,
    store: S,
    http_stop: CancellationToken,
    servers: Vec<JoinHandle<()>>,
}

impl<S: Store> Tasks<S> {
    /// Shuts down in order: not ready and refusing new messages, the dispatcher drained, the
    /// callbacks stopped, the store closed, then the HTTP servers.
    async fn shut_down(&mut self) {
        tracing::info!("shutting down: not ready, refusing new messages, draining");
        self.draining.store(true, Ordering::Relaxed);
        self.registry_stop.cancel();
        self.dispatch_stop.cancel();
        // The dispatcher bounds its own drain; the margin covers its bookkeeping.
        let _ =
            tokio::time::timeout(self.drain + Duration::from_secs(5), &mut self.dispatching).await;
        // Final states reached while draining are in the store; pending callbacks stay
        // there for the next start.
        self.callback_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.calling).await;
        self.store.close().await;
        self.http_stop.cancel();
        for s in &mut self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        tracing::info!("stopped");
    }
}

fn spawn_server(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    limits: crate::config::ApiLimits,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move { api::server::serve(name, listener, app, &limits, stop).await })
}

/// Keeps `wxpush_queue_disk_bytes` and `wxpush_queue_disk_budget_bytes` up to date from the
/// embedded store's budget, while the store lives.
fn watch_disk(store: &EmbeddedStore, metrics: Arc<Metrics>) {
    let Some(budget) = store.disk_budget() else {
        return;
    };
    tokio::spawn(async move {
        loop {
            {
                let (used, max) = budget.figures();
                let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                metrics.queue_disk_bytes.set(gauge(used));
                metrics.queue_disk_budget_bytes.set(gauge(max));
            }
            tokio::time::sleep(REDIS_GAUGES_EVERY).await;
            if Arc::strong_count(&metrics) == 1 {
                return;
            }
        }
    });
}

/// How often the Redis figures are copied into the gauges (the store refreshes them from
/// Redis on its own schedule and caches them; no request of `/metrics` reaches Redis).
const REDIS_GAUGES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the Redis gauges (`wxpush_queue_messages{state}`, the group lag, pending entries per
/// consumer, `wxpush_redis_up`) up to date from the store's cached figures, while the store
/// lives.
fn watch_redis(store: &crate::store::RedisStore, metrics: std::sync::Arc<Metrics>) {
    use crate::metrics::{ConsumerLabels, QueueState};
    use crate::store::Store;
    let store = store.clone();
    tokio::spawn(async move {
        let mut shown: Vec<String> = Vec::new();
        loop {
            tokio::time::sleep(REDIS_GAUGES_EVERY).await;
            if std::sync::Arc::strong_count(&metrics) == 1 {
                return;
            }
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let c = store.counts();
            metrics.set_queue(QueueState::ready, gauge(c.ready));
            metrics.set_queue(QueueState::delayed, gauge(c.delayed));
            metrics.set_queue(QueueState::inflight, gauge(c.inflight));
            metrics.set_queue(QueueState::dead, gauge(c.dead));
            metrics.queue_group_lag.set(gauge(c.ready));
            metrics.redis_up.set(i64::from(store.is_healthy()));
            let consumers = store.consumers();
            for gone in shown
                .iter()
                .filter(|name| !consumers.iter().any(|c| &c.consumer == *name))
            {
                metrics.queue_consumer_pending.remove(&ConsumerLabels {
                    consumer: gone.clone(),
                });
            }
            for c in &consumers {
                metrics
                    .queue_consumer_pending
                    .get_or_create(&ConsumerLabels {
                        consumer: c.consumer.clone(),
                    })
                    .set(gauge(c.pending));
            }
            shown = consumers.into_iter().map(|c| c.consumer).collect();
        }
    });
}
