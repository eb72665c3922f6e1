//! `message/send`: an application message, checked strictly and delivered to the directory.
//!
//! Check order (the first failure answers): the body is a JSON object (40058) → `agentid`
//! present (41011) and the token's app (40056) → `msgtype` known (40008) → recipient fields are
//! strings (40058), not all empty (82001), at most 1000 users (40032), 100 parties (82002) and
//! 100 tags (82003) → the content object (see `content`) → `enable_duplicate_check` is 0 or 1
//! and `duplicate_check_interval` 1..=14400 s (40058) → the directory: when no recipient is
//! valid, 81013 → duplicate check → delivered with a new msgid. The access_token is checked
//! before all of this, by the caller.
//!
//! Duplicate check: with `enable_duplicate_check: 1`, a send whose app, type, content and
//! recipient fields equal those of an earlier checked send less than `duplicate_check_interval`
//! seconds ago (default 1800) is not delivered again; it is answered errcode 0 with the first
//! send's msgid and lists. Past the interval the same message is a new message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value};
use wxcrypto::errcode::wecom::WeComCode;

use super::content::{self, Api, Refusal};
use super::directory::{Directory, Resolved, split_ids};
use super::recall::{SentLog, SentMessage};

/// WeCom's default duplicate-check interval.
pub const DEFAULT_INTERVAL_SECS: u64 = 1800;
/// WeCom's longest duplicate-check interval (4 h).
pub const MAX_INTERVAL_SECS: u64 = 14_400;
const MAX_USERS: usize = 1000;
const MAX_PARTIES: usize = 100;
const MAX_TAGS: usize = 100;
/// Prune the duplicate-check table when it grows past this many entries.
const PRUNE_AT: usize = 10_000;

/// The recipients WeCom could not reach, `|`-joined as it answers them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unreached {
    /// `invaliduser`.
    pub invaliduser: String,
    /// `invalidparty`.
    pub invalidparty: String,
    /// `invalidtag`.
    pub invalidtag: String,
    /// `unlicenseduser`.
    pub unlicenseduser: String,
}

impl Unreached {
    fn from(r: &Resolved) -> Self {
        Self {
            invaliduser: r.invalid_users.join("|"),
            invalidparty: r.invalid_parties.join("|"),
            invalidtag: r.invalid_tags.join("|"),
            unlicenseduser: r.unlicensed_users.join("|"),
        }
    }

    /// Puts the four fields into a JSON answer.
    pub fn write(&self, answer: &mut Map<String, Value>) {
        for (k, v) in [
            ("invaliduser", &self.invaliduser),
            ("invalidparty", &self.invalidparty),
            ("invalidtag", &self.invalidtag),
            ("unlicenseduser", &self.unlicenseduser),
        ] {
            answer.insert(k.to_string(), Value::String(v.clone()));
        }
    }
}

/// A send answered errcode 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The msgid (the first send's for a duplicate).
    pub msgid: String,
    /// Who was not reached.
    pub unreached: Unreached,
    /// Interactive template cards get a `response_code` (to update the card later).
    pub response_code: Option<String>,
    /// False when this repeated a checked send inside its interval.
    pub unique: bool,
    /// The recipients reached (empty for a duplicate).
    pub delivered_to: Vec<String>,
    /// Counts of unreached recipients: users, parties, tags, unlicensed users.
    pub unreached_counts: [u64; 4],
}

/// A refused send: the code and hint, plus the lists for 81013.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The errcode and hint.
    pub refusal: Refusal,
    /// For 81013: every recipient, all unreached.
    pub unreached: Option<Box<Unreached>>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Self {
            refusal,
            unreached: None,
        }
    }
}

fn refuse(code: WeComCode, hint: impl Into<String>) -> Refused {
    Refusal::new(code, hint).into()
}

/// Application messages: the duplicate-check table and the msgid counter.
#[derive(Debug)]
pub struct AppMessages {
    dedup: Mutex<HashMap<String, (Instant, Sent)>>,
    next: AtomicU64,
}

impl Default for AppMessages {
    fn default() -> Self {
        Self {
            dedup: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

fn random_text(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A recipient field: `""` when absent.
fn recipients<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a str, Refused> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(refuse(
            WeComCode::InvalidParameter,
            format!("{key} must be a string of ids separated by |"),
        )),
    }
}

/// A 0/1 flag field.
fn flag(body: &Map<String, Value>, key: &str) -> Result<bool, Refused> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => match v.as_i64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(refuse(
                WeComCode::InvalidParameter,
                format!("{key} must be 0 or 1"),
            )),
        },
    }
}

fn agentid(body: &Map<String, Value>) -> Result<u64, Refused> {
    match body.get("agentid") {
        None | Some(Value::Null) => Err(refuse(WeComCode::AgentIdMissing, "agentid")),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| refuse(WeComCode::InvalidAgentId, "agentid must be a number")),
        Some(Value::String(s)) if s.is_empty() => Err(refuse(WeComCode::AgentIdMissing, "agentid")),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| refuse(WeComCode::InvalidAgentId, "agentid must be a number")),
        Some(_) => Err(refuse(
            WeComCode::InvalidAgentId,
            "agentid must be a number",
        )),
    }
}

fn interval(body: &Map<String, Value>) -> Result<Duration, Refused> {
    let secs = match body.get("duplicate_check_interval") {
        None | Some(Value::Null) => DEFAULT_INTERVAL_SECS,
        Some(v) => v
            .as_u64()
            .filter(|s| (1..=MAX_INTERVAL_SECS).contains(s))
            .ok_or_else(|| {
                refuse(
                    WeComCode::InvalidParameter,
                    "duplicate_check_interval must be 1 to 14400 seconds",
                )
            })?,
    };
    Ok(Duration::from_secs(secs))
}

/// The body as a JSON object, sent by the app of the access_token.
fn app_body(token_agentid: u64, body: &[u8]) -> Result<(Map<String, Value>, u64), Refused> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(refuse(
            WeComCode::InvalidParameter,
            "the body is not a JSON object",
        ));
    };
    let agentid = agentid(&body)?;
    if agentid != token_agentid {
        return Err(refuse(
            WeComCode::InvalidAgentId,
            format!("agentid {agentid} is not the app of this access_token"),
        ));
    }
    Ok((body, agentid))
}

/// Refuses empty recipients and lists longer than WeCom takes.
fn check_lists(users: &[String], parties: &[String], tags: &[String]) -> Result<(), Refused> {
    if users.is_empty() && parties.is_empty() && tags.is_empty() {
        return Err(refuse(WeComCode::RecipientsEmpty, "touser, toparty, totag"));
    }
    for (len, max, code, name) in [
        (
            users.len(),
            MAX_USERS,
            WeComCode::InvalidUserListLength,
            "touser",
        ),
        (
            parties.len(),
            MAX_PARTIES,
            WeComCode::InvalidPartyListLength,
            "toparty",
        ),
        (
            tags.len(),
            MAX_TAGS,
            WeComCode::InvalidTagListLength,
            "totag",
        ),
    ] {
        if len > max {
            return Err(refuse(code, format!("{name} has more than {max} ids")));
        }
    }
    Ok(())
}

/// What a delivered message is answered: a new msgid, the unreached recipients, and a
/// response_code for an interactive template card.
fn delivered(seq: u64, msgtype: &str, content: &Value, resolved: &Resolved) -> Sent {
    let interactive = msgtype == "template_card"
        && content["card_type"]
            .as_str()
            .is_some_and(|t| t.ends_with("_interaction"));
    let mut delivered_to = resolved.users.clone();
    delivered_to.extend(resolved.parties.iter().map(|p| format!("party:{p}")));
    delivered_to.extend(resolved.tags.iter().map(|t| format!("tag:{t}")));
    Sent {
        msgid: format!("{}{seq:08x}", random_text(24)),
        unreached: Unreached::from(resolved),
        response_code: interactive.then(|| random_text(43)),
        unique: true,
        delivered_to,
        unreached_counts: [
            resolved.invalid_users.len(),
            resolved.invalid_parties.len(),
            resolved.invalid_tags.len(),
            resolved.unlicensed_users.len(),
        ]
        .map(|n| n as u64),
    }
}

impl AppMessages {
    /// Handles one `message/send` body from the app `token_agentid`.
    pub fn send(
        &self,
        token_agentid: u64,
        body: &[u8],
        directory: &Directory,
        log: &SentLog,
        now: Instant,
        unix: u64,
    ) -> Result<Sent, Refused> {
        let (body, agentid) = app_body(token_agentid, body)?;
        let msgtype = match body.get("msgtype") {
            Some(Value::String(t)) => t.as_str(),
            _ => return Err(refuse(WeComCode::InvalidMessageType, "msgtype")),
        };
        let fields = [
            recipients(&body, "touser")?,
            recipients(&body, "toparty")?,
            recipients(&body, "totag")?,
        ];
        let [users, parties, tags] = fields.map(split_ids);
        check_lists(&users, &parties, &tags)?;
        content::check(Api::App, msgtype, body.get(msgtype))?;
        let check = flag(&body, "enable_duplicate_check")?;
        let interval = interval(&body)?;
        let resolved = directory.resolve(&users, &parties, &tags);
        if !resolved.reaches_anyone() {
            return Err(Refused {
                refusal: Refusal::new(WeComCode::AllRecipientsInvalid, "no valid recipient"),
                unreached: Some(Box::new(Unreached::from(&resolved))),
            });
        }
        let content = body.get(msgtype).cloned().unwrap_or(Value::Null);
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let sent = delivered(seq, msgtype, &content, &resolved);
        if check {
            let key = format!(
                "{agentid}\u{1}{msgtype}\u{1}{}\u{1}{}\u{1}{}\u{1}{content}",
                fields[0], fields[1], fields[2]
            );
            if let Some(first) = self.duplicate(key, &sent, now, interval) {
                return Ok(first);
            }
        }
        log.record(
            SentMessage::new(
                sent.msgid.clone(),
                agentid,
                msgtype.to_string(),
                fields.map(str::to_string),
                sent.delivered_to.clone(),
                content,
                now,
                unix,
            ),
            now,
        );
        Ok(sent)
    }

    /// The answer to an earlier send with the same `key` less than `interval` ago, delivered
    /// to no one again; otherwise `sent` is remembered under `key` and `None` returned.
    fn duplicate(
        &self,
        key: String,
        sent: &Sent,
        now: Instant,
        interval: Duration,
    ) -> Option<Sent> {
        let mut dedup = self.dedup.lock();
        if let Some((first_at, first)) = dedup.get(&key)
            && now < *first_at + interval
        {
            return Some(Sent {
                unique: false,
                delivered_to: Vec::new(),
                unreached_counts: [0; 4],
                ..first.clone()
            });
        }
        if dedup.len() >= PRUNE_AT {
            let max = Duration::from_secs(MAX_INTERVAL_SECS);
            dedup.retain(|_, (at, _)| now < *at + max);
        }
        dedup.insert(key, (now, sent.clone()));
        None
    }

    /// Forgets the duplicate-check table (msgids keep increasing).
    pub fn reset(&self) {
        self.dedup.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Fixture {
        m: AppMessages,
        d: Directory,
        log: SentLog,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                m: AppMessages::default(),
                d: Directory::default(),
                log: SentLog::new(Duration::from_secs(86_400)),
            }
        }

        fn send(&self, body: &Value, now: Instant) -> Result<Sent, Refused> {
            self.m.send(
                1000002,
                body.to_string().as_bytes(),
                &self.d,
                &self.log,
                now,
                1,
            )
        }

        fn code(&self, body: &Value) -> WeComCode {
            match self.send(body, Instant::now()) {
                Ok(_) => WeComCode::Ok,
                Err(r) => r.refusal.code,
            }
        }
    }

    fn text(to: &str) -> Value {
        json!({"touser": to, "msgtype": "text", "agentid": 1000002, "text": {"content": "hi"}})
    }

    #[test]
    fn checks_in_order() {
        use WeComCode::*;
        let f = Fixture::new();
        assert_eq!(
            f.m.send(1000002, b"{not json", &f.d, &f.log, Instant::now(), 1)
                .map_err(|r| r.refusal.code),
            Err(InvalidParameter)
        );
        let mut b = text("u1");
        assert_eq!(f.code(&b), Ok);
        b["agentid"] = json!("1000002");
        assert_eq!(f.code(&b), Ok, "a numeric string is an agentid too");
        b["agentid"] = json!(5);
        assert_eq!(f.code(&b), InvalidAgentId);
        b.as_object_mut().map(|m| m.remove("agentid"));
        assert_eq!(f.code(&b), AgentIdMissing);
        let mut b = text("u1");
        b["msgtype"] = json!("voice");
        assert_eq!(f.code(&b), InvalidMessageType);
        assert_eq!(f.code(&text(" | ")), RecipientsEmpty);
        let many = (0..1001)
            .map(|i| format!("u{i}"))
            .collect::<Vec<_>>()
            .join("|");
        assert_eq!(f.code(&text(&many)), InvalidUserListLength);
        let mut b = text("u1");
        b["toparty"] = json!(
            (0..101)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("|")
        );
        assert_eq!(f.code(&b), InvalidPartyListLength);
        let mut b = text("u1");
        b["touser"] = json!(["u1"]);
        assert_eq!(f.code(&b), InvalidParameter);
        let mut b = text("u1");
        b["text"] = json!({});
        assert_eq!(f.code(&b), EmptyContent);
        let mut b = text("u1");
        b["enable_duplicate_check"] = json!(2);
        assert_eq!(f.code(&b), InvalidParameter);
        let mut b = text("u1");
        b["duplicate_check_interval"] = json!(14_401);
        assert_eq!(f.code(&b), InvalidParameter);
    }

    #[test]
    fn partial_failures_and_81013() {
        let f = Fixture::new();
        let mut b = text("u1|gone-a|unlicensed-b");
        b["toparty"] = json!("1|9000");
        b["totag"] = json!("9001");
        let sent = f.send(&b, Instant::now()).expect("a partial success");
        assert_eq!(sent.unreached.invaliduser, "gone-a");
        assert_eq!(sent.unreached.unlicenseduser, "unlicensed-b");
        assert_eq!(sent.unreached.invalidparty, "9000");
        assert_eq!(sent.unreached.invalidtag, "9001");
        assert_eq!(sent.delivered_to, ["u1", "party:1"]);
        assert_eq!(sent.unreached_counts, [1, 1, 1, 1]);
        let refused = f
            .send(&text("gone-a|gone-b"), Instant::now())
            .expect_err("nobody reachable");
        assert_eq!(refused.refusal.code, WeComCode::AllRecipientsInvalid);
        assert_eq!(
            refused.unreached.map(|u| u.invaliduser).as_deref(),
            Some("gone-a|gone-b")
        );
        assert_eq!(f.log.list().len(), 1, "81013 sends nothing");
    }

    #[test]
    fn duplicate_check_inside_the_interval_only() {
        let f = Fixture::new();
        let t0 = Instant::now();
        let mut b = text("u1|gone-x");
        b["enable_duplicate_check"] = json!(1);
        b["duplicate_check_interval"] = json!(10);
        let first = f.send(&b, t0).expect("first");
        let again = f.send(&b, t0 + Duration::from_secs(9)).expect("duplicate");
        assert!(first.unique && !again.unique);
        assert_eq!(again.msgid, first.msgid);
        assert_eq!(again.unreached, first.unreached);
        let mut other = b.clone();
        other["text"]["content"] = json!("other");
        assert!(f.send(&other, t0).expect("other content").unique);
        let past = f.send(&b, t0 + Duration::from_secs(10)).expect("past");
        assert!(past.unique);
        assert_ne!(past.msgid, first.msgid);
        let plain = text("u1");
        let x = f.send(&plain, t0).expect("x");
        let y = f.send(&plain, t0).expect("y");
        assert!(
            x.unique && y.unique && x.msgid != y.msgid,
            "no check, no de-duplication"
        );
        assert_eq!(f.log.list().len(), 5);
    }
}
