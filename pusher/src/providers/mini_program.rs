//! `wechatMiniProgram`: a WeChat Mini Program (小程序). It sends subscribe messages
//! (`subscribe/send`) only: Mini Programs have no template messages and no Official Account
//! subscription notices, so those kinds fail at once, naming the provider, instead of being
//! sent to an API that would refuse them on every retry.

use std::time::SystemTime;

use super::errcode::classify_send;
use crate::policy::Retry;
use crate::send::ErrorKind;
use crate::send::{
    MessageKind, Outgoing, SendAction, SendError, SendRequest, Sender, TemplateLists, TokenScope,
};

/// The Mini Program provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct MiniProgram;

impl Sender for MiniProgram {
    fn name(&self) -> &'static str {
        "wechatMiniProgram"
    }

    fn token_scope(&self) -> TokenScope {
        TokenScope::WeChatApp
    }

    fn build(&self, request: SendRequest<'_>) -> Result<Outgoing, SendError> {
        if request.kind != MessageKind::Subscribe {
            return Err(SendError {
                kind: ErrorKind::Provider,
                errcode: None,
                message: format!(
                    "a wechatMiniProgram channel sends only kind \"subscribe\", not {:?}",
                    request.kind
                ),
            });
        }
        super::official_account::encode(request)
    }

    fn classify(&self, errcode: i64, now: SystemTime, retry: &Retry) -> SendAction {
        classify_send(errcode, now, retry)
    }

    fn template_lists(&self) -> TemplateLists {
        TemplateLists::Subscribe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscribe_messages_are_built() {
        let body = serde_json::value::to_raw_value(
            &serde_json::json!({"touser": "o1", "template_id": "T", "data": {}}),
        )
        .expect("json");
        let sub = MiniProgram.build(SendRequest {
            kind: MessageKind::Subscribe,
            body: &body,
        });
        assert_eq!(
            sub.expect("subscribe builds").path,
            "/cgi-bin/message/subscribe/send"
        );
        let tpl = MiniProgram.build(SendRequest {
            kind: MessageKind::Template,
            body: &body,
        });
        assert_eq!(tpl.expect_err("template refused").kind, ErrorKind::Provider);
    }
}
