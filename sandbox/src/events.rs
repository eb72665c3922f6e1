//! TEMPLATESENDJOBFINISH delivery events, POSTed to the account's server URL the way WeChat
//! does: signed query (`signature`, `timestamp`, `nonce`, `openid`, plus `encrypt_type=aes` and
//! `msg_signature` in compatible and safe modes), XML body, a 5 s wait and 3 retries.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use url::Url;

use super::config::{EventConfig, EventMode, SandboxConfig};
use super::post::{Posted, post_event};
use super::stats::{EVENT_STATUSES, Stats};
use wxcrypto::{self, Cipher};

/// Why event delivery could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EventSetupError {
    /// The server URL does not parse.
    #[error("invalid event URL: {0}")]
    Url(#[from] url::ParseError),
    /// The EncodingAESKey is invalid, or missing for compat/safe mode.
    #[error("event mode {mode:?} needs a valid EncodingAESKey: {source}")]
    Key {
        /// The configured mode.
        mode: EventMode,
        /// What is wrong with the key.
        #[source]
        source: wxcrypto::CryptoError,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the event HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Sends delivery events; cheap to share.
#[derive(Debug)]
pub struct Events {
    target: Option<Target>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Target {
    url: Url,
    client: reqwest::Client,
    cfg: EventConfig,
    cipher: Option<Cipher>,
    account_id: String,
}

/// Wraps `text` in CDATA, splitting any `]]>` inside it.
fn cdata(out: &mut String, text: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&text.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

/// The plain event XML. `extra` goes just before `</xml>` (the compat-mode `<Encrypt>`).
pub fn event_xml(
    account_id: &str,
    openid: &str,
    create_time: u64,
    msgid: u64,
    status: &str,
    extra: &str,
) -> String {
    let mut x = String::with_capacity(320);
    x.push_str("<xml><ToUserName>");
    cdata(&mut x, account_id);
    x.push_str("</ToUserName><FromUserName>");
    cdata(&mut x, openid);
    let _ = write!(
        x,
        "</FromUserName><CreateTime>{create_time}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>\
         <MsgID>{msgid}</MsgID><Status>"
    );
    cdata(&mut x, status);
    x.push_str("</Status>");
    x.push_str(extra);
    x.push_str("</xml>");
    x
}

impl Events {
    /// Prepares event delivery from the config (a no-op sender without a URL).
    pub fn new(
        cfg: &SandboxConfig,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> Result<Self, EventSetupError> {
        let ev = &cfg.events;
        let Some(raw) = &ev.url else {
            return Ok(Self {
                target: None,
                stats,
                shutdown,
            });
        };
        let url = Url::parse(raw)?;
        let cipher = match (ev.mode, &ev.aes_key) {
            (EventMode::Plain, None) => None,
            (mode, None) => {
                return Err(EventSetupError::Key {
                    mode,
                    source: wxcrypto::CryptoError::InvalidKey,
                });
            }
            (mode, Some(key)) => Some(
                Cipher::new(key, cfg.appid.clone())
                    .map_err(|source| EventSetupError::Key { mode, source })?,
            ),
        };
        let client = reqwest::Client::builder()
            .timeout(ev.timeout)
            .no_proxy()
            .build()
            .map_err(EventSetupError::Client)?;
        let target = Target {
            url,
            client,
            cfg: ev.clone(),
            cipher,
            account_id: cfg.account_id.clone(),
        };
        Ok(Self {
            target: Some(target),
            stats,
            shutdown,
        })
    }

    /// Whether a server URL is configured.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Schedules the event for one unique template delivery.
    pub fn dispatch(self: &Arc<Self>, openid: String, msgid: u64, had_client_msg_id: bool) {
        let Some(target) = &self.target else { return };
        let roll: f64 = rand::random();
        let status = if roll < target.cfg.user_block_share {
            1
        } else if roll < target.cfg.user_block_share + target.cfg.system_failed_share {
            2
        } else {
            0
        };
        self.stats.event_generated(status);
        let msgid = if had_client_msg_id && target.cfg.msgid_zero_with_client_msg_id {
            0
        } else {
            msgid
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let delay = this
                .target
                .as_ref()
                .map(|t| t.cfg.delay)
                .unwrap_or_default();
            tokio::select! {
                () = this.shutdown.cancelled() => {}
                () = tokio::time::sleep(delay) => this.deliver(&openid, msgid, status).await,
            }
        });
    }

    async fn deliver(&self, openid: &str, msgid: u64, status: usize) {
        let Some(t) = &self.target else { return };
        let create_time = super::quota::unix_secs();
        let status_text = EVENT_STATUSES.get(status).copied().unwrap_or("success");
        let timestamp = create_time.to_string();
        let nonce = rand::random::<u32>().to_string();
        let token = &t.cfg.token;
        let mut url = t.url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("signature", &wxcrypto::signature(token, &timestamp, &nonce));
            q.append_pair("timestamp", &timestamp);
            q.append_pair("nonce", &nonce);
            q.append_pair("openid", openid);
        }
        let plain = event_xml(&t.account_id, openid, create_time, msgid, status_text, "");
        let body = match (&t.cipher, t.cfg.mode) {
            (Some(cipher), EventMode::Compat | EventMode::Safe) => {
                let encrypt = cipher.encrypt(plain.as_bytes());
                let sig = wxcrypto::msg_signature(token, &timestamp, &nonce, &encrypt);
                url.query_pairs_mut()
                    .append_pair("encrypt_type", "aes")
                    .append_pair("msg_signature", &sig);
                let mut enc = String::from("<Encrypt>");
                cdata(&mut enc, &encrypt);
                enc.push_str("</Encrypt>");
                if t.cfg.mode == EventMode::Compat {
                    event_xml(&t.account_id, openid, create_time, msgid, status_text, &enc)
                } else {
                    let mut x = String::from("<xml><ToUserName>");
                    cdata(&mut x, &t.account_id);
                    x.push_str("</ToUserName>");
                    x.push_str(&enc);
                    x.push_str("</xml>");
                    x
                }
            }
            _ => plain,
        };
        let posted = post_event(
            &t.client,
            &url,
            &body,
            t.cfg.retries,
            &self.shutdown,
            || self.stats.event_attempt(),
        )
        .await;
        match posted {
            Posted::Acknowledged { .. } => self.stats.event_done(true),
            Posted::Refused { .. } => self.stats.event_done(false),
            Posted::ShutDown { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_has_every_field_and_escapes_cdata() {
        let x = event_xml("gh_1", "o]]>x", 1700000000, 42, "failed: system failed", "");
        assert!(x.starts_with("<xml><ToUserName><![CDATA[gh_1]]></ToUserName>"));
        assert!(x.contains("<FromUserName><![CDATA[o]]]]><![CDATA[>x]]></FromUserName>"));
        assert!(x.contains("<CreateTime>1700000000</CreateTime>"));
        assert!(x.contains("<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>"));
        assert!(x.contains("<MsgID>42</MsgID>"));
        assert!(x.ends_with("<Status><![CDATA[failed: system failed]]></Status></xml>"));
    }
}
