//! The answers of WeChat's two template-list APIs, read into [`Template`]s (pure):
//! `GET /cgi-bin/template/get_all_private_template` (an Official Account's template messages)
//! and `GET /wxaapi/newtmpl/gettemplate` (subscribe templates, of a Mini Program or an Official
//! Account).

use serde::Deserialize;

use super::rules::{Template, keywords_of};

/// Path of the Official Account's template list.
pub const PRIVATE_PATH: &str = "/cgi-bin/template/get_all_private_template";
/// Path of the subscribe-template list.
pub const SUBSCRIBE_PATH: &str = "/wxaapi/newtmpl/gettemplate";

/// Why a list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// WeChat answered an errcode.
    #[error("errcode {0}: {1}")]
    Errcode(i64, String),
    /// The answer is not the expected JSON.
    #[error("unexpected answer: {0}")]
    Malformed(String),
}

#[derive(Debug, Deserialize)]
struct PrivateAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    template_list: Option<Vec<PrivateItem>>,
}

#[derive(Debug, Deserialize)]
struct PrivateItem {
    template_id: String,
    #[serde(default)]
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeItem {
    pri_tmpl_id: String,
    #[serde(default)]
    content: String,
    #[serde(rename = "type", default)]
    kind: i64,
    #[serde(default)]
    keyword_enum_value_list: Vec<EnumItem>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnumItem {
    keyword_code: String,
    #[serde(default)]
    enum_value_list: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SubscribeAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    data: Option<Vec<SubscribeItem>>,
}

/// The templates of a `get_all_private_template` answer.
pub fn parse_private(body: &[u8]) -> Result<Vec<Template>, ListError> {
    let a: PrivateAnswer =
        serde_json::from_slice(body).map_err(|e| ListError::Malformed(e.to_string()))?;
    if a.errcode != 0 {
        return Err(ListError::Errcode(a.errcode, a.errmsg));
    }
    let list = a
        .template_list
        .ok_or_else(|| ListError::Malformed("no template_list".into()))?;
    Ok(list
        .into_iter()
        .map(|t| Template {
            keywords: keywords_of(&t.content),
            id: t.template_id,
            one_time: false,
            const_values: Default::default(),
        })
        .collect())
}

/// WeChat's `type` of a one-time subscribe template.
const ONE_TIME: i64 = 2;

/// The templates of a `newtmpl/gettemplate` answer.
pub fn parse_subscribe(body: &[u8]) -> Result<Vec<Template>, ListError> {
    let a: SubscribeAnswer =
        serde_json::from_slice(body).map_err(|e| ListError::Malformed(e.to_string()))?;
    if a.errcode != 0 {
        return Err(ListError::Errcode(a.errcode, a.errmsg));
    }
    let list = a
        .data
        .ok_or_else(|| ListError::Malformed("no data".into()))?;
    Ok(list
        .into_iter()
        .map(|t| Template {
            keywords: keywords_of(&t.content),
            id: t.pri_tmpl_id,
            one_time: t.kind == ONE_TIME,
            const_values: t
                .keyword_enum_value_list
                .into_iter()
                .map(|e| (e.keyword_code, e.enum_value_list))
                .collect(),
        })
        .collect())
}

/// The templates of an answer of `list`'s API.
pub fn parse_private_or_subscribe(
    list: super::rules::List,
    body: &[u8],
) -> Result<Vec<Template>, ListError> {
    match list {
        super::rules::List::Private => parse_private(body),
        super::rules::List::Subscribe => parse_subscribe(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_answers_read() {
        let private = br#"{"template_list":[{"template_id":"T1","title":"t","primary_industry":"","deputy_industry":"","content":"{{first.DATA}}\nA:{{keyword1.DATA}}\n{{remark.DATA}}","example":""}]}"#;
        let t = parse_private(private).expect("read");
        assert_eq!(t[0].id, "T1");
        assert_eq!(t[0].keywords, ["first", "keyword1", "remark"]);
        let sub = br#"{"errcode":0,"errmsg":"ok","data":[{"priTmplId":"S1","title":"t","content":"a:{{thing1.DATA}}\nb:{{const2.DATA}}","example":"","type":2,"keywordEnumValueList":[{"keywordCode":"const2","enumValueList":["x","y"]}]}]}"#;
        let s = parse_subscribe(sub).expect("read");
        assert!(s[0].one_time);
        assert_eq!(s[0].const_values["const2"], ["x", "y"]);
        assert_eq!(
            parse_subscribe(br#"{"errcode":48001,"errmsg":"api unauthorized"}"#),
            Err(ListError::Errcode(48001, "api unauthorized".into()))
        );
        assert!(matches!(
            parse_private(b"<html>"),
            Err(ListError::Malformed(_))
        ));
    }
}
