//! The WeChat API routes: access_token (classic and stable), the three send APIs, and the
//! fault-injection layer in front of them.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::faults::Decision;
use super::messages::SendKind;
use super::net::ConnInfo;
use super::quota::{beijing_day, minute, unix_secs};
use super::state::Shared;
use super::stats::{Endpoint, FaultKind};
use super::templates::TemplateKind;
use super::tokens::Issued;
use super::wecom_api::wecom_error;
use wxcrypto::errcode::WxCode;
use wxcrypto::errcode::wecom::WeComCode;

const JSON: HeaderValue = HeaderValue::from_static("application/json; encoding=utf-8");

fn json(body: impl Into<Bytes>) -> Response {
    ([(header::CONTENT_TYPE, JSON)], body.into()).into_response()
}

/// Answers an errcode, counting it.
fn wx_error(state: &Shared, code: WxCode) -> Response {
    state.stats.errcode(code);
    json(Bytes::from(code.json()))
}

fn token_body(issued: &Issued) -> Response {
    json(format!(
        r#"{{"access_token":"{}","expires_in":{}}}"#,
        issued.token, issued.expires_in
    ))
}

/// Fault injection in front of every WeChat and WeCom route: counts the request (also in
/// flight, for overload mode), adds latency (overload latency included), then resets, fails,
/// hangs or answers an injected errcode as the fault config says.
pub(crate) async fn fault_layer(
    State(state): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    req: Request,
    next: Next,
) -> Response {
    let endpoint = Endpoint::from_path(req.uri().path());
    state.stats.request(endpoint);
    if conn.first_api_request() {
        state.stats.api_connection();
    }
    let _token_guard = matches!(
        endpoint,
        Endpoint::ClassicToken | Endpoint::StableToken | Endpoint::WeComToken
    )
    .then(|| state.stats.token_in_flight());
    let send = matches!(
        endpoint,
        Endpoint::TemplateSend
            | Endpoint::SubscribeSend
            | Endpoint::Bizsend
            | Endpoint::WeComSend
            | Endpoint::WeComWebhook
    );
    let _send_guard = send.then(|| state.stats.send_in_flight());
    let in_flight = state.faults.enter();
    let latency = state.faults.latency() + state.faults.overload_latency(in_flight.ahead);
    if send {
        state.stats.send_latency_injected(latency);
    }
    if !latency.is_zero() {
        state.stats.fault(FaultKind::Latency);
        tokio::select! {
            () = tokio::time::sleep(latency) => {}
            () = state.shutdown.cancelled() => {}
        }
    }
    match state.faults.decide(send) {
        Decision::Pass => next.run(req).await,
        Decision::Reset => {
            state.stats.fault(FaultKind::Reset);
            conn.reset();
            // Never written: the connection fails with an RST when hyper tries.
            StatusCode::OK.into_response()
        }
        Decision::Http(status) => {
            state.stats.fault(FaultKind::Http5xx);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = format!("<html><body><h1>{status}</h1></body></html>");
            (status, [(header::CONTENT_TYPE, "text/html")], body).into_response()
        }
        Decision::Hang(hang) => {
            state.stats.fault(FaultKind::Hang);
            let response = next.run(req).await;
            tokio::select! {
                () = tokio::time::sleep(hang) => {}
                () = state.shutdown.cancelled() => {}
            }
            response
        }
        // An injected code answers the routes whose API has it; the others pass.
        Decision::Errcode(n) if endpoint.is_wecom() => match WeComCode::from_code(n) {
            Some(code) => {
                state.stats.wecom.injected(code);
                wecom_error(&state, code, Some("injected by wxpush-sandbox"))
            }
            None => next.run(req).await,
        },
        Decision::Errcode(n) => match WxCode::from_code(n) {
            Some(code) => {
                state.stats.injected(code);
                wx_error(&state, code)
            }
            None => next.run(req).await,
        },
    }
}

/// Query of `GET /cgi-bin/token`.
#[derive(Debug, Deserialize)]
pub(crate) struct ClassicQuery {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
}

/// 40164 naming the caller's address, in WeChat's wording.
fn ip_refused(state: &Shared, peer: std::net::SocketAddr) -> Response {
    let code = WxCode::IpNotAllowed;
    state.stats.errcode(code);
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    json(format!(
        r#"{{"errcode":{},"errmsg":"invalid ip {ip} ipv6 ::ffff:{ip}, not in whitelist rid: sandbox"}}"#,
        code.code()
    ))
}

/// Checks grant_type, appid and secret in WeChat's order.
fn check_credentials(
    state: &Shared,
    grant_type: Option<&str>,
    appid: Option<&str>,
    secret: Option<&str>,
) -> Result<(), WxCode> {
    if grant_type != Some("client_credential") {
        return Err(WxCode::InvalidGrantType);
    }
    let appid = appid
        .filter(|a| !a.is_empty())
        .ok_or(WxCode::AppidMissing)?;
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(WxCode::SecretMissing)?;
    if appid != state.cfg.appid {
        return Err(WxCode::InvalidAppid);
    }
    if secret != state.cfg.secret {
        return Err(WxCode::InvalidSecret);
    }
    Ok(())
}

/// `GET /cgi-bin/token`: a new token on every call.
pub(crate) async fn classic_token(
    State(state): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    Query(q): Query<ClassicQuery>,
) -> Response {
    let now = Instant::now();
    state.maybe_invalidate(now);
    if !state.cfg.ip_allowed(conn.peer().ip()) {
        state.stats.token_call(false, false, false);
        return ip_refused(&state, conn.peer());
    }
    let checked = check_credentials(
        &state,
        q.grant_type.as_deref(),
        q.appid.as_deref(),
        q.secret.as_deref(),
    );
    state.stats.token_call(false, false, checked.is_ok());
    if let Err(code) = checked {
        return wx_error(&state, code);
    }
    let day = beijing_day(unix_secs());
    if !state
        .token_quota
        .classic_daily
        .hit(day, state.cfg.classic_daily_quota)
    {
        return wx_error(&state, WxCode::DailyQuota);
    }
    state.stats.errcode(WxCode::Ok);
    token_body(&state.tokens.issue_classic(now))
}

/// Body of `POST /cgi-bin/stable_token`.
#[derive(Debug, Deserialize)]
struct StableBody {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: bool,
}

/// `POST /cgi-bin/stable_token`: the same token while valid; `force_refresh` rotates it.
pub(crate) async fn stable_token(
    State(state): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    state.maybe_invalidate(now);
    if !state.cfg.ip_allowed(conn.peer().ip()) {
        state.stats.token_call(true, false, false);
        return ip_refused(&state, conn.peer());
    }
    let Ok(b) = serde_json::from_slice::<StableBody>(&body) else {
        state.stats.token_call(true, false, false);
        return wx_error(&state, WxCode::DataFormat);
    };
    let checked = check_credentials(
        &state,
        b.grant_type.as_deref(),
        b.appid.as_deref(),
        b.secret.as_deref(),
    );
    if let Err(code) = checked {
        state.stats.token_call(true, b.force_refresh, false);
        return wx_error(&state, code);
    }
    let unix = unix_secs();
    let q = &state.token_quota;
    if !q
        .stable_minute
        .hit(minute(unix), state.cfg.stable_minute_quota)
    {
        state.stats.token_call(true, b.force_refresh, false);
        return wx_error(&state, WxCode::MinuteQuota);
    }
    if !q
        .stable_daily
        .hit(beijing_day(unix), state.cfg.stable_daily_quota)
    {
        state.stats.token_call(true, b.force_refresh, false);
        return wx_error(&state, WxCode::DailyQuota);
    }
    match state
        .tokens
        .issue_stable(now, b.force_refresh, beijing_day(unix))
    {
        Ok(issued) => {
            state.stats.token_call(true, b.force_refresh, issued.new);
            state.stats.errcode(WxCode::Ok);
            token_body(&issued)
        }
        Err(code) => {
            state.stats.token_call(true, b.force_refresh, false);
            wx_error(&state, code)
        }
    }
}

/// The `access_token` query parameter of the send APIs.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    access_token: Option<String>,
}

async fn send(state: Shared, kind: SendKind, q: TokenQuery, body: Bytes) -> Response {
    let now = Instant::now();
    state.maybe_invalidate(now);
    if let Err(code) = state.tokens.validate(q.access_token.as_deref(), now) {
        return wx_error(&state, code);
    }
    let unix = unix_secs();
    match state.messages.send(
        &state.cfg,
        &state.stats,
        &state.templates,
        kind,
        &body,
        now,
        unix,
    ) {
        Ok(accepted) => {
            state.stats.errcode(WxCode::Ok);
            if accepted.unique && kind == SendKind::Template {
                state
                    .events
                    .dispatch(accepted.touser, accepted.msgid, accepted.had_client_msg_id);
            }
            json(format!(
                r#"{{"errcode":0,"errmsg":"ok","msgid":{}}}"#,
                accepted.msgid
            ))
        }
        Err(code) => wx_error(&state, code),
    }
}

/// `POST /cgi-bin/message/template/send`.
pub(crate) async fn template_send(
    State(state): State<Shared>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    send(state, SendKind::Template, q, body).await
}

/// `POST /cgi-bin/message/subscribe/send`.
pub(crate) async fn subscribe_send(
    State(state): State<Shared>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    send(state, SendKind::Subscribe, q, body).await
}

/// `POST /cgi-bin/message/subscribe/bizsend`.
pub(crate) async fn bizsend(
    State(state): State<Shared>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    send(state, SendKind::Bizsend, q, body).await
}

/// `GET /cgi-bin/template/get_all_private_template`: the Official Account's templates.
pub(crate) async fn private_templates(
    State(state): State<Shared>,
    Query(q): Query<TokenQuery>,
) -> Response {
    listed(
        &state,
        &q,
        TemplateKind::Template,
        |t| {
            serde_json::json!({
                "template_id": t.template_id,
                "title": t.title,
                "primary_industry": "",
                "deputy_industry": "",
                "content": t.content(),
                "example": "",
            })
        },
        |list| serde_json::json!({ "template_list": list }),
    )
}

/// A template-list answer: WeChat's error for a bad access_token, else each template of `kind`
/// as `item` makes it, wrapped by `answer`.
fn listed(
    state: &Shared,
    q: &TokenQuery,
    kind: TemplateKind,
    item: impl Fn(&crate::templates::TemplateDef) -> serde_json::Value,
    answer: impl FnOnce(Vec<serde_json::Value>) -> serde_json::Value,
) -> Response {
    if let Err(code) = state
        .tokens
        .validate(q.access_token.as_deref(), Instant::now())
    {
        return wx_error(state, code);
    }
    let list = state.templates.list(kind).into_iter().map(item).collect();
    state.stats.errcode(WxCode::Ok);
    json(answer(list).to_string())
}

/// `GET /wxaapi/newtmpl/gettemplate`: the subscribe templates (type 2 one-time, 3 long-term).
pub(crate) async fn subscribe_templates(
    State(state): State<Shared>,
    Query(q): Query<TokenQuery>,
) -> Response {
    listed(
        &state,
        &q,
        TemplateKind::Subscribe,
        |t| {
            let enums: Vec<serde_json::Value> = t
                .const_values
                .iter()
                .map(|(k, v)| serde_json::json!({"keywordCode": k, "enumValueList": v}))
                .collect();
            serde_json::json!({
                "priTmplId": t.template_id,
                "title": t.title,
                "content": t.content(),
                "example": "",
                "type": if t.one_time { 2 } else { 3 },
                "keywordEnumValueList": enums,
            })
        },
        |list| serde_json::json!({"errcode": 0, "errmsg": "ok", "data": list}),
    )
}

/// Any other path: WeChat answers unknown APIs with HTTP 200 and an errcode; 404 is clearer for
/// a sandbox and lets a misconfigured base URL fail loudly.
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        json(r#"{"errcode":404,"errmsg":"unknown API in wxpush-sandbox"}"#),
    )
        .into_response()
}
