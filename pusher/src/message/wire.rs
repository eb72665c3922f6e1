//! WeChat's wire body of a send, built from a stored message without re-parsing its fields.

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Message, MiniProgram, TemplateData};

impl Message {
    /// The body handed to the channel's provider for each attempt: the WeCom body as accepted,
    /// or else [`Message::wechat_body`].
    pub fn send_body(&self, client_msg_id: &str) -> Box<RawValue> {
        match &self.wecom {
            Some(body) => body.0.clone(),
            None => self.wechat_body(client_msg_id),
        }
    }

    /// The JSON body WeChat takes, with the message's one `client_msg_id`, encoded once:
    /// the template fields are copied as the raw JSON text they are kept in, without building
    /// a tree of them.
    pub fn wechat_body(&self, client_msg_id: &str) -> Box<RawValue> {
        let body = WeChatBody {
            touser: &self.touser,
            template_id: &self.template_id,
            url: self.url.as_deref(),
            miniprogram: self.miniprogram.as_ref(),
            page: self.page.as_deref(),
            miniprogram_state: self.miniprogram_state.as_deref(),
            lang: self.lang.as_deref(),
            client_msg_id,
            data: &self.data.0,
        };
        // Strings, an object of strings and raw JSON text always encode.
        serde_json::value::to_raw_value(&body).unwrap_or_else(|_| TemplateData::default().0)
    }
}

/// The body of one send, borrowed from the message.
#[derive(Serialize)]
struct WeChatBody<'a> {
    touser: &'a str,
    template_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    miniprogram: Option<&'a MiniProgram>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    miniprogram_state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lang: Option<&'a str>,
    client_msg_id: &'a str,
    data: &'a RawValue,
}
