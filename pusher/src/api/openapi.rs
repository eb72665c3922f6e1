//! The OpenAPI document of the HTTP API, generated with utoipa from the handlers' `#[utoipa::path]`
//! attributes and the schema types of `schema.rs`; served at `GET /openapi.json` and
//! committed as `docs/openapi.json` (a unit test fails when the two drift; `UPDATE_OPENAPI=1`
//! rewrites the file).
//!
//! What the handlers answer is described by the types they answer with: the status document is
//! [`crate::message::MessageRecord`] itself, statuses are [`crate::message::Status`], error
//! codes [`crate::error_code::ErrorCode`], `last_error` is
//! [`crate::send::SendError`]. The handlers validate request bodies by hand (from a JSON value,
//! so every error names its field), so the request shapes and the small answer envelopes are
//! described by the types of `schema.rs`, which exist for the document only; the tests below
//! check them against the code's limits.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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

/// A message body is one of the providers' shapes; the channel's `provider` says which. A
/// robot's body also fits an application's shape (whose recipients are optional in the
/// schema), so "exactly one" (`oneOf`, what utoipa writes for an untagged enum) would be false:
/// the document says `anyOf`.
#[derive(Debug)]
struct AnyMessageBody;

impl Modify for AnyMessageBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{AnyOfBuilder, Schema};
        let Some(slot) = openapi
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("MessageBody"))
        else {
            return;
        };
        if let RefOr::T(Schema::OneOf(one)) = slot {
            let any = one
                .items
                .drain(..)
                .fold(AnyOfBuilder::new(), AnyOfBuilder::item)
                .description(one.description.take())
                .build();
            *slot = RefOr::T(Schema::AnyOf(any));
        }
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
        super::messages::post_message,
        super::messages::post_batch,
        super::messages::get_message,
        super::recall::recall_message,
        super::dead_letters::list_dead_letters,
        super::dead_letters::replay,
        super::subscriptions::add_subscription,
        super::subscriptions::get_subscription,
        super::health::healthz,
        super::health::readyz,
        super::health::status,
    ),
    modifiers(&BearerAuth, &AnyMessageBody)
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

pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error_code::ErrorCode;
    use crate::message::{self, EventRecord, MessageId, parse_message};
    use crate::send::{ErrorKind, SendError};
    use serde_json::Value;
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
        let shown = super::super::shared::status_doc(&r);
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
        assert_eq!(
            limit["schema"]["minimum"],
            json!(super::super::dead_letters::MIN_PAGE)
        );
        assert_eq!(
            limit["schema"]["maximum"],
            json!(super::super::dead_letters::MAX_PAGE)
        );
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
