//! `wecomApp`: an application of a WeCom (企业微信) corp. It sends `message/send` to users,
//! parties and tags, with a token per (corp, application secret) from `gettoken`.
//!
//! - The body is the message as accepted ([`super::wecom_message`]) with the channel's
//!   `agentid` and, unless the producer turned it off, WeCom's duplicate check over
//!   [`DUPLICATE_CHECK_INTERVAL`]: a retry after an unknown outcome (a timeout, a crash
//!   mid-send) of the same content to the same recipients is answered with the first send's
//!   msgid and not shown twice.
//! - errcode 0 can still name recipients WeCom could not reach (`invaliduser`,
//!   `invalidparty`, `invalidtag`, `unlicenseduser`): the message is delivered to the others,
//!   and those are kept in its receipt; none is retried.
//! - A sent message can be recalled within [`RECALL_WINDOW`] by its msgid.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::wecom_errcode::classify_send;
use super::wecom_message::{Audience, parse};
use crate::message::{FieldError, Json, Message};
use crate::policy::Retry;
use crate::send::{
    Answer, InvalidRecipients, Outgoing, Receipt, SendAction, SendError, SendRequest, Sender,
    TemplateLists, TokenScope,
};

/// The duplicate-check interval sent with every message: WeCom's default, 30 minutes. It is
/// also the provider's de-duplication window ([`Sender::dedup_window`]): a message whose
/// outcome is unknown is re-sent only within 30 minutes of its first attempt (and `maxAge`
/// usually ends its retries well before).
pub const DUPLICATE_CHECK_INTERVAL: Duration = Duration::from_secs(1800);

/// How long after its send WeCom lets a message be recalled.
pub const RECALL_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The WeCom application provider.
#[derive(Debug, Clone, Copy)]
pub struct WeComApp {
    agent_id: u32,
}

impl WeComApp {
    /// The provider of the application `agent_id`.
    pub fn new(agent_id: u32) -> Self {
        Self { agent_id }
    }
}

fn body_error(message: &str) -> SendError {
    SendError {
        kind: crate::send::ErrorKind::Provider,
        errcode: None,
        message: format!("the stored WeCom message cannot be sent: {message}"),
    }
}

impl Sender for WeComApp {
    fn name(&self) -> &'static str {
        "wecomApp"
    }

    fn token_scope(&self) -> TokenScope {
        TokenScope::WeComApp
    }

    fn build(&self, request: SendRequest<'_>) -> Result<Outgoing, SendError> {
        let mut body: Map<String, Value> = serde_json::from_str(request.body.get())
            .map_err(|_| body_error("not a JSON object"))?;
        if !body.contains_key("msgtype") {
            return Err(body_error(
                "no msgtype (a WeChat message on a WeCom channel?)",
            ));
        }
        body.insert("agentid".into(), Value::from(self.agent_id));
        if body.get("enable_duplicate_check") == Some(&Value::from(1)) {
            body.insert(
                "duplicate_check_interval".into(),
                Value::from(DUPLICATE_CHECK_INTERVAL.as_secs()),
            );
        }
        let body = serde_json::to_vec(&body).map_err(|_| body_error("cannot encode"))?;
        Ok(Outgoing {
            path: "/cgi-bin/message/send",
            body: Bytes::from(body),
        })
    }

    fn classify(&self, errcode: i64, _now: SystemTime, retry: &Retry) -> SendAction {
        classify_send(errcode, retry)
    }

    fn read_answer(&self, body: &[u8]) -> Option<Answer> {
        read_answer(body)
    }

    /// Checked on a `Value` tree: WeCom's bodies have many shapes, checked by
    /// `wecom_message` on `serde_json`'s tree (the WeChat providers check the light one).
    fn accept(&self, value: &Json<'_>) -> Result<Message, FieldError> {
        parse(&value.to_value(), Audience::App)
    }

    fn template_lists(&self) -> TemplateLists {
        TemplateLists::None
    }

    /// WeCom's duplicate check, when the message has it on (the default); zero when the
    /// producer turned it off.
    fn dedup_window(&self, message: &Message) -> Duration {
        #[derive(Deserialize)]
        struct Check {
            #[serde(default)]
            enable_duplicate_check: u8,
        }
        let on = message
            .wecom
            .as_ref()
            .and_then(|body| serde_json::from_str::<Check>(body.as_str()).ok())
            .is_some_and(|c| c.enable_duplicate_check == 1);
        if on {
            DUPLICATE_CHECK_INTERVAL
        } else {
            Duration::ZERO
        }
    }

    fn recall(&self, provider_msgid: &str) -> Option<(Outgoing, Duration)> {
        let body = serde_json::json!({ "msgid": provider_msgid }).to_string();
        Some((
            Outgoing {
                path: "/cgi-bin/message/recall",
                body: Bytes::from(body),
            },
            RECALL_WINDOW,
        ))
    }
}

/// WeCom's answer to `message/send` (and, with only the first two fields, to every other
/// call).
#[derive(Debug, Deserialize)]
struct WeComAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    msgid: Option<Value>,
    #[serde(default)]
    invaliduser: Option<String>,
    #[serde(default)]
    invalidparty: Option<String>,
    #[serde(default)]
    invalidtag: Option<String>,
    #[serde(default)]
    unlicenseduser: Option<String>,
}

fn ids(list: Option<String>) -> Vec<String> {
    list.unwrap_or_default()
        .split('|')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads a WeCom answer: errcode, errmsg, the text msgid and the recipients not reached.
pub(super) fn read_answer(body: &[u8]) -> Option<Answer> {
    let a: WeComAnswer = serde_json::from_slice(body).ok()?;
    let provider_msgid = match a.msgid {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let invalid = InvalidRecipients {
        users: ids(a.invaliduser),
        parties: ids(a.invalidparty),
        tags: ids(a.invalidtag),
        unlicensed_users: ids(a.unlicenseduser),
    };
    let receipt = (provider_msgid.is_some() || !invalid.is_empty()).then_some(Receipt {
        provider_msgid,
        invalid,
        recalled_at: None,
    });
    Some(Answer {
        errcode: a.errcode,
        errmsg: a.errmsg,
        msgid: None,
        receipt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::MessageKind;
    use serde_json::json;

    #[test]
    fn each_attempt_carries_the_agentid_and_the_duplicate_check() {
        let m = parse(
            &json!({"touser": "a", "msgtype": "text", "text": {"content": "hi"}}),
            Audience::App,
        )
        .expect("valid");
        let body = m.send_body("");
        let out = WeComApp::new(1_000_002)
            .build(SendRequest {
                kind: MessageKind::Template,
                body: &body,
            })
            .expect("builds");
        assert_eq!(out.path, "/cgi-bin/message/send");
        let sent: Value = serde_json::from_slice(&out.body).expect("json");
        assert_eq!(sent["agentid"], 1_000_002);
        assert_eq!(sent["enable_duplicate_check"], 1);
        assert_eq!(sent["duplicate_check_interval"], 1800);
        let app = WeComApp::new(1_000_002);
        assert_eq!(
            app.dedup_window(&m).as_secs(),
            sent["duplicate_check_interval"].as_u64().expect("a number"),
            "the window the dispatcher keeps to is the interval WeCom is told"
        );
        let unchecked = parse(
            &json!({"touser": "a", "msgtype": "text", "text": {"content": "hi"},
                    "duplicate_check": false}),
            Audience::App,
        )
        .expect("valid");
        assert_eq!(app.dedup_window(&unchecked), Duration::ZERO);
        assert_eq!(sent["text"]["content"], "hi");
    }

    #[test]
    fn a_wechat_message_is_not_sent_as_a_wecom_one() {
        let body = serde_json::value::to_raw_value(&json!({"touser": "o", "template_id": "T"}))
            .expect("json");
        let e = WeComApp::new(1)
            .build(SendRequest {
                kind: MessageKind::Template,
                body: &body,
            })
            .expect_err("no msgtype");
        assert_eq!(e.kind, crate::send::ErrorKind::Provider);
    }

    #[test]
    fn a_partial_failure_is_read_from_an_errcode_0_answer() {
        let a = read_answer(
            br#"{"errcode":0,"errmsg":"ok","invaliduser":"gone-1|gone-2","invalidparty":"",
                 "invalidtag":"9001","unlicenseduser":"unlicensed-x","msgid":"MSG1"}"#,
        )
        .expect("reads");
        assert_eq!(a.errcode, 0);
        let r = a.receipt.expect("receipt");
        assert_eq!(r.provider_msgid.as_deref(), Some("MSG1"));
        assert_eq!(r.invalid.users, ["gone-1", "gone-2"]);
        assert!(r.invalid.parties.is_empty());
        assert_eq!(r.invalid.tags, ["9001"]);
        assert_eq!(r.invalid.unlicensed_users, ["unlicensed-x"]);
        let plain = read_answer(br#"{"errcode":81013,"errmsg":"x"}"#).expect("reads");
        assert_eq!((plain.errcode, plain.receipt), (81013, None));
        assert!(read_answer(b"<html>").is_none());
    }

    #[test]
    fn a_recall_names_the_msgid_within_24_hours() {
        let (out, window) = WeComApp::new(1).recall("MSG1").expect("recalls");
        assert_eq!(out.path, "/cgi-bin/message/recall");
        assert_eq!(window, Duration::from_secs(86_400));
        let sent: Value = serde_json::from_slice(&out.body).expect("json");
        assert_eq!(sent, json!({"msgid": "MSG1"}));
    }
}
