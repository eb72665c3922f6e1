//! Policy types shared, field for field, by the operator's `PushChannel` spec and the pusher's
//! config file. Each has serde defaults (documented on the field) and a JSON schema from which
//! the CRD is generated, so the two can never disagree.
//!
//! Where a policy names a secret, it is generic over how the secret is given: the CRD takes a
//! [`SecretKeyRef`] (a key in a Kubernetes Secret; values are never written into the resource),
//! the config file a [`LocalSecret`] (a file, an environment variable, or inline for local runs).

mod backoff;
pub mod disk;
mod duration;
mod fields;
mod secret;
pub mod wecom;

pub use backoff::Backoff;
pub use duration::{DURATION_PATTERN, DurationError, HumanDuration};
pub(crate) use fields::with_policy_fields;
pub use secret::{LocalSecret, SecretError, SecretKeyRef};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which product a channel sends through: WeChat (Official Account, Mini Program) or WeCom
/// (an application of a corp, a group robot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Provider {
    /// Official Account (公众号): template messages and subscription notices (`bizsend`).
    #[default]
    WechatOfficialAccount,
    /// Mini Program (小程序): subscribe messages.
    WechatMiniProgram,
    /// WeCom (企业微信) application messages: `message/send` of one app of a corp, with the
    /// credentials `corpId`, `corpSecret` and `agentId`.
    WecomApp,
    /// WeCom group robot: `webhook/send` with the robot's webhook key; 20 messages a minute.
    WecomRobot,
}

/// Timeouts of each HTTP attempt to the WeChat API. Each is enforced on its own, so an error
/// says which phase ran out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Timeouts {
    /// Establishing the TCP connection. Default `5s`.
    pub connect: HumanDuration,
    /// The TLS handshake once connected. Default `5s`.
    pub tls_handshake: HumanDuration,
    /// From the request being sent until the response headers arrive. Default `5s`.
    pub response_header: HumanDuration,
    /// The whole attempt, end to end, including reading the body. Default `10s`.
    pub request: HumanDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: HumanDuration::secs(5),
            tls_handshake: HumanDuration::secs(5),
            response_header: HumanDuration::secs(5),
            request: HumanDuration::secs(10),
        }
    }
}

/// The pooled, keep-alive HTTP client towards WeChat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Pool {
    /// Idle connections kept open per host. Unset (the default), the pool follows the load:
    /// a connection is only opened for a request that found none idle, so it holds about as
    /// many as were recently in flight at once, and a steady load opens each connection once.
    /// The most recently used idle connection is reused first, so when the limit falls the
    /// connections it no longer needs sit unused and close one by one after `idleTimeout` (see
    /// `closesPerSecond`); the ones still in use stay open.
    #[schemars(range(min = 1, max = 4096))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_idle_per_host: Option<u32>,
    /// How long a pooled connection may sit unused before it may close. The connections the
    /// load no longer needs close gradually (at most `closesPerSecond`), never below the most
    /// requests in flight at once over the last `idleTimeout`. Default `90s`.
    pub idle_timeout: HumanDuration,
    /// Idle connections closed per second at most, for the whole pool: when the load falls,
    /// the connections it no longer needs close one by one at this pace, never in a storm.
    /// Default `10`.
    #[schemars(range(min = 1, max = 10000))]
    pub closes_per_second: u32,
    /// TCP keepalive probe interval on pooled connections. Default `60s`.
    pub tcp_keepalive: HumanDuration,
}

impl Pool {
    /// Idle connections kept per host for a pusher whose ceiling is `max_in_flight`.
    pub fn idle_per_host(&self, max_in_flight: u32) -> u32 {
        self.max_idle_per_host.unwrap_or(max_in_flight).max(1)
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            max_idle_per_host: None,
            idle_timeout: HumanDuration::secs(90),
            closes_per_second: 10,
            tcp_keepalive: HumanDuration::secs(60),
        }
    }
}

/// Retries of retryable failures (timeouts, resets, 5xx, errcode -1, quotas), with
/// exponential backoff and jitter. Every attempt of one message carries the same
/// `client_msg_id`, which WeChat de-duplicates for 10 minutes: keep `maxAge` under `10m`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "duration(self.initialBackoff) <= duration(self.maxBackoff)",
    "message": "initialBackoff must not exceed maxBackoff",
    "fieldPath": ".initialBackoff",
}]))]
pub struct Retry {
    /// Attempts in all, the first included. Default `8`.
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Delay before the first retry. Default `200ms`.
    pub initial_backoff: HumanDuration,
    /// Upper bound of any one delay. Default `30s`.
    pub max_backoff: HumanDuration,
    /// Growth of the delay per attempt. Default `2.0`.
    #[schemars(range(min = 1.0, max = 10.0))]
    pub multiplier: f64,
    /// Share of each delay that is randomised (0 = none, 1 = full jitter). Default `0.5`.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter: f64,
    /// Give up (state `expired`) this long after a message's first unsettled attempt (timeout,
    /// reset, retryable errcode). Default `9m`, inside WeChat's 10-minute `client_msg_id`
    /// window so that a retry can never deliver twice. Messages never attempted (a paused
    /// channel) are kept; bound them with the message's `expires_at`.
    pub max_age: HumanDuration,
    /// Delay after WeChat's quota and per-user throttles (45011, 43117). Default `60s`.
    pub throttled_backoff: HumanDuration,
    /// What happens to a message whose first attempt started (the pusher wrote an "attempt
    /// started" record before sending) but whose outcome was never recorded (the pusher
    /// crashed), when it is found again more than WeChat's 10-minute `client_msg_id`
    /// de-duplication window after that attempt started. `park` (default): it is not re-sent;
    /// it ends in the state `unknown_outcome`, listed with the dead letters and replayable.
    /// `resend`: it is sent again (at-least-once; WeChat can no longer de-duplicate it).
    pub after_window: AfterWindow,
}

/// See [`Retry::after_window`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AfterWindow {
    /// Park it as `unknown_outcome` (at-most-once beyond the window).
    #[default]
    Park,
    /// Send it again (at-least-once).
    Resend,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: HumanDuration::millis(200),
            max_backoff: HumanDuration::secs(30),
            multiplier: 2.0,
            jitter: 0.5,
            max_age: HumanDuration::mins(9),
            throttled_backoff: HumanDuration::secs(60),
            after_window: AfterWindow::Park,
        }
    }
}

/// A circuit breaker in front of the WeChat API: when too many attempts fail, stop sending for
/// a while instead of piling timeouts on a struggling endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Whether the breaker is used at all. Default `true`.
    pub enabled: bool,
    /// Share of failed attempts in `window` that opens the breaker. Default `0.5`.
    #[schemars(range(min = 0.01, max = 1.0))]
    pub failure_ratio: f64,
    /// Attempts in `window` before the ratio is judged. Default `20`.
    #[schemars(range(min = 1, max = 100000))]
    pub minimum_requests: u32,
    /// The sliding window the ratio is computed over. Default `10s`.
    pub window: HumanDuration,
    /// How long the breaker stays open before letting probes through once it has been failing
    /// for this long (a long outage). Default `15s`.
    pub open_duration: HumanDuration,
    /// How long the breaker stays open before letting probes through during the first
    /// `openDuration` of a failure, so that a backlog leaves as soon as WeChat is back.
    /// Default `1s`.
    pub first_probe_after: HumanDuration,
    /// Probes let through while half-open; all must succeed to close. Default `3`.
    #[schemars(range(min = 1, max = 1000))]
    pub half_open_probes: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_ratio: 0.5,
            minimum_requests: 20,
            window: HumanDuration::secs(10),
            open_duration: HumanDuration::secs(15),
            first_probe_after: HumanDuration::secs(1),
            half_open_probes: 3,
        }
    }
}

/// Limits on the sending rate towards WeChat, shared by all replicas of a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained sends per second. Default `1000`.
    #[schemars(range(min = 1, max = 1000000))]
    pub per_second: u32,
    /// Sends allowed at once above the sustained rate. Default `1000`.
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: u32,
    /// Sends per day (WeChat's account quota, reset at midnight Beijing time); `0` means no
    /// limit is enforced locally. Default `100000`.
    #[schemars(range(min = 0))]
    pub daily_quota: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 1000,
            burst: 1000,
            daily_quota: 100_000,
        }
    }
}

/// How much work one pusher does at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Concurrency {
    /// HTTP requests to WeChat in flight at most, per pusher: a safety ceiling on the adaptive
    /// limit (which decides, from latency and errors, how many are in flight), or the fixed
    /// limit when `adaptive` is off. High by default because at WeChat's real latency (tens of
    /// milliseconds) a pusher's rate is about requests in flight ÷ latency. Default `1024`.
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: u32,
    /// Learn the limit from WeChat's answers: it grows while latency stays near its floor and
    /// backs off when latency or errors rise (Vegas-style), never above `maxInFlight`; requests
    /// stuck far beyond the observed latency stop counting against it. Exported as
    /// `wxpush_concurrency_limit`. Default `true`.
    pub adaptive: bool,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            adaptive: true,
        }
    }
}

/// Which access_token API a channel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TokenApi {
    /// `POST /cgi-bin/stable_token`: the same token for every caller while it is valid, so
    /// replicas never knock each other out. The default.
    #[default]
    Stable,
    /// `GET /cgi-bin/token`: every call issues a new token and the old one dies ~5 minutes
    /// later. Only for accounts that must use it; refreshes are serialised per appid.
    Classic,
}

/// access_token management.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct TokenPolicy {
    /// Which API fetches tokens. Default `stable`.
    pub api: TokenApi,
    /// Refresh this long before the token expires (at most half its lifetime). Default `4m`.
    pub refresh_before: HumanDuration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            api: TokenApi::Stable,
            refresh_before: HumanDuration::mins(4),
        }
    }
}

/// Where accepted messages wait for delivery. Exactly one kind is set; the default is
/// `embedded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.embedded) != has(self.redis)",
    "message": "set exactly one queue kind: embedded or redis",
}]))]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct QueuePolicy<S> {
    /// A durable store on the pod's own disk. One replica owns one store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedQueue>,
    /// Redis Streams with a consumer group, so several replicas share the work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisQueue<S>>,
}

impl<S> Default for QueuePolicy<S> {
    fn default() -> Self {
        Self {
            embedded: Some(EmbeddedQueue::default()),
            redis: None,
        }
    }
}

/// The chosen queue, once a [`QueuePolicy`] is known to set exactly one kind.
#[derive(Debug, Clone, Copy)]
pub enum QueueKind<'a, S> {
    /// See [`EmbeddedQueue`].
    Embedded(&'a EmbeddedQueue),
    /// See [`RedisQueue`].
    Redis(&'a RedisQueue<S>),
}

impl<S> QueuePolicy<S> {
    /// The one queue kind set, or `None` when none or both are set.
    pub fn kind(&self) -> Option<QueueKind<'_, S>> {
        match (&self.embedded, &self.redis) {
            (Some(e), None) => Some(QueueKind::Embedded(e)),
            (None, Some(r)) => Some(QueueKind::Redis(r)),
            _ => None,
        }
    }
}

/// The embedded durable queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct EmbeddedQueue {
    /// Folder of the store. Default `/var/lib/wxpush`.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Messages waiting (ready, delayed or in flight) at most; beyond it producers get 429.
    /// Default `1000000`.
    #[schemars(range(min = 1))]
    pub max_messages: u64,
    /// How long finished messages (and their status) are kept. Default `24h`.
    pub retention: HumanDuration,
    /// Size of the volume the operator claims for the store (Kubernetes quantity).
    /// Default `2Gi`. Ignored by a pusher run by hand. The operator refuses a `maxMessages`
    /// and `retention` whose messages cannot fit in its budget (docs/reliability.md).
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub volume_size: String,
    /// Storage class of that volume; the cluster's default when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The store's disk budget (Kubernetes quantity): past it, accepts get 429 `queue_full`
    /// with `Retry-After` until deliveries and the retention sweep free space. Default: 80%
    /// of the volume (the operator sets it from `volumeSize`; a pusher run by hand takes 80%
    /// of the file system holding `path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub max_bytes: Option<String>,
    /// How long the store may fail to heal (reopen the database after an I/O error, such as
    /// a full disk, and write again) before `/healthz`, the liveness probe, fails, so that
    /// Kubernetes restarts the pod. Accepts get 503 meanwhile. Default `2m`.
    pub unhealthy_after: HumanDuration,
}

impl Default for EmbeddedQueue {
    fn default() -> Self {
        Self {
            path: "/var/lib/wxpush".into(),
            max_messages: 1_000_000,
            retention: HumanDuration::secs(24 * 3600),
            volume_size: "2Gi".into(),
            max_bytes: None,
            storage_class_name: None,
            unhealthy_after: HumanDuration::mins(2),
        }
    }
}

/// The Redis Streams queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct RedisQueue<S> {
    /// The Redis URL (`redis://…` or `rediss://…`), which may hold a password: a secret.
    pub url: S,
    /// Prefix of every key and stream this channel uses. Default `wxpush`.
    #[serde(default = "default_key_prefix")]
    #[schemars(length(min = 1, max = 100))]
    pub key_prefix: String,
    /// Consumer group shared by the replicas. Default `pushers`.
    #[serde(default = "default_consumer_group")]
    #[schemars(length(min = 1, max = 100))]
    pub consumer_group: String,
    /// A message leased this long by a replica that died is claimed by another. Default `60s`.
    #[serde(default = "default_claim_idle")]
    pub claim_idle: HumanDuration,
    /// Messages waiting at most; beyond it producers get 429. Default `1000000`.
    #[serde(default = "default_max_messages")]
    #[schemars(range(min = 1))]
    pub max_messages: u64,
    /// How long finished messages (their status, dead letters, the msgid index) are kept in
    /// Redis, as the keys' TTL. Default `24h`.
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
    /// Replicas that must have an accepted message before the pusher answers 202 (Redis
    /// `WAIT`). Default `0`: Redis's own answer is enough (and with `appendfsync everysec` a
    /// Redis host failure may lose up to a second of acknowledged messages; with `always`,
    /// none). When fewer replicas answer within 2 s the producer gets 503 and retries (with an
    /// `Idempotency-Key`, without duplicates).
    #[serde(default)]
    #[schemars(range(max = 16))]
    pub min_replicas_acked: u32,
    /// Talk to a Redis Cluster (also implied when `url` names several nodes, separated by
    /// commas). Default `false`.
    #[serde(default)]
    pub cluster: bool,
}

fn default_retention() -> HumanDuration {
    HumanDuration::secs(24 * 3600)
}
fn default_key_prefix() -> String {
    "wxpush".into()
}
fn default_consumer_group() -> String {
    "pushers".into()
}
fn default_claim_idle() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_max_messages() -> u64 {
    1_000_000
}

/// Outcome callbacks: the pusher POSTs each message's final state to the producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct Callbacks<S> {
    /// Default callback URL; a message's own `callback_url` wins. No callbacks when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: Option<String>,
    /// Key that signs each callback body (HMAC-SHA256 in `X-Wxpush-Signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<S>,
    /// Timeouts of each callback request. Default as for WeChat: `5s`/`5s`/`5s`/`10s`.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retries of failed callbacks. Default: 10 attempts, `1s` to `5m`, given up after `24h`.
    #[serde(default = "default_callback_retry")]
    pub retry: Retry,
    /// Callback targets allowed although they are internal. By default a callback URL (a
    /// message's `callback_url` or `url` above) may not point at a loopback, link-local,
    /// private (RFC 1918, CGNAT, IPv6 ULA), unspecified, multicast or cloud-metadata address,
    /// nor at `localhost` or `metadata.google.internal`, whether written as an address or as
    /// a name that resolves to one (checked again on every connection, so DNS rebinding does
    /// not help). Each entry allows one exception: a host name (`hooks.internal`, exact,
    /// case-insensitive), `*.example.internal` (any name below it), an address (`10.1.2.3`,
    /// `::1`) or a CIDR block (`10.0.0.0/8`, `fd00::/8`). Default: empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allow: Vec<String>,
}

impl<S> Default for Callbacks<S> {
    fn default() -> Self {
        Self {
            url: None,
            signing_key: None,
            timeouts: Timeouts::default(),
            retry: default_callback_retry(),
            allow: Vec::new(),
        }
    }
}

fn default_callback_retry() -> Retry {
    Retry {
        max_attempts: 10,
        initial_backoff: HumanDuration::secs(1),
        max_backoff: HumanDuration::mins(5),
        max_age: HumanDuration::secs(24 * 3600),
        ..Retry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sections_take_the_documented_defaults() {
        let t: Timeouts = serde_json::from_str("{}").expect("defaults");
        assert_eq!(t, Timeouts::default());
        assert_eq!(t.request.get().as_secs(), 10);
        let r: Retry = serde_json::from_str(r#"{"maxAttempts": 3}"#).expect("partial");
        assert_eq!(r.max_attempts, 3);
        assert_eq!(r.max_age, HumanDuration::mins(9));
        let q: QueuePolicy<LocalSecret> = serde_json::from_str(r#"{"embedded": {}}"#).expect("q");
        assert!(matches!(q.kind(), Some(QueueKind::Embedded(e)) if e.path == "/var/lib/wxpush"));
    }

    #[test]
    fn unknown_fields_are_accepted_so_that_an_older_reader_copes_with_a_newer_writer() {
        // The pusher's config file is strict (`PusherConfig::from_yaml`); the types are not.
        let t = serde_json::from_str::<Timeouts>(r#"{"conect": "5s"}"#).expect("ignored");
        assert_eq!(t, Timeouts::default());
    }

    #[test]
    fn default_retry_budget_stays_inside_the_client_msg_id_window() {
        assert!(Retry::default().max_age.get() < std::time::Duration::from_secs(600));
    }

    #[test]
    fn queue_kind_needs_exactly_one() {
        let both: QueuePolicy<LocalSecret> = QueuePolicy {
            embedded: Some(EmbeddedQueue::default()),
            redis: Some(RedisQueue {
                url: LocalSecret::Inline("redis://127.0.0.1".into()),
                key_prefix: default_key_prefix(),
                consumer_group: default_consumer_group(),
                claim_idle: default_claim_idle(),
                max_messages: default_max_messages(),
                retention: default_retention(),
                min_replicas_acked: 0,
                cluster: false,
            }),
        };
        assert!(both.kind().is_none());
        let none: QueuePolicy<LocalSecret> = QueuePolicy {
            embedded: None,
            redis: None,
        };
        assert!(none.kind().is_none());
    }
}

/// What the pusher does with a message that breaks the rules of its WeChat template
/// (`templates.validation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TemplateValidation {
    /// `strict` for each template list (template messages, subscribe templates) that the
    /// account's list API answered with at least one template; `off` for a list that is empty
    /// or could not be read (an account without the list API, a sandbox without templates).
    /// The default: a channel whose templates cannot be listed keeps working as before.
    #[default]
    Auto,
    /// Refuse at accept (`400 template_rule`) every message that breaks a rule: unknown
    /// template, missing or unknown keyword, a value too long or of the wrong kind, a line
    /// break or control character; and, for one-time subscribe templates, a message without a
    /// subscription credit.
    Strict,
    /// As `strict`, but a value that is only too long, or only holds line breaks or control
    /// characters, is cut to its limit (and cleaned) instead; the message's status lists what
    /// was cut. Subscription credits are not required.
    Truncate,
    /// No checks against templates.
    Off,
}

/// The template registry: the account's templates, fetched from WeChat, against which every
/// message is checked at accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct TemplatePolicy {
    /// See [`TemplateValidation`]. Default `auto`.
    pub validation: TemplateValidation,
    /// How often the template lists are fetched again (with the Redis queue, by one pod for
    /// all). Default `10m`.
    pub refresh_interval: HumanDuration,
}

impl Default for TemplatePolicy {
    fn default() -> Self {
        Self {
            validation: TemplateValidation::Auto,
            refresh_interval: HumanDuration::mins(10),
        }
    }
}
