//! The pusher's Prometheus metrics, with the names agreed in docs/architecture.md (the operator's HPA and
//! the chart's adapter rules depend on them). Every metric carries a `channel` label.

use std::borrow::Cow;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::send::InvalidRecipients;

#[cfg(feature = "alloc-count")]
mod alloc_count;
mod labels;

pub use crate::resilience::breaker::CircuitState;
pub use labels::*;

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
    /// `wxpush_wechat_connections_closed_total{reason}`: connections to WeChat that ended,
    /// by reason: `idle` (closed by the pool's pacing once the load no longer needed them) or
    /// `other`.
    pub wechat_connections_closed: Family<ConnCloseLabels, Counter>,
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

/// Labels of `wxpush_queue_consumer_pending`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The consumer (pod host name and process id).
    pub consumer: String,
}

/// Registers `metric` under `name` and hands it back.
/// The name and help text of each metric (before the `wxpush_` prefix and a counter's
/// `_total`), in the order [`Metrics::new`] registers them.
const HELP: &[(&str, &str)] = &[
    ("messages_accepted", "Messages answered 202"),
    ("messages_completed", "Messages that reached a final state"),
    ("send_attempts", "HTTP attempts to WeChat by result"),
    (
        "send_duration_seconds",
        "Duration of one HTTP attempt to WeChat",
    ),
    (
        "delivery_latency_seconds",
        "Time from accepted to delivered",
    ),
    ("inflight_requests", "HTTP requests to WeChat in flight"),
    ("queue_messages", "Messages in the queue by state"),
    ("token_requests", "access_token fetches by API and result"),
    (
        "circuit_state",
        "Circuit breaker: 0 closed, 1 half-open, 2 open",
    ),
    (
        "circuit_opens",
        "Times the circuit breaker opened (from closed or half-open)",
    ),
    (
        "send_timeouts",
        "HTTP attempts to WeChat that timed out, by phase",
    ),
    (
        "channel_paused",
        "1 while the channel is paused (configuration fault or quota)",
    ),
    (
        "queue_disk_bytes",
        "Bytes the embedded store's disk budget counts (held plus outcome reserve), as last measured",
    ),
    (
        "queue_disk_budget_bytes",
        "The embedded store's disk budget; accepts get 429 at it",
    ),
    (
        "channel_hold_errcode",
        "WeChat's errcode that holds sending now (0 when none)",
    ),
    (
        "events",
        "WeChat server-URL callbacks (delivery events) by event and result",
    ),
    (
        "callbacks",
        "Outcome callbacks to producers by result (ok, retry, gave_up)",
    ),
    (
        "queue_group_lag",
        "Redis stream entries not yet read by the consumer group",
    ),
    (
        "queue_consumer_pending",
        "Redis stream entries leased by each consumer (pod)",
    ),
    ("redis_up", "1 while Redis answers (Redis queue only)"),
    (
        "concurrency_limit",
        "HTTP requests to WeChat allowed in flight now (adaptive limit or maxInFlight)",
    ),
    (
        "hedged_sends",
        "Hedged second attempts under the same client_msg_id",
    ),
    (
        "wechat_connections_opened",
        "Connections to WeChat set up (TCP connected, TLS done)",
    ),
    (
        "wechat_connections_closed",
        "Connections to WeChat that ended, by reason (idle: closed by the pool's pacing)",
    ),
    (
        "wechat_requests_peak",
        "Most HTTP requests to WeChat under way at once since the start",
    ),
    (
        "queue_oldest_ready_age_seconds",
        "How long the oldest ready message has been due (0 when none is ready)",
    ),
    (
        "daily_quota",
        "The configured rateLimit.dailyQuota (0 = unlimited)",
    ),
    (
        "template_refusals",
        "Messages refused at accept by the template check, by rule",
    ),
    (
        "template_list_fetches",
        "Calls to WeChat's template-list APIs by this pod, by list and result",
    ),
    (
        "templates",
        "Templates in the cached list (-1 while never read)",
    ),
    (
        "invalid_recipients",
        "Recipients of delivered messages the provider could not reach, by kind",
    ),
];

/// Registers metrics under their names and the help texts of [`HELP`].
struct Registrar<'a> {
    registry: &'a mut Registry,
}

impl Registrar<'_> {
    /// Registers `metric` as `name`.
    fn with<M: prometheus_client::registry::Metric + Clone>(&mut self, name: &str, metric: M) -> M {
        let help = HELP
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, h)| *h);
        self.registry.register(name, help, metric.clone());
        metric
    }

    /// Registers a new metric of the field's type as `name`.
    fn add<M: prometheus_client::registry::Metric + Clone + Default>(&mut self, name: &str) -> M {
        self.with(name, M::default())
    }
}

impl Metrics {
    /// Counts the recipients a delivery answer called invalid.
    pub fn invalid_recipients(&self, provider: ProviderLabel, invalid: &InvalidRecipients) {
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
        // 1 ms .. ~33 s
        let send_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        // 5 ms .. ~45 min
        let delivery_latency = Histogram::new(exponential_buckets(0.005, 2.0, 20));
        #[cfg(feature = "alloc-count")]
        alloc_count::register(&mut registry);
        let mut r = Registrar {
            registry: &mut registry,
        };
        // Fields are evaluated in the order written, the order of HELP; `registry` comes last,
        // once `r` is done with it.
        Self {
            accepted: r.add("messages_accepted"),
            completed: r.add("messages_completed"),
            send_attempts: r.add("send_attempts"),
            send_duration: r.with("send_duration_seconds", send_duration),
            delivery_latency: r.with("delivery_latency_seconds", delivery_latency),
            inflight: r.add("inflight_requests"),
            queue_messages: r.add("queue_messages"),
            token_requests: r.add("token_requests"),
            circuit_state: r.add("circuit_state"),
            circuit_opens: r.add("circuit_opens"),
            send_timeouts: r.add("send_timeouts"),
            channel_paused: r.add("channel_paused"),
            queue_disk_bytes: r.add("queue_disk_bytes"),
            queue_disk_budget_bytes: r.add("queue_disk_budget_bytes"),
            channel_hold_errcode: r.add("channel_hold_errcode"),
            events: r.add("events"),
            callbacks: r.add("callbacks"),
            queue_group_lag: r.add("queue_group_lag"),
            queue_consumer_pending: r.add("queue_consumer_pending"),
            redis_up: r.add("redis_up"),
            concurrency_limit: r.add("concurrency_limit"),
            hedged_sends: r.add("hedged_sends"),
            wechat_connections_opened: r.add("wechat_connections_opened"),
            wechat_connections_closed: r.add("wechat_connections_closed"),
            wechat_requests_peak: r.add("wechat_requests_peak"),
            oldest_ready_age: r.add("queue_oldest_ready_age_seconds"),
            daily_quota: r.add("daily_quota"),
            template_refusals: r.add("template_refusals"),
            template_fetches: r.add("template_list_fetches"),
            templates: r.add("templates"),
            invalid_recipients: r.add("invalid_recipients"),
            registry,
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

    /// Every family a scrape shows has the help text HELP gives its name: a name misspelt in
    /// `Metrics::new` would be registered without one.
    #[test]
    fn every_metric_has_its_help_text() {
        let m = Metrics::new("t");
        m.accepted.inc();
        m.complete(Outcome::delivered);
        let text = m.encode();
        let mut seen = 0;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# HELP wxpush_") else {
                continue;
            };
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let expected = HELP
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, h)| format!("{h}."));
            assert_eq!(Some(help.to_string()), expected, "{line}");
            seen += 1;
        }
        assert!(seen > 10, "{text}");
    }

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
