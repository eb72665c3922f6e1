//! The template registry: the account's templates, fetched from WeChat's two list APIs at start
//! and every `templates.refreshInterval`, against which each message is checked at accept
//! (`templates.validation`, docs/pusher.md "Template checks").
//!
//! - [`rules`]: WeChat's rules by key type and the check of one message (pure).
//! - [`lists`]: the list APIs' answers read into templates (pure).
//! - [`Registry`] (here): the cache, its refreshes and the decision for one message.
//!
//! **Refreshes.** A template id not in the cache triggers one refresh before the message is
//! refused; such refreshes run at most once per [`MIN_REFETCH`] per pod, so that a producer
//! sending made-up ids cannot turn each message into a call to WeChat. A list that cannot be read keeps its last known
//! content; a list never read is not checked against.
//!
//! **Shared across pods** (Redis queue): the catalogue lives in Redis (`templates`,
//! `templates:at`). Each pod looks at `templates:at` every [`poll_every`]; a newer catalogue
//! is taken over, a due one is fetched by the one pod that takes `templates:lock`, which
//! publishes it. So the pods of a channel make one fetch per refresh, not one each. A fetch
//! that fails keeps the lock until it expires: the next try is one lock lifetime later.

pub mod lists;
pub mod rules;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::coord::{Coordinator, Lock};
use crate::message::Message;
use crate::metrics::FetchResult;
use crate::metrics::Metrics;
use crate::policy::{TemplatePolicy, TemplateValidation};
use crate::send::TemplateLists;
use crate::wechat::client::HttpClient;
use crate::wechat::token::TokenManager;
use rules::{Fix, List, Rule, Template, Violation};

/// The shortest time between two refreshes triggered by unknown template ids.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);

/// The longest a pod holds the fetcher's lock (a failed fetch holds it this long).
const LOCK_TTL: Duration = Duration::from_secs(30);

/// How often a pod of a shared channel looks for a newer or due catalogue in Redis.
pub fn poll_every(interval: Duration) -> Duration {
    (interval / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// The account's templates by list; `None` for a list never read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalogue {
    /// Official Account template messages.
    pub private: Option<HashMap<String, Template>>,
    /// Subscribe templates.
    pub subscribe: Option<HashMap<String, Template>>,
    /// When it was fetched (Unix ms; 0 = never).
    pub fetched_ms: u64,
}

impl Catalogue {
    fn list(&self, list: List) -> Option<&HashMap<String, Template>> {
        match list {
            List::Private => self.private.as_ref(),
            List::Subscribe => self.subscribe.as_ref(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the check of one message decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The message needs a one-time subscription credit of its user (strict mode only).
    pub needs_credit: bool,
}

/// The registry of one channel. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Registry {
    policy: TemplatePolicy,
    lists: TemplateLists,
    http: Arc<HttpClient>,
    tokens: Arc<TokenManager>,
    shared: Option<Arc<dyn Coordinator>>,
    metrics: Arc<Metrics>,
    catalogue: RwLock<Arc<Catalogue>>,
    /// One refresh at a time in this pod; holds when the last on-demand one started (ms).
    refreshing: tokio::sync::Mutex<u64>,
}

impl Registry {
    /// A registry fetching `lists` (the provider's) through the sender's HTTP client and token
    /// manager; `shared` when the channel's pods share Redis. A provider without WeChat
    /// templates turns the check off.
    pub fn new(
        mut policy: TemplatePolicy,
        lists: TemplateLists,
        http: Arc<HttpClient>,
        tokens: Arc<TokenManager>,
        shared: Option<Arc<dyn Coordinator>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        if lists == TemplateLists::None {
            policy.validation = TemplateValidation::Off;
        }
        Self {
            policy,
            lists,
            http,
            tokens,
            shared,
            metrics,
            catalogue: RwLock::new(Arc::new(Catalogue::default())),
            refreshing: tokio::sync::Mutex::new(0),
        }
    }

    /// The cached catalogue.
    pub fn catalogue(&self) -> Arc<Catalogue> {
        Arc::clone(&self.catalogue.read())
    }

    /// The validation mode.
    pub fn validation(&self) -> TemplateValidation {
        self.policy.validation
    }

    /// Keeps the catalogue fresh until `stop`: a fetch (or, shared, a look into Redis) now,
    /// then every refresh interval (shared: every [`poll_every`]).
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) {
        if self.policy.validation == TemplateValidation::Off {
            return;
        }
        let this = Arc::clone(self);
        let span = tracing::info_span!("template_registry");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let interval = this.policy.refresh_interval.get();
                let pause = if this.shared.is_some() {
                    poll_every(interval)
                } else {
                    interval
                };
                loop {
                    match &this.shared {
                        Some(shared) => this.poll_shared(&**shared, interval).await,
                        None => {
                            let _guard = this.refreshing.lock().await;
                            this.fetch_and_keep().await;
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            },
            span,
        ));
    }

    /// One look into Redis: take over a newer catalogue; fetch a due one as the one fetcher.
    async fn poll_shared(&self, shared: &dyn Coordinator, interval: Duration) {
        let _guard = self.refreshing.lock().await;
        let due_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.sync_shared(shared, |at| now_ms().saturating_sub(at) >= due_ms)
            .await;
    }

    /// Takes over the shared catalogue when newer than ours; fetches and publishes when
    /// `stale(at)` says the shared one is too old (or there is none) and this pod gets the lock.
    async fn sync_shared(&self, shared: &dyn Coordinator, stale: impl Fn(u64) -> bool) {
        let at = match shared.templates_at().await {
            Ok(at) => at,
            Err(e) => {
                tracing::debug!(error = %e, "template catalogue not readable from Redis");
                return;
            }
        };
        if let Some(at) = at
            && at > self.catalogue().fetched_ms
        {
            self.adopt_shared(shared).await;
        }
        if !at.is_none_or(&stale) {
            return;
        }
        match shared.try_lock(Lock::Templates, LOCK_TTL).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "template lock not available in Redis");
                return;
            }
        }
        // Another pod may have published between the look and the lock.
        if let Ok(Some(at)) = shared.templates_at().await
            && !stale(at)
        {
            self.adopt_shared(shared).await;
            let _ = shared.unlock(Lock::Templates).await;
            return;
        }
        if self.fetch_and_keep().await {
            let cat = self.catalogue();
            match serde_json::to_string(&*cat) {
                Ok(json) => {
                    if let Err(e) = shared.put_templates(&json, cat.fetched_ms).await {
                        tracing::warn!(error = %e, "cannot publish the template catalogue to Redis");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode the template catalogue"),
            }
            let _ = shared.unlock(Lock::Templates).await;
        }
        // A failed fetch keeps the lock to its expiry: the pods try again one lifetime later.
    }

    async fn adopt_shared(&self, shared: &dyn Coordinator) {
        match shared.templates().await {
            Ok(Some((json, _))) => match serde_json::from_str::<Catalogue>(&json) {
                Ok(cat) => self.keep(cat),
                Err(e) => tracing::warn!(error = %e, "the shared template catalogue does not read"),
            },
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "template catalogue not readable from Redis"),
        }
    }

    fn keep(&self, cat: Catalogue) {
        let count = |l: &Option<HashMap<String, Template>>| {
            l.as_ref()
                .map_or(-1, |m| i64::try_from(m.len()).unwrap_or(i64::MAX))
        };
        self.metrics
            .set_templates(List::Private, count(&cat.private));
        self.metrics
            .set_templates(List::Subscribe, count(&cat.subscribe));
        *self.catalogue.write() = Arc::new(cat);
    }

    /// Fetches the lists from WeChat into the cache; a list that fails keeps its last
    /// content. Returns whether any list was read.
    async fn fetch_and_keep(&self) -> bool {
        let old = self.catalogue();
        let token = match self.tokens.get().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = ?e, "template lists not fetched: no access_token");
                return false;
            }
        };
        let private = match self.lists {
            TemplateLists::PrivateAndSubscribe => {
                self.fetch(List::Private, lists::PRIVATE_PATH, &token).await
            }
            TemplateLists::Subscribe | TemplateLists::None => None,
        };
        let subscribe = self
            .fetch(List::Subscribe, lists::SUBSCRIBE_PATH, &token)
            .await;
        if private.is_none() && subscribe.is_none() {
            return false;
        }
        let index = |v: Vec<Template>| v.into_iter().map(|t| (t.id.clone(), t)).collect();
        let cat = Catalogue {
            private: private.map(index).or_else(|| old.private.clone()),
            subscribe: subscribe.map(index).or_else(|| old.subscribe.clone()),
            fetched_ms: now_ms(),
        };
        tracing::info!(
            private = cat.private.as_ref().map(HashMap::len),
            subscribe = cat.subscribe.as_ref().map(HashMap::len),
            "template lists fetched"
        );
        self.keep(cat);
        true
    }

    async fn fetch(
        &self,
        list: List,
        path: &str,
        token: &crate::wechat::token::AccessToken,
    ) -> Option<Vec<Template>> {
        let url = format!("{path}?access_token={}", token.as_str());
        let read = match self.http.get(&url).await {
            Ok(r) if r.status == 200 => lists::parse_private_or_subscribe(list, &r.body),
            Ok(r) => Err(lists::ListError::Malformed(format!("HTTP {}", r.status))),
            Err(e) => Err(lists::ListError::Malformed(e.to_string())),
        };
        match read {
            Ok(v) => {
                self.metrics.template_fetch(list, FetchResult::Ok);
                Some(v)
            }
            Err(e) => {
                if let lists::ListError::Errcode(code, _) = e
                    && crate::providers::errcode::token_refused(code)
                {
                    tracing::info!(errcode = code, "access_token refused on a template list");
                    self.tokens.invalidate(token);
                }
                tracing::warn!(list = list.as_str(), error = %e, "template list not read");
                self.metrics.template_fetch(list, FetchResult::Error);
                None
            }
        }
    }

    /// The template `id` on `list`, after one refresh when it is not cached (at most once per
    /// [`MIN_REFETCH`]).
    async fn find(&self, list: List, id: &str) -> Option<Template> {
        if let Some(t) = self.catalogue().list(list).and_then(|l| l.get(id)) {
            return Some(t.clone());
        }
        let seen = self.catalogue().fetched_ms;
        {
            let mut last = self.refreshing.lock().await;
            let now = now_ms();
            let min = u64::try_from(MIN_REFETCH.as_millis()).unwrap_or(u64::MAX);
            // A refresh that ran while this waited for the lock counts as this one's.
            if self.catalogue().fetched_ms == seen && now.saturating_sub(*last) >= min {
                *last = now;
                match &self.shared {
                    // Any catalogue older than this moment is stale for an unknown id.
                    Some(shared) => self.sync_shared(&**shared, |at| at < now).await,
                    None => {
                        self.fetch_and_keep().await;
                    }
                }
            }
        }

        self.catalogue().list(list).and_then(|l| l.get(id)).cloned()
    }

    /// Checks `message` against its template, per `templates.validation`: `Ok` when it may be
    /// accepted (its data cut and its notes set in `truncate` mode); the broken rule else. A
    /// list never read, or (in `auto` mode) an empty one, is not checked against.
    pub async fn check(&self, message: &mut Message) -> Result<Decision, Violation> {
        let pass = Decision {
            needs_credit: false,
        };
        let mode = self.policy.validation;
        if mode == TemplateValidation::Off {
            return Ok(pass);
        }
        let list = List::of(message.kind);
        let cat = self.catalogue();
        let Some(known) = cat.list(list) else {
            return Ok(pass);
        };
        if mode == TemplateValidation::Auto && known.is_empty() {
            return Ok(pass);
        }
        let Some(template) = self.find(list, &message.template_id).await else {
            return Err(Violation {
                field: "template_id".into(),
                rule: Rule::UnknownTemplate,
                message: format!(
                    "template {} is not on this account's {} template list",
                    message.template_id,
                    list.as_str()
                ),
            });
        };
        let fix = if mode == TemplateValidation::Truncate {
            Fix::Truncate
        } else {
            Fix::Refuse
        };
        let checked = rules::check(&template, list, &message.data.to_map(), fix)?;
        if let Some(data) = checked.data {
            message.data = crate::message::TemplateData::from_map(&data);
        }
        message.template_notes = checked.notes;
        Ok(Decision {
            needs_credit: mode == TemplateValidation::Strict
                && list == List::Subscribe
                && template.one_time,
        })
    }
}
