//! What a message's record says of its sends: which API it goes to ([`MessageKind`]) and what
//! went wrong in the last attempt ([`SendError`], of an [`ErrorKind`]), and what a delivery
//! answer said beyond "sent" ([`Receipt`]). The vocabulary of one
//! attempt (`crate::send`) re-exports them.

use serde::{Deserialize, Serialize};

/// Which WeChat send API a message goes to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// `POST /cgi-bin/message/template/send` (Official Account template message). The default.
    #[default]
    Template,
    /// `POST /cgi-bin/message/subscribe/send` (Mini Program subscribe message).
    Subscribe,
    /// `POST /cgi-bin/message/subscribe/bizsend` (Official Account subscription notice).
    Bizsend,
}

impl MessageKind {
    /// The API path, without the access_token query.
    pub fn path(self) -> &'static str {
        match self {
            Self::Template => "/cgi-bin/message/template/send",
            Self::Subscribe => "/cgi-bin/message/subscribe/send",
            Self::Bizsend => "/cgi-bin/message/subscribe/bizsend",
        }
    }
}

/// What went wrong in an attempt, in a form fit for status, logs and metrics (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = LastError)]
pub struct SendError {
    /// What kind of failure it was.
    pub kind: ErrorKind,
    /// WeChat's errcode, when it answered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    /// A sentence for people.
    pub message: String,
}

impl SendError {
    /// An error of `kind` with no errcode.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            errcode: None,
            message: message.into(),
        }
    }
}

/// The kind of a [`SendError`], as the API and the stored record spell it (`snake_case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The TCP connection was not established in `timeouts.connect`.
    TimeoutConnect,
    /// The TLS handshake did not finish in `timeouts.tls`.
    TimeoutTls,
    /// No response header came in `timeouts.responseHeader`.
    TimeoutResponseHeader,
    /// The whole request did not finish in `timeouts.request`.
    TimeoutRequest,
    /// DNS, a refused or reset connection, a TLS error.
    Transport,
    /// WeChat (or a proxy) answered 5xx: the outcome is unknown.
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// Another non-200 status.
    HttpStatus,
    /// A 200 whose body is not WeChat's JSON.
    BadResponse,
    /// WeChat answered an errcode (see `errcode`).
    Errcode,
    /// No valid access_token could be had.
    Token,
    /// WeChat asked to slow down (45011).
    Throttled,
    /// The channel's own rate limit had no permit.
    RateLimited,
    /// The daily quota is spent.
    Quota,
    /// The body could not be built.
    Body,
    /// The circuit breaker was open.
    CircuitOpen,
    /// The provider cannot send this message at all.
    Provider,
    /// The message outlived its `ttl` before it was sent.
    Expired,
    /// An attempt was in flight when its pusher stopped, past WeChat's de-duplication window.
    UnknownOutcome,
    /// A kind this version does not know (written by a newer pusher); kept readable.
    #[serde(other)]
    Other,
}

impl ErrorKind {
    /// The name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TimeoutConnect => "timeout_connect",
            Self::TimeoutTls => "timeout_tls",
            Self::TimeoutResponseHeader => "timeout_response_header",
            Self::TimeoutRequest => "timeout_request",
            Self::Transport => "transport",
            Self::Http5xx => "http_5xx",
            Self::HttpStatus => "http_status",
            Self::BadResponse => "bad_response",
            Self::Errcode => "errcode",
            Self::Token => "token",
            Self::Throttled => "throttled",
            Self::RateLimited => "rate_limited",
            Self::Quota => "quota",
            Self::Body => "body",
            Self::CircuitOpen => "circuit_open",
            Self::Provider => "provider",
            Self::Expired => "expired",
            Self::UnknownOutcome => "unknown_outcome",
            Self::Other => "other",
        }
    }

    /// Whether the failure says WeChat is unreachable or failing (what the breaker counts): a
    /// timeout, a transport error, a 5xx, or a 200 that is not WeChat's JSON.
    pub const fn is_outage(self) -> bool {
        matches!(
            self,
            Self::Transport
                | Self::TimeoutConnect
                | Self::TimeoutTls
                | Self::TimeoutResponseHeader
                | Self::TimeoutRequest
                | Self::Http5xx
                | Self::BadResponse
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a delivery answer said beyond "sent": the provider's own message id when it is text
/// (WeCom's, which a recall needs), and the recipients it could not reach. Kept in the
/// message's status and sent in its callback.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    /// The provider's message id (WeCom's `msgid`), the handle of a recall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_msgid: Option<String>,
    /// Recipients the provider called invalid. They were not reached and are never retried.
    #[serde(default, skip_serializing_if = "InvalidRecipients::is_empty")]
    pub invalid: InvalidRecipients,
    /// When the message was recalled (`POST /v1/messages/{id}/recall`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub recalled_at: Option<jiff::Timestamp>,
}

/// The recipients of a partly delivered message that were not reached (WeCom's errcode 0 with
/// `invaliduser`, `invalidparty`, `invalidtag`, `unlicenseduser`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvalidRecipients {
    /// User ids that do not exist or are out of the application's visible range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Party (department) ids that are invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parties: Vec<String>,
    /// Tag ids that are invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Users without a licence for the application.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlicensed_users: Vec<String>,
}

impl InvalidRecipients {
    /// Whether every recipient was reached.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.parties.is_empty()
            && self.tags.is_empty()
            && self.unlicensed_users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_serialize_as_they_are_named_and_unknown_ones_stay_readable() {
        for kind in [
            ErrorKind::Http5xx,
            ErrorKind::TimeoutResponseHeader,
            ErrorKind::UnknownOutcome,
        ] {
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(
                serde_json::from_str::<ErrorKind>(&json).expect("parse"),
                kind
            );
        }
        let newer: ErrorKind = serde_json::from_str("\"some_future_kind\"").expect("parse");
        assert_eq!(newer, ErrorKind::Other);
    }
}
