//! The OpenAPI document of the HTTP API, generated with utoipa from the handlers' `#[utoipa::path]`
//! attributes (in `api/mod.rs`) and the schema types below; served at `GET /openapi.json` and
//! committed as `docs/openapi.json` (a unit test fails when the two drift; `UPDATE_OPENAPI=1`
//! rewrites the file).
//!
//! What the handlers answer is described by the types they answer with: the status document is
//! [`MessageRecord`] itself, statuses are [`Status`], error codes [`ErrorCode`], `last_error` is
//! [`crate::send::SendError`]. The handlers validate request bodies by hand (from a JSON value,
//! so every error names its field), so the request shapes and the small answer envelopes are
//! described by types below that exist for the document only; the tests below check them
//! against the code's limits.

#![allow(dead_code)] // The types below are never built: they describe JSON for the document.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error_code::ErrorCode;
use crate::message::{MessageRecord, MiniProgram, Status};
use crate::send::MessageKind;

/// A message to send (`POST /v1/messages`, an item of a batch). Unknown fields are refused.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// `template` (default), `subscribe` or `bizsend`.
    #[schema(nullable = false)]
    kind: Option<MessageKind>,
    /// The recipient's openid.
    #[schema(min_length = 1, max_length = 128)]
    touser: String,
    /// The template.
    #[schema(min_length = 1, max_length = 128)]
    template_id: String,
    /// Page opened on tap (template messages): an absolute http(s) URL.
    #[schema(max_length = 2048, nullable = false)]
    url: Option<String>,
    /// Mini Program opened on tap.
    #[schema(nullable = false)]
    miniprogram: Option<MiniProgram>,
    /// Mini Program page (subscribe messages and subscription notices).
    #[schema(max_length = 1024, nullable = false)]
    page: Option<String>,
    /// `developer`, `trial` or `formal`.
    #[schema(nullable = false)]
    miniprogram_state: Option<MiniProgramState>,
    /// Language, e.g. `zh_CN`.
    #[schema(max_length = 16, nullable = false)]
    lang: Option<String>,
    /// The template's fields: `{"keyword1": {"value": "..."}}`.
    #[schema(value_type = Object, nullable = false, required = false)]
    data: Option<Value>,
    /// The `client_msg_id` (default: derived from the id).
    #[schema(min_length = 1, max_length = 64, nullable = false)]
    client_msg_id: Option<String>,
    /// Give up after this instant (RFC 3339).
    #[schema(format = DateTime, nullable = false)]
    expires_at: Option<String>,
    /// Where to POST the outcome; internal targets are refused unless `callbacks.allow` lists
    /// them.
    #[schema(max_length = 2048, nullable = false)]
    callback_url: Option<String>,
}

/// `POST /v1/subscriptions`: a user's consent to a one-time subscribe template.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    /// The user's openid.
    #[schema(min_length = 1, max_length = 128)]
    openid: String,
    /// The one-time subscribe template the user accepted.
    #[schema(min_length = 1, max_length = 128)]
    template_id: String,
    /// Consents given at once (default 1).
    #[schema(minimum = 1, maximum = 100, nullable = false)]
    count: Option<u32>,
}

/// The credits of one user for one template.
#[derive(Debug, ToSchema)]
pub struct Credits {
    /// The user's openid.
    openid: String,
    /// The template.
    template_id: String,
    /// One-time sends left.
    credits: u64,
}

/// `miniprogram_state` of a subscribe message.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum MiniProgramState {
    /// The developer version.
    Developer,
    /// The trial version.
    Trial,
    /// The released version.
    Formal,
}

/// `POST /v1/messages/batch`.
#[derive(Debug, ToSchema)]
pub struct BatchRequest {
    /// 1 to `api.maxBatch` messages.
    #[schema(min_items = 1)]
    messages: Vec<MessageRequest>,
}

/// A message was accepted (or, with a repeated `Idempotency-Key`, had been).
#[derive(Debug, ToSchema)]
pub struct Accepted {
    /// The message's id.
    id: String,
    /// Its status now.
    status: Status,
    /// What the template check found: fields WeChat ignores, values cut (`truncate`). Absent
    /// when nothing.
    #[schema(nullable = false)]
    warnings: Option<Vec<crate::message::TemplateNote>>,
}

/// The answer of a batch: one result per item, in order.
#[derive(Debug, ToSchema)]
pub struct BatchAnswer {
    /// Items accepted.
    accepted: u64,
    /// Items refused.
    rejected: u64,
    /// `{id, status}` or `{error}` per item.
    results: Vec<BatchItem>,
}

/// One item's result.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    /// Accepted.
    Accepted(Accepted),
    /// Refused.
    Refused(ItemError),
}

/// A refused batch item.
#[derive(Debug, ToSchema)]
pub struct ItemError {
    /// Why.
    error: ErrorDetail,
}

/// A refused batch: all items refused, or the body itself at fault.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum BatchRefused {
    /// Every item refused.
    Items(BatchAnswer),
    /// The body is wrong as a whole.
    Body(ErrorBody),
}

/// An error answer.
#[derive(Debug, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, ToSchema)]
pub struct ErrorDetail {
    /// What kind of error.
    code: ErrorCode,
    /// A sentence for people.
    message: String,
    /// The field at fault, as a path (at most 128 characters).
    #[schema(nullable = false)]
    field: Option<String>,
    /// The template rule broken (`template_rule` errors only): `unknown_template`,
    /// `missing_keyword`, `unknown_keyword`, `empty_value`, `too_long`, `bad_characters`,
    /// `bad_format`, `not_allowed_value`, `line_break`, `control_character`,
    /// `no_subscription_credit`.
    #[schema(nullable = false)]
    rule: Option<String>,
}

/// A page of dead letters.
#[derive(Debug, ToSchema)]
pub struct DeadLetterPage {
    /// Status documents, oldest first.
    items: Vec<MessageRecord>,
    /// The id to pass as `after` for the next page; null on the last one.
    next: Option<String>,
}

/// `/healthz` and `/readyz`: one word, nothing more (they need no token).
#[derive(Debug, ToSchema)]
pub struct Health {
    /// `ok`, `on_hold` (`/healthz` only: sending is held) or `unavailable`.
    #[schema(pattern = "^(ok|on_hold|unavailable)$")]
    status: String,
}

/// `/v1/status`: the state with its reasons, for holders of the token.
#[derive(Debug, ToSchema)]
pub struct ServiceStatus {
    /// As `/healthz`: `ok`, `on_hold` or `unavailable`.
    status: String,
    /// Whether the store heals (false: `/healthz` answers 503).
    live: bool,
    /// Whether the pusher takes messages (`/readyz`).
    ready: bool,
    /// Why not ready: `draining` or `store unavailable` (null when ready).
    not_ready_reason: Option<String>,
    /// `active`, or `on_hold` (paused channel, open circuit).
    sending: String,
    /// Why sending is held: `{until, cause, reason}` (`cause`: `paused` or `circuit_open`) with
    /// WeChat's errcode and errmsg (null while sending).
    #[schema(value_type = Option<Object>)]
    hold: Option<Value>,
    /// The template registry: `validation` (`auto`, `strict`, `truncate`, `off`), the number of
    /// templates cached per list (`private`, `subscribe`; null while never read) and
    /// `fetched_at` (null before the first fetch).
    #[schema(value_type = Object)]
    templates: Value,
}

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "wxpush pusher",
        description = "Accepts WeChat template messages, stores them durably and delivers them \
                       with retries. See docs/pusher.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::post_message,
        super::post_batch,
        super::get_message,
        super::recall::recall_message,
        super::list_dead_letters,
        super::replay,
        super::add_subscription,
        super::get_subscription,
        super::healthz,
        super::readyz,
        super::status,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `/openapi.json` serves and `docs/openapi.json` holds).
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate's version would make the file drift on every release: the API has its own.
    doc.info.version = "v1".into();
    let mut text = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{self, EventRecord, MessageId, parse_message};
    use crate::send::{ErrorKind, SendError};
    use serde_json::json;

    fn doc() -> Value {
        serde_json::from_str(&document_json()).expect("the document is JSON")
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_error_codes_are_the_enums() {
        let doc = doc();
        let listed = strings(&schema(&doc, "ErrorCode")["enum"]);
        let code_names: Vec<String> = ErrorCode::ALL.iter().map(|c| c.as_str().into()).collect();
        assert_eq!(listed, code_names);
        let statuses = strings(&schema(&doc, "Status")["enum"]);
        assert!(
            statuses.contains(&"unknown_outcome".to_string()),
            "{statuses:?}"
        );
        assert_eq!(statuses.len(), 10);
    }

    /// Every key the status document can hold is a property of its schema, and the reverse.
    #[test]
    fn the_status_schema_has_every_field_of_the_document() {
        let now = jiff::Timestamp::now();
        let msg = parse_message(&json!({"touser": "o", "template_id": "T", "url": "https://a.example/",
            "miniprogram": {"appid": "wx1", "pagepath": "p"}, "page": "p", "miniprogram_state": "trial",
            "lang": "zh_CN", "data": {"k": {"value": "v"}}, "client_msg_id": "c",
            "expires_at": "2030-01-01T00:00:00Z", "callback_url": "https://cb.example/"}))
        .expect("valid");
        let mut r = message::MessageRecord::new(MessageId::new(), msg, Some("k".into()), now);
        r.request_digest = Some("d".into());
        r.last_error = Some(SendError {
            kind: ErrorKind::Errcode,
            errcode: Some(45009),
            message: "quota".into(),
        });
        r.msgid = Some(1);
        r.message.subscription_credit = true;
        r.message.template_notes.push(message::TemplateNote {
            field: "data.k".into(),
            rule: "too_long".into(),
            action: "cut".into(),
            message: "cut".into(),
        });
        r.first_attempt_at = Some(now);
        r.finished_at = Some(now);
        r.events.push(EventRecord {
            status: "success".into(),
            msgid: 1,
            create_time: 1,
            received_at: now,
            matched_by: "msgid".into(),
            applied: true,
        });
        r.receipt = Some(crate::send::Receipt {
            provider_msgid: Some("m".into()),
            invalid: crate::send::InvalidRecipients {
                users: vec!["u".into()],
                parties: vec!["p".into()],
                tags: vec!["t".into()],
                unlicensed_users: vec!["l".into()],
            },
            recalled_at: Some(now),
        });
        r.message.wecom = Some(message::TemplateData::default());
        let shown = super::super::status_doc(&r);
        let doc = doc();
        let props = |name: &str, v: &Value| {
            let mut shown: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            shown.sort();
            let mut documented: Vec<String> = schema(&doc, name)["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{name} has properties"))
                .keys()
                .cloned()
                .collect();
            documented.sort();
            assert_eq!(shown, documented, "{name}");
        };
        props("MessageStatus", &shown);
        props("Message", &shown["message"]);
        props("LastError", &shown["last_error"]);
        props("EventRecord", &shown["events"][0]);
        props("MiniProgram", &shown["message"]["miniprogram"]);
        props("TemplateNote", &shown["message"]["template_notes"][0]);
        props("Receipt", &shown["receipt"]);
        props("InvalidRecipients", &shown["receipt"]["invalid"]);
        // The request takes the same fields as the stored message, but for the two the pusher
        // adds.
        let mut request = shown["message"].clone();
        request
            .as_object_mut()
            .expect("object")
            .remove("template_notes");
        request
            .as_object_mut()
            .expect("object")
            .remove("subscription_credit");
        // A WeCom message is its own shape (docs/pusher.md); the pusher keeps its body here.
        request.as_object_mut().expect("object").remove("wecom");
        props("MessageRequest", &request);
    }

    /// The bounds the document states are the ones the handlers enforce.
    #[test]
    fn the_documented_bounds_are_the_codes() {
        let doc = doc();
        let req = &schema(&doc, "MessageRequest")["properties"];
        for (field, max) in [
            ("touser", message::MAX_TOUSER),
            ("template_id", message::MAX_TEMPLATE_ID),
            ("url", message::MAX_URL),
            ("callback_url", message::MAX_URL),
            ("page", message::MAX_PAGE),
            ("client_msg_id", message::MAX_CLIENT_MSG_ID),
        ] {
            assert_eq!(req[field]["maxLength"], json!(max), "{field}");
        }
        let mp = &schema(&doc, "MiniProgram")["properties"];
        assert_eq!(mp["appid"]["maxLength"], json!(message::MAX_APPID));
        assert_eq!(mp["pagepath"]["maxLength"], json!(message::MAX_PAGE));
        let params = doc["paths"]["/v1/dead-letters"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .clone();
        let limit = params
            .iter()
            .find(|p| p["name"] == "limit")
            .expect("limit is documented");
        assert_eq!(limit["schema"]["minimum"], json!(super::super::MIN_PAGE));
        assert_eq!(limit["schema"]["maximum"], json!(super::super::MAX_PAGE));
        let key = doc["paths"]["/v1/messages"]["post"]["parameters"][0].clone();
        assert_eq!(
            key["schema"]["maxLength"],
            json!(message::MAX_IDEMPOTENCY_KEY)
        );
    }

    #[test]
    fn every_202_and_401_documents_its_headers() {
        let doc = doc();
        for (path, method) in [
            ("/v1/messages", "post"),
            ("/v1/messages/batch", "post"),
            ("/v1/dead-letters/{id}/retry", "post"),
        ] {
            let op = &doc["paths"][path][method]["responses"];
            let h = &op["202"]["headers"];
            if path != "/v1/messages/batch" {
                assert!(h.get("Location").is_some(), "{path}");
            }
            if path != "/v1/dead-letters/{id}/retry" {
                assert!(h.get("Idempotent-Replayed").is_some(), "{path}");
            }
            assert!(
                op["401"]["headers"].get("WWW-Authenticate").is_some(),
                "{path}"
            );
        }
    }

    #[test]
    fn openapi_json_in_docs_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let now = document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &now).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/openapi.json drifted from the code: run `UPDATE_OPENAPI=1 cargo test -p \
             wxpush-pusher --lib openapi` and commit it"
        );
    }
}
