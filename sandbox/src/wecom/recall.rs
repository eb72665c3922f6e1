//! The application messages sent, for `message/recall` and the admin listing.
//!
//! A message can be recalled by the app that sent it within `recall_window` (WeCom: 24 h) of
//! its send. WeCom documents no dedicated errcode for a refused recall; the sandbox answers
//! 40058 (invalid parameter) with a hint that says why: the msgid is unknown (or another app's),
//! or the window has passed. Recalling a message again inside the window answers 0 again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use wxcrypto::errcode::wecom::WeComCode;

use super::content::Refusal;

/// Keep at most this many messages; older ones past the recall window are dropped first.
const MAX_KEPT: usize = 100_000;

/// One message as sent.
#[derive(Debug, Clone, Serialize)]
pub struct SentMessage {
    /// The msgid answered.
    pub msgid: String,
    /// The app that sent it.
    pub agentid: u64,
    /// Its type.
    pub msgtype: String,
    /// `touser` as sent.
    pub touser: String,
    /// `toparty` as sent.
    pub toparty: String,
    /// `totag` as sent.
    pub totag: String,
    /// The recipients it reached (user ids, `@all` included).
    pub delivered_to: Vec<String>,
    /// The content object, as sent.
    pub content: serde_json::Value,
    /// Unix time of the send, seconds.
    pub sent_unix: u64,
    /// Whether it was recalled.
    pub recalled: bool,
    #[serde(skip)]
    seq: u64,
    #[serde(skip)]
    sent_at: Option<Instant>,
}

impl SentMessage {
    /// A message sent at `sent_at` (monotonic) and `sent_unix` (wall clock).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        msgid: String,
        agentid: u64,
        msgtype: String,
        recipients: [String; 3],
        delivered_to: Vec<String>,
        content: serde_json::Value,
        sent_at: Instant,
        sent_unix: u64,
    ) -> Self {
        let [touser, toparty, totag] = recipients;
        Self {
            msgid,
            agentid,
            msgtype,
            touser,
            toparty,
            totag,
            delivered_to,
            content,
            sent_unix,
            recalled: false,
            seq: 0,
            sent_at: Some(sent_at),
        }
    }
}

/// What a successful recall did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recalled {
    /// The message is recalled now.
    Now,
    /// It was already recalled.
    Again,
}

#[derive(Debug, Default)]
struct Inner {
    messages: HashMap<String, SentMessage>,
    next_seq: u64,
}

/// Every message sent, by msgid.
#[derive(Debug)]
pub struct SentLog {
    inner: Mutex<Inner>,
    window: Duration,
}

impl SentLog {
    /// An empty log with this recall window.
    pub fn new(window: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            window,
        }
    }

    /// Records a send.
    pub fn record(&self, mut message: SentMessage, now: Instant) {
        let mut inner = self.inner.lock();
        if inner.messages.len() >= MAX_KEPT {
            let window = self.window;
            inner
                .messages
                .retain(|_, m| m.sent_at.is_some_and(|t| now < t + window));
        }
        message.seq = inner.next_seq;
        inner.next_seq += 1;
        inner.messages.insert(message.msgid.clone(), message);
    }

    /// Recalls `msgid` for the app `agentid` at `now`.
    pub fn recall(&self, agentid: u64, msgid: &str, now: Instant) -> Result<Recalled, Refusal> {
        let mut inner = self.inner.lock();
        let Some(m) = inner
            .messages
            .get_mut(msgid)
            .filter(|m| m.agentid == agentid)
        else {
            return Err(Refusal::new(
                WeComCode::InvalidParameter,
                "msgid not found for this app",
            ));
        };
        if m.sent_at.is_none_or(|t| now >= t + self.window) {
            return Err(Refusal::new(
                WeComCode::InvalidParameter,
                "msgid is past the recall window",
            ));
        }
        if m.recalled {
            return Ok(Recalled::Again);
        }
        m.recalled = true;
        Ok(Recalled::Now)
    }

    /// Every message kept, oldest first.
    pub fn list(&self) -> Vec<SentMessage> {
        let mut all: Vec<SentMessage> = self.inner.lock().messages.values().cloned().collect();
        all.sort_by_key(|m| m.seq);
        all
    }

    /// Forgets every message.
    pub fn reset(&self) {
        self.inner.lock().messages.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, agentid: u64, at: Instant) -> SentMessage {
        SentMessage::new(
            id.to_string(),
            agentid,
            "text".to_string(),
            ["u".to_string(), String::new(), String::new()],
            vec!["u".to_string()],
            serde_json::json!({"content": "hi"}),
            at,
            1,
        )
    }

    #[test]
    fn recall_inside_the_window_only_and_by_the_sender() {
        let log = SentLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        log.record(msg("m1", 1, t0), t0);
        log.record(msg("m2", 1, t0), t0);
        let code = |r: Result<Recalled, Refusal>| r.map_err(|e| e.code);
        assert_eq!(
            code(log.recall(2, "m1", t0)),
            Err(WeComCode::InvalidParameter),
            "another app's message"
        );
        assert_eq!(
            code(log.recall(1, "nope", t0)),
            Err(WeComCode::InvalidParameter)
        );
        let inside = t0 + Duration::from_secs(9);
        assert_eq!(code(log.recall(1, "m1", inside)), Ok(Recalled::Now));
        assert_eq!(code(log.recall(1, "m1", inside)), Ok(Recalled::Again));
        let past = log
            .recall(1, "m2", t0 + Duration::from_secs(10))
            .expect_err("past the window");
        assert!(past.hint.contains("recall window"), "{}", past.hint);
        let listed = log.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].msgid, "m1");
        assert!(listed[0].recalled && !listed[1].recalled);
    }
}
