//! WeCom's change events on the callback URL (`Event` `change_contact`), read for what a sender
//! needs: which recipients became unreachable. A deleted user, a user disabled or gone from the
//! corp, a user whose id changed (the old id is gone) and a deleted party are answered in
//! `invaliduser` / `invalidparty` from then on. The pusher counts each such change
//! (`wxpush_events_total{event="change_contact", result="unreachable"}`) and logs it, so that
//! an operator sees why later messages to that id come back partly failed; other contact
//! changes are acknowledged as `ignored`. A `template_card_event` (a user tapped a card's
//! button) is acknowledged and counted as `ignored`: the pusher does not update cards.

use super::ServerXml;

/// WeCom's event name for contact changes.
pub const CHANGE_CONTACT: &str = "change_contact";
/// WeCom's event name for a tap on an interactive template card.
pub const TEMPLATE_CARD_EVENT: &str = "template_card_event";

/// A WeCom user's `Status` in `update_user`: disabled.
const STATUS_DISABLED: &str = "2";
/// A WeCom user's `Status` in `update_user`: left the corp.
const STATUS_LEFT: &str = "5";

/// Why a recipient became unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// `delete_user`.
    Deleted,
    /// `update_user` with `Status` 2.
    Disabled,
    /// `update_user` with `Status` 5.
    Left,
    /// `update_user` with a `NewUserID`: the old id no longer names anybody.
    Renamed,
}

impl Gone {
    /// In words, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::Disabled => "disabled",
            Self::Left => "left the corp",
            Self::Renamed => "renamed",
        }
    }
}

/// What a WeCom event means for a sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeComEvent {
    /// The user id will be answered in `invaliduser` from now on.
    UserUnreachable {
        /// The user id.
        user_id: String,
        /// Why.
        why: Gone,
    },
    /// The party id will be answered in `invalidparty` from now on.
    PartyUnreachable {
        /// The party id.
        party_id: String,
    },
    /// Another contact change (a new user, a changed name or department, tags).
    OtherContactChange,
    /// A tap on an interactive card.
    TemplateCard,
}

fn field(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Reads a WeCom event; `None` when the XML is not one (WeChat's events, or another WeCom
/// event).
pub fn read(xml: &ServerXml) -> Option<WeComEvent> {
    if field(&xml.msg_type) != Some("event") {
        return None;
    }
    match field(&xml.event)? {
        TEMPLATE_CARD_EVENT => Some(WeComEvent::TemplateCard),
        CHANGE_CONTACT => Some(contact_change(xml)),
        _ => None,
    }
}

fn contact_change(xml: &ServerXml) -> WeComEvent {
    let user = |why| {
        field(&xml.user_id).map_or(WeComEvent::OtherContactChange, |id| {
            WeComEvent::UserUnreachable {
                user_id: id.to_string(),
                why,
            }
        })
    };
    match field(&xml.change_type) {
        Some("delete_user") => user(Gone::Deleted),
        Some("update_user") if field(&xml.new_user_id).is_some() => user(Gone::Renamed),
        Some("update_user") => match field(&xml.status) {
            Some(STATUS_DISABLED) => user(Gone::Disabled),
            Some(STATUS_LEFT) => user(Gone::Left),
            _ => WeComEvent::OtherContactChange,
        },
        Some("delete_party") => field(&xml.party_id).map_or(WeComEvent::OtherContactChange, |id| {
            WeComEvent::PartyUnreachable {
                party_id: id.to_string(),
            }
        }),
        _ => WeComEvent::OtherContactChange,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::parse_xml;

    fn event(inner: &str) -> Option<WeComEvent> {
        let xml = format!(
            "<xml><ToUserName><![CDATA[wwcorp]]></ToUserName><CreateTime>1</CreateTime>\
             <MsgType><![CDATA[event]]></MsgType>{inner}</xml>"
        );
        read(&parse_xml(xml.as_bytes()).expect("xml"))
    }

    #[test]
    fn contact_changes_name_the_recipients_that_became_unreachable() {
        let cases = [
            (
                "<Event>change_contact</Event><ChangeType>delete_user</ChangeType>\
                 <UserID>u1</UserID>",
                Some(WeComEvent::UserUnreachable {
                    user_id: "u1".into(),
                    why: Gone::Deleted,
                }),
            ),
            (
                "<Event>change_contact</Event><ChangeType>update_user</ChangeType>\
                 <UserID>u1</UserID><Status>5</Status>",
                Some(WeComEvent::UserUnreachable {
                    user_id: "u1".into(),
                    why: Gone::Left,
                }),
            ),
            (
                "<Event>change_contact</Event><ChangeType>update_user</ChangeType>\
                 <UserID>u1</UserID><Status>2</Status>",
                Some(WeComEvent::UserUnreachable {
                    user_id: "u1".into(),
                    why: Gone::Disabled,
                }),
            ),
            (
                "<Event>change_contact</Event><ChangeType>update_user</ChangeType>\
                 <UserID>u1</UserID><NewUserID>u2</NewUserID>",
                Some(WeComEvent::UserUnreachable {
                    user_id: "u1".into(),
                    why: Gone::Renamed,
                }),
            ),
            (
                "<Event>change_contact</Event><ChangeType>update_user</ChangeType>\
                 <UserID>u1</UserID><Status>1</Status>",
                Some(WeComEvent::OtherContactChange),
            ),
            (
                "<Event>change_contact</Event><ChangeType>delete_party</ChangeType><Id>3</Id>",
                Some(WeComEvent::PartyUnreachable {
                    party_id: "3".into(),
                }),
            ),
            (
                "<Event>change_contact</Event><ChangeType>create_user</ChangeType>\
                 <UserID>u9</UserID>",
                Some(WeComEvent::OtherContactChange),
            ),
            (
                "<Event>template_card_event</Event><TaskId>t1</TaskId>",
                Some(WeComEvent::TemplateCard),
            ),
            ("<Event>TEMPLATESENDJOBFINISH</Event>", None),
        ];
        for (inner, want) in cases {
            assert_eq!(event(inner), want, "{inner}");
        }
    }
}
