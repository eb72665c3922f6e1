//! Unit tests of the template rules: each rule, each mode, each field path.

use super::*;
use serde_json::json;

fn template(keys: &[&str]) -> Template {
    Template {
        id: "T".into(),
        keywords: keys.iter().map(|k| k.to_string()).collect(),
        one_time: false,
        const_values: [("const4".to_string(), vec!["已发货".to_string()])].into(),
    }
}

fn data(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!({"value": v})))
        .collect()
}

#[test]
fn keywords_from_content() {
    assert_eq!(
        keywords_of(
            "{{first.DATA}}\n订单：{{character_string1.DATA}}\n{{ time2.DATA }}{{first.DATA}}"
        ),
        ["first", "character_string1", "time2"]
    );
    assert!(keywords_of("no keys {{").is_empty());
}

#[test]
fn each_rule_by_type() {
    let t = template(&[
        "thing1",
        "character_string2",
        "phone_number3",
        "const4",
        "phrase5",
        "amount6",
        "time7",
        "car_number8",
    ]);
    let good = [
        ("thing1", "书"),
        ("character_string2", "A-42_x"),
        ("phone_number3", "+86 10 1234"),
        ("const4", "已发货"),
        ("phrase5", "已到站"),
        ("amount6", "¥12.50"),
        ("time7", "2026-12-07 10:00"),
        ("car_number8", "粤B12345"),
    ];
    assert!(check(&t, List::Subscribe, &data(&good), Fix::Refuse).is_ok());
    let cases = [
        ("thing1", "一".repeat(21), Rule::TooLong),
        ("character_string2", "订单".to_string(), Rule::BadCharacters),
        ("character_string2", "x".repeat(33), Rule::TooLong),
        ("phone_number3", "call me".to_string(), Rule::BadCharacters),
        ("const4", "别的".to_string(), Rule::NotAllowedValue),
        ("phrase5", "ok".to_string(), Rule::BadCharacters),
        ("phrase5", "一二三四五六".to_string(), Rule::TooLong),
        ("amount6", "12 dollars".to_string(), Rule::BadFormat),
        ("time7", "soon".to_string(), Rule::BadFormat),
        ("car_number8", "粤B1234567".to_string(), Rule::TooLong),
        ("thing1", "a\nb".to_string(), Rule::LineBreak),
        ("thing1", "a\u{7}b".to_string(), Rule::ControlCharacter),
        ("thing1", " ".to_string(), Rule::EmptyValue),
    ];
    for (key, value, rule) in cases {
        let mut d = data(&good);
        d.insert(key.into(), json!({"value": value}));
        let err = check(&t, List::Subscribe, &d, Fix::Refuse)
            .expect_err(&format!("{key}={value:?} refused"));
        assert_eq!(
            (err.field.as_str(), err.rule),
            (&*format!("data.{key}"), rule),
            "{value}"
        );
    }
    let mut d = data(&good);
    d.remove("amount6");
    assert_eq!(
        check(&t, List::Subscribe, &d, Fix::Refuse)
            .expect_err("missing")
            .rule,
        Rule::MissingKeyword
    );
    d.insert("amount6".into(), json!({"value": "1"}));
    d.insert("thing9".into(), json!({"value": "x"}));
    let err = check(&t, List::Subscribe, &d, Fix::Refuse).expect_err("unknown");
    assert_eq!(
        (err.field.as_str(), err.rule),
        ("data.thing9", Rule::UnknownKeyword)
    );
}

#[test]
fn old_templates_warn_about_ignored_fields() {
    let t = template(&["first", "keyword1", "remark"]);
    let mut d = data(&[("first", "hi"), ("keyword1", "x")]);
    d.insert("keyword1".into(), json!({"value": "x", "color": "#ff0000"}));
    let ok = check(&t, List::Private, &d, Fix::Refuse).expect("valid");
    let fields: Vec<&str> = ok.notes.iter().map(|n| n.field.as_str()).collect();
    assert_eq!(fields, ["data.first", "data.keyword1.color"]);
    assert!(ok.notes.iter().all(|n| n.action == "warning"));
    let long = data(&[("keyword1", &"x".repeat(21))]);
    assert_eq!(
        check(&t, List::Private, &long, Fix::Refuse)
            .expect_err("long")
            .rule,
        Rule::TooLong
    );
}

#[test]
fn truncate_cuts_and_cleans_but_refuses_the_rest() {
    let t = template(&["thing1", "character_string2"]);
    let d = data(&[
        (
            "thing1",
            &format!("{}\n{}", "一".repeat(15), "二".repeat(10)),
        ),
        ("character_string2", "A1"),
    ]);
    let ok = check(&t, List::Private, &d, Fix::Truncate).expect("cut");
    let cut = ok.data.expect("changed");
    let v = cut["thing1"]["value"].as_str().expect("value");
    assert_eq!(v.chars().count(), 20);
    assert!(!v.contains('\n'));
    let actions: Vec<&str> = ok.notes.iter().map(|n| n.action.as_str()).collect();
    assert_eq!(actions, ["cleaned", "cut"]);
    let bad = data(&[("thing1", "x"), ("character_string2", "订单")]);
    assert_eq!(
        check(&t, List::Private, &bad, Fix::Truncate)
            .expect_err("refused")
            .rule,
        Rule::BadCharacters
    );
    let fine = data(&[("thing1", "x"), ("character_string2", "A1")]);
    assert_eq!(
        check(&t, List::Private, &fine, Fix::Truncate)
            .expect("ok")
            .data,
        None
    );
}
