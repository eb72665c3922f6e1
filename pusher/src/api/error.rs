//! The API's error answers: `{"error": {"code", "message", "field"}}` with a fitting status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error_code::ErrorCode;
use crate::message::FieldError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    field: Option<String>,
    rule: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An answer with `status`, a snake_case `code` and a sentence.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            rule: None,
            retry_after: None,
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }

    /// The same answer, naming the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The field error this answer was made from (a 400 or 422 naming a field), or the answer
    /// itself when it is another kind (store unavailable...).
    pub fn into_field_error(self) -> Result<FieldError, Self> {
        match (&self.field, self.status) {
            (Some(_), StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY)
                if self.code != ErrorCode::BadQuery =>
            {
                Ok(FieldError {
                    code: self.code,
                    message: self.message,
                    field: self.field.unwrap_or_default(),
                    rule: self.rule,
                })
            }
            _ => Err(self),
        }
    }

    /// Adds `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        let e = e.bounded();
        // A template rule is WeChat's (the message is well-formed JSON of the right shape),
        // answered 400 as WeChat's own argument errors are.
        let status = if e.code == ErrorCode::TemplateRule {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        Self {
            status,
            code: e.code,
            message: e.message,
            field: Some(e.field),
            rule: e.rule,
            retry_after: None,
        }
    }
}

/// `Retry-After` (seconds) while the disk budget is spent: space comes back with deliveries
/// and the retention sweep, not within a second.
const OVER_BUDGET_RETRY_AFTER: u64 = 5;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Full { retry_after, .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::QueueFull,
                e.to_string(),
            )
            .retry_after(retry_after.as_secs().max(1)),
            StoreError::KeyReused(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                e.to_string(),
            )
            .field("Idempotency-Key"),
            // Same answer as a full queue: producers already back off on it.
            StoreError::OverBudget { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::QueueFull,
                e.to_string(),
            )
            .retry_after(OVER_BUDGET_RETRY_AFTER),
            StoreError::NotFound(_) => Self::not_found(e.to_string()),
            StoreError::NotDeadLetter(_) => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::NotDeadLetter,
                e.to_string(),
            ),
            StoreError::PastExpiry(..) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::PastExpiry, e.to_string())
            }
            StoreError::Storage(_) | StoreError::Closed | StoreError::Busy => {
                static LOGS: std::sync::LazyLock<crate::ratelog::LogLimiter> =
                    std::sync::LazyLock::new(Default::default);
                if let Some(held) = LOGS.check(e.metric_label()) {
                    tracing::error!(error = %e, held_back = held, "store unavailable");
                }
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StoreUnavailable,
                    "the queue could not confirm this write; retry shortly, with the same \
                     Idempotency-Key so that a write that did land is not stored twice",
                )
                .retry_after(1)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = crate::message::cut(&self.message, crate::message::MAX_ECHOED_MESSAGE);
        let mut error = json!({"code": self.code, "message": message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        if let Some(rule) = self.rule {
            error["rule"] = json!(rule);
        }
        let mut resp = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
