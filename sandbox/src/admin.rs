//! The admin routes under `/__`: statistics, reset, faults at run time, forced token
//! invalidation. Connections that use them survive outages.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::faults::FaultConfig;
use super::net::ConnInfo;
use super::state::Shared;
use super::stats::StatsSnapshot;

/// Marks the connection as an admin one before serving the route.
pub(crate) async fn admin_layer(
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    req: Request,
    next: Next,
) -> Response {
    conn.mark_admin();
    next.run(req).await
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.to_string()})),
    )
        .into_response()
}

/// The query of `GET /__stats`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct StatsQuery {
    /// `false` leaves `per_openid` empty (a cheap poll of the counters).
    #[serde(default = "yes")]
    per_openid: bool,
}

fn yes() -> bool {
    true
}

/// `GET /__stats` (`?per_openid=false`: without the per-openid counts).
pub(crate) async fn stats(
    State(state): State<Shared>,
    axum::extract::Query(query): axum::extract::Query<StatsQuery>,
) -> Json<StatsSnapshot> {
    Json(state.stats.snapshot_with(query.per_openid))
}

/// `POST /__reset`: counters, tokens, quotas, de-duplication and faults back to start-up.
pub(crate) async fn reset(State(state): State<Shared>) -> Json<Value> {
    state.reset();
    Json(json!({"reset": true}))
}

/// `GET /__faults`.
pub(crate) async fn get_faults(State(state): State<Shared>) -> Response {
    let cfg = state.faults.get();
    Json(json!({"faults": &*cfg, "outage_active": state.net.in_outage()})).into_response()
}

/// `PUT /__faults`: replaces the whole fault config (absent fields = no fault).
pub(crate) async fn put_faults(State(state): State<Shared>, body: Bytes) -> Response {
    let cfg: FaultConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    match state.apply_faults(cfg, true) {
        Ok(()) => get_faults(State(state)).await,
        Err(e) => bad_request(e),
    }
}

/// `PATCH /__faults`: merges the given fields into the current config. The outage is
/// (re)scheduled only when the patch names `outage`.
pub(crate) async fn patch_faults(State(state): State<Shared>, body: Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => return bad_request("the patch must be a JSON object"),
        Err(e) => return bad_request(e),
    };
    let mut current = match serde_json::to_value(&*state.faults.get()) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let touches_outage = patch.get("outage").is_some();
    if let (Value::Object(cur), Value::Object(p)) = (&mut current, patch) {
        cur.extend(p);
    }
    let cfg: FaultConfig = match serde_json::from_value(current) {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    match state.apply_faults(cfg, touches_outage) {
        Ok(()) => get_faults(State(state)).await,
        Err(e) => bad_request(e),
    }
}

/// `POST /__tokens/invalidate`: revokes every access_token now.
pub(crate) async fn invalidate_tokens(State(state): State<Shared>) -> Json<Value> {
    let revoked = state.invalidate_tokens();
    Json(json!({"revoked": revoked}))
}

/// `GET /__config`: the start-up configuration, secrets left out.
pub(crate) async fn config(State(state): State<Shared>) -> Json<Value> {
    Json(serde_json::to_value(&state.cfg).unwrap_or(Value::Null))
}

/// `GET /__health`.
pub(crate) async fn health() -> &'static str {
    "ok"
}

/// `GET /__deliveries`: what was delivered, as delivered (with a template catalogue only).
pub(crate) async fn deliveries(State(state): State<Shared>) -> Json<Value> {
    Json(json!({"deliveries": state.templates.deliveries()}))
}

/// Body of `POST /__subscriptions`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Consent {
    openid: String,
    template_id: String,
    #[serde(default = "one")]
    count: u64,
}

fn one() -> u64 {
    1
}

/// `POST /__subscriptions` `{"openid", "template_id", "count"}`: a user's consent to a
/// one-time subscribe template (`count` sends, default 1), as a tap on the prompt gives.
pub(crate) async fn add_subscription(State(state): State<Shared>, body: Bytes) -> Response {
    let c: Consent = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    let left = state
        .templates
        .add_consent(&c.openid, &c.template_id, c.count);
    Json(json!({"openid": c.openid, "template_id": c.template_id, "consents": left}))
        .into_response()
}

/// Query of `GET /__subscriptions`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ConsentQuery {
    openid: String,
    template_id: String,
}

/// `GET /__subscriptions?openid=&template_id=`: consents left.
pub(crate) async fn get_subscriptions(
    State(state): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<ConsentQuery>,
) -> Json<Value> {
    let left = state.templates.consents(&q.openid, &q.template_id);
    Json(json!({"openid": q.openid, "template_id": q.template_id, "consents": left}))
}
