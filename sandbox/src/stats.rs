//! What the sandbox saw, for tests and benchmarks: counters behind atomics (no lock on the hot
//! path) and per-openid counts in a sharded map. [`Stats::snapshot`] gives the `GET /__stats`
//! JSON.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::wecom::stats::{WeComSnapshot, WeComStats};
use wxcrypto::errcode::WxCode;

const SHARDS: usize = 16;

/// The API endpoints, for per-endpoint request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /cgi-bin/token`.
    ClassicToken,
    /// `POST /cgi-bin/stable_token`.
    StableToken,
    /// `POST /cgi-bin/message/template/send`.
    TemplateSend,
    /// `POST /cgi-bin/message/subscribe/send`.
    SubscribeSend,
    /// `POST /cgi-bin/message/subscribe/bizsend`.
    Bizsend,
    /// `GET /cgi-bin/template/get_all_private_template`.
    TemplateList,
    /// `GET /wxaapi/newtmpl/gettemplate`.
    SubscribeTemplateList,
    /// WeCom `GET /cgi-bin/gettoken`.
    WeComToken,
    /// WeCom `POST /cgi-bin/message/send`.
    WeComSend,
    /// WeCom `POST /cgi-bin/message/recall`.
    WeComRecall,
    /// WeCom `POST /cgi-bin/webhook/send`.
    WeComWebhook,
    /// Any other path.
    Other,
}

impl Endpoint {
    const ALL: [Endpoint; 12] = [
        Endpoint::ClassicToken,
        Endpoint::StableToken,
        Endpoint::TemplateSend,
        Endpoint::SubscribeSend,
        Endpoint::Bizsend,
        Endpoint::TemplateList,
        Endpoint::SubscribeTemplateList,
        Endpoint::WeComToken,
        Endpoint::WeComSend,
        Endpoint::WeComRecall,
        Endpoint::WeComWebhook,
        Endpoint::Other,
    ];

    /// The stats key.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ClassicToken => "token",
            Endpoint::StableToken => "stable_token",
            Endpoint::TemplateSend => "template_send",
            Endpoint::SubscribeSend => "subscribe_send",
            Endpoint::Bizsend => "bizsend",
            Endpoint::TemplateList => "template_list",
            Endpoint::SubscribeTemplateList => "subscribe_template_list",
            Endpoint::WeComToken => "wecom_gettoken",
            Endpoint::WeComSend => "wecom_message_send",
            Endpoint::WeComRecall => "wecom_message_recall",
            Endpoint::WeComWebhook => "wecom_webhook_send",
            Endpoint::Other => "other",
        }
    }

    /// The endpoint serving `path`.
    pub fn from_path(path: &str) -> Endpoint {
        match path {
            "/cgi-bin/token" => Endpoint::ClassicToken,
            "/cgi-bin/stable_token" => Endpoint::StableToken,
            "/cgi-bin/message/template/send" => Endpoint::TemplateSend,
            "/cgi-bin/message/subscribe/send" => Endpoint::SubscribeSend,
            "/cgi-bin/message/subscribe/bizsend" => Endpoint::Bizsend,
            "/cgi-bin/template/get_all_private_template" => Endpoint::TemplateList,
            "/wxaapi/newtmpl/gettemplate" => Endpoint::SubscribeTemplateList,
            "/cgi-bin/gettoken" => Endpoint::WeComToken,
            "/cgi-bin/message/send" => Endpoint::WeComSend,
            "/cgi-bin/message/recall" => Endpoint::WeComRecall,
            "/cgi-bin/webhook/send" => Endpoint::WeComWebhook,
            _ => Endpoint::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether this is a WeCom route.
    pub fn is_wecom(self) -> bool {
        matches!(
            self,
            Endpoint::WeComToken
                | Endpoint::WeComSend
                | Endpoint::WeComRecall
                | Endpoint::WeComWebhook
        )
    }
}

/// Kinds of injected faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Latency added.
    Latency,
    /// Answer held back.
    Hang,
    /// HTTP 5xx.
    Http5xx,
    /// Connection reset.
    Reset,
    /// Outage windows started.
    Outage,
    /// Connections closed because an outage started.
    OutageConnectionsClosed,
    /// Forced token invalidations.
    TokenInvalidation,
}

const FAULT_NAMES: [&str; 7] = [
    "latency",
    "hang",
    "http_5xx",
    "reset",
    "outages",
    "outage_connections_closed",
    "token_invalidations",
];

/// Per-openid counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenidCounts {
    /// Send requests naming this openid that reached validation.
    pub requests: u64,
    /// Unique deliveries (errcode 0, not a duplicate).
    pub delivered: u64,
    /// Duplicate sends suppressed.
    pub duplicates: u64,
    /// Sends answered with a non-zero errcode.
    pub errors: u64,
    #[serde(skip)]
    minute: u64,
    #[serde(skip)]
    in_minute: u64,
}

/// Event delivery counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Events generated (one per unique template delivery, with a server URL configured).
    pub generated: u64,
    /// HTTP attempts, retries included.
    pub attempts: u64,
    /// Events the server acknowledged with a 2xx.
    pub acknowledged: u64,
    /// Events given up after every retry.
    pub failed: u64,
    /// Generated events by `Status`.
    pub by_status: BTreeMap<String, u64>,
}

/// Token endpoint calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    /// `GET /cgi-bin/token` calls.
    pub classic: u64,
    /// `POST /cgi-bin/stable_token` calls.
    pub stable: u64,
    /// Of those, with `force_refresh: true`.
    pub stable_force_refresh: u64,
    /// New tokens issued (both WeChat APIs; WeCom's are in `wecom.apps`).
    pub issued: u64,
    /// Most token requests (both WeChat APIs and WeCom's `gettoken`, together) that were in
    /// flight at the sandbox at one time, from arrival to answer, injected latency included:
    /// how a "single refresh in flight" claim is checked from outside.
    #[serde(default)]
    pub max_in_flight: u64,
}

/// The `GET /__stats` document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// API requests received, WeChat and WeCom routes (admin routes excluded), faulted ones
    /// included.
    pub requests_total: u64,
    /// The same by endpoint (`token`, `stable_token`, `template_send`, ...).
    pub requests: BTreeMap<String, u64>,
    /// Unique (`touser`, `client_msg_id`) sends answered errcode 0; sends without
    /// `client_msg_id` always count.
    pub delivered_unique: u64,
    /// Sends answered with the first send's msgid because they repeated a (`touser`,
    /// `client_msg_id`) inside the de-duplication window.
    pub duplicates_suppressed: u64,
    /// Answers by errcode (as a string key, `"0"` included), sends and token calls alike.
    pub errcodes: BTreeMap<String, u64>,
    /// Token calls by API.
    pub token_calls: TokenCounts,
    /// Injected faults by kind; injected errcodes as `errcode:<n>`.
    pub faults: BTreeMap<String, u64>,
    /// Delivery events.
    pub events: EventCounts,
    /// Per-openid counts.
    pub per_openid: BTreeMap<String, OpenidCounts>,
    /// TCP connections that carried at least one WeChat or WeCom API request (admin routes
    /// excluded): how a client's connection reuse is checked from outside.
    #[serde(default)]
    pub api_connections: u64,
    /// Most send requests (template, subscribe, bizsend, and WeCom's message and webhook sends)
    /// in flight at the sandbox at one time, from arrival to answer, injected latency included.
    #[serde(default)]
    pub sends_max_in_flight: u64,
    /// Send requests answered (or dropped) since the last reset.
    #[serde(default)]
    pub sends_answered: u64,
    /// The sum of those sends' times at the sandbox, from arrival at the API layer to the
    /// answer, in microseconds: divided by `sends_answered`, the latency the sandbox itself
    /// gives; its growth over an interval, divided by the interval, the mean number of sends in
    /// flight at the sandbox (Little's law), which benchmarks set against the client's own view.
    #[serde(default)]
    pub sends_busy_us: u64,
    /// The sum of the latencies injected into those sends (`latency`, `jitter`, overload), in
    /// microseconds: `sends_busy_us` less this is the time the sandbox's own work and its
    /// timers' lateness added.
    #[serde(default)]
    pub sends_injected_us: u64,
    /// WeCom's counters (its errcodes are counted here, not in `errcodes`).
    #[serde(default)]
    pub wecom: WeComSnapshot,
}

/// A request in flight; dropping it ends it.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A send request in flight; dropping it ends it and adds its time to `sends_busy_us`.
#[derive(Debug)]
pub struct SendInFlight<'a> {
    stats: &'a Stats,
    started: Instant,
}

impl Drop for SendInFlight<'_> {
    fn drop(&mut self) {
        let stats = self.stats;
        stats.sends_in_flight.fetch_sub(1, Ordering::AcqRel);
        add(&stats.sends_answered);
        stats
            .sends_busy_us
            .fetch_add(micros(self.started.elapsed()), Ordering::Relaxed);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Live counters.
#[derive(Debug)]
pub struct Stats {
    requests: [AtomicU64; 12],
    delivered: AtomicU64,
    duplicates: AtomicU64,
    errcodes: [AtomicU64; WxCode::ALL.len()],
    injected: [AtomicU64; WxCode::ALL.len()],
    faults: [AtomicU64; 7],
    classic: AtomicU64,
    stable: AtomicU64,
    stable_force: AtomicU64,
    issued: AtomicU64,
    token_in_flight: AtomicU64,
    token_max_in_flight: AtomicU64,
    sends_in_flight: AtomicU64,
    sends_max_in_flight: AtomicU64,
    sends_answered: AtomicU64,
    sends_busy_us: AtomicU64,
    sends_injected_us: AtomicU64,
    api_connections: AtomicU64,
    ev_generated: AtomicU64,
    ev_attempts: AtomicU64,
    ev_acked: AtomicU64,
    ev_failed: AtomicU64,
    ev_status: [AtomicU64; 3],
    openids: [Mutex<HashMap<Box<str>, OpenidCounts>>; SHARDS],
    hasher: RandomState,
    /// WeCom's counters (shared with the WeCom callback, which counts its events there).
    pub(crate) wecom: Arc<WeComStats>,
}

/// The three `Status` values of TEMPLATESENDJOBFINISH.
pub const EVENT_STATUSES: [&str; 3] = ["success", "failed:user block", "failed: system failed"];

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            errcodes: std::array::from_fn(|_| AtomicU64::new(0)),
            injected: std::array::from_fn(|_| AtomicU64::new(0)),
            faults: Default::default(),
            classic: AtomicU64::new(0),
            stable: AtomicU64::new(0),
            stable_force: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            token_in_flight: AtomicU64::new(0),
            token_max_in_flight: AtomicU64::new(0),
            sends_in_flight: AtomicU64::new(0),
            sends_max_in_flight: AtomicU64::new(0),
            sends_answered: AtomicU64::new(0),
            sends_busy_us: AtomicU64::new(0),
            sends_injected_us: AtomicU64::new(0),
            api_connections: AtomicU64::new(0),
            ev_generated: AtomicU64::new(0),
            ev_attempts: AtomicU64::new(0),
            ev_acked: AtomicU64::new(0),
            ev_failed: AtomicU64::new(0),
            ev_status: Default::default(),
            openids: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            wecom: Arc::new(WeComStats::default()),
        }
    }
}

/// What happened to one send, for the per-openid counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// Unique delivery.
    Delivered,
    /// Duplicate suppressed.
    Duplicate,
    /// Non-zero errcode.
    Error,
}

impl Stats {
    /// Counts a request to an API endpoint.
    pub fn request(&self, endpoint: Endpoint) {
        add(&self.requests[endpoint.index()]);
    }

    /// Marks a token request as in flight until the returned guard is dropped, and keeps the
    /// highest number seen at once.
    pub fn token_in_flight(&self) -> InFlight<'_> {
        let now = self.token_in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.token_max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(&self.token_in_flight)
    }

    /// The same for a send request; the guard also adds the send's time at the sandbox to
    /// `sends_busy_us` when dropped.
    pub fn send_in_flight(&self) -> SendInFlight<'_> {
        let now = self.sends_in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.sends_max_in_flight.fetch_max(now, Ordering::AcqRel);
        SendInFlight {
            stats: self,
            started: Instant::now(),
        }
    }

    /// Adds the latency injected into one send.
    pub fn send_latency_injected(&self, latency: Duration) {
        self.sends_injected_us
            .fetch_add(micros(latency), Ordering::Relaxed);
    }

    /// Counts a connection's first WeChat API request.
    pub fn api_connection(&self) {
        add(&self.api_connections);
    }

    /// Counts an answer's errcode.
    pub fn errcode(&self, code: WxCode) {
        add(&self.errcodes[code.index()]);
    }

    /// Counts an injected errcode.
    pub fn injected(&self, code: WxCode) {
        add(&self.injected[code.index()]);
    }

    /// Counts an injected fault.
    pub fn fault(&self, kind: FaultKind) {
        add(&self.faults[kind as usize]);
    }

    /// Counts several injected faults at once.
    pub fn faults(&self, kind: FaultKind, n: u64) {
        self.faults[kind as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a token call; `issued` when it created a token.
    pub fn token_call(&self, stable: bool, force: bool, issued: bool) {
        add(if stable { &self.stable } else { &self.classic });
        if force {
            add(&self.stable_force);
        }
        if issued {
            add(&self.issued);
        }
    }

    /// Counts one unique delivery.
    pub fn delivered(&self) {
        add(&self.delivered);
    }

    /// Counts one suppressed duplicate.
    pub fn duplicate(&self) {
        add(&self.duplicates);
    }

    /// Counts a generated event with its status index in [`EVENT_STATUSES`].
    pub fn event_generated(&self, status: usize) {
        add(&self.ev_generated);
        if let Some(c) = self.ev_status.get(status) {
            add(c);
        }
    }

    /// Counts an event HTTP attempt.
    pub fn event_attempt(&self) {
        add(&self.ev_attempts);
    }

    /// Counts an event's final outcome.
    pub fn event_done(&self, acknowledged: bool) {
        add(if acknowledged {
            &self.ev_acked
        } else {
            &self.ev_failed
        });
    }

    fn shard(&self, openid: &str) -> &Mutex<HashMap<Box<str>, OpenidCounts>> {
        let i = (self.hasher.hash_one(openid) as usize) % SHARDS;
        &self.openids[i]
    }

    /// Counts a send request to `openid` in `minute`; returns how many sends that openid got in
    /// that minute, this one included (for the 43117 throttle).
    pub fn openid_request(&self, openid: &str, minute: u64) -> u64 {
        let mut shard = self.shard(openid).lock();
        let counts = match shard.get_mut(openid) {
            Some(c) => c,
            None => shard.entry(Box::from(openid)).or_default(),
        };
        counts.requests += 1;
        if counts.minute != minute {
            counts.minute = minute;
            counts.in_minute = 0;
        }
        counts.in_minute += 1;
        counts.in_minute
    }

    /// Records a send's result for `openid`.
    pub fn openid_result(&self, openid: &str, result: SendResult) {
        let mut shard = self.shard(openid).lock();
        if let Some(c) = shard.get_mut(openid) {
            match result {
                SendResult::Delivered => c.delivered += 1,
                SendResult::Duplicate => c.duplicates += 1,
                SendResult::Error => c.errors += 1,
            }
        }
    }

    /// Unique deliveries so far.
    pub fn delivered_unique(&self) -> u64 {
        read(&self.delivered)
    }

    /// The JSON-ready view of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.snapshot_with(true)
    }

    /// The same, with `per_openid` left empty unless `per_openid` (a poll of the counters
    /// during a benchmark: with tens of thousands of openids, the map is megabytes of JSON).
    pub fn snapshot_with(&self, per_openid: bool) -> StatsSnapshot {
        let mut requests = BTreeMap::new();
        for e in Endpoint::ALL {
            requests.insert(e.name().to_string(), read(&self.requests[e.index()]));
        }
        let nonzero = |arr: &[AtomicU64], prefix: &str| {
            WxCode::ALL
                .iter()
                .zip(arr)
                .filter(|(_, c)| read(c) > 0)
                .map(|(code, c)| (format!("{prefix}{}", code.code()), read(c)))
                .collect::<BTreeMap<_, _>>()
        };
        let mut faults: BTreeMap<String, u64> = FAULT_NAMES
            .iter()
            .zip(&self.faults)
            .map(|(n, c)| (n.to_string(), read(c)))
            .collect();
        faults.extend(nonzero(&self.injected, "errcode:"));
        let mut openids = BTreeMap::new();
        for shard in self.openids.iter().filter(|_| per_openid) {
            for (k, v) in shard.lock().iter() {
                openids.insert(k.to_string(), *v);
            }
        }
        StatsSnapshot {
            requests_total: requests.values().sum(),
            requests,
            delivered_unique: read(&self.delivered),
            duplicates_suppressed: read(&self.duplicates),
            errcodes: nonzero(&self.errcodes, ""),
            token_calls: TokenCounts {
                classic: read(&self.classic),
                stable: read(&self.stable),
                stable_force_refresh: read(&self.stable_force),
                issued: read(&self.issued),
                max_in_flight: read(&self.token_max_in_flight),
            },
            faults,
            events: EventCounts {
                generated: read(&self.ev_generated),
                attempts: read(&self.ev_attempts),
                acknowledged: read(&self.ev_acked),
                failed: read(&self.ev_failed),
                by_status: EVENT_STATUSES
                    .iter()
                    .zip(&self.ev_status)
                    .map(|(s, c)| (s.to_string(), read(c)))
                    .collect(),
            },
            per_openid: openids,
            api_connections: read(&self.api_connections),
            sends_max_in_flight: read(&self.sends_max_in_flight),
            sends_answered: read(&self.sends_answered),
            sends_busy_us: read(&self.sends_busy_us),
            sends_injected_us: read(&self.sends_injected_us),
            wecom: self.wecom.snapshot(),
        }
    }

    /// Zeroes every counter and forgets every openid.
    pub fn reset(&self) {
        let all = self
            .requests
            .iter()
            .chain(&self.errcodes)
            .chain(&self.injected)
            .chain(&self.faults)
            .chain(&self.ev_status)
            .chain([
                &self.delivered,
                &self.duplicates,
                &self.classic,
                &self.stable,
                &self.stable_force,
                &self.issued,
                &self.token_max_in_flight,
                &self.sends_max_in_flight,
                &self.sends_answered,
                &self.sends_busy_us,
                &self.sends_injected_us,
                &self.api_connections,
                &self.ev_generated,
                &self.ev_attempts,
                &self.ev_acked,
                &self.ev_failed,
            ]);
        for c in all {
            c.store(0, Ordering::Relaxed);
        }
        for shard in &self.openids {
            shard.lock().clear();
        }
        self.wecom.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_counts_and_reset_clears_them() {
        let s = Stats::default();
        s.request(Endpoint::TemplateSend);
        s.request(Endpoint::StableToken);
        s.errcode(WxCode::Ok);
        s.injected(WxCode::SystemBusy);
        s.fault(FaultKind::Reset);
        assert_eq!(s.openid_request("o1", 7), 1);
        assert_eq!(s.openid_request("o1", 7), 2);
        assert_eq!(s.openid_request("o1", 8), 1);
        s.openid_result("o1", SendResult::Delivered);
        s.delivered();
        let snap = s.snapshot();
        assert_eq!(snap.requests_total, 2);
        assert_eq!(snap.requests["template_send"], 1);
        assert_eq!(snap.errcodes["0"], 1);
        assert_eq!(snap.faults["errcode:-1"], 1);
        assert_eq!(snap.faults["reset"], 1);
        assert_eq!(snap.per_openid["o1"].requests, 3);
        assert_eq!(snap.per_openid["o1"].delivered, 1);
        let brief = s.snapshot_with(false);
        assert!(brief.per_openid.is_empty());
        assert_eq!(brief.requests_total, 2);
        s.reset();
        assert_eq!(s.snapshot().requests_total, 0);
        assert!(s.snapshot().per_openid.is_empty());
    }

    #[test]
    fn sends_in_flight_add_their_time_and_injected_latency() {
        let s = Stats::default();
        let outer = Instant::now();
        let first = s.send_in_flight();
        let second = s.send_in_flight();
        s.send_latency_injected(Duration::from_millis(25));
        s.send_latency_injected(Duration::from_micros(1500));
        assert_eq!(s.snapshot().sends_max_in_flight, 2);
        drop(first);
        assert_eq!(s.snapshot().sends_answered, 1);
        drop(second);
        let bound = micros(outer.elapsed());
        let snap = s.snapshot();
        assert_eq!(snap.sends_answered, 2);
        assert_eq!(snap.sends_injected_us, 26_500);
        // Each guard's time lies within the outer one's.
        assert!(
            snap.sends_busy_us <= 2 * bound,
            "{} > 2 × {bound}",
            snap.sends_busy_us
        );
        assert_eq!(s.sends_in_flight.load(Ordering::Relaxed), 0);
        s.reset();
        let snap = s.snapshot();
        assert_eq!(
            (
                snap.sends_answered,
                snap.sends_busy_us,
                snap.sends_injected_us
            ),
            (0, 0, 0)
        );
    }
}
