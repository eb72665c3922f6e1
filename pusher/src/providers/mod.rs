//! One module per kind the `provider` field names, each a [`Sender`]: the wire protocol of that
//! provider (token scope, request building, errcode classification). [`sender_for`] is the one
//! place the field selects a module. [`errcode`] is WeChat's errcode table, a pure function that
//! both WeChat providers and the token manager use. The engine that drives any of them, with the HTTP client,
//! tokens, breaker and rate limit, is `wechat::WeChatSender`; the dispatcher above it never
//! names a provider.

pub mod errcode;
mod mini_program;
mod official_account;

use std::sync::Arc;

pub use mini_program::MiniProgram;
pub use official_account::OfficialAccount;

use crate::policy::Provider;
use crate::send::Sender;

/// The [`Sender`] of a channel's `provider`.
pub fn sender_for(provider: Provider) -> Arc<dyn Sender> {
    match provider {
        Provider::WechatOfficialAccount => Arc::new(OfficialAccount),
        Provider::WechatMiniProgram => Arc::new(MiniProgram),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_field_selects_its_sender() {
        assert_eq!(
            sender_for(Provider::WechatOfficialAccount).name(),
            "wechatOfficialAccount"
        );
        assert_eq!(
            sender_for(Provider::WechatMiniProgram).name(),
            "wechatMiniProgram"
        );
    }
}
