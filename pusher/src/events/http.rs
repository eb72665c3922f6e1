//! `GET,POST /wechat/events`: WeChat's server-URL callback.
//!
//! - `GET ?signature&timestamp&nonce&echostr`: the URL check; answers `echostr` (text/plain,
//!   `X-Content-Type-Options: nosniff`) when `signature` is right and `timestamp` fresh, else
//!   403.
//! - `GET ?msg_signature&timestamp&nonce&echostr`: WeCom's URL check; `msg_signature` covers
//!   the encrypted `echostr`, which must open with the channel's cipher (the corp id as
//!   receive id, so `events.encodingAesKey` is needed); answers the plain text inside, else
//!   403.
//! - Every `POST` must carry a fresh `timestamp` and a `(timestamp, nonce)` not accepted before
//!   ([`super::replay`]), else 403: in plain mode the signature does not cover the body.
//! - The mode is `events.mode`, never the request's `encrypt_type`.
//! - `POST` in `plain` mode: `signature` must be right (else 403); the body is the event XML.
//! - `POST` in `safe` and `compatible` mode: `msg_signature` over the `<Encrypt>` text must be
//!   right (else 403, also when either is missing); only the decrypted payload is used, and it
//!   must name the channel's appid (else 400).
//! - A TEMPLATESENDJOBFINISH event is recorded through [`Store::record_event`]; a WeCom change
//!   event is counted and logged ([`super::wecom`]); any other message or event is
//!   acknowledged and ignored. Every accepted request is answered `success`
//!   (text/plain) at once; only a store failure answers 503, so that WeChat retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::Timestamp;

use super::replay::{Refusal, ReplayGuard};
use super::wecom::WeComEvent;
use super::{DeliveryEvent, EventOutcome, is_template_event, parse_xml};
use crate::metrics::Metrics;
use crate::metrics::{EventName, EventResult};
use crate::resilience::backoff::Backoff;
use crate::store::Store;
use wxcrypto::{Cipher, verify_msg_signature, verify_signature};

/// Largest event body accepted (WeChat's events are well under 2 KiB).
pub const MAX_EVENT_BODY: usize = 64 * 1024;

/// What the event handlers share.
pub struct EventsState<S> {
    /// The queue (finds messages, de-duplicates, applies transitions).
    pub store: S,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The server-URL token.
    pub token: String,
    /// The cipher (EncodingAESKey + the channel's appid) in `safe` and `compatible` mode;
    /// `None` in `plain` mode. The mode is configuration (`events.mode`), never the request's.
    pub cipher: Option<Cipher>,
    /// How long an event whose message is not found yet is re-tried before it is acknowledged
    /// as unmatched (covers an event that overtakes the store's `delivered` commit).
    pub match_wait: Duration,
    /// The freshness window and the `(timestamp, nonce)` pairs seen in it.
    pub replay: parking_lot::Mutex<ReplayGuard>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for EventsState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never print it.
        f.debug_struct("EventsState")
            .field("store", &self.store)
            .field("cipher", &self.cipher)
            .field("match_wait", &self.match_wait)
            .finish_non_exhaustive()
    }
}

/// The `/wechat/events` router (mount it only when a token is configured).
pub fn router<S: Store + Clone>(state: Arc<EventsState<S>>) -> Router {
    Router::new()
        .route("/wechat/events", get(verify_url::<S>).post(receive::<S>))
        .layer(DefaultBodyLimit::max(MAX_EVENT_BODY))
        .with_state(state)
}

type Params = Query<HashMap<String, String>>;

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.into(),
    )
        .into_response()
}

fn refused<S>(state: &EventsState<S>, why: Refusal) -> Response {
    state.metrics.event(EventName::Unread, why.metric_label());
    match why {
        Refusal::Stale => text(StatusCode::FORBIDDEN, "stale timestamp"),
        Refusal::Replayed => text(StatusCode::FORBIDDEN, "replayed request"),
        Refusal::Full => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "retry later");
            r.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> &'a str {
    q.get(name).map_or("", String::as_str)
}

fn signed<S>(state: &EventsState<S>, q: &HashMap<String, String>) -> bool {
    let sig = param(q, "signature");
    !sig.is_empty() && verify_signature(&state.token, param(q, "timestamp"), param(q, "nonce"), sig)
}

/// WeCom's URL check: `msg_signature` covers the encrypted `echostr`, which must open with the
/// channel's cipher (the corp id as receive id); the answer is the plain text inside. `None`
/// when the request is not WeCom's (no `msg_signature`).
fn wecom_echostr<S>(
    state: &EventsState<S>,
    q: &HashMap<String, String>,
) -> Option<Result<String, ()>> {
    let sig = q.get("msg_signature").filter(|s| !s.is_empty())?;
    let echostr = param(q, "echostr");
    let Some(cipher) = state.cipher.as_ref() else {
        return Some(Err(()));
    };
    if !verify_msg_signature(
        &state.token,
        param(q, "timestamp"),
        param(q, "nonce"),
        echostr,
        sig,
    ) {
        return Some(Err(()));
    }
    Some(
        cipher
            .decrypt(echostr)
            .ok()
            .and_then(|plain| String::from_utf8(plain).ok())
            .ok_or(()),
    )
}

async fn verify_url<S: Store>(
    State(state): State<Arc<EventsState<S>>>,
    Query(q): Params,
) -> Response {
    // WeCom signs the encrypted echostr (msg_signature) and wants it opened; WeChat signs the
    // query (signature) and wants the echostr as sent. Past the signature both are the same.
    let echo = match wecom_echostr(&state, &q) {
        Some(Ok(plain)) => Some(plain),
        Some(Err(())) => None,
        None => signed(&state, &q).then(|| param(&q, "echostr").to_string()),
    };
    let Some(echo) = echo else {
        state
            .metrics
            .event(EventName::Unread, EventResult::BadSignature);
        return text(StatusCode::FORBIDDEN, "invalid signature");
    };
    if let Err(why) = state
        .replay
        .lock()
        .fresh(param(&q, "timestamp"), Timestamp::now().as_second())
    {
        return refused(&state, why);
    }
    state.metrics.event(EventName::Unread, EventResult::Echostr);
    text(StatusCode::OK, echo)
}

/// The answer for a request whose payload has been checked.
fn success() -> Response {
    text(StatusCode::OK, "success")
}

async fn receive<S: Store>(
    State(state): State<Arc<EventsState<S>>>,
    Query(q): Params,
    body: Bytes,
) -> Response {
    let metrics = &state.metrics;
    // The mode is the configured one; the request's own `encrypt_type` is never trusted, so a
    // captured query string cannot downgrade a sealed channel to plain mode.
    let plain_xml = match &state.cipher {
        Some(cipher) => match open_sealed(&state, cipher, &q, &body) {
            Ok(xml) => xml,
            Err((status, why)) => return text(status, why),
        },
        None => {
            if param(&q, "encrypt_type").eq_ignore_ascii_case("aes") {
                metrics.event(EventName::Unread, EventResult::BadRequest);
                return text(
                    StatusCode::BAD_REQUEST,
                    "events.mode is plain: this pusher has no EncodingAESKey",
                );
            }
            if !signed(&state, &q) {
                metrics.event(EventName::Unread, EventResult::BadSignature);
                return text(StatusCode::FORBIDDEN, "invalid signature");
            }
            body.to_vec()
        }
    };
    // Signed; now fresh and new? (In plain mode only this stops a re-bodied request.)
    let checked = state.replay.lock().check(
        param(&q, "timestamp"),
        param(&q, "nonce"),
        Timestamp::now().as_second(),
    );
    let reserved = match checked {
        Ok(r) => r,
        Err(why) => return refused(&state, why),
    };
    let xml = match parse_xml(&plain_xml) {
        Ok(x) => x,
        Err(_) => {
            metrics.event(EventName::Unread, EventResult::BadRequest);
            return text(StatusCode::BAD_REQUEST, "malformed XML");
        }
    };
    if let Some(event) = super::wecom::read(&xml) {
        wecom_event(&state, &event);
        return success();
    }
    if !is_template_event(&xml) {
        metrics.event(EventName::Other, EventResult::Ignored);
        return success();
    }
    let event = match DeliveryEvent::from_xml(&xml, Timestamp::now()) {
        Ok(e) => e,
        Err(e) => {
            metrics.event(EventName::TemplateSendJobFinish, EventResult::BadRequest);
            return text(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    match record(&state, event).await {
        Ok(outcome) => {
            metrics.event(EventName::TemplateSendJobFinish, outcome.metric_label());
            success()
        }
        Err(e) => {
            tracing::warn!(error = %e, "event not recorded");
            // WeChat retries: its retry must not be taken for a replay.
            state.replay.lock().release(reserved);
            metrics.event(EventName::TemplateSendJobFinish, EventResult::Error);
            text(StatusCode::SERVICE_UNAVAILABLE, "retry later")
        }
    }
}

/// A WeCom event: counted, and a recipient that became unreachable logged (its id at debug
/// level only).
fn wecom_event<S>(state: &EventsState<S>, event: &WeComEvent) {
    let metrics = &state.metrics;
    match event {
        WeComEvent::UserUnreachable { user_id, why } => {
            metrics.event(EventName::ChangeContact, EventResult::Unreachable);
            tracing::info!(
                change = why.as_str(),
                "a WeCom user became unreachable: WeCom will name it in invaliduser"
            );
            tracing::debug!(user_id, change = why.as_str(), "unreachable WeCom user");
        }
        WeComEvent::PartyUnreachable { party_id } => {
            metrics.event(EventName::ChangeContact, EventResult::Unreachable);
            tracing::info!(
                party_id,
                "a WeCom party was deleted: WeCom will name it in invalidparty"
            );
        }
        WeComEvent::OtherContactChange => {
            metrics.event(EventName::ChangeContact, EventResult::Ignored);
        }
        WeComEvent::TemplateCard => {
            metrics.event(EventName::TemplateCardEvent, EventResult::Ignored);
        }
    }
}

/// Safe and compatible mode: the `msg_signature` over the `<Encrypt>` text must be right (else
/// 403) and only the decrypted payload is used; plain fields beside `<Encrypt>` are ignored.
fn open_sealed<S>(
    state: &EventsState<S>,
    cipher: &Cipher,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Result<Vec<u8>, (StatusCode, &'static str)> {
    let metrics = &state.metrics;
    let Ok(outer) = parse_xml(body) else {
        metrics.event(EventName::Unread, EventResult::BadRequest);
        return Err((StatusCode::BAD_REQUEST, "malformed XML"));
    };
    let sig = param(q, "msg_signature");
    let encrypt = outer.encrypt.as_deref().map(str::trim);
    let Some(encrypt) = encrypt.filter(|_| !sig.is_empty()) else {
        // A plaintext body, or one without its msg_signature: a downgrade attempt or a
        // misconfigured mode. Either way it is not signed over its content.
        metrics.event(EventName::Unread, EventResult::BadSignature);
        return Err((
            StatusCode::FORBIDDEN,
            "events.mode is sealed: msg_signature over <Encrypt> required",
        ));
    };
    if !verify_msg_signature(
        &state.token,
        param(q, "timestamp"),
        param(q, "nonce"),
        encrypt,
        sig,
    ) {
        metrics.event(EventName::Unread, EventResult::BadSignature);
        return Err((StatusCode::FORBIDDEN, "invalid msg_signature"));
    }
    cipher.decrypt(encrypt).map_err(|e| {
        tracing::warn!(reason = e.metric_label(), "event payload cannot be opened");
        metrics.event(EventName::Unread, EventResult::DecryptFailed);
        (StatusCode::BAD_REQUEST, "cannot decrypt")
    })
}

/// Records the event. An event whose message is not found yet is re-tried for up to
/// `match_wait` (WeChat's own wait is 5 s, so the answer stays well inside it): it can overtake
/// the store's `delivered` commit. A known (non-zero) `MsgID` is looked up in the msgid index
/// only until the wait is over, and only then falls back to the openid, so that an early event
/// is not attributed to another message of the same user.
async fn record<S: Store>(
    state: &EventsState<S>,
    event: DeliveryEvent,
) -> Result<EventOutcome, crate::store::StoreError> {
    let deadline = tokio::time::Instant::now() + state.match_wait;
    let curve = Backoff::doubling(Duration::from_millis(20), Duration::from_millis(250));
    let mut tries = 0;
    loop {
        tries += 1;
        let pause = curve.delay(tries, 0.0);
        let last = tokio::time::Instant::now() + pause > deadline;
        let fallback = event.msgid == 0 || last;
        let outcome = state.store.record_event(event.clone(), fallback).await?;
        if outcome != EventOutcome::Unmatched || last {
            if outcome == EventOutcome::Unmatched {
                tracing::debug!(msgid = event.msgid, "event matches no message");
            }
            return Ok(outcome);
        }
        tokio::time::sleep(pause).await;
    }
}
