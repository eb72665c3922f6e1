//! The WeCom routes: `gettoken`, `message/send`, `message/recall` and `webhook/send`. The
//! fault layer in front of them is the WeChat routes' one (`crate::api::fault_layer`).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use wxcrypto::errcode::wecom::WeComCode;

use crate::net::ConnInfo;
use crate::quota::unix_secs;
use crate::state::Shared;
use crate::wecom::content::Refusal;
use crate::wecom::recall::Recalled;

const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=UTF-8");

fn json(body: impl Into<Bytes>) -> Response {
    ([(header::CONTENT_TYPE, JSON)], body.into()).into_response()
}

/// Answers an errcode (with a hint when there is one), counting it.
pub(crate) fn wecom_error(state: &Shared, code: WeComCode, hint: Option<&str>) -> Response {
    state.stats.wecom.errcode(code);
    json(match hint {
        Some(h) => code.json_with_hint(h),
        None => code.json(),
    })
}

fn refused(state: &Shared, r: &Refusal) -> Response {
    wecom_error(state, r.code, Some(&r.hint))
}

fn ok(state: &Shared, mut fields: Map<String, Value>) -> Response {
    state.stats.wecom.errcode(WeComCode::Ok);
    let mut answer = Map::new();
    answer.insert("errcode".into(), Value::from(0));
    answer.insert("errmsg".into(), Value::from("ok"));
    answer.append(&mut fields);
    json(Value::Object(answer).to_string())
}

/// 60020 naming the caller's address, as WeCom does.
fn untrusted_ip(state: &Shared, peer: std::net::SocketAddr) -> Option<Response> {
    if state.cfg.wecom.ip_trusted(peer.ip()) {
        return None;
    }
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    let code = WeComCode::IpNotAllowed;
    state.stats.wecom.errcode(code);
    let errmsg = format!("{}, from ip: {ip}", code.errmsg_with_hint("sandbox"));
    Some(json(
        serde_json::json!({"errcode": code.code(), "errmsg": errmsg}).to_string(),
    ))
}

/// Query of `GET /cgi-bin/gettoken`.
#[derive(Debug, Deserialize)]
pub(crate) struct GetTokenQuery {
    corpid: Option<String>,
    corpsecret: Option<String>,
}

/// `GET /cgi-bin/gettoken`: the app's current token while valid, else a new one.
pub(crate) async fn gettoken(
    State(state): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    Query(q): Query<GetTokenQuery>,
) -> Response {
    let now = Instant::now();
    state.maybe_invalidate(now);
    if let Some(r) = untrusted_ip(&state, conn.peer()) {
        return r;
    }
    let wc = &state.cfg.wecom;
    let Some(corpid) = q.corpid.as_deref().filter(|c| !c.is_empty()) else {
        return wecom_error(&state, WeComCode::CorpIdMissing, None);
    };
    if corpid != wc.corp_id {
        return wecom_error(&state, WeComCode::InvalidCorpId, None);
    }
    let Some(secret) = q.corpsecret.as_deref().filter(|s| !s.is_empty()) else {
        return wecom_error(&state, WeComCode::SecretMissing, None);
    };
    let Some(app) = wc.app_by_secret(secret) else {
        return wecom_error(&state, WeComCode::InvalidSecret, None);
    };
    let issued = state.wecom.tokens.issue(app.agentid, now);
    state.stats.wecom.token_fetch(app.agentid, issued.new);
    let mut fields = Map::new();
    fields.insert("access_token".into(), Value::from(&*issued.token));
    fields.insert("expires_in".into(), Value::from(issued.expires_in));
    ok(&state, fields)
}

/// The `access_token` query parameter.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    access_token: Option<String>,
}

/// The token's app, or the error answer.
fn authorise(
    state: &Shared,
    conn: &ConnInfo,
    q: &TokenQuery,
    now: Instant,
) -> Result<u64, Box<Response>> {
    state.maybe_invalidate(now);
    if let Some(r) = untrusted_ip(state, conn.peer()) {
        return Err(Box::new(r));
    }
    state
        .wecom
        .tokens
        .validate(q.access_token.as_deref(), now)
        .map_err(|code| Box::new(wecom_error(state, code, None)))
}

/// `POST /cgi-bin/message/send`.
pub(crate) async fn message_send(
    State(state): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let agentid = match authorise(&state, &conn, &q, now) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let wc = &state.wecom;
    match wc
        .messages
        .send(agentid, &body, &wc.directory, &wc.sent, now, unix_secs())
    {
        Ok(sent) => {
            if sent.unique {
                state
                    .stats
                    .wecom
                    .delivered(agentid, &sent.delivered_to, sent.unreached_counts);
            } else {
                state.stats.wecom.duplicate(agentid);
            }
            let mut fields = Map::new();
            sent.unreached.write(&mut fields);
            fields.insert("msgid".into(), Value::from(sent.msgid));
            if let Some(rc) = sent.response_code {
                fields.insert("response_code".into(), Value::from(rc));
            }
            ok(&state, fields)
        }
        Err(r) => match r.unreached {
            Some(unreached) => {
                let code = r.refusal.code;
                state.stats.wecom.errcode(code);
                let mut answer = Map::new();
                answer.insert("errcode".into(), Value::from(code.code()));
                answer.insert(
                    "errmsg".into(),
                    Value::from(code.errmsg_with_hint(&r.refusal.hint)),
                );
                unreached.write(&mut answer);
                json(Value::Object(answer).to_string())
            }
            None => refused(&state, &r.refusal),
        },
    }
}

/// `POST /cgi-bin/message/recall` `{"msgid": "..."}`.
pub(crate) async fn message_recall(
    State(state): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let agentid = match authorise(&state, &conn, &q, now) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let msgid = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => match m.get("msgid") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return wecom_error(&state, WeComCode::InvalidParameter, Some("msgid missing"));
            }
        },
        _ => {
            return wecom_error(
                &state,
                WeComCode::InvalidParameter,
                Some("the body is not a JSON object"),
            );
        }
    };
    match state.wecom.sent.recall(agentid, &msgid, now) {
        Ok(how) => {
            state.stats.wecom.recall(how == Recalled::Now, false);
            ok(&state, Map::new())
        }
        Err(r) => {
            state.stats.wecom.recall(false, true);
            refused(&state, &r)
        }
    }
}

/// The `key` query parameter of `webhook/send`.
#[derive(Debug, Deserialize)]
pub(crate) struct KeyQuery {
    key: Option<String>,
}

/// `POST /cgi-bin/webhook/send?key=KEY`: a group robot's message.
pub(crate) async fn webhook_send(
    State(state): State<Shared>,
    Query(q): Query<KeyQuery>,
    body: Bytes,
) -> Response {
    let Some(key) = q.key.as_deref().filter(|k| state.cfg.wecom.knows_robot(k)) else {
        return wecom_error(
            &state,
            WeComCode::InvalidWebhookKey,
            Some("the key is missing or unknown"),
        );
    };
    let outcome = state.wecom.robots.send(key, &body, Instant::now());
    let throttled = matches!(&outcome.result, Err(r) if r.code == WeComCode::FrequencyLimit);
    state.stats.wecom.robot(
        key,
        &body,
        outcome.result.is_ok(),
        throttled,
        outcome.requests_in_window,
    );
    match outcome.result {
        Ok(()) => ok(&state, Map::new()),
        Err(r) => refused(&state, &r),
    }
}
