//! The WeChat error codes the sandbox answers with, and their `errmsg` texts.
//!
//! Codes and wording follow `docs/wechat-api.md` and WeChat's documentation. Every code has a
//! dense index so statistics can count them in a fixed array of atomics.

use bytes::Bytes;

/// One `errcode` the sandbox can return.
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
}

impl WxCode {
    /// Every code, in index order.
    pub const ALL: [WxCode; 21] = [
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
    ];

    /// The numeric `errcode`.
    pub fn code(self) -> i64 {
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
        }
    }

    /// The code for a number, if the sandbox knows it.
    pub fn from_code(code: i64) -> Option<WxCode> {
        WxCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Position in [`WxCode::ALL`].
    pub fn index(self) -> usize {
        WxCode::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// WeChat's `errmsg` for this code.
    pub fn errmsg(self) -> &'static str {
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
        }
    }

    /// The JSON body `{"errcode":N,"errmsg":"..."}`.
    pub fn body(self) -> Bytes {
        Bytes::from(format!(
            r#"{{"errcode":{},"errmsg":"{}"}}"#,
            self.code(),
            self.errmsg()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_bodies_are_json() {
        for (i, c) in WxCode::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(WxCode::from_code(c.code()), Some(c));
            let v: serde_json::Value = serde_json::from_slice(&c.body()).unwrap_or_default();
            assert_eq!(v["errcode"], c.code());
        }
        assert_eq!(WxCode::from_code(12345), None);
    }
}
