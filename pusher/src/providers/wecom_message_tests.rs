use super::*;
use serde_json::json;

#[test]
fn an_app_message_keeps_the_body_wecom_takes() {
    let m = parse(
        &json!({"touser": "zhangsan|lisi", "toparty": "2", "msgtype": "text",
                "text": {"content": "disk full"}, "safe": 1}),
        Audience::App,
    )
    .expect("valid");
    let body: Value = serde_json::from_str(m.send_body("ignored").get()).expect("json");
    assert_eq!(body["touser"], "zhangsan|lisi");
    assert_eq!(body["toparty"], "2");
    assert_eq!(body["text"]["content"], "disk full");
    assert_eq!(body["enable_duplicate_check"], 1);
    assert_eq!(m.touser, "zhangsan|lisi");
    let off = parse(
        &json!({"totag": "1", "msgtype": "markdown", "markdown": {"content": "x"},
                "duplicate_check": false}),
        Audience::App,
    )
    .expect("valid");
    let body: Value = serde_json::from_str(off.send_body("").get()).expect("json");
    assert_eq!(body["enable_duplicate_check"], 0);
}

#[test]
fn every_app_type_parses() {
    for body in [
        json!({"touser": "a", "msgtype": "textcard", "textcard": {"title": "t",
               "description": "d", "url": "https://example.com/x", "btntxt": "more"}}),
        json!({"touser": "a", "msgtype": "news", "news": {"articles": [
               {"title": "t", "url": "https://example.com/"},
               {"title": "mini", "appid": "wx1", "pagepath": "pages/index"}]}}),
        json!({"touser": "@all", "msgtype": "template_card", "template_card": {
               "card_type": "text_notice", "main_title": {"title": "t", "desc": "d"},
               "card_action": {"type": 1, "url": "https://example.com/"}}}),
        json!({"touser": "a", "msgtype": "template_card", "template_card": {
               "card_type": "button_interaction", "task_id": "task-1",
               "main_title": {"title": "approve?"},
               "button_list": [{"text": "yes", "key": "y"}]}}),
    ] {
        parse(&body, Audience::App).unwrap_or_else(|e| panic!("{body}: {e}"));
    }
}

#[test]
fn errors_name_their_field() {
    let long = "x".repeat(2049);
    let cases = [
        (
            json!({"msgtype": "text", "text": {"content": "x"}}),
            "missing_field",
            "touser",
        ),
        (
            json!({"touser": "a", "text": {"content": "x"}}),
            "missing_field",
            "msgtype",
        ),
        (
            json!({"touser": "a", "msgtype": "sms"}),
            "invalid_field",
            "msgtype",
        ),
        (
            json!({"touser": "a", "msgtype": "text"}),
            "missing_field",
            "text",
        ),
        (
            json!({"touser": "a", "msgtype": "text", "text": {}}),
            "missing_field",
            "text.content",
        ),
        (
            json!({"touser": "a", "msgtype": "text", "text": {"content": long}}),
            "too_long",
            "text.content",
        ),
        (
            json!({"touser": "a", "msgtype": "text", "text": {"content": "x", "colour": 1}}),
            "unknown_field",
            "text.colour",
        ),
        (
            json!({"touser": "a", "msgtype": "text", "text": {"content": "x"}, "markdown": {}}),
            "unknown_field",
            "markdown",
        ),
        (
            json!({"touser": "a b", "msgtype": "text", "text": {"content": "x"}}),
            "invalid_field",
            "touser",
        ),
        (
            json!({"touser": "a", "msgtype": "text", "text": {"content": "x"}, "safe": 2}),
            "invalid_field",
            "safe",
        ),
        (
            json!({"touser": "a", "msgtype": "text", "text": {"content": "x"}, "template_id": "T"}),
            "unknown_field",
            "template_id",
        ),
        (
            json!({"touser": "a", "msgtype": "textcard", "textcard": {"title": "t", "description": "d"}}),
            "missing_field",
            "textcard.url",
        ),
        (
            json!({"touser": "a", "msgtype": "textcard", "textcard": {"title": "t", "description": "d", "url": "ftp://x"}}),
            "invalid_field",
            "textcard.url",
        ),
        (
            json!({"touser": "a", "msgtype": "news", "news": {"articles": []}}),
            "invalid_field",
            "news.articles",
        ),
        (
            json!({"touser": "a", "msgtype": "news", "news": {"articles": [{"url": "https://e.com/"}]}}),
            "missing_field",
            "news.articles[0].title",
        ),
        (
            json!({"touser": "a", "msgtype": "template_card", "template_card": {"card_type": "poster", "main_title": {"title": "t"}}}),
            "invalid_field",
            "template_card.card_type",
        ),
        (
            json!({"touser": "a", "msgtype": "template_card", "template_card": {"card_type": "vote_interaction", "main_title": {"title": "t"}}}),
            "missing_field",
            "template_card.task_id",
        ),
        (
            json!({"touser": "a", "msgtype": "template_card", "template_card": {"card_type": "text_notice"}}),
            "missing_field",
            "template_card.main_title",
        ),
        (
            json!({"touser": "a", "msgtype": "text", "text": {"content": "x"}, "expires_at": "soon"}),
            "invalid_field",
            "expires_at",
        ),
    ];
    for (body, code, field) in cases {
        let e = parse(&body, Audience::App).expect_err("invalid");
        assert_eq!((e.code.as_str(), e.field.as_str()), (code, field), "{body}");
    }
}

#[test]
fn a_robot_takes_text_markdown_and_news_without_recipients() {
    let m = parse(
        &json!({"msgtype": "text", "text": {"content": "build broke",
                "mentioned_list": ["@all"]}}),
        Audience::Robot,
    )
    .expect("valid");
    let body: Value = serde_json::from_str(m.send_body("").get()).expect("json");
    assert_eq!(
        body,
        json!({"msgtype": "text", "text": {"content": "build broke",
                            "mentioned_list": ["@all"]}})
    );
    for (body, code, field) in [
        (
            json!({"touser": "a", "msgtype": "text", "text": {"content": "x"}}),
            "unknown_field",
            "touser",
        ),
        (
            json!({"msgtype": "textcard", "textcard": {}}),
            "unknown_field",
            "textcard",
        ),
        (
            json!({"msgtype": "template_card", "template_card": {}}),
            "unknown_field",
            "template_card",
        ),
        (
            json!({"msgtype": "markdown", "markdown": {"content": "x".repeat(4097)}}),
            "too_long",
            "markdown.content",
        ),
        (
            json!({"msgtype": "news", "news": {"articles": [{"title": "t"}]}}),
            "missing_field",
            "news.articles[0].url",
        ),
    ] {
        let e = parse(&body, Audience::Robot).expect_err("invalid");
        assert_eq!((e.code.as_str(), e.field.as_str()), (code, field), "{body}");
    }
}
