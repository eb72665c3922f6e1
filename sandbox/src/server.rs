//! Starting and stopping the sandbox: shared state, the router, and the handle tests hold.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::admin;
use super::api;
use super::config::SandboxConfig;
use super::events::{EventSetupError, Events};
use super::faults::{FaultConfig, FaultConfigError, FaultState};
use super::messages::Messages;
use super::net::{ConnInfo, NetControl, SandboxListener};
use super::state::{Shared, State, TokenQuota};
use super::stats::{Stats, StatsSnapshot};
use super::templates::{Delivery, Templates};
use super::tokens::TokenStore;
use super::wecom::events::{CallbackError, CallbackUse, Delivered, Verification, WeComEvent};
use super::wecom::recall::SentMessage;
use super::wecom::{self, WeCom};

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The initial fault config is invalid.
    #[error("invalid faults: {0}")]
    Faults(#[from] FaultConfigError),
    /// Event delivery is misconfigured.
    #[error(transparent)]
    Events(#[from] EventSetupError),
    /// The WeCom callback is misconfigured.
    #[error(transparent)]
    WeComCallback(#[from] CallbackError),
}

fn router(state: Shared) -> Router {
    let wechat = Router::new()
        .route("/cgi-bin/token", get(api::classic_token))
        .route("/cgi-bin/stable_token", post(api::stable_token))
        .route("/cgi-bin/message/template/send", post(api::template_send))
        .route("/cgi-bin/message/subscribe/send", post(api::subscribe_send))
        .route("/cgi-bin/message/subscribe/bizsend", post(api::bizsend))
        .route(
            "/cgi-bin/template/get_all_private_template",
            get(api::private_templates),
        )
        .route("/wxaapi/newtmpl/gettemplate", get(api::subscribe_templates))
        .route("/cgi-bin/gettoken", get(wecom::api::gettoken))
        .route("/cgi-bin/message/send", post(wecom::api::message_send))
        .route("/cgi-bin/message/recall", post(wecom::api::message_recall))
        .route("/cgi-bin/webhook/send", post(wecom::api::webhook_send))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::fault_layer,
        ));
    let admin = Router::new()
        .route("/__stats", get(admin::stats))
        .route("/__reset", post(admin::reset))
        .route(
            "/__faults",
            get(admin::get_faults)
                .put(admin::put_faults)
                .patch(admin::patch_faults),
        )
        .route("/__tokens/invalidate", post(admin::invalidate_tokens))
        .route("/__config", get(admin::config))
        .route("/__deliveries", get(admin::deliveries))
        .route(
            "/__subscriptions",
            get(admin::get_subscriptions).post(admin::add_subscription),
        )
        .route("/__health", get(admin::health))
        .route("/__wecom/messages", get(wecom::admin::messages))
        .route("/__wecom/verify", post(wecom::admin::verify))
        .route("/__wecom/events", post(wecom::admin::event))
        .layer(axum::middleware::from_fn(admin::admin_layer));
    admin.merge(wechat).with_state(state)
}

/// The WeChat API sandbox.
#[derive(Debug)]
pub struct Sandbox;

impl Sandbox {
    /// Binds `config.listen` and serves in a background task until the handle is shut down or
    /// dropped. Must be called inside a Tokio runtime.
    pub async fn start(config: SandboxConfig) -> Result<SandboxHandle, SandboxError> {
        config.faults.validate()?;
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let events = Arc::new(Events::new(&config, Arc::clone(&stats), shutdown.clone())?);
        let wecom = WeCom::new(
            &config.wecom,
            config.token_expires_in,
            Arc::clone(&stats),
            shutdown.clone(),
        )?;
        let net = NetControl::new(Arc::clone(&stats));
        let listener = SandboxListener::bind(config.listen, Arc::clone(&net))
            .await
            .map_err(|source| SandboxError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr =
            axum::serve::Listener::local_addr(&listener).map_err(|source| SandboxError::Bind {
                addr: config.listen,
                source,
            })?;
        let state = Arc::new(State {
            tokens: TokenStore::new(&config),
            token_quota: TokenQuota::default(),
            messages: Messages::new(&config),
            templates: Templates::new(config.template_defs.as_deref()),
            faults: FaultState::new(FaultConfig::default()),
            stats,
            events,
            net,
            shutdown: shutdown.clone(),
            wecom,
            cfg: config,
        });
        state.apply_faults(state.cfg.faults.clone(), true)?;
        let app = router(Arc::clone(&state)).into_make_service_with_connect_info::<ConnInfo>();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "sandbox server failed");
            }
        });
        tracing::info!(%addr, "wxpush-sandbox listening");
        Ok(SandboxHandle {
            addr,
            state,
            shutdown,
            task: Some(task),
        })
    }
}

/// A running sandbox. Dropping it stops the server (without waiting).
#[derive(Debug)]
pub struct SandboxHandle {
    addr: SocketAddr,
    state: Shared,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the `apiBaseUrl` to give a pusher.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same document as `GET /__stats`.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.stats.snapshot()
    }

    /// Unique deliveries so far (cheaper than a snapshot).
    pub fn delivered_unique(&self) -> u64 {
        self.state.stats.delivered_unique()
    }

    /// The current fault config.
    pub fn faults(&self) -> FaultConfig {
        (*self.state.faults.get()).clone()
    }

    /// Replaces the fault config, as `PUT /__faults` does.
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), FaultConfigError> {
        self.state.apply_faults(faults, true)
    }

    /// Revokes every access_token now; returns how many were live.
    pub fn invalidate_tokens(&self) -> usize {
        self.state.invalidate_tokens()
    }

    /// The deliveries recorded with a template catalogue, oldest first (`GET /__deliveries`).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.templates.deliveries()
    }

    /// Records `count` consents of `openid` to a one-time `template_id`, as a user's tap on a
    /// subscription prompt does; returns the balance (`POST /__subscriptions`).
    pub fn add_consent(&self, openid: &str, template_id: &str, count: u64) -> u64 {
        self.state.templates.add_consent(openid, template_id, count)
    }

    /// Consents left of `openid` to `template_id`.
    pub fn consents(&self, openid: &str, template_id: &str) -> u64 {
        self.state.templates.consents(openid, template_id)
    }

    /// The WeCom application messages sent, oldest first (`GET /__wecom/messages`).
    pub fn wecom_messages(&self) -> Vec<SentMessage> {
        self.state.wecom.sent.list()
    }

    /// Verifies the WeCom callback URL now (`POST /__wecom/verify`).
    pub async fn wecom_verify(&self) -> Result<Verification, CallbackUse> {
        self.state.wecom.callback.verify().await
    }

    /// Applies a WeCom event to the directory and sends it to the callback URL as the app
    /// `agentid` (default: the first), waiting for its outcome (`POST /__wecom/events`).
    pub async fn wecom_event(
        &self,
        event: &WeComEvent,
        agentid: Option<u64>,
    ) -> Result<Delivered, CallbackUse> {
        event.apply(&self.state.wecom.directory);
        self.state.wecom.callback.send(event, agentid).await
    }

    /// As `POST /__reset`.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting, lets in-flight requests finish (at most `grace`), then stops.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            task.abort();
        }
    }

    /// Waits until the server stops (for the binary: forever, unless it fails).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
