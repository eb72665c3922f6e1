//! Outcome callbacks: when a message reaches a final state (and again when a
//! TEMPLATESENDJOBFINISH event confirms or rejects it), the pusher POSTs a small JSON document
//! to the message's `callback_url`, else the channel's `callbacks.url`.
//!
//! Durability: the store writes a pending callback in the same transaction as the state change
//! that causes it ([`crate::store::Store::complete`], [`crate::store::Store::record_event`]),
//! so a crash never loses one. The [`CallbackWorker`] (separate from the WeChat workers, at
//! most [`CALLBACK_CONCURRENCY`] requests at once) leases due callbacks, sends them with its own
//! HTTP client, and retries failures (non-2xx, timeouts, transport errors) with the
//! `callbacks.retry` backoff until `maxAttempts` or `maxAge`, then drops them with a warning
//! and `wxpush_callbacks_total{result="gave_up"}`. Delivery is at least once: a callback whose
//! answer was lost to a crash is sent again after the restart.
//!
//! Signature (when `callbacks.signingKey` is set): `X-Wxpush-Timestamp: <unix seconds>` and
//! `X-Wxpush-Signature: sha256=<lowercase hex of HMAC-SHA256(key, "<timestamp>.<body>")>`,
//! where `<body>` is the exact request body bytes. The key follows its file
//! ([`crate::secrets`]): after a rotation every callback carries the new key's signature, so a
//! receiver accepts both keys while the rotation is in progress (docs/pusher.md).
//!
//! Targets: [`target`] refuses internal addresses unless `callbacks.allow` lists them, at
//! accept, before each attempt and at connect time (its own DNS resolver). A refused target is
//! given up at once, never retried.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use sha2::Sha256;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CallbackLabels, CallbackResult, Metrics};
use crate::policy::{Callbacks, LocalSecret, Retry};
use crate::resilience::backoff;
use crate::secrets::WatchedSecret;
pub use crate::store::types::{CallbackPayload, wants_callback};
use crate::store::{CallbackKey, PendingCallback, Store};

pub mod target;
use target::{GuardedResolver, TargetPolicy};

/// Most callback requests in flight at once.
pub const CALLBACK_CONCURRENCY: usize = 8;
/// How long one lease call waits for due callbacks before looking at shutdown again.
const LEASE_WAIT: Duration = Duration::from_millis(500);
/// How long in-flight callbacks may finish at shutdown (the rest stay durable).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Wxpush-Signature";
/// The header carrying the signed timestamp.
pub const TIMESTAMP_HEADER: &str = "X-Wxpush-Timestamp";

/// `sha256=<hex>` of HMAC-SHA256(`key`, `"<timestamp>.<body>"`).
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why the callback worker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The signing key could not be read.
    #[error("callbacks.signingKey: {0}")]
    SigningKey(String),
    /// The HTTP client could not be built.
    #[error("callbacks HTTP client: {0}")]
    Client(String),
    /// `callbacks.allow` holds a bad entry.
    #[error("{0}")]
    Allow(String),
    /// `callbacks.url` is refused by the target rules.
    #[error("callbacks.url: {0}")]
    Url(#[from] target::TargetError),
}

/// Sends pending callbacks.
#[derive(Debug)]
pub struct CallbackWorker<S> {
    store: S,
    client: reqwest::Client,
    default_url: Option<String>,
    key: Option<Arc<WatchedSecret>>,
    retry: Retry,
    metrics: Arc<Metrics>,
    targets: Arc<TargetPolicy>,
}

enum Sent {
    Ok,
    Failed(String),
    /// The target is refused by the target rules: given up at once.
    Refused(String),
}

impl<S: Store + Clone> CallbackWorker<S> {
    /// A worker for the channel's `callbacks` policy, signing with `key` (read by
    /// [`crate::preflight::resolve`]; it follows its file, so the key rotates without a
    /// restart).
    pub fn new(
        store: S,
        policy: &Callbacks<LocalSecret>,
        key: Option<Arc<WatchedSecret>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CallbackError> {
        let targets = Arc::new(TargetPolicy::new(&policy.allow).map_err(CallbackError::Allow)?);
        if let Some(url) = &policy.url {
            targets.check_url(url)?;
        }
        // reqwest cannot time the TLS handshake and the response headers apart: `connect`
        // bounds DNS + TCP (+ TLS as part of the connector) and `request` bounds the whole
        // attempt, which includes waiting for the response headers.
        let client = reqwest::Client::builder()
            .connect_timeout(policy.timeouts.connect.get() + policy.timeouts.tls_handshake.get())
            .timeout(policy.timeouts.request.get())
            .user_agent("wxpush-callbacks")
            .redirect(reqwest::redirect::Policy::none())
            // Names resolve through the guard; a proxy would resolve them itself.
            .dns_resolver(Arc::new(GuardedResolver(Arc::clone(&targets))))
            .no_proxy()
            .build()
            .map_err(|e| CallbackError::Client(e.to_string()))?;
        Ok(Self {
            store,
            client,
            default_url: policy.url.clone(),
            key,
            retry: policy.retry.clone(),
            metrics,
            targets,
        })
    }

    /// Sends callbacks until `stop`; in-flight requests get a short grace, the rest stay in
    /// the store.
    pub async fn run(self, stop: CancellationToken) {
        let me = Arc::new(self);
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            if stop.is_cancelled() {
                break;
            }
            let free = CALLBACK_CONCURRENCY.saturating_sub(tasks.len());
            if free == 0 {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            let due = tokio::select! {
                r = me.store.lease_callbacks(free, LEASE_WAIT) => r,
                () = stop.cancelled() => break,
            };
            match due {
                Ok(due) => {
                    for cb in due {
                        let me = Arc::clone(&me);
                        tasks.spawn(async move { me.attempt(cb).await });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read pending callbacks");
                    tokio::select! {
                        () = tokio::time::sleep(LEASE_WAIT) => {}
                        () = stop.cancelled() => break,
                    }
                }
            }
        }
        let grace = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, grace).await.is_err() {
            tasks.abort_all();
        }
    }

    async fn attempt(&self, cb: PendingCallback) {
        let key = cb.key;
        let Some(url) = cb.url.clone().or_else(|| self.default_url.clone()) else {
            // The channel's URL was removed since: nowhere to send it.
            tracing::warn!(message = %cb.message_id(), "callback dropped: no callback URL");
            self.metrics
                .callbacks
                .get_or_create(&CallbackLabels {
                    result: CallbackResult::GaveUp,
                })
                .inc();
            self.finish(key, None).await;
            return;
        };
        let result = self.send(&url, &cb.body).await;
        let attempts = cb.attempts.saturating_add(1);
        let next = match result {
            Sent::Ok => {
                self.metrics
                    .callbacks
                    .get_or_create(&CallbackLabels {
                        result: CallbackResult::Ok,
                    })
                    .inc();
                None
            }
            Sent::Refused(why) => {
                tracing::warn!(message = %cb.message_id(), error = %why, "callback target refused");
                self.metrics
                    .callbacks
                    .get_or_create(&CallbackLabels {
                        result: CallbackResult::GaveUp,
                    })
                    .inc();
                None
            }
            Sent::Failed(why) => {
                let delay = backoff::delay(&self.retry, attempts, rand::random::<f64>());
                let at = Timestamp::now()
                    .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or_default())
                    .unwrap_or_else(|_| Timestamp::now());
                let age_limit = cb
                    .created_at
                    .checked_add(
                        jiff::SignedDuration::try_from(self.retry.max_age.get())
                            .unwrap_or_default(),
                    )
                    .unwrap_or(Timestamp::MAX);
                if attempts >= self.retry.max_attempts || at > age_limit {
                    tracing::warn!(
                        message = %cb.message_id(), attempts, error = %why,
                        "callback given up"
                    );
                    self.metrics
                        .callbacks
                        .get_or_create(&CallbackLabels {
                            result: CallbackResult::GaveUp,
                        })
                        .inc();
                    None
                } else {
                    tracing::debug!(message = %cb.message_id(), attempts, error = %why, "callback failed; retrying");
                    self.metrics
                        .callbacks
                        .get_or_create(&CallbackLabels {
                            result: CallbackResult::Retry,
                        })
                        .inc();
                    Some((at, attempts))
                }
            }
        };
        self.finish(key, next).await;
    }

    async fn finish(&self, key: CallbackKey, next: Option<(Timestamp, u32)>) {
        if let Err(e) = self.store.finish_callback(key, next).await {
            tracing::warn!(error = %e, "cannot record a callback's outcome; it will be sent again");
        }
    }

    async fn send(&self, url: &str, body: &str) -> Sent {
        // Stored URLs may predate the allowlist; literal addresses bypass the resolver.
        if let Err(e) = self.targets.check_url(url) {
            return Sent::Refused(e.to_string());
        }
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.key {
            let ts = Timestamp::now().as_second();
            request = request.header(TIMESTAMP_HEADER, ts.to_string()).header(
                SIGNATURE_HEADER,
                sign(key.get().as_bytes(), ts, body.as_bytes()),
            );
        }
        match request.body(body.to_string()).send().await {
            Ok(r) if r.status().is_success() => Sent::Ok,
            Ok(r) => Sent::Failed(format!("HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Sent::Failed("timeout".into()),
            Err(e) if e.is_connect() => {
                let chain = format!("{e:?}");
                if chain.contains("internal") {
                    Sent::Refused("the target resolves only to internal addresses".into())
                } else {
                    Sent::Failed("connect failed".into())
                }
            }
            Err(_) => Sent::Failed("transport error".into()),
        }
    }
}

#[cfg(test)]
mod tests;
