//! `wechatOfficialAccount`: a WeChat Official Account (公众号). It sends template messages
//! (`template/send`) and subscription notices (`subscribe/bizsend`); a `subscribe` message is
//! passed to `subscribe/send` as it always was, and WeChat answers it for the account.

use std::time::SystemTime;

use bytes::Bytes;

use super::errcode::classify_send;
use crate::policy::Retry;
use crate::send::{Outgoing, SendAction, SendError, SendRequest, Sender, TokenScope};

/// The Official Account provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct OfficialAccount;

impl Sender for OfficialAccount {
    fn name(&self) -> &'static str {
        "wechatOfficialAccount"
    }

    fn token_scope(&self) -> TokenScope {
        TokenScope::WeChatApp
    }

    fn build(&self, request: SendRequest<'_>) -> Result<Outgoing, SendError> {
        encode(request)
    }

    fn classify(&self, errcode: i64, now: SystemTime, retry: &Retry) -> SendAction {
        classify_send(errcode, now, retry)
    }
}

/// The body as WeChat takes it, to the kind's path. Shared by the WeChat providers.
pub(super) fn encode(request: SendRequest<'_>) -> Result<Outgoing, SendError> {
    Ok(Outgoing {
        path: request.kind.path(),
        body: Bytes::copy_from_slice(request.body.get().as_bytes()),
    })
}
