//! `wecomRobot`: a WeCom group robot (群机器人). It posts to `webhook/send?key=KEY`, with no
//! access_token: the webhook key is the credential, read from its Secret like a token (and
//! re-read every minute, so a rotated key is picked up).
//!
//! WeCom takes at most 20 messages a minute per robot and answers 45009 past that. The
//! provider declares that ceiling ([`Sender::rate_ceiling`]), and the engine spaces the sends
//! before they go (on Redis for all the channel's pods), so 45009 is not how the limit is found.
//! A robot cannot recall a message and has no events. It has no duplicate check either: its
//! de-duplication window is zero, so a send whose outcome is unknown (a timeout) is not
//! re-sent; the message ends `unknown_outcome` unless the channel's `retry.afterWindow` is
//! `resend`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::Value;

use super::wecom_errcode::classify_send;
use super::wecom_message::{Audience, parse};
use crate::message::{FieldError, Json, Message};
use crate::policy::Retry;
use crate::policy::wecom::{ROBOT_MESSAGES_PER_WINDOW, ROBOT_WINDOW};
use crate::send::{
    Answer, Outgoing, RateCeiling, SendAction, SendError, SendRequest, Sender, TemplateLists,
    TokenScope,
};

/// The group robot provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeComRobot;

impl Sender for WeComRobot {
    fn name(&self) -> &'static str {
        "wecomRobot"
    }

    fn token_scope(&self) -> TokenScope {
        TokenScope::WebhookKey
    }

    fn build(&self, request: SendRequest<'_>) -> Result<Outgoing, SendError> {
        let body = request.body.get();
        let has_type = serde_json::from_str::<serde_json::Map<String, Value>>(body)
            .is_ok_and(|m| m.contains_key("msgtype"));
        if !has_type {
            return Err(SendError {
                kind: crate::send::ErrorKind::Provider,
                errcode: None,
                message: "the stored message is not a WeCom robot message (no msgtype)".into(),
            });
        }
        Ok(Outgoing {
            path: "/cgi-bin/webhook/send",
            body: Bytes::copy_from_slice(body.as_bytes()),
        })
    }

    fn classify(&self, errcode: i64, _now: SystemTime, retry: &Retry) -> SendAction {
        classify_send(errcode, retry)
    }

    fn read_answer(&self, body: &[u8]) -> Option<Answer> {
        super::wecom_app::read_answer(body)
    }

    /// Checked on a `Value` tree: WeCom's bodies have many shapes, checked by
    /// `wecom_message` on `serde_json`'s tree (the WeChat providers check the light one).
    fn accept(&self, value: &Json<'_>) -> Result<Message, FieldError> {
        parse(&value.to_value(), Audience::Robot)
    }

    fn template_lists(&self) -> TemplateLists {
        TemplateLists::None
    }

    /// A robot has no duplicate check: a re-send is always a second message.
    fn dedup_window(&self, _message: &Message) -> Duration {
        Duration::ZERO
    }

    fn rate_ceiling(&self) -> Option<RateCeiling> {
        Some(RateCeiling {
            max: ROBOT_MESSAGES_PER_WINDOW,
            window: ROBOT_WINDOW,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::MessageKind;
    use serde_json::json;

    #[test]
    fn a_robot_posts_the_body_with_its_key_and_a_ceiling() {
        let m = parse(
            &json!({"msgtype": "markdown", "markdown": {"content": "**down**"}}),
            Audience::Robot,
        )
        .expect("valid");
        let body = m.send_body("");
        let out = WeComRobot
            .build(SendRequest {
                kind: MessageKind::Template,
                body: &body,
            })
            .expect("builds");
        assert_eq!(out.path, "/cgi-bin/webhook/send");
        assert_eq!(WeComRobot.token_scope().query_param(), "key");
        let ceiling = WeComRobot.rate_ceiling().expect("ceiling");
        assert_eq!(ceiling.max, 20);
        assert!(ceiling.window >= std::time::Duration::from_secs(60));
        assert!(WeComRobot.recall("x").is_none());
        assert_eq!(WeComRobot.dedup_window(&m), Duration::ZERO);
    }
}
