//! The WeCom side of the credentials check. A `wecomApp` channel is checked with one `gettoken`
//! (corp id and application secret in the query; the token in the answer is dropped). WeCom
//! hands back the application's current token while it is valid, so the check disturbs no
//! running pusher. A `wecomRobot` channel has no token call: only its webhook key's shape can be
//! checked without posting a message into the group ([`check_webhook_key`]).

use super::Verdict;

/// Path of WeCom's token request, below `apiBaseUrl`: `GET` with `corpid` and `corpsecret` in
/// the query.
pub const GETTOKEN_PATH: &str = "/cgi-bin/gettoken";

/// The query of the request. It carries the secret: send it, never log it (nor the URL).
pub fn gettoken_query<'a>(corp_id: &'a str, corp_secret: &'a str) -> [(&'static str, &'a str); 2] {
    [("corpid", corp_id), ("corpsecret", corp_secret)]
}

/// The address WeCom names in a 60020 errmsg (`… from ip: 203.0.113.7, …`), if any.
pub fn refused_address(errmsg: &str) -> Option<&str> {
    let rest = &errmsg[errmsg.find("from ip: ")? + "from ip: ".len()..];
    let ip = rest.split([' ', ',', ';']).next()?;
    ip.parse::<std::net::IpAddr>().is_ok().then_some(ip)
}

/// A short CamelCase reason for a `gettoken` verdict, for a condition.
pub fn reason(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Refused { errcode, .. } => match errcode {
            40013 => "InvalidCorpId",
            40001 => "InvalidCorpSecret",
            60020 => "IPNotAllowed",
            41002 | 41004 => "CredentialsMissing",
            45009 => "TokenQuota",
            _ => "TokenRefused",
        },
        other => other.reason(),
    }
}

/// One line: what WeCom (or the network) said about `gettoken`, and how to fix it. Names the
/// corp id and the URL, never the secret.
pub fn describe(verdict: &Verdict, corp_id: &str, api_base_url: &str) -> String {
    let url = format!("{}{GETTOKEN_PATH}", api_base_url.trim_end_matches('/'));
    match verdict {
        Verdict::Issued => format!(
            "WeCom issued an access_token for corp {corp_id}: the corp id and the application's \
             secret work from here"
        ),
        Verdict::Refused { errcode, errmsg } => match errcode {
            40013 => format!(
                "WeCom does not know corp id {corp_id} (errcode 40013, invalid corpid): copy it \
                 again from the admin console's My Company page"
            ),
            40001 => format!(
                "WeCom refused the application secret for corp {corp_id} (errcode 40001, \
                 invalid secret): set the current Secret of the application whose AgentId the \
                 channel names"
            ),
            60020 => {
                let ip = refused_address(errmsg).unwrap_or("this host's egress address");
                format!(
                    "WeCom refused the token request from {ip} (errcode 60020: that address is \
                     not on the application's trusted IP list): add {ip} to the application's \
                     trusted IPs in the admin console, then check again"
                )
            }
            41002 | 41004 => format!(
                "the corp id or the application secret is empty (errcode {errcode}): fill both \
                 credentials"
            ),
            45009 => format!(
                "WeCom limits token requests of corp {corp_id} (errcode 45009): another system \
                 is probably fetching tokens in a loop"
            ),
            _ => format!(
                "WeCom answered the token request with errcode {errcode} ({errmsg}): see the \
                 WeCom errcode table in docs/wechat-api.md"
            ),
        },
        Verdict::Unexpected { detail } => format!(
            "{url} answered {detail}, not a WeCom token answer: check that apiBaseUrl points at \
             the WeCom API"
        ),
        Verdict::Unreachable { error } => format!(
            "cannot reach {url} ({error}): check apiBaseUrl, DNS, and that this host may connect \
             out to it"
        ),
    }
}

/// Longest webhook key taken. WeCom's keys are 36-character UUIDs; the bound only keeps a
/// pasted document out.
const MAX_WEBHOOK_KEY: usize = 128;

/// Checks a robot's webhook key without sending anything: present, and shaped like a key that
/// goes into `?key=` as it is (letters, digits, `-` and `_`). A pasted webhook URL is refused
/// with the key it holds named as the fix. Whether WeCom knows the key only a send can tell
/// (93000 pauses the channel then). The error never quotes the key.
pub fn check_webhook_key(key: &str) -> Result<(), String> {
    let key = key.trim();
    if key.is_empty() {
        return Err("the webhook key is empty: set the robot's key".into());
    }
    if key.contains("://") || key.contains("key=") {
        return Err(
            "the webhook key holds a URL: set only the part after `key=` of the robot's webhook \
             URL"
            .into(),
        );
    }
    if key.len() > MAX_WEBHOOK_KEY {
        return Err(format!(
            "the webhook key is {} bytes long; a robot's key is a 36-character id (at most \
             {MAX_WEBHOOK_KEY})",
            key.len()
        ));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        let shown = if bad.is_whitespace() || bad.is_control() {
            "a space or control character".to_string()
        } else {
            format!("`{bad}`")
        };
        return Err(format!(
            "the webhook key holds {shown}; a robot's key has only letters, digits, `-` and `_`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential_check::interpret;

    #[test]
    fn gettoken_answers_are_read_with_wecom_reasons() {
        let issued = interpret(200, br#"{"errcode":0,"errmsg":"ok","access_token":"T"}"#);
        assert_eq!(issued, Verdict::Issued);
        assert_eq!(reason(&issued), "TokenIssued");
        for (code, want) in [
            (40013, "InvalidCorpId"),
            (40001, "InvalidCorpSecret"),
            (60020, "IPNotAllowed"),
            (41004, "CredentialsMissing"),
            (45009, "TokenQuota"),
            (40091, "TokenRefused"),
        ] {
            let v = Verdict::Refused {
                errcode: code,
                errmsg: String::new(),
            };
            assert_eq!(reason(&v), want, "{code}");
            let line = describe(&v, "wwcorp", "https://qyapi.weixin.qq.com");
            assert!(!line.contains('\n'), "one line: {line}");
            assert!(line.contains(&code.to_string()), "{line}");
        }
        assert_eq!(reason(&interpret(502, b"")), "UnexpectedAnswer");
    }

    #[test]
    fn the_refused_address_is_quoted() {
        let v = Verdict::Refused {
            errcode: 60020,
            errmsg: "not allow to access from your ip, hint: [x], from ip: 203.0.113.7, more \
                     info at …"
                .into(),
        };
        let line = describe(&v, "wwcorp", "http://127.0.0.1:9");
        assert!(
            line.contains("add 203.0.113.7 to the application's trusted IPs"),
            "{line}"
        );
        assert_eq!(refused_address("no address"), None);
    }

    #[test]
    fn webhook_keys_are_checked_for_shape_only() {
        assert!(check_webhook_key("693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa").is_ok());
        assert!(check_webhook_key("robot-key").is_ok());
        let cases = [
            ("", "empty"),
            (
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc",
                "after `key=`",
            ),
            ("abc def", "space"),
            ("abc&x=1", "`&`"),
        ];
        for (key, want) in cases {
            let e = check_webhook_key(key).expect_err(key);
            assert!(e.contains(want), "{key}: {e}");
        }
        let long = "k".repeat(200);
        assert!(
            check_webhook_key(&long)
                .expect_err("long")
                .contains("200 bytes")
        );
        let secret = "s3cret-key with space";
        assert!(
            !check_webhook_key(secret)
                .expect_err("bad")
                .contains("s3cret")
        );
    }
}
