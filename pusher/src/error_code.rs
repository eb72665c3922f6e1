//! The machine-readable `code` of every error answer of the HTTP API
//! (`{"error": {"code", "message", "field"}}`). One enum, so the OpenAPI document lists exactly
//! the codes the handlers can answer.

use serde::Serialize;

/// An error answer's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401: no bearer token, or a wrong one.
    Unauthorized,
    /// 503: the pusher is shutting down.
    Draining,
    /// 503: too many requests in flight (`api.maxConcurrentRequests`).
    Overloaded,
    /// 415: not `application/json`.
    UnsupportedMediaType,
    /// 413: the body exceeds `api.maxBodyBytes`.
    BodyTooLarge,
    /// 408: the body did not arrive within `api.bodyReadTimeout`.
    BodyTimeout,
    /// 400: the body could not be read.
    BadBody,
    /// 400: the body is not valid JSON (or repeats a key).
    MalformedJson,
    /// 400: a query string that does not parse, names an unknown parameter, or has `limit`
    /// outside 1 to 1000.
    BadQuery,
    /// 422: a required field is missing.
    MissingField,
    /// 422: a field that is not part of the message.
    UnknownField,
    /// 422: a field with a wrong type or value.
    InvalidField,
    /// 422: a value longer than its limit, or a batch with more than `api.maxBatch` messages.
    TooLong,
    /// 422: a batch with no messages.
    EmptyBatch,
    /// 422: a `callback_url` aimed at an internal address not in `callbacks.allow`.
    ForbiddenTarget,
    /// 422: the `Idempotency-Key` was used before with a different request body.
    IdempotencyKeyReused,
    /// 400: the message breaks a rule of its WeChat template (`templates.validation`); `field`
    /// names `template_id` or `data.<key>` and `rule` the rule.
    TemplateRule,
    /// 404: no such message or route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: the message is not a dead letter.
    NotDeadLetter,
    /// 409: the dead letter's `expires_at` has passed.
    PastExpiry,
    /// 409: the message cannot be recalled: its provider cannot recall, it was not delivered,
    /// or the provider's recall window (WeCom: 24 hours) has passed.
    NotRecallable,
    /// 502: the provider refused the recall or could not be reached; `message` says why.
    RecallFailed,
    /// 429: the queue holds `maxMessages` pending messages.
    QueueFull,
    /// 503: the queue could not confirm the write.
    StoreUnavailable,
    /// 500: a bug.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order above.
    pub const ALL: [Self; 26] = [
        Self::Unauthorized,
        Self::Draining,
        Self::Overloaded,
        Self::UnsupportedMediaType,
        Self::BodyTooLarge,
        Self::BodyTimeout,
        Self::BadBody,
        Self::MalformedJson,
        Self::BadQuery,
        Self::MissingField,
        Self::UnknownField,
        Self::InvalidField,
        Self::TooLong,
        Self::EmptyBatch,
        Self::ForbiddenTarget,
        Self::IdempotencyKeyReused,
        Self::TemplateRule,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::NotDeadLetter,
        Self::PastExpiry,
        Self::NotRecallable,
        Self::RecallFailed,
        Self::QueueFull,
        Self::StoreUnavailable,
        Self::Internal,
    ];

    /// The snake_case name, as answered.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Draining => "draining",
            Self::Overloaded => "overloaded",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BadBody => "bad_body",
            Self::MalformedJson => "malformed_json",
            Self::BadQuery => "bad_query",
            Self::MissingField => "missing_field",
            Self::UnknownField => "unknown_field",
            Self::InvalidField => "invalid_field",
            Self::TooLong => "too_long",
            Self::EmptyBatch => "empty_batch",
            Self::ForbiddenTarget => "forbidden_target",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::TemplateRule => "template_rule",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotDeadLetter => "not_dead_letter",
            Self::PastExpiry => "past_expiry",
            Self::NotRecallable => "not_recallable",
            Self::RecallFailed => "recall_failed",
            Self::QueueFull => "queue_full",
            Self::StoreUnavailable => "store_unavailable",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_what_serde_writes_and_all_lists_each_once() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).expect("a code encodes"),
                serde_json::json!(code.as_str())
            );
            assert!(seen.insert(code), "{code} listed twice");
        }
    }
}
