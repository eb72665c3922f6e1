//! The corp's callback URL, called the way WeCom calls it. Every call is encrypted with the
//! callback's EncodingAESKey, the receive id being the corp id (`wxcrypto::Cipher`), and
//! signed with `msg_signature` = SHA-1 of the sorted Token, `timestamp`, `nonce` and ciphertext.
//!
//! - Verification (when an admin saves the URL): `GET URL?msg_signature&timestamp&nonce&echostr`
//!   with `echostr` an encrypted random text; the server must answer the plain text, exactly.
//! - Events: `POST URL?msg_signature&timestamp&nonce` with body
//!   `<xml><ToUserName>corp</ToUserName><Encrypt>…</Encrypt><AgentID>…</AgentID></xml>`, the
//!   decrypted message being the event XML. Retried after a timeout, a transport error or a
//!   non-2xx answer, `retries` times.
//!
//! Events a sender needs: contact changes (`change_contact`: `create_user`, `update_user` with
//! a new user id or status, `delete_user`, `delete_party`), which also change the sandbox's
//! directory, and a user's tap on an interactive template card (`template_card_event`).

use std::fmt::Write as _;
use std::sync::Arc;

use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use url::Url;
use wxcrypto::Cipher;

use super::config::WeComConfig;
use super::directory::Directory;
use super::stats::WeComStats;
use crate::post::{Posted, post_event};

/// Why the callback could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The callback URL does not parse.
    #[error("invalid WeCom callback URL: {0}")]
    Url(#[from] url::ParseError),
    /// The EncodingAESKey is invalid.
    #[error("invalid WeCom callback EncodingAESKey: {0}")]
    Key(#[source] wxcrypto::CryptoError),
    /// The HTTP client could not be built.
    #[error("cannot build the WeCom callback HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why an admin request to the callback could not be carried out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackUse {
    /// No callback URL is configured.
    #[error("no WeCom callback URL is configured (--wecom-callback-url)")]
    NoUrl,
    /// The event names no agentid and the corp has no app.
    #[error("the corp has no app to send the event as")]
    NoApp,
}

/// One event to send, as the admin route takes it (`{"type": "delete_user", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WeComEvent {
    /// A user joined the directory (or came back).
    CreateUser {
        /// The user id.
        user_id: String,
    },
    /// A user changed: a new user id, or a new status (1 active, 2 disabled, 4 not yet
    /// active, 5 left). A new id or status 2 or 5 makes the old id invalid; status 1 valid.
    UpdateUser {
        /// The user id before the change.
        user_id: String,
        /// The new user id, if it changed.
        #[serde(default)]
        new_user_id: Option<String>,
        /// The new status, if it changed.
        #[serde(default)]
        status: Option<u8>,
    },
    /// A user left the directory.
    DeleteUser {
        /// The user id.
        user_id: String,
    },
    /// A party was deleted.
    DeleteParty {
        /// The party id.
        party_id: u64,
    },
    /// A user tapped a button of an interactive template card.
    TemplateCardEvent {
        /// Who tapped.
        user_id: String,
        /// The card's `task_id`.
        task_id: String,
        /// The card type.
        card_type: String,
        /// The button's key.
        event_key: String,
        /// The `response_code` to update the card with.
        #[serde(default)]
        response_code: String,
    },
}

/// Wraps `text` in CDATA, splitting any `]]>` inside it.
fn cdata(out: &mut String, text: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&text.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

fn element(out: &mut String, name: &str, text: &str) {
    let _ = write!(out, "<{name}>");
    cdata(out, text);
    let _ = write!(out, "</{name}>");
}

impl WeComEvent {
    /// The plain event XML, as the callback decrypts it.
    pub fn xml(&self, corp_id: &str, agentid: u64, create_time: u64) -> String {
        let mut x = String::with_capacity(400);
        x.push_str("<xml>");
        element(&mut x, "ToUserName", corp_id);
        let from = match self {
            WeComEvent::TemplateCardEvent { user_id, .. } => user_id.as_str(),
            _ => "sys",
        };
        element(&mut x, "FromUserName", from);
        let _ = write!(x, "<CreateTime>{create_time}</CreateTime>");
        element(&mut x, "MsgType", "event");
        match self {
            WeComEvent::TemplateCardEvent {
                task_id,
                card_type,
                event_key,
                response_code,
                ..
            } => {
                element(&mut x, "Event", "template_card_event");
                element(&mut x, "EventKey", event_key);
                element(&mut x, "TaskId", task_id);
                element(&mut x, "CardType", card_type);
                element(&mut x, "ResponseCode", response_code);
            }
            contact => {
                element(&mut x, "Event", "change_contact");
                let (change, id) = match contact {
                    WeComEvent::CreateUser { user_id } => ("create_user", user_id.clone()),
                    WeComEvent::UpdateUser { user_id, .. } => ("update_user", user_id.clone()),
                    WeComEvent::DeleteUser { user_id } => ("delete_user", user_id.clone()),
                    WeComEvent::DeleteParty { party_id } => ("delete_party", party_id.to_string()),
                    WeComEvent::TemplateCardEvent { .. } => ("", String::new()),
                };
                element(&mut x, "ChangeType", change);
                if matches!(contact, WeComEvent::DeleteParty { .. }) {
                    let _ = write!(x, "<Id>{id}</Id>");
                } else {
                    element(&mut x, "UserID", &id);
                }
                if let WeComEvent::UpdateUser {
                    new_user_id,
                    status,
                    ..
                } = contact
                {
                    if let Some(new) = new_user_id {
                        element(&mut x, "NewUserID", new);
                    }
                    if let Some(s) = status {
                        let _ = write!(x, "<Status>{s}</Status>");
                    }
                }
            }
        }
        let _ = write!(x, "<AgentID>{agentid}</AgentID></xml>");
        x
    }

    /// What the event changes in the directory.
    pub fn apply(&self, directory: &Directory) {
        match self {
            WeComEvent::CreateUser { user_id } => directory.add_user(user_id),
            WeComEvent::DeleteUser { user_id } => directory.remove_user(user_id),
            WeComEvent::DeleteParty { party_id } => directory.remove_party(&party_id.to_string()),
            WeComEvent::UpdateUser {
                user_id,
                new_user_id,
                status,
            } => {
                if let Some(new) = new_user_id {
                    directory.remove_user(user_id);
                    directory.add_user(new);
                }
                let id = new_user_id.as_deref().unwrap_or(user_id);
                match status {
                    Some(2 | 5) => directory.remove_user(id),
                    Some(1) => directory.add_user(id),
                    _ => {}
                }
            }
            WeComEvent::TemplateCardEvent { .. } => {}
        }
    }
}

/// The answer of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Whether the server answered 2xx with exactly the plain echostr.
    pub verified: bool,
    /// The HTTP status (`None` on a transport error or timeout).
    pub status: Option<u16>,
    /// What the server answered (at most 200 characters).
    pub answer: String,
}

/// The outcome of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Delivered {
    /// Whether the server acknowledged it with a 2xx.
    pub acknowledged: bool,
    /// HTTP attempts made.
    pub attempts: u32,
}

#[derive(Debug)]
struct Target {
    url: Url,
    client: reqwest::Client,
    token: String,
    cipher: Cipher,
    retries: u32,
}

/// The callback URL; a no-op without one.
#[derive(Debug)]
pub struct Callback {
    target: Option<Target>,
    corp_id: String,
    default_agentid: Option<u64>,
    stats: Arc<WeComStats>,
    shutdown: CancellationToken,
}

fn random_text(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl Callback {
    /// Prepares the callback from the config.
    pub fn new(
        cfg: &WeComConfig,
        stats: Arc<WeComStats>,
        shutdown: CancellationToken,
    ) -> Result<Self, CallbackError> {
        let target = match &cfg.callback.url {
            None => None,
            Some(raw) => {
                let cb = &cfg.callback;
                Some(Target {
                    url: Url::parse(raw)?,
                    client: reqwest::Client::builder()
                        .timeout(cb.timeout)
                        .no_proxy()
                        .build()
                        .map_err(CallbackError::Client)?,
                    token: cb.token.clone(),
                    cipher: Cipher::new(&cb.aes_key, cfg.corp_id.clone())
                        .map_err(CallbackError::Key)?,
                    retries: cb.retries,
                })
            }
        };
        Ok(Self {
            target,
            corp_id: cfg.corp_id.clone(),
            default_agentid: cfg.apps.first().map(|a| a.agentid),
            stats,
            shutdown,
        })
    }

    fn signed_url(t: &Target, encrypt: &str, extra: Option<(&str, &str)>) -> Url {
        let timestamp = crate::quota::unix_secs().to_string();
        let nonce = rand::random::<u32>().to_string();
        let sig = wxcrypto::msg_signature(&t.token, &timestamp, &nonce, encrypt);
        let mut url = t.url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("msg_signature", &sig);
            q.append_pair("timestamp", &timestamp);
            q.append_pair("nonce", &nonce);
            if let Some((k, v)) = extra {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// Verifies the URL as WeCom does when it is saved.
    pub async fn verify(&self) -> Result<Verification, CallbackUse> {
        let t = self.target.as_ref().ok_or(CallbackUse::NoUrl)?;
        let plain = random_text(20);
        let echostr = t.cipher.encrypt(plain.as_bytes());
        let url = Self::signed_url(t, &echostr, Some(("echostr", &echostr)));
        let answer = tokio::select! {
            () = self.shutdown.cancelled() => None,
            r = t.client.get(url).send() => match r {
                Ok(resp) => {
                    let status = resp.status();
                    Some((status, resp.text().await.unwrap_or_default()))
                }
                Err(_) => None,
            },
        };
        let verification = match answer {
            None => Verification {
                verified: false,
                status: None,
                answer: String::new(),
            },
            Some((status, body)) => Verification {
                verified: status.is_success() && body == plain,
                status: Some(status.as_u16()),
                answer: body.chars().take(200).collect(),
            },
        };
        self.stats.verification(verification.verified);
        Ok(verification)
    }

    /// Sends one event as the app `agentid` (default: the first app) and waits for its
    /// outcome, retries included.
    pub async fn send(
        &self,
        event: &WeComEvent,
        agentid: Option<u64>,
    ) -> Result<Delivered, CallbackUse> {
        let t = self.target.as_ref().ok_or(CallbackUse::NoUrl)?;
        let agentid = agentid.or(self.default_agentid).ok_or(CallbackUse::NoApp)?;
        self.stats.event();
        let plain = event.xml(&self.corp_id, agentid, crate::quota::unix_secs());
        let encrypt = t.cipher.encrypt(plain.as_bytes());
        let url = Self::signed_url(t, &encrypt, None);
        let mut body = String::from("<xml>");
        element(&mut body, "ToUserName", &self.corp_id);
        element(&mut body, "Encrypt", &encrypt);
        element(&mut body, "AgentID", &agentid.to_string());
        body.push_str("</xml>");
        let posted = post_event(&t.client, &url, &body, t.retries, &self.shutdown, || {
            self.stats.event_attempt();
        })
        .await;
        let (acknowledged, attempts) = match posted {
            Posted::Acknowledged { attempts } => (true, attempts),
            Posted::Refused { attempts } | Posted::ShutDown { attempts } => (false, attempts),
        };
        self.stats.event_done(acknowledged);
        Ok(Delivered {
            acknowledged,
            attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_xml_has_the_fields_a_receiver_reads() {
        let x = WeComEvent::UpdateUser {
            user_id: "u1".into(),
            new_user_id: Some("u2".into()),
            status: Some(5),
        }
        .xml("wwcorp", 1000002, 1_700_000_000);
        assert!(x.starts_with("<xml><ToUserName><![CDATA[wwcorp]]></ToUserName>"));
        assert!(x.contains("<Event><![CDATA[change_contact]]></Event>"));
        assert!(x.contains("<ChangeType><![CDATA[update_user]]></ChangeType>"));
        assert!(x.contains("<UserID><![CDATA[u1]]></UserID><NewUserID><![CDATA[u2]]></NewUserID>"));
        assert!(x.contains("<Status>5</Status>"));
        assert!(x.ends_with("<AgentID>1000002</AgentID></xml>"));
        let party = WeComEvent::DeleteParty { party_id: 3 }.xml("c", 1, 2);
        assert!(party.contains("<Id>3</Id>"));
        let card = WeComEvent::TemplateCardEvent {
            user_id: "u]]>1".into(),
            task_id: "t".into(),
            card_type: "button_interaction".into(),
            event_key: "ok".into(),
            response_code: "rc".into(),
        }
        .xml("c", 1, 2);
        assert!(card.contains("<FromUserName><![CDATA[u]]]]><![CDATA[>1]]></FromUserName>"));
        assert!(card.contains("<Event><![CDATA[template_card_event]]></Event>"));
    }

    #[test]
    fn events_change_the_directory() {
        let d = Directory::default();
        let ids = |s: &str| super::super::directory::split_ids(s);
        WeComEvent::DeleteUser {
            user_id: "a".into(),
        }
        .apply(&d);
        WeComEvent::UpdateUser {
            user_id: "b".into(),
            new_user_id: Some("b2".into()),
            status: None,
        }
        .apply(&d);
        WeComEvent::UpdateUser {
            user_id: "c".into(),
            new_user_id: None,
            status: Some(2),
        }
        .apply(&d);
        WeComEvent::DeleteParty { party_id: 7 }.apply(&d);
        let r = d.resolve(&ids("a|b|b2|c"), &ids("7"), &[]);
        assert_eq!(r.invalid_users, ["a", "b", "c"]);
        assert_eq!(r.users, ["b2"]);
        assert_eq!(r.invalid_parties, ["7"]);
        WeComEvent::CreateUser {
            user_id: "a".into(),
        }
        .apply(&d);
        assert_eq!(d.resolve(&ids("a"), &[], &[]).users, ["a"]);
        let parsed: WeComEvent =
            serde_json::from_str(r#"{"type":"delete_user","user_id":"x"}"#).expect("JSON event");
        assert_eq!(
            parsed,
            WeComEvent::DeleteUser {
                user_id: "x".into()
            }
        );
        assert!(serde_json::from_str::<WeComEvent>(r#"{"type":"nope"}"#).is_err());
    }
}
