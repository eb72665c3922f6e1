//! WeCom's (企业微信) error codes: the ones its token, message, recall and group-robot APIs
//! answer with, as the sandbox serves them and the pusher classifies them.
//!
//! Each code keeps WeCom's number and a short English `errmsg`. WeCom appends a hint to the
//! text (`"…, hint: [...]"`); [`WeComCode::json_with_hint`] does the same. What each code means
//! for a sender (retry, give up, slow down, fix the configuration) is in `docs/wechat-api.md`.

/// One `errcode` of WeCom's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeComCode {
    /// 0: success.
    Ok,
    /// -1: system busy; retry later.
    SystemBusy,
    /// 40001: `corpsecret` is not the secret of an app of this corp.
    InvalidSecret,
    /// 40008: `msgtype` is missing or not one the API sends.
    InvalidMessageType,
    /// 40013: `corpid` is not this corp's id.
    InvalidCorpId,
    /// 40014: the access_token is unknown, revoked, or not shaped like one.
    InvalidAccessToken,
    /// 40032: more than 1000 user ids in `touser`.
    InvalidUserListLength,
    /// 40056: `agentid` is not the app the access_token belongs to.
    InvalidAgentId,
    /// 40058: a parameter is invalid (the body is not JSON, a value is out of range, or a
    /// recall names a msgid that is unknown or past the recall window).
    InvalidParameter,
    /// 41001: no access_token parameter.
    AccessTokenMissing,
    /// 41002: no `corpid` parameter.
    CorpIdMissing,
    /// 41004: no `corpsecret` parameter.
    SecretMissing,
    /// 41010: a required `url` is missing.
    UrlMissing,
    /// 41011: no `agentid` in the body.
    AgentIdMissing,
    /// 41016: a required `title` is missing.
    TitleMissing,
    /// 41033: a text card's `description` is missing.
    DescriptionMissing,
    /// 42001: the access_token outlived its `expires_in`.
    AccessTokenExpired,
    /// 42014: an interactive template card has no valid `task_id`.
    InvalidTaskId,
    /// 42031: `template_card.card_type` is not a known card type.
    InvalidCardType,
    /// 42038: a template card button has no valid `text`.
    InvalidButtonText,
    /// 42045: a template card's `card_action` is missing or invalid.
    InvalidCardAction,
    /// 44004: the text or markdown `content` is empty.
    EmptyContent,
    /// 45002: the content is longer than the message type allows.
    ContentTooLong,
    /// 45008: a news message has no article or more than 8.
    InvalidArticleCount,
    /// 45009: API frequency limit reached (for robots: 20 messages a minute per key).
    FrequencyLimit,
    /// 45033: API concurrency limit reached.
    ConcurrencyLimit,
    /// 60020: the caller's IP address is not on the app's trusted list.
    IpNotAllowed,
    /// 81013: every user, party and tag of the message is invalid or out of the app's scope.
    AllRecipientsInvalid,
    /// 82001: `touser`, `toparty` and `totag` are all empty.
    RecipientsEmpty,
    /// 82002: more than 100 party ids in `toparty`.
    InvalidPartyListLength,
    /// 82003: more than 100 tag ids in `totag`.
    InvalidTagListLength,
    /// 93000: the robot's webhook key is missing or unknown.
    InvalidWebhookKey,
}

impl WeComCode {
    /// Every code, in index order.
    pub const ALL: [WeComCode; 32] = [
        WeComCode::Ok,
        WeComCode::SystemBusy,
        WeComCode::InvalidSecret,
        WeComCode::InvalidMessageType,
        WeComCode::InvalidCorpId,
        WeComCode::InvalidAccessToken,
        WeComCode::InvalidUserListLength,
        WeComCode::InvalidAgentId,
        WeComCode::InvalidParameter,
        WeComCode::AccessTokenMissing,
        WeComCode::CorpIdMissing,
        WeComCode::SecretMissing,
        WeComCode::UrlMissing,
        WeComCode::AgentIdMissing,
        WeComCode::TitleMissing,
        WeComCode::DescriptionMissing,
        WeComCode::AccessTokenExpired,
        WeComCode::InvalidTaskId,
        WeComCode::InvalidCardType,
        WeComCode::InvalidButtonText,
        WeComCode::InvalidCardAction,
        WeComCode::EmptyContent,
        WeComCode::ContentTooLong,
        WeComCode::InvalidArticleCount,
        WeComCode::FrequencyLimit,
        WeComCode::ConcurrencyLimit,
        WeComCode::IpNotAllowed,
        WeComCode::AllRecipientsInvalid,
        WeComCode::RecipientsEmpty,
        WeComCode::InvalidPartyListLength,
        WeComCode::InvalidTagListLength,
        WeComCode::InvalidWebhookKey,
    ];

    /// The number WeCom answers.
    pub const fn code(self) -> i64 {
        match self {
            WeComCode::Ok => 0,
            WeComCode::SystemBusy => -1,
            WeComCode::InvalidSecret => 40001,
            WeComCode::InvalidMessageType => 40008,
            WeComCode::InvalidCorpId => 40013,
            WeComCode::InvalidAccessToken => 40014,
            WeComCode::InvalidUserListLength => 40032,
            WeComCode::InvalidAgentId => 40056,
            WeComCode::InvalidParameter => 40058,
            WeComCode::AccessTokenMissing => 41001,
            WeComCode::CorpIdMissing => 41002,
            WeComCode::SecretMissing => 41004,
            WeComCode::UrlMissing => 41010,
            WeComCode::AgentIdMissing => 41011,
            WeComCode::TitleMissing => 41016,
            WeComCode::DescriptionMissing => 41033,
            WeComCode::AccessTokenExpired => 42001,
            WeComCode::InvalidTaskId => 42014,
            WeComCode::InvalidCardType => 42031,
            WeComCode::InvalidButtonText => 42038,
            WeComCode::InvalidCardAction => 42045,
            WeComCode::EmptyContent => 44004,
            WeComCode::ContentTooLong => 45002,
            WeComCode::InvalidArticleCount => 45008,
            WeComCode::FrequencyLimit => 45009,
            WeComCode::ConcurrencyLimit => 45033,
            WeComCode::IpNotAllowed => 60020,
            WeComCode::AllRecipientsInvalid => 81013,
            WeComCode::RecipientsEmpty => 82001,
            WeComCode::InvalidPartyListLength => 82002,
            WeComCode::InvalidTagListLength => 82003,
            WeComCode::InvalidWebhookKey => 93000,
        }
    }

    /// The code for a number, if the table has it.
    pub fn from_code(code: i64) -> Option<WeComCode> {
        WeComCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Position in [`WeComCode::ALL`], for counting codes in a fixed array.
    pub fn index(self) -> usize {
        WeComCode::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The `errmsg` text, without a hint.
    pub const fn errmsg(self) -> &'static str {
        match self {
            WeComCode::Ok => "ok",
            WeComCode::SystemBusy => "system busy",
            WeComCode::InvalidSecret => "invalid credential",
            WeComCode::InvalidMessageType => "invalid message type",
            WeComCode::InvalidCorpId => "invalid corpid",
            WeComCode::InvalidAccessToken => "invalid access_token",
            WeComCode::InvalidUserListLength => "invalid userid list size",
            WeComCode::InvalidAgentId => "invalid agentid",
            WeComCode::InvalidParameter => "invalid Request Parameter",
            WeComCode::AccessTokenMissing => "access_token missing",
            WeComCode::CorpIdMissing => "corpid missing",
            WeComCode::SecretMissing => "corpsecret missing",
            WeComCode::UrlMissing => "url missing",
            WeComCode::AgentIdMissing => "agentid missing",
            WeComCode::TitleMissing => "title missing",
            WeComCode::DescriptionMissing => "description missing",
            WeComCode::AccessTokenExpired => "access_token expired",
            WeComCode::InvalidTaskId => "invalid task_id",
            WeComCode::InvalidCardType => "invalid template_card.card_type",
            WeComCode::InvalidButtonText => "invalid template_card.button_list.text",
            WeComCode::InvalidCardAction => "invalid template_card.card_action",
            WeComCode::EmptyContent => "empty content",
            WeComCode::ContentTooLong => "content size out of limit",
            WeComCode::InvalidArticleCount => "article count out of limit",
            WeComCode::FrequencyLimit => "api freq out of limit",
            WeComCode::ConcurrencyLimit => "api concurrent out of limit",
            WeComCode::IpNotAllowed => "not allow to access from your ip",
            WeComCode::AllRecipientsInvalid => "user & party & tag all invalid",
            WeComCode::RecipientsEmpty => "touser & toparty & totag all empty",
            WeComCode::InvalidPartyListLength => "invalid partyid list size",
            WeComCode::InvalidTagListLength => "invalid tagid list size",
            WeComCode::InvalidWebhookKey => "invalid webhook url",
        }
    }

    /// A short description for our own errors and logs (WeCom's English `errmsg` already is
    /// one).
    pub const fn describe(self) -> &'static str {
        self.errmsg()
    }

    /// The JSON body `{"errcode":N,"errmsg":"..."}` WeCom answers with.
    pub fn json(self) -> String {
        format!(
            r#"{{"errcode":{},"errmsg":"{}"}}"#,
            self.code(),
            self.errmsg()
        )
    }

    /// The `errmsg` with WeCom's hint suffix: `"<text>, hint: [<hint>]"`.
    pub fn errmsg_with_hint(self, hint: &str) -> String {
        format!("{}, hint: [{hint}]", self.errmsg())
    }

    /// The JSON body with a hint in `errmsg` (the hint is JSON-escaped).
    pub fn json_with_hint(self, hint: &str) -> String {
        let errmsg = self.errmsg_with_hint(hint);
        let mut escaped = String::with_capacity(errmsg.len() + 2);
        for ch in errmsg.chars() {
            match ch {
                '"' => escaped.push_str("\\\""),
                '\\' => escaped.push_str("\\\\"),
                c if u32::from(c) < 0x20 => escaped.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => escaped.push(c),
            }
        }
        format!(r#"{{"errcode":{},"errmsg":"{escaped}"}}"#, self.code())
    }
}

/// A short description of any WeCom errcode, known or not.
pub fn describe(errcode: i64) -> &'static str {
    WeComCode::from_code(errcode).map_or("unknown errcode", WeComCode::describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for (i, c) in WeComCode::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(WeComCode::from_code(c.code()), Some(c), "{c:?}");
            assert!(!c.errmsg().is_empty());
        }
        assert_eq!(WeComCode::from_code(12345), None);
        assert_eq!(WeComCode::AllRecipientsInvalid.code(), 81013);
        assert_eq!(WeComCode::InvalidWebhookKey.code(), 93000);
        assert_eq!(describe(81013), "user & party & tag all invalid");
        assert_eq!(describe(12345), "unknown errcode");
    }

    #[test]
    fn bodies_carry_code_and_escaped_hint() {
        assert_eq!(
            WeComCode::FrequencyLimit.json(),
            r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#
        );
        assert_eq!(
            WeComCode::InvalidParameter.json_with_hint("say \"hi\"\n"),
            r#"{"errcode":40058,"errmsg":"invalid Request Parameter, hint: [say \"hi\"\u000a]"}"#
        );
    }
}
