//! What each WeCom answer means for the message and the channel: a pure function of the
//! errcode, by its name in `wxcrypto::errcode::wecom::WeComCode` (the table the sandbox answers
//! from), never by a bare number.
//!
//! - **Delivered**: 0, also when some recipients were invalid (the provider reads those).
//! - **Refresh the token**: 40014, 42001, 41001 (and 40001 on a send).
//! - **Throttled**: 45009 (frequency: a robot's 20 a minute, an application's API limits) slows
//!   the channel down for `retry.throttledBackoff`; 45033 (concurrency) for one second.
//! - **Configuration faults** that pause the channel until a probe succeeds: 60020 (the
//!   server's IP is not on the application's trusted list), 40013 (corp id), 40056 (agentid),
//!   41011, 93000 (robot key), and a secret or corp id missing at token time.
//! - **Permanent** (the message itself is wrong; retrying cannot help): 81013 (every recipient
//!   invalid), the message-format codes (40008, 40058, 44004, 45002, ...).
//! - Anything else is retried with backoff, as for WeChat: WeCom answered, so the message was not
//!   sent, and the duplicate check keeps a retry from showing twice.

use std::time::{Duration, SystemTime};

use wxcrypto::errcode::wecom::WeComCode;

use super::errcode::FetchAction;
use crate::policy::Retry;
use crate::send::SendAction;

/// How long a 45033 (concurrency limit) slows the channel down.
const CONCURRENCY_BACKOFF: Duration = Duration::from_secs(1);

/// Classifies a send's errcode (`message/send`, `message/recall`, `webhook/send`).
pub fn classify_send(errcode: i64, retry: &Retry) -> SendAction {
    use WeComCode as C;
    let Some(code) = WeComCode::from_code(errcode) else {
        return SendAction::Retry { not_before: None };
    };
    match code {
        C::Ok => SendAction::Delivered,
        C::SystemBusy => SendAction::Retry { not_before: None },
        C::InvalidAccessToken
        | C::AccessTokenExpired
        | C::AccessTokenMissing
        | C::InvalidSecret => SendAction::RefreshToken,
        C::FrequencyLimit => SendAction::Throttle {
            for_at_least: retry.throttled_backoff.get(),
        },
        C::ConcurrencyLimit => SendAction::Throttle {
            for_at_least: CONCURRENCY_BACKOFF,
        },
        C::IpNotAllowed
        | C::InvalidCorpId
        | C::InvalidAgentId
        | C::AgentIdMissing
        | C::CorpIdMissing
        | C::SecretMissing
        | C::InvalidWebhookKey => SendAction::Pause { until: None },
        C::AllRecipientsInvalid
        | C::RecipientsEmpty
        | C::InvalidMessageType
        | C::InvalidParameter
        | C::InvalidUserListLength
        | C::InvalidPartyListLength
        | C::InvalidTagListLength
        | C::UrlMissing
        | C::TitleMissing
        | C::DescriptionMissing
        | C::InvalidTaskId
        | C::InvalidCardType
        | C::InvalidButtonText
        | C::InvalidCardAction
        | C::EmptyContent
        | C::ContentTooLong
        | C::InvalidArticleCount => SendAction::Permanent { alert: false },
    }
}

/// Classifies a `gettoken` errcode.
pub fn classify_fetch(errcode: i64, now: SystemTime, retry: &Retry) -> FetchAction {
    use WeComCode as C;
    match WeComCode::from_code(errcode) {
        Some(
            C::InvalidSecret
            | C::InvalidCorpId
            | C::CorpIdMissing
            | C::SecretMissing
            | C::IpNotAllowed,
        ) => FetchAction::ConfigFault,
        Some(C::FrequencyLimit | C::ConcurrencyLimit) => FetchAction::Quota {
            until: now + retry.throttled_backoff.get(),
        },
        _ => FetchAction::Backoff,
    }
}

/// A short description of a WeCom errcode, for error messages and logs.
pub fn describe(errcode: i64) -> &'static str {
    WeComCode::from_code(errcode).map_or("unknown errcode", WeComCode::errmsg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HumanDuration;

    #[test]
    fn codes_are_classified_as_docs_wechat_api_md_says() {
        let retry = crate::policy::Retry {
            throttled_backoff: HumanDuration::secs(60),
            ..crate::policy::Retry::default()
        };
        let minute = Duration::from_secs(60);
        use SendAction::*;
        for (code, want) in [
            (WeComCode::Ok, Delivered),
            (WeComCode::SystemBusy, Retry { not_before: None }),
            (WeComCode::InvalidAccessToken, RefreshToken),
            (WeComCode::AccessTokenExpired, RefreshToken),
            (
                WeComCode::FrequencyLimit,
                Throttle {
                    for_at_least: minute,
                },
            ),
            (
                WeComCode::ConcurrencyLimit,
                Throttle {
                    for_at_least: CONCURRENCY_BACKOFF,
                },
            ),
            (WeComCode::IpNotAllowed, Pause { until: None }),
            (WeComCode::InvalidAgentId, Pause { until: None }),
            (WeComCode::InvalidWebhookKey, Pause { until: None }),
            (WeComCode::AllRecipientsInvalid, Permanent { alert: false }),
            (WeComCode::EmptyContent, Permanent { alert: false }),
        ] {
            assert_eq!(classify_send(code.code(), &retry), want, "{code:?}");
        }
        assert_eq!(classify_send(99_999, &retry), Retry { not_before: None });
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(
            classify_fetch(WeComCode::InvalidSecret.code(), now, &retry),
            FetchAction::ConfigFault
        );
        assert_eq!(
            classify_fetch(WeComCode::IpNotAllowed.code(), now, &retry),
            FetchAction::ConfigFault
        );
        assert_eq!(
            classify_fetch(WeComCode::SystemBusy.code(), now, &retry),
            FetchAction::Backoff
        );
        assert_eq!(describe(81013), "user & party & tag all invalid");
    }
}
