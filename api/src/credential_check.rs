//! The credentials check shared by `wxpush-pusher check-config --online` and the operator's
//! `CredentialsValid` condition: one access_token request, and what its answer means, in one
//! line with the fix. Pure: the callers make the HTTP request with their own clients.
//!
//! WeCom's checks are in [`wecom`]: `gettoken` for an application, the key's shape for a group
//! robot (it has no token call).
//!
//! For WeChat the check always asks the **stable** token API without `force_refresh`: that call hands back
//! the token the account already has (or the first one), so it disturbs no running pusher,
//! whichever token API the channel is configured with. The token in the answer is dropped.

pub mod wecom;

/// Path of the request, below `apiBaseUrl`.
pub const PATH: &str = "/cgi-bin/stable_token";

/// The JSON body of the request. It carries the secret: send it, never log it.
pub fn request_body(app_id: &str, app_secret: &str) -> String {
    serde_json::json!({
        "grant_type": "client_credential",
        "appid": app_id,
        "secret": app_secret,
        "force_refresh": false,
    })
    .to_string()
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// WeChat issued a token: the credentials work from this address.
    Issued,
    /// WeChat answered with an errcode.
    Refused {
        /// The errcode.
        errcode: i64,
        /// WeChat's errmsg (shortened).
        errmsg: String,
    },
    /// Something answered, but not with a token or an errcode (a proxy, a wrong URL).
    Unexpected {
        /// What came back, in words.
        detail: String,
    },
    /// No answer: DNS, connection, TLS or a timeout.
    Unreachable {
        /// The error, in words.
        error: String,
    },
}

/// Reads a token endpoint's answer.
pub fn interpret(status: u16, body: &[u8]) -> Verdict {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: Option<String>,
        errcode: Option<i64>,
        errmsg: Option<String>,
    }
    if status != 200 {
        return Verdict::Unexpected {
            detail: format!("HTTP {status}"),
        };
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(Answer {
            access_token: Some(t),
            ..
        }) if !t.is_empty() => Verdict::Issued,
        Ok(Answer {
            errcode: Some(code),
            errmsg,
            ..
        }) if code != 0 => Verdict::Refused {
            errcode: code,
            errmsg: shorten(errmsg.unwrap_or_default()),
        },
        _ => Verdict::Unexpected {
            detail: "HTTP 200 without a token or an errcode".into(),
        },
    }
}

fn shorten(mut s: String) -> String {
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The address WeChat names in a 40164 errmsg (`invalid ip 203.0.113.7 ipv6 …`), if any.
pub fn refused_address(errmsg: &str) -> Option<&str> {
    let rest = &errmsg[errmsg.find("invalid ip ")? + "invalid ip ".len()..];
    let ip = rest.split([' ', ',']).next()?;
    ip.parse::<std::net::IpAddr>().is_ok().then_some(ip)
}

impl Verdict {
    /// Whether the credentials work.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Issued)
    }

    /// A short CamelCase reason, for a condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Issued => "TokenIssued",
            Self::Refused { errcode, .. } => match errcode {
                40013 => "InvalidAppId",
                40125 => "InvalidAppSecret",
                40164 => "IPNotAllowed",
                41002 | 41004 => "CredentialsMissing",
                48001 => "APIUnauthorized",
                45009 | 45011 => "TokenQuota",
                _ => "TokenRefused",
            },
            Self::Unexpected { .. } => "UnexpectedAnswer",
            Self::Unreachable { .. } => "Unreachable",
        }
    }

    /// One line: what WeChat (or the network) said, and how to fix it. Names the appid and the
    /// URL, never the secret.
    pub fn describe(&self, app_id: &str, api_base_url: &str) -> String {
        let url = format!("{}{PATH}", api_base_url.trim_end_matches('/'));
        match self {
            Self::Issued => format!(
                "WeChat issued an access_token for appid {app_id}: the credentials work from here"
            ),
            Self::Refused { errcode, errmsg } => match errcode {
                40013 => format!(
                    "WeChat does not know appid {app_id} (errcode 40013, invalid appid): copy \
                     the appid again from the account's basic settings"
                ),
                40125 => format!(
                    "WeChat refused the secret of appid {app_id} (errcode 40125, invalid \
                     appsecret): set the account's current AppSecret (after a reset only the \
                     new one works)"
                ),
                40164 => {
                    let ip = refused_address(errmsg).unwrap_or("this host's egress address");
                    format!(
                        "WeChat refused the token request from {ip} (errcode 40164: that \
                         address is not on the account's IP allowlist): add {ip} to the IP \
                         allowlist in the account's basic settings, then check again"
                    )
                }
                41002 | 41004 => format!(
                    "the appid or the secret is empty (errcode {errcode}): fill both \
                     credentials"
                ),
                48001 => format!(
                    "appid {app_id} may not call the token API (errcode 48001, api \
                     unauthorized): verify the account or use one of the right type"
                ),
                45009 | 45011 => format!(
                    "the token quota of appid {app_id} is spent (errcode {errcode}): another \
                     system is probably fetching tokens in a loop; the daily quota resets at \
                     midnight, Beijing time"
                ),
                _ => format!(
                    "WeChat answered the token request with errcode {errcode} ({errmsg}): see \
                     the errcode table in docs/wechat-onboarding.md"
                ),
            },
            Self::Unexpected { detail } => format!(
                "{url} answered {detail}, not a WeChat token answer: check that apiBaseUrl \
                 points at the WeChat API"
            ),
            Self::Unreachable { error } => format!(
                "cannot reach {url} ({error}): check apiBaseUrl, DNS, and that this host may \
                 connect out to it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_wechat_gives_them() {
        assert_eq!(
            interpret(200, br#"{"access_token":"T","expires_in":7200}"#),
            Verdict::Issued
        );
        let v = interpret(200, br#"{"errcode":40125,"errmsg":"invalid appsecret"}"#);
        assert_eq!(v.reason(), "InvalidAppSecret");
        assert!(!v.is_ok());
        assert_eq!(interpret(502, b"<html>").reason(), "UnexpectedAnswer");
        assert_eq!(interpret(200, b"{}").reason(), "UnexpectedAnswer");
        for (code, reason) in [
            (40013, "InvalidAppId"),
            (40164, "IPNotAllowed"),
            (41004, "CredentialsMissing"),
            (48001, "APIUnauthorized"),
            (45009, "TokenQuota"),
            (40002, "TokenRefused"),
        ] {
            let v = Verdict::Refused {
                errcode: code,
                errmsg: String::new(),
            };
            assert_eq!(v.reason(), reason, "{code}");
            let line = v.describe("wxabc", "https://api.weixin.qq.com");
            assert!(!line.contains('\n'), "one line: {line}");
            assert!(line.contains(&code.to_string()), "{line}");
        }
    }

    #[test]
    fn the_refused_address_is_quoted() {
        let errmsg = "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: x";
        assert_eq!(refused_address(errmsg), Some("203.0.113.7"));
        assert_eq!(refused_address("invalid ip, not in whitelist"), None);
        let v = Verdict::Refused {
            errcode: 40164,
            errmsg: errmsg.into(),
        };
        let line = v.describe("wxabc", "http://127.0.0.1:9000/");
        assert!(line.starts_with("WeChat refused the token request from 203.0.113.7"));
        assert!(line.contains("add 203.0.113.7 to the IP allowlist"));
    }

    #[test]
    fn the_secret_is_only_in_the_body() {
        let body = request_body("wxabc", "s3cret");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["secret"], "s3cret");
        assert_eq!(v["force_refresh"], false);
        let v = Verdict::Unreachable {
            error: "connection refused".into(),
        };
        let line = v.describe("wxabc", "http://127.0.0.1:9/");
        assert_eq!(
            line,
            "cannot reach http://127.0.0.1:9/cgi-bin/stable_token (connection refused): check \
             apiBaseUrl, DNS, and that this host may connect out to it"
        );
    }
}
