//! `webhook/send`: group robots. A robot is its webhook key (no access_token). Unknown key →
//! 93000; body not a JSON object → 40058; `msgtype` text, markdown or news, checked like
//! application messages (see `content`); more than `robot_limit` messages (WeCom: 20) in any
//! `robot_window` (60 s) sliding window per key → 45009.
//!
//! Only delivered messages fill the window, so a sender that backs off recovers as soon as the
//! oldest message leaves it. Every request with a known key counts for the key's peak: the most
//! requests seen in one window, refused ones included, so a test can check that a sender never
//! tried more than the limit.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use wxcrypto::errcode::wecom::WeComCode;

use super::content::{self, Api, Refusal};

#[derive(Debug, Default)]
struct KeyWindow {
    delivered: VecDeque<Instant>,
    requests: VecDeque<Instant>,
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| now >= *t + window) {
        q.pop_front();
    }
}

/// What one robot request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotOutcome {
    /// The answer: delivered, or why not.
    pub result: Result<(), Refusal>,
    /// Requests of this key in the window ending now, this one included.
    pub requests_in_window: u64,
}

/// Every robot key's sliding windows.
#[derive(Debug)]
pub struct Robots {
    windows: Mutex<HashMap<String, KeyWindow>>,
    limit: u32,
    window: Duration,
}

impl Robots {
    /// No messages yet; `limit` messages per `window` per key.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            limit,
            window,
        }
    }

    /// Handles one request of a known key.
    pub fn send(&self, key: &str, body: &[u8], now: Instant) -> RobotOutcome {
        let mut windows = self.windows.lock();
        let w = windows.entry(key.to_string()).or_default();
        prune(&mut w.requests, now, self.window);
        prune(&mut w.delivered, now, self.window);
        w.requests.push_back(now);
        let requests_in_window = w.requests.len() as u64;
        let result = check(body).and_then(|()| {
            if w.delivered.len() >= self.limit as usize {
                Err(Refusal::new(
                    WeComCode::FrequencyLimit,
                    format!(
                        "more than {} messages in {} per robot",
                        self.limit,
                        wxpush_api::policy::HumanDuration(self.window)
                    ),
                ))
            } else {
                w.delivered.push_back(now);
                Ok(())
            }
        });
        RobotOutcome {
            result,
            requests_in_window,
        }
    }

    /// Forgets every window.
    pub fn reset(&self) {
        self.windows.lock().clear();
    }
}

fn check(body: &[u8]) -> Result<(), Refusal> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(Refusal::new(
            WeComCode::InvalidParameter,
            "the body is not a JSON object",
        ));
    };
    let Some(Value::String(msgtype)) = body.get("msgtype") else {
        return Err(Refusal::new(WeComCode::InvalidMessageType, "msgtype"));
    };
    content::check(Api::Robot, msgtype, body.get(msgtype.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = br#"{"msgtype":"text","text":{"content":"hi"}}"#;

    #[test]
    fn sliding_window_per_key() {
        let r = Robots::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in [0, 10, 20] {
            assert_eq!(r.send("k", TEXT, at(s)).result, Ok(()));
        }
        let refused = r.send("k", TEXT, at(30));
        assert_eq!(
            refused.result.map_err(|e| e.code),
            Err(WeComCode::FrequencyLimit)
        );
        assert_eq!(refused.requests_in_window, 4);
        assert_eq!(r.send("other", TEXT, at(30)).result, Ok(()), "per key");
        // At 60 s the message of 0 s leaves the window: one more fits, not two.
        assert_eq!(r.send("k", TEXT, at(60)).result, Ok(()));
        assert!(r.send("k", TEXT, at(61)).result.is_err());
        assert_eq!(r.send("k", TEXT, at(70)).result, Ok(()));
    }

    #[test]
    fn bodies_are_checked() {
        let r = Robots::new(20, Duration::from_secs(60));
        let now = Instant::now();
        let code = |body: &[u8]| r.send("k", body, now).result.map_err(|e| e.code);
        assert_eq!(code(b"nope"), Err(WeComCode::InvalidParameter));
        assert_eq!(
            code(br#"{"msgtype":"image"}"#),
            Err(WeComCode::InvalidMessageType)
        );
        assert_eq!(
            code(br#"{"msgtype":"text","text":{}}"#),
            Err(WeComCode::EmptyContent)
        );
        assert_eq!(
            code(br#"{"msgtype":"news","news":{"articles":[{"title":"t","url":"u"}]}}"#),
            Ok(())
        );
    }
}
