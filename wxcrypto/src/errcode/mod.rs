//! WeChat's `errcode`s: one table that the sandbox answers with and the pusher classifies by.
//!
//! Each code has its number, WeChat's own `errmsg` wording, and a short description for our
//! logs and errors. What a code *means* for a sender (retry, refresh the token, pause the
//! channel, give up) is the pusher's decision (`pusher/src/providers/errcode.rs`), and what
//! makes the sandbox answer it is the sandbox's; both name codes through [`WxCode`], never by
//! bare numbers. `docs/wechat-api.md` explains each code in words.
//!
//! WeCom's codes are a separate table, [`wecom::WeComCode`]: the same number can mean another
//! thing there (45009 is WeChat's daily quota but WeCom's frequency limit).

pub mod wecom;

/// One WeChat `errcode` that wxpush knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WxCode {
    /// 0: success.
    Ok,
    /// -1: system busy; retry.
    SystemBusy,
    /// 40001: the access_token is unknown, superseded past its grace period, or rotated.
    InvalidCredential,
    /// 40002: `grant_type` is not `client_credential`.
    InvalidGrantType,
    /// 40003: `touser` is not an openid of this account (only with a configured user list).
    InvalidOpenid,
    /// 40013: wrong appid.
    InvalidAppid,
    /// 40014: the access_token is not even shaped like one.
    InvalidAccessToken,
    /// 40037: unknown `template_id` (only with a configured template list).
    InvalidTemplateId,
    /// 40125: wrong secret.
    InvalidSecret,
    /// 40164: the caller's address is not on the account's IP allowlist.
    IpNotAllowed,
    /// 41001: no access_token parameter.
    AccessTokenMissing,
    /// 41002: no appid.
    AppidMissing,
    /// 41004: no secret.
    SecretMissing,
    /// 42001: the access_token outlived `expires_in`.
    AccessTokenExpired,
    /// 43004: the user does not follow the account.
    RequireSubscribe,
    /// 43101: the user refused (or never accepted) the subscription.
    UserRefused,
    /// 43117: too many messages to this openid.
    TooFrequentOpenid,
    /// 45009: daily quota reached.
    DailyQuota,
    /// 45011: per-minute quota reached (also: force_refresh less than 30 s apart).
    MinuteQuota,
    /// 47001: the body is not the JSON the API expects.
    DataFormat,
    /// 47003: a required argument is missing or invalid.
    ArgumentInvalid,
    /// 41030: the Mini Program `page` does not exist.
    InvalidPage,
    /// 48001: the account is not authorized for this API.
    ApiUnauthorized,
}

impl WxCode {
    /// Every code, in index order.
    pub const ALL: [WxCode; 23] = [
        WxCode::Ok,
        WxCode::SystemBusy,
        WxCode::InvalidCredential,
        WxCode::InvalidGrantType,
        WxCode::InvalidOpenid,
        WxCode::InvalidAppid,
        WxCode::InvalidAccessToken,
        WxCode::InvalidTemplateId,
        WxCode::InvalidSecret,
        WxCode::IpNotAllowed,
        WxCode::AccessTokenMissing,
        WxCode::AppidMissing,
        WxCode::SecretMissing,
        WxCode::AccessTokenExpired,
        WxCode::RequireSubscribe,
        WxCode::UserRefused,
        WxCode::TooFrequentOpenid,
        WxCode::DailyQuota,
        WxCode::MinuteQuota,
        WxCode::DataFormat,
        WxCode::ArgumentInvalid,
        WxCode::InvalidPage,
        WxCode::ApiUnauthorized,
    ];

    /// The numeric `errcode`.
    pub const fn code(self) -> i64 {
        match self {
            WxCode::Ok => 0,
            WxCode::SystemBusy => -1,
            WxCode::InvalidCredential => 40001,
            WxCode::InvalidGrantType => 40002,
            WxCode::InvalidOpenid => 40003,
            WxCode::InvalidAppid => 40013,
            WxCode::InvalidAccessToken => 40014,
            WxCode::InvalidTemplateId => 40037,
            WxCode::InvalidSecret => 40125,
            WxCode::IpNotAllowed => 40164,
            WxCode::AccessTokenMissing => 41001,
            WxCode::AppidMissing => 41002,
            WxCode::SecretMissing => 41004,
            WxCode::AccessTokenExpired => 42001,
            WxCode::RequireSubscribe => 43004,
            WxCode::UserRefused => 43101,
            WxCode::TooFrequentOpenid => 43117,
            WxCode::DailyQuota => 45009,
            WxCode::MinuteQuota => 45011,
            WxCode::DataFormat => 47001,
            WxCode::ArgumentInvalid => 47003,
            WxCode::InvalidPage => 41030,
            WxCode::ApiUnauthorized => 48001,
        }
    }

    /// The code for a number, if it is in the table.
    pub fn from_code(code: i64) -> Option<WxCode> {
        WxCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Position in [`WxCode::ALL`] (dense, for counting in fixed arrays).
    pub fn index(self) -> usize {
        WxCode::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// WeChat's `errmsg` for this code.
    pub const fn errmsg(self) -> &'static str {
        match self {
            WxCode::Ok => "ok",
            WxCode::SystemBusy => "system error",
            WxCode::InvalidCredential => {
                "invalid credential, access_token is invalid or not latest"
            }
            WxCode::InvalidGrantType => "invalid grant_type",
            WxCode::InvalidOpenid => "invalid openid",
            WxCode::InvalidAppid => "invalid appid",
            WxCode::InvalidAccessToken => "invalid access_token",
            WxCode::InvalidTemplateId => "invalid template_id",
            WxCode::InvalidSecret => "invalid appsecret",
            WxCode::IpNotAllowed => "invalid ip, not in whitelist",
            WxCode::AccessTokenMissing => "access_token missing",
            WxCode::AppidMissing => "appid missing",
            WxCode::SecretMissing => "appsecret missing",
            WxCode::AccessTokenExpired => "access_token expired",
            WxCode::RequireSubscribe => "require subscribe",
            WxCode::UserRefused => "user refuse to accept the msg",
            WxCode::TooFrequentOpenid => "too frequent to this openid",
            WxCode::DailyQuota => "reach max api daily quota limit",
            WxCode::MinuteQuota => "api minute-quota reach limit mustslower retry next minute",
            WxCode::DataFormat => "data format error",
            WxCode::ArgumentInvalid => "argument invalid!",
            WxCode::InvalidPage => "invalid page",
            WxCode::ApiUnauthorized => "api unauthorized",
        }
    }

    /// A short description for our own errors and logs.
    pub const fn describe(self) -> &'static str {
        match self {
            WxCode::Ok => "ok",
            WxCode::SystemBusy => "system busy",
            WxCode::InvalidCredential => "access_token invalid",
            WxCode::InvalidGrantType => "invalid grant_type",
            WxCode::InvalidOpenid => "invalid openid",
            WxCode::InvalidAppid => "invalid appid",
            WxCode::InvalidAccessToken => "access_token not the latest",
            WxCode::InvalidTemplateId => "invalid template_id",
            WxCode::InvalidSecret => "invalid appsecret",
            WxCode::IpNotAllowed => "caller IP not in the account's whitelist",
            WxCode::AccessTokenMissing => "access_token missing",
            WxCode::AppidMissing => "appid missing",
            WxCode::SecretMissing => "appsecret missing",
            WxCode::AccessTokenExpired => "access_token expired",
            WxCode::RequireSubscribe => "user does not follow the account",
            WxCode::UserRefused => "user refused the subscribe message",
            WxCode::TooFrequentOpenid => "too frequent for this openid",
            WxCode::DailyQuota => "daily quota reached",
            WxCode::MinuteQuota => "per-minute quota reached",
            WxCode::DataFormat => "malformed body",
            WxCode::ArgumentInvalid => "argument invalid",
            WxCode::InvalidPage => "invalid page",
            WxCode::ApiUnauthorized => "API unauthorized for this account",
        }
    }

    /// The JSON body `{"errcode":N,"errmsg":"..."}` WeChat answers with.
    pub fn json(self) -> String {
        format!(
            r#"{{"errcode":{},"errmsg":"{}"}}"#,
            self.code(),
            self.errmsg()
        )
    }
}

/// A short description of any errcode, known or not.
pub fn describe(errcode: i64) -> &'static str {
    WxCode::from_code(errcode).map_or("unknown errcode", WxCode::describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for (i, c) in WxCode::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(WxCode::from_code(c.code()), Some(c));
            assert!(
                c.json()
                    .starts_with(&format!("{{\"errcode\":{},", c.code()))
            );
        }
        assert_eq!(WxCode::from_code(12345), None);
        assert_eq!(describe(12345), "unknown errcode");
        assert_eq!(describe(45009), "daily quota reached");
    }
}
