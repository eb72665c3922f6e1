//! The pusher's Prometheus metrics, with the names agreed in docs/architecture.md (the operator's HPA and
//! the chart's adapter rules depend on them). Every metric carries a `channel` label.

use std::borrow::Cow;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::send::InvalidRecipients;

/// A message's final outcome, for `wxpush_messages_completed_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// WeChat accepted it (errcode 0).
    delivered,
    /// A permanent errcode.
    failed,
    /// `expires_at` or the retry budget passed.
    expired,
    /// Moved to the dead-letter queue.
    dead_lettered,
    /// Not re-sent after a crash beyond the de-duplication window (see `Status::UnknownOutcome`).
    unknown_outcome,
}

/// Label set `{outcome}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// See [`Outcome`].
    pub outcome: Outcome,
}

/// How one HTTP attempt ended, for `wxpush_send_attempts_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptResult {
    /// errcode 0.
    ok,
    /// A retryable errcode or HTTP status.
    retryable,
    /// A permanent errcode.
    permanent,
    /// One of the four timeouts ran out.
    timeout,
    /// Connection refused or reset, DNS, TLS and other transport errors.
    transport,
}

/// Label set `{result}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AttemptLabels {
    /// See [`AttemptResult`].
    pub result: AttemptResult,
}

/// Queue states, for `wxpush_queue_messages{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum QueueState {
    /// Due now, waiting for a worker.
    ready,
    /// Waiting for a retry time.
    delayed,
    /// Leased to a worker.
    inflight,
    /// In the dead-letter queue.
    dead,
}

/// Label set `{state}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueueLabels {
    /// See [`QueueState`].
    pub state: QueueState,
}

/// Declares a label-value enum whose variants encode as the given texts, so that a wrong label
/// does not compile (the derive of `prometheus_client` can only spell a variant's own name).
macro_rules! label_value {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The label's text.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_value! {
    /// Which token API a fetch called, for `wxpush_token_requests_total{api}` (the policy's
    /// `token.api`, which lives in another crate and so cannot be a label itself).
    pub enum TokenApiLabel {
        /// `stable_token`.
        Stable => "stable",
        /// The classic `token` API.
        Classic => "classic",
        /// WeCom's `gettoken` (a corp and an application's secret).
        Wecom => "wecom",
        /// A webhook key read from its Secret (no token API is called).
        WebhookKey => "webhook_key",
    }
}

/// How a token fetch ended, for `wxpush_token_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenResult {
    /// A token came back.
    Ok,
    /// WeChat answered this errcode (the label is the number).
    Errcode(i64),
    /// A timeout ran out (or no other pod shared a token in time).
    Timeout,
    /// The connection failed.
    Transport,
    /// The stable API handed back the token WeChat had just refused.
    Stale,
    /// HTTP 5xx.
    Http5xx,
    /// Another non-200 status.
    HttpStatus,
    /// A 200 with neither a token nor an errcode.
    BadResponse,
    /// The credentials could not be read.
    Credentials,
}

impl EncodeLabelValue for TokenResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Ok => encoder.write_str("ok"),
            Self::Errcode(code) => write!(encoder, "{code}"),
            Self::Timeout => encoder.write_str("timeout"),
            Self::Transport => encoder.write_str("transport"),
            Self::Stale => encoder.write_str("stale"),
            Self::Http5xx => encoder.write_str("http_5xx"),
            Self::HttpStatus => encoder.write_str("http_status"),
            Self::BadResponse => encoder.write_str("bad_response"),
            Self::Credentials => encoder.write_str("credentials"),
        }
    }
}

impl From<crate::policy::TokenApi> for TokenApiLabel {
    fn from(api: crate::policy::TokenApi) -> Self {
        match api {
            crate::policy::TokenApi::Stable => Self::Stable,
            crate::policy::TokenApi::Classic => Self::Classic,
        }
    }
}

/// Label set `{api, result}` of `wxpush_token_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TokenLabels {
    /// See [`TokenApiLabel`].
    pub api: TokenApiLabel,
    /// See [`TokenResult`].
    pub result: TokenResult,
}

label_value! {
    /// Which of the four timeouts ran out, for `wxpush_send_timeouts_total{phase}`.
    pub enum TimeoutPhase {
        /// `timeouts.connect`.
        Connect => "connect",
        /// `timeouts.tls`.
        TlsHandshake => "tls_handshake",
        /// `timeouts.responseHeader`.
        ResponseHeader => "response_header",
        /// `timeouts.request`.
        Request => "request",
    }
}

/// Label set `{phase}` of `wxpush_send_timeouts_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// See [`TimeoutPhase`].
    pub phase: TimeoutPhase,
}

label_value! {
    /// The WeChat event a request to `/wechat/events` carried, for `wxpush_events_total{event}`.
    pub enum EventName {
        /// `TEMPLATESENDJOBFINISH`, a template message's delivery report.
        TemplateSendJobFinish => "TEMPLATESENDJOBFINISH",
        /// Any other event (ignored).
        Other => "other",
        /// None was read (refused before, or not an event).
        Unread => "-",
    }
}

label_value! {
    /// What became of a request to `/wechat/events`, for `wxpush_events_total{result}`.
    pub enum EventResult {
        /// A delivery was confirmed.
        Confirmed => "confirmed",
        /// The user refused the message.
        RejectedByUser => "rejected_by_user",
        /// Recorded on a message that is not delivered yet.
        Recorded => "recorded",
        /// Seen before.
        Duplicate => "duplicate",
        /// No message matches.
        Unmatched => "unmatched",
        /// Not an event the pusher uses.
        Ignored => "ignored",
        /// The URL check (echostr) was answered.
        Echostr => "echostr",
        /// A wrong or missing signature.
        BadSignature => "bad_signature",
        /// Malformed XML or fields.
        BadRequest => "bad_request",
        /// The sealed payload could not be opened.
        DecryptFailed => "decrypt_failed",
        /// The timestamp is outside the allowed skew.
        Stale => "stale",
        /// The (timestamp, nonce) pair was seen before.
        Replayed => "replayed",
        /// The replay guard is full; WeChat is asked to retry.
        ReplayCacheFull => "replay_cache_full",
        /// The store failed; WeChat is asked to retry.
        Error => "error",
    }
}

/// Label set `{event, result}` of `wxpush_events_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    /// See [`EventName`].
    pub event: EventName,
    /// See [`EventResult`].
    pub result: EventResult,
}

label_value! {
    /// How one callback delivery ended, for `wxpush_callbacks_total{result}`.
    pub enum CallbackResult {
        /// The producer answered 2xx.
        Ok => "ok",
        /// It failed; another attempt is scheduled.
        Retry => "retry",
        /// Dropped after `callbacks.retry` ran out.
        GaveUp => "gave_up",
    }
}

/// Label set `{result}` of `wxpush_callbacks_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallbackLabels {
    /// See [`CallbackResult`].
    pub result: CallbackResult,
}

/// Label set `{rule}` of `wxpush_template_refusals_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule broken (`unknown_template`, `too_long`...).
    pub rule: TemplateRuleLabel,
}

/// A template rule as a metric label (`crate::templates::rules::Rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TemplateRuleLabel {
    /// See `Rule::UnknownTemplate`.
    unknown_template,
    /// See `Rule::MissingKeyword`.
    missing_keyword,
    /// See `Rule::UnknownKeyword`.
    unknown_keyword,
    /// See `Rule::EmptyValue`.
    empty_value,
    /// See `Rule::TooLong`.
    too_long,
    /// See `Rule::BadCharacters`.
    bad_characters,
    /// See `Rule::BadFormat`.
    bad_format,
    /// See `Rule::NotAllowedValue`.
    not_allowed_value,
    /// See `Rule::LineBreak`.
    line_break,
    /// See `Rule::ControlCharacter`.
    control_character,
    /// See `Rule::NoSubscriptionCredit`.
    no_subscription_credit,
}

label_value! {
    /// Which template list, for `wxpush_templates{list}` and
    /// `wxpush_template_list_fetches_total{list}`.
    pub enum TemplateList {
        /// The account's private templates (Official Account).
        Private => "private",
        /// The subscribe-message templates.
        Subscribe => "subscribe",
    }
}

label_value! {
    /// How a template-list fetch ended, for `wxpush_template_list_fetches_total{result}`.
    pub enum FetchResult {
        /// Read.
        Ok => "ok",
        /// Not read.
        Error => "error",
    }
}

/// Label set `{list}` of `wxpush_templates`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TemplateListLabels {
    /// See [`TemplateList`].
    pub list: TemplateList,
}

/// Label set `{list, result}` of `wxpush_template_list_fetches_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TemplateFetchLabels {
    /// See [`TemplateList`].
    pub list: TemplateList,
    /// See [`FetchResult`].
    pub result: FetchResult,
}

pub use crate::resilience::breaker::CircuitState;

/// Every metric of one pusher, registered under one channel label.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `wxpush_messages_accepted_total`: answered 202.
    pub accepted: Counter,
    /// `wxpush_messages_completed_total{outcome}`.
    pub completed: Family<OutcomeLabels, Counter>,
    /// `wxpush_send_attempts_total{result}`.
    pub send_attempts: Family<AttemptLabels, Counter>,
    /// `wxpush_send_duration_seconds`: one HTTP attempt to WeChat.
    pub send_duration: Histogram,
    /// `wxpush_delivery_latency_seconds`: accepted → delivered.
    pub delivery_latency: Histogram,
    /// `wxpush_inflight_requests`: HTTP requests to WeChat in flight.
    pub inflight: Gauge,
    /// `wxpush_queue_messages{state}`.
    pub queue_messages: Family<QueueLabels, Gauge>,
    /// `wxpush_token_requests_total{api,result}`.
    pub token_requests: Family<TokenLabels, Counter>,
    /// `wxpush_circuit_state`: 0 closed, 1 half-open, 2 open.
    pub circuit_state: Gauge,
    /// `wxpush_circuit_opens_total`: times the breaker went (back) to open.
    pub circuit_opens: Counter,
    /// `wxpush_send_timeouts_total{phase}`: attempts (those counted as `result="timeout"`) by
    /// the timeout that ran out.
    pub send_timeouts: Family<TimeoutLabels, Counter>,
    /// `wxpush_channel_paused`: 1 while the channel cannot send (configuration fault, daily
    /// quota), else 0.
    pub channel_paused: Gauge,
    /// `wxpush_queue_disk_bytes`: bytes the embedded store's disk budget counts, as last
    /// measured (at accepts): what the database holds plus a reserve for each pending
    /// message's outcome; 0 with the Redis queue.
    pub queue_disk_bytes: Gauge,
    /// `wxpush_queue_disk_budget_bytes`: the embedded store's disk budget
    /// (`queue.embedded.maxBytes`); accepts get 429 while `wxpush_queue_disk_bytes` is at it.
    pub queue_disk_budget_bytes: Gauge,
    /// `wxpush_channel_hold_errcode`: WeChat's errcode that holds sending now (40164, 40125,
    /// 45009...), 0 while sending or when the hold is the circuit breaker's. `/healthz` does
    /// not show it; `/v1/status` does, with WeChat's message.
    pub channel_hold_errcode: Gauge,
    /// `wxpush_events_total{event,result}`: requests to `/wechat/events` by outcome.
    pub events: Family<EventLabels, Counter>,
    /// `wxpush_callbacks_total{result}`: outcome-callback attempts by result.
    pub callbacks: Family<CallbackLabels, Counter>,
    /// `wxpush_queue_group_lag`: entries of the Redis stream not yet read by the consumer
    /// group (the shared backlog; 0 with the embedded store).
    pub queue_group_lag: Gauge,
    /// `wxpush_queue_consumer_pending{consumer}`: Redis stream entries leased by each consumer
    /// (pod), as seen by this pod.
    pub queue_consumer_pending: Family<ConsumerLabels, Gauge>,
    /// `wxpush_redis_up`: 1 while Redis answers (Redis queue only).
    pub redis_up: Gauge,
    /// `wxpush_concurrency_limit`: HTTP requests to WeChat allowed in flight now (the adaptive
    /// limit, or `maxInFlight` when it is fixed).
    pub concurrency_limit: Gauge,
    /// `wxpush_hedged_sends_total`: second attempts sent under the same `client_msg_id`
    /// because the first had not answered after a multiple of the observed p99.
    pub hedged_sends: Counter,
    /// `wxpush_wechat_connections_opened_total`: connections to WeChat set up (TCP connected,
    /// TLS done). Against a steady load it stays near the most requests ever in flight at once.
    pub wechat_connections_opened: Counter,
    /// `wxpush_wechat_requests_peak`: the most HTTP requests to WeChat under way at once since
    /// the start (what the connections opened are compared with).
    pub wechat_requests_peak: Gauge,
    /// `wxpush_queue_oldest_ready_age_seconds`: how long the oldest ready message has been
    /// due (0 when none is ready); set at each scrape.
    pub oldest_ready_age: Gauge,
    /// `wxpush_daily_quota`: the configured `rateLimit.dailyQuota` (0 = unlimited), for the
    /// quota alert.
    pub daily_quota: Gauge,
    /// `wxpush_template_refusals_total{rule}`: messages refused at accept by the template
    /// check, by rule.
    pub template_refusals: Family<RuleLabels, Counter>,
    /// `wxpush_template_list_fetches_total{list,result}`: calls to WeChat's template-list APIs
    /// made by this pod.
    pub template_fetches: Family<TemplateFetchLabels, Counter>,
    /// `wxpush_templates{list}`: templates in the cached list (-1 while never read).
    pub templates: Family<TemplateListLabels, Gauge>,
    /// `wxpush_invalid_recipients_total{provider,kind}`: recipients of delivered messages that
    /// the provider could not reach (WeCom's partial failures). None of them is retried.
    pub invalid_recipients: Family<InvalidRecipientLabels, Counter>,
}

/// Labels of `wxpush_invalid_recipients_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct InvalidRecipientLabels {
    /// The provider (`wecomApp`).
    pub provider: &'static str,
    /// Which kind of recipient the provider called invalid.
    pub kind: RecipientKind,
}

/// A kind of recipient of a WeCom message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RecipientKind {
    /// A user id (`invaliduser`).
    user,
    /// A party (department) id (`invalidparty`).
    party,
    /// A tag id (`invalidtag`).
    tag,
    /// A user without a licence (`unlicenseduser`).
    unlicensed_user,
}

/// Labels of `wxpush_queue_consumer_pending`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The consumer (pod host name and process id).
    pub consumer: String,
}

impl Metrics {
    /// Counts the recipients a delivery answer called invalid.
    pub fn invalid_recipients(&self, provider: &'static str, invalid: &InvalidRecipients) {
        for (kind, n) in [
            (RecipientKind::user, invalid.users.len()),
            (RecipientKind::party, invalid.parties.len()),
            (RecipientKind::tag, invalid.tags.len()),
            (
                RecipientKind::unlicensed_user,
                invalid.unlicensed_users.len(),
            ),
        ] {
            if n > 0 {
                self.invalid_recipients
                    .get_or_create(&InvalidRecipientLabels { provider, kind })
                    .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            }
        }
    }

    /// Counts a refusal by the template check.
    pub fn template_refusal(&self, rule: TemplateRuleLabel) {
        self.template_refusals
            .get_or_create(&RuleLabels { rule })
            .inc();
    }

    /// Counts one call to a template-list API.
    pub fn template_fetch(&self, list: TemplateList, result: FetchResult) {
        self.template_fetches
            .get_or_create(&TemplateFetchLabels { list, result })
            .inc();
    }

    /// Sets how many templates a cached list holds (-1: never read).
    pub fn set_templates(&self, list: TemplateList, count: i64) {
        self.templates
            .get_or_create(&TemplateListLabels { list })
            .set(count);
    }

    /// Creates and registers every metric with the label `channel="<channel>"`.
    pub fn new(channel: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "wxpush",
            [(Cow::Borrowed("channel"), Cow::Owned(channel.to_string()))].into_iter(),
        );
        let accepted = Counter::default();
        registry.register(
            "messages_accepted",
            "Messages answered 202",
            accepted.clone(),
        );
        let completed = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "messages_completed",
            "Messages that reached a final state",
            completed.clone(),
        );
        let send_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "send_attempts",
            "HTTP attempts to WeChat by result",
            send_attempts.clone(),
        );
        // 1 ms .. ~33 s
        let send_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "send_duration_seconds",
            "Duration of one HTTP attempt to WeChat",
            send_duration.clone(),
        );
        // 5 ms .. ~45 min
        let delivery_latency = Histogram::new(exponential_buckets(0.005, 2.0, 20));
        registry.register(
            "delivery_latency_seconds",
            "Time from accepted to delivered",
            delivery_latency.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "inflight_requests",
            "HTTP requests to WeChat in flight",
            inflight.clone(),
        );
        let queue_messages = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_messages",
            "Messages in the queue by state",
            queue_messages.clone(),
        );
        let token_requests = Family::<TokenLabels, Counter>::default();
        registry.register(
            "token_requests",
            "access_token fetches by API and result",
            token_requests.clone(),
        );
        let circuit_state = Gauge::default();
        registry.register(
            "circuit_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            circuit_state.clone(),
        );
        let circuit_opens = Counter::default();
        registry.register(
            "circuit_opens",
            "Times the circuit breaker opened (from closed or half-open)",
            circuit_opens.clone(),
        );
        let send_timeouts = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "send_timeouts",
            "HTTP attempts to WeChat that timed out, by phase",
            send_timeouts.clone(),
        );
        let channel_paused = Gauge::default();
        registry.register(
            "channel_paused",
            "1 while the channel is paused (configuration fault or quota)",
            channel_paused.clone(),
        );
        let queue_disk_bytes = Gauge::default();
        registry.register(
            "queue_disk_bytes",
            "Bytes the embedded store's disk budget counts (held plus outcome reserve), as last measured",
            queue_disk_bytes.clone(),
        );
        let queue_disk_budget_bytes = Gauge::default();
        registry.register(
            "queue_disk_budget_bytes",
            "The embedded store's disk budget; accepts get 429 at it",
            queue_disk_budget_bytes.clone(),
        );
        let channel_hold_errcode = Gauge::default();
        registry.register(
            "channel_hold_errcode",
            "WeChat's errcode that holds sending now (0 when none)",
            channel_hold_errcode.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "WeChat server-URL callbacks (delivery events) by event and result",
            events.clone(),
        );
        let callbacks = Family::<CallbackLabels, Counter>::default();
        registry.register(
            "callbacks",
            "Outcome callbacks to producers by result (ok, retry, gave_up)",
            callbacks.clone(),
        );
        let queue_group_lag = Gauge::default();
        registry.register(
            "queue_group_lag",
            "Redis stream entries not yet read by the consumer group",
            queue_group_lag.clone(),
        );
        let queue_consumer_pending = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "queue_consumer_pending",
            "Redis stream entries leased by each consumer (pod)",
            queue_consumer_pending.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 while Redis answers (Redis queue only)",
            redis_up.clone(),
        );
        let concurrency_limit = Gauge::default();
        registry.register(
            "concurrency_limit",
            "HTTP requests to WeChat allowed in flight now (adaptive limit or maxInFlight)",
            concurrency_limit.clone(),
        );
        let hedged_sends = Counter::default();
        registry.register(
            "hedged_sends",
            "Hedged second attempts under the same client_msg_id",
            hedged_sends.clone(),
        );
        let wechat_connections_opened = Counter::default();
        registry.register(
            "wechat_connections_opened",
            "Connections to WeChat set up (TCP connected, TLS done)",
            wechat_connections_opened.clone(),
        );
        let wechat_requests_peak = Gauge::default();
        registry.register(
            "wechat_requests_peak",
            "Most HTTP requests to WeChat under way at once since the start",
            wechat_requests_peak.clone(),
        );
        let oldest_ready_age = Gauge::default();
        registry.register(
            "queue_oldest_ready_age_seconds",
            "How long the oldest ready message has been due (0 when none is ready)",
            oldest_ready_age.clone(),
        );
        let daily_quota = Gauge::default();
        registry.register(
            "daily_quota",
            "The configured rateLimit.dailyQuota (0 = unlimited)",
            daily_quota.clone(),
        );
        let template_refusals = Family::<RuleLabels, Counter>::default();
        registry.register(
            "template_refusals",
            "Messages refused at accept by the template check, by rule",
            template_refusals.clone(),
        );
        let template_fetches = Family::<TemplateFetchLabels, Counter>::default();
        registry.register(
            "template_list_fetches",
            "Calls to WeChat's template-list APIs by this pod, by list and result",
            template_fetches.clone(),
        );
        let templates = Family::<TemplateListLabels, Gauge>::default();
        registry.register(
            "templates",
            "Templates in the cached list (-1 while never read)",
            templates.clone(),
        );
        let invalid_recipients = Family::<InvalidRecipientLabels, Counter>::default();
        registry.register(
            "invalid_recipients",
            "Recipients of delivered messages the provider could not reach, by kind",
            invalid_recipients.clone(),
        );
        Self {
            registry,
            invalid_recipients,
            template_refusals,
            template_fetches,
            templates,
            accepted,
            completed,
            send_attempts,
            send_duration,
            delivery_latency,
            inflight,
            queue_messages,
            token_requests,
            circuit_state,
            circuit_opens,
            send_timeouts,
            channel_paused,
            channel_hold_errcode,
            queue_disk_bytes,
            queue_disk_budget_bytes,
            events,
            callbacks,
            queue_group_lag,
            queue_consumer_pending,
            redis_up,
            concurrency_limit,
            hedged_sends,
            wechat_connections_opened,
            wechat_requests_peak,
            oldest_ready_age,
            daily_quota,
        }
    }

    /// Counts one request to `/wechat/events`.
    pub fn event(&self, event: EventName, result: EventResult) {
        self.events
            .get_or_create(&EventLabels { event, result })
            .inc();
    }

    /// Records a final outcome.
    pub fn complete(&self, outcome: Outcome) {
        self.completed
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Records one HTTP attempt and how long it took.
    pub fn attempt(&self, result: AttemptResult, seconds: f64) {
        self.send_attempts
            .get_or_create(&AttemptLabels { result })
            .inc();
        self.send_duration.observe(seconds);
    }

    /// Counts a timed-out attempt by phase (in addition to [`Metrics::attempt`]).
    pub fn timeout(&self, phase: TimeoutPhase) {
        self.send_timeouts
            .get_or_create(&TimeoutLabels { phase })
            .inc();
    }

    /// Records one token fetch.
    pub fn token_request(&self, api: impl Into<TokenApiLabel>, result: TokenResult) {
        self.token_requests
            .get_or_create(&TokenLabels {
                api: api.into(),
                result,
            })
            .inc();
    }

    /// Sets a queue gauge.
    pub fn set_queue(&self, state: QueueState, value: i64) {
        self.queue_messages
            .get_or_create(&QueueLabels { state })
            .set(value);
    }

    /// Sets the breaker gauge.
    pub fn set_circuit(&self, state: CircuitState) {
        self.circuit_state.set(state as i64);
    }

    /// The OpenMetrics text exposition, for `GET /metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_agreed_names_with_the_channel_label() {
        let m = Metrics::new("order-notify");
        m.accepted.inc();
        m.complete(Outcome::delivered);
        m.attempt(AttemptResult::timeout, 0.5);
        m.token_request(TokenApiLabel::Stable, TokenResult::Ok);
        m.set_queue(QueueState::ready, 7);
        m.set_circuit(CircuitState::Open);
        m.inflight.set(3);
        let text = m.encode();
        for line in [
            r#"wxpush_messages_accepted_total{channel="order-notify"} 1"#,
            r#"wxpush_messages_completed_total{channel="order-notify",outcome="delivered"} 1"#,
            r#"wxpush_send_attempts_total{channel="order-notify",result="timeout"} 1"#,
            r#"wxpush_token_requests_total{channel="order-notify",api="stable",result="ok"} 1"#,
            r#"wxpush_queue_messages{channel="order-notify",state="ready"} 7"#,
            r#"wxpush_circuit_state{channel="order-notify"} 2"#,
            r#"wxpush_inflight_requests{channel="order-notify"} 3"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(text.contains("wxpush_send_duration_seconds_bucket"));
        assert!(text.contains("wxpush_delivery_latency_seconds_count"));
    }
}
