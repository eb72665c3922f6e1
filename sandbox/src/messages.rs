//! Message sends: body parsing and validation, quotas, the per-openid throttle, and
//! de-duplication on (`touser`, `client_msg_id`).
//!
//! Check order (the first failure answers): body is JSON of the right shape (47001) → required
//! fields (47003) → `template_id` known (40037) → `touser` known (40003) → follows the account
//! (43004; template and bizsend) → accepts subscriptions (43101; subscribe and bizsend) → data
//! values (47003; subscribe and bizsend) → the template catalogue's keywords and rules (47003)
//! and one-time consents (43101), when one is configured → daily quota (45009) → minute quota (45011) →
//! de-duplication → per-openid throttle (43117) → delivered with a new `msgid`.
//! The access_token is checked before all of this, by the caller.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use super::config::SandboxConfig;
use super::quota::{WindowCounter, beijing_day, minute};
use super::stats::{SendResult, Stats};
use super::templates::{Delivery, TemplateDef, TemplateKind, Templates, check};
use super::validate::{key_type, subscribe_value_ok};
use wxcrypto::errcode::WxCode;

const SHARDS: usize = 16;

/// The three send APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// Official Account template message.
    Template,
    /// Mini Program subscribe message.
    Subscribe,
    /// Official Account subscription notice.
    Bizsend,
}

impl SendKind {
    fn index(self) -> usize {
        self as usize
    }

    /// `template`, `subscribe` or `bizsend`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Template => "template",
            Self::Subscribe => "subscribe",
            Self::Bizsend => "bizsend",
        }
    }
}

#[derive(Debug, Deserialize)]
struct DataItem<'a> {
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct SendBody<'a> {
    #[serde(borrow, default)]
    touser: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    template_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    miniprogram_state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<HashMap<Cow<'a, str>, DataItem<'a>>>,
}

/// A send that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The `msgid` answered.
    pub msgid: u64,
    /// False when this repeated an earlier send inside the de-duplication window.
    pub unique: bool,
    /// The recipient (for the delivery event).
    pub touser: String,
    /// Whether the send carried a `client_msg_id`.
    pub had_client_msg_id: bool,
}

impl Accepted {
    /// The answer to a repeated send: the first send's `msgid`, delivered to no one again.
    fn duplicate(msgid: u64, touser: &str) -> Self {
        Self {
            msgid,
            unique: false,
            touser: touser.to_string(),
            had_client_msg_id: true,
        }
    }
}

#[derive(Debug)]
struct DedupShard {
    entries: HashMap<String, (u64, Instant)>,
    last_prune: Instant,
}

/// Everything the send APIs keep between calls.
#[derive(Debug)]
pub struct Messages {
    next_msgid: AtomicU64,
    daily: [WindowCounter; 3],
    per_minute: [WindowCounter; 3],
    dedup: [Mutex<DedupShard>; SHARDS],
    hasher: RandomState,
    window: Duration,
}

fn empty(s: Option<&Cow<'_, str>>) -> bool {
    s.is_none_or(|s| s.trim().is_empty())
}

/// The arguments every send needs: `touser`, `template_id`, `data` (except template
/// messages), and a known `miniprogram_state` (subscribe messages).
fn check_arguments(kind: SendKind, body: &SendBody<'_>, touser: &str) -> Result<(), WxCode> {
    let needs_data = kind != SendKind::Template;
    if touser.is_empty()
        || empty(body.template_id.as_ref())
        || (needs_data && body.data.as_ref().is_none_or(HashMap::is_empty))
    {
        return Err(WxCode::ArgumentInvalid);
    }
    if kind == SendKind::Subscribe
        && body
            .miniprogram_state
            .as_deref()
            .is_some_and(|s| !matches!(s, "developer" | "trial" | "formal"))
    {
        return Err(WxCode::ArgumentInvalid);
    }
    Ok(())
}

/// The template the send names: refused when unknown to `--templates` or to the catalogue;
/// `None` without a catalogue.
fn template_def<'a>(
    cfg: &SandboxConfig,
    templates: &'a Templates,
    kind: SendKind,
    template_id: &str,
) -> Result<Option<&'a TemplateDef>, WxCode> {
    if cfg
        .templates
        .as_ref()
        .is_some_and(|t| !t.contains(template_id))
    {
        return Err(WxCode::InvalidTemplateId);
    }
    let list = if kind == SendKind::Template {
        TemplateKind::Template
    } else {
        TemplateKind::Subscribe
    };
    match templates.get(list, template_id) {
        None => Ok(None),
        Some(None) => Err(WxCode::InvalidTemplateId),
        Some(Some(def)) => Ok(Some(def)),
    }
}

/// The recipient: a known openid that follows the account (template and bizsend) and has
/// not refused subscription messages (subscribe and bizsend).
fn check_recipient(cfg: &SandboxConfig, kind: SendKind, touser: &str) -> Result<(), WxCode> {
    if !cfg.knows_user(touser) {
        return Err(WxCode::InvalidOpenid);
    }
    if kind != SendKind::Subscribe && cfg.non_followers.contains(touser) {
        return Err(WxCode::RequireSubscribe);
    }
    if kind != SendKind::Template && cfg.refused_subscribers.contains(touser) {
        return Err(WxCode::UserRefused);
    }
    Ok(())
}

/// The data's values by their keys' types, then against the template when the catalogue has
/// it (with a consent for a one-time subscribe template). Returns the data as delivered.
fn checked_data(
    templates: &Templates,
    kind: SendKind,
    body: &SendBody<'_>,
    def: Option<&TemplateDef>,
    touser: &str,
    template_id: &str,
) -> Result<Option<BTreeMap<String, String>>, WxCode> {
    if kind != SendKind::Template
        && let Some(data) = &body.data
    {
        for (key, item) in data {
            let value = item.value.as_deref().unwrap_or_default();
            if !subscribe_value_ok(key_type(key), value) {
                return Err(WxCode::ArgumentInvalid);
            }
        }
    }
    let Some(def) = def else {
        return Ok(None);
    };
    let values: HashMap<&str, &str> = body
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_ref(), v.value.as_deref().unwrap_or_default()))
        .collect();
    let data = check(def, &values)?;
    if kind != SendKind::Template && def.one_time && templates.consents(touser, template_id) == 0 {
        return Err(WxCode::UserRefused);
    }
    Ok(Some(data))
}

/// The first `msgid`: WeChat's are large integers; start somewhere that looks like one.
const FIRST_MSGID: u64 = 2_000_000_001;

impl Messages {
    /// Empty state for the config's de-duplication window.
    pub fn new(cfg: &SandboxConfig) -> Self {
        let now = Instant::now();
        Self {
            next_msgid: AtomicU64::new(FIRST_MSGID),
            daily: Default::default(),
            per_minute: Default::default(),
            dedup: std::array::from_fn(|_| {
                Mutex::new(DedupShard {
                    entries: HashMap::new(),
                    last_prune: now,
                })
            }),
            hasher: RandomState::new(),
            window: cfg.dedup_window,
        }
    }

    /// Forgets quotas and de-duplication entries (msgids keep increasing).
    pub fn reset(&self) {
        for c in self.daily.iter().chain(&self.per_minute) {
            c.reset();
        }
        for shard in &self.dedup {
            shard.lock().entries.clear();
        }
    }

    /// Handles one send body; `unix` is the wall clock in seconds, `now` the monotonic one.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        cfg: &SandboxConfig,
        stats: &Stats,
        templates: &Templates,
        kind: SendKind,
        body: &[u8],
        now: Instant,
        unix: u64,
    ) -> Result<Accepted, WxCode> {
        let parsed: SendBody<'_> = serde_json::from_slice(body).map_err(|_| WxCode::DataFormat)?;
        let touser = parsed.touser.as_deref().map(str::trim).unwrap_or_default();
        let result =
            self.check_and_deliver(cfg, stats, templates, kind, &parsed, touser, now, unix);
        if !touser.is_empty() {
            let r = match &result {
                Ok(a) if a.unique => SendResult::Delivered,
                Ok(_) => SendResult::Duplicate,
                Err(_) => SendResult::Error,
            };
            stats.openid_result(touser, r);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn check_and_deliver(
        &self,
        cfg: &SandboxConfig,
        stats: &Stats,
        templates: &Templates,
        kind: SendKind,
        body: &SendBody<'_>,
        touser: &str,
        now: Instant,
        unix: u64,
    ) -> Result<Accepted, WxCode> {
        let in_minute = if touser.is_empty() {
            0
        } else {
            stats.openid_request(touser, minute(unix))
        };
        check_arguments(kind, body, touser)?;
        let template_id = body.template_id.as_deref().unwrap_or_default();
        let def = template_def(cfg, templates, kind, template_id)?;
        check_recipient(cfg, kind, touser)?;
        let delivered_data = checked_data(templates, kind, body, def, touser, template_id)?;
        if !self.daily[kind.index()].hit(beijing_day(unix), cfg.daily_quota) {
            return Err(WxCode::DailyQuota);
        }
        if !self.per_minute[kind.index()].hit(minute(unix), cfg.minute_quota) {
            return Err(WxCode::MinuteQuota);
        }
        let client_msg_id = body.client_msg_id.as_deref().filter(|c| !c.is_empty());
        let dedup_key = client_msg_id.map(|c| {
            let mut key = String::with_capacity(touser.len() + c.len() + 1);
            key.push_str(touser);
            key.push('\u{1}');
            key.push_str(c);
            key
        });
        if let Some(key) = &dedup_key
            && let Some(msgid) = self.seen(key, now)
        {
            stats.duplicate();
            return Ok(Accepted::duplicate(msgid, touser));
        }
        if cfg
            .openid_minute_limit
            .is_some_and(|limit| in_minute > limit)
        {
            return Err(WxCode::TooFrequentOpenid);
        }
        if let Some(def) = def
            && kind != SendKind::Template
            && def.one_time
            && !templates.spend_consent(touser, template_id)
        {
            // Another send spent the last consent meanwhile.
            return Err(WxCode::UserRefused);
        }
        let msgid = self.next_msgid.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = dedup_key {
            // Two concurrent first sends of one key: the first to record wins, the other
            // becomes its duplicate, as WeChat sends only one.
            if let Some(first) = self.record(key, msgid, now) {
                stats.duplicate();
                return Ok(Accepted::duplicate(first, touser));
            }
        }
        stats.delivered();
        if let Some(data) = delivered_data {
            templates.record(Delivery {
                api: kind.name().to_string(),
                touser: touser.to_string(),
                template_id: template_id.to_string(),
                data,
            });
        }
        Ok(Accepted {
            msgid,
            unique: true,
            touser: touser.to_string(),
            had_client_msg_id: client_msg_id.is_some(),
        })
    }

    fn shard(&self, key: &str) -> &Mutex<DedupShard> {
        &self.dedup[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn seen(&self, key: &str, now: Instant) -> Option<u64> {
        let shard = self.shard(key).lock();
        shard
            .entries
            .get(key)
            .filter(|(_, first)| now < *first + self.window)
            .map(|(msgid, _)| *msgid)
    }

    /// Records a delivery; returns the earlier msgid if another send of the key won the race.
    fn record(&self, key: String, msgid: u64, now: Instant) -> Option<u64> {
        let mut shard = self.shard(&key).lock();
        if now >= shard.last_prune + self.window {
            let window = self.window;
            shard.entries.retain(|_, (_, first)| now < *first + window);
            shard.last_prune = now;
        }
        match shard.entries.get(&key) {
            Some((first, at)) if now < *at + self.window => Some(*first),
            _ => {
                shard.entries.insert(key, (msgid, now));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(
        m: &Messages,
        cfg: &SandboxConfig,
        kind: SendKind,
        body: &str,
        now: Instant,
    ) -> Result<Accepted, WxCode> {
        m.send(
            cfg,
            &Stats::default(),
            &Templates::default(),
            kind,
            body.as_bytes(),
            now,
            1_800_000_000,
        )
    }

    #[test]
    fn validation_codes_in_order() {
        let cfg = SandboxConfig {
            users: Some(["u1".to_string()].into()),
            non_followers: ["nf".to_string()].into(),
            refused_subscribers: ["rs".to_string()].into(),
            templates: Some(["T".to_string()].into()),
            ..SandboxConfig::default()
        };
        let m = Messages::new(&cfg);
        let now = Instant::now();
        let t = SendKind::Template;
        let s = SendKind::Subscribe;
        assert_eq!(send(&m, &cfg, t, "{not json", now), Err(WxCode::DataFormat));
        assert_eq!(
            send(&m, &cfg, t, r#"{"touser":5}"#, now),
            Err(WxCode::DataFormat)
        );
        assert_eq!(
            send(&m, &cfg, t, r#"{"touser":"u1"}"#, now),
            Err(WxCode::ArgumentInvalid)
        );
        let body = |to: &str, tpl: &str| {
            format!(
                r#"{{"touser":"{to}","template_id":"{tpl}","data":{{"thing1":{{"value":"ok"}}}}}}"#
            )
        };
        assert_eq!(
            send(&m, &cfg, t, &body("u1", "X"), now),
            Err(WxCode::InvalidTemplateId)
        );
        assert_eq!(
            send(&m, &cfg, t, &body("zz", "T"), now),
            Err(WxCode::InvalidOpenid)
        );
        assert_eq!(
            send(&m, &cfg, t, &body("nf", "T"), now),
            Err(WxCode::RequireSubscribe)
        );
        assert_eq!(
            send(&m, &cfg, s, &body("rs", "T"), now),
            Err(WxCode::UserRefused)
        );
        assert!(send(&m, &cfg, t, &body("rs", "T"), now).is_ok());
        assert!(send(&m, &cfg, s, &body("nf", "T"), now).is_ok());
        let long = r#"{"touser":"u1","template_id":"T","data":{"thing1":{"value":"一二三四五六七八九十一二三四五六七八九十一"}}}"#;
        assert_eq!(send(&m, &cfg, s, long, now), Err(WxCode::ArgumentInvalid));
        assert!(
            send(&m, &cfg, t, long, now).is_ok(),
            "template values are trimmed, not refused"
        );
        let no_data = r#"{"touser":"u1","template_id":"T"}"#;
        assert_eq!(
            send(&m, &cfg, s, no_data, now),
            Err(WxCode::ArgumentInvalid)
        );
    }

    #[test]
    fn dedup_within_window_only() {
        let cfg = SandboxConfig {
            dedup_window: Duration::from_secs(10),
            ..SandboxConfig::default()
        };
        let m = Messages::new(&cfg);
        let now = Instant::now();
        let body = r#"{"touser":"u","template_id":"T","client_msg_id":"c1"}"#;
        let a = send(&m, &cfg, SendKind::Template, body, now).expect("first");
        let b = send(
            &m,
            &cfg,
            SendKind::Template,
            body,
            now + Duration::from_secs(9),
        )
        .expect("dup");
        assert!(a.unique && !b.unique);
        assert_eq!(a.msgid, b.msgid);
        let c = send(
            &m,
            &cfg,
            SendKind::Template,
            body,
            now + Duration::from_secs(10),
        )
        .expect("after");
        assert!(c.unique);
        assert_ne!(c.msgid, a.msgid);
        let plain = r#"{"touser":"u","template_id":"T"}"#;
        let x = send(&m, &cfg, SendKind::Template, plain, now).expect("x");
        let y = send(&m, &cfg, SendKind::Template, plain, now).expect("y");
        assert!(x.unique && y.unique && x.msgid != y.msgid);
    }

    #[test]
    fn quotas_and_openid_throttle() {
        let cfg = SandboxConfig {
            daily_quota: Some(3),
            openid_minute_limit: Some(1),
            ..SandboxConfig::default()
        };
        let m = Messages::new(&cfg);
        let stats = Stats::default();
        let now = Instant::now();
        let go = |to: &str| {
            let body = format!(r#"{{"touser":"{to}","template_id":"T"}}"#);
            m.send(
                &cfg,
                &stats,
                &Templates::default(),
                SendKind::Template,
                body.as_bytes(),
                now,
                1_800_000_000,
            )
        };
        assert!(go("a").is_ok());
        assert_eq!(go("a"), Err(WxCode::TooFrequentOpenid));
        assert!(go("b").is_ok());
        assert_eq!(go("c"), Err(WxCode::DailyQuota));
    }
}
