//! Value rules of subscribe-message data, by key type (`thing1` is a `thing`, ...), as WeChat's
//! subscribe-message documentation states them. A value that breaks its rule is 47003.
//! Template messages are not checked: since May 2023 WeChat trims their values instead.

/// The type part of a data key: the leading letters and underscores (`character_string2` →
/// `character_string`).
pub fn key_type(key: &str) -> &str {
    let end = key.find(|c: char| c.is_ascii_digit()).unwrap_or(key.len());
    &key[..end]
}

/// Whether `value` is acceptable for a subscribe-message key of type `kind`.
/// Unknown types accept any non-empty value.
pub fn subscribe_value_ok(kind: &str, value: &str) -> bool {
    let chars = value.chars().count();
    if chars == 0 {
        return false;
    }
    match kind {
        "thing" => chars <= 20,
        "number" => {
            chars <= 32
                && value.chars().all(|c| c.is_ascii_digit() || c == '.')
                && value.chars().filter(|c| *c == '.').count() <= 1
                && value.chars().any(|c| c.is_ascii_digit())
        }
        "letter" => chars <= 32 && value.chars().all(|c| c.is_ascii_alphabetic()),
        "symbol" => chars <= 5 && value.chars().all(|c| c.is_ascii_punctuation()),
        "character_string" => chars <= 32 && value.chars().all(|c| c.is_ascii_graphic()),
        "amount" => chars <= 16 && value.chars().any(|c| c.is_ascii_digit()),
        "phone_number" => {
            chars <= 17
                && value
                    .chars()
                    .all(|c| c.is_ascii_digit() || "+-() ".contains(c))
        }
        "car_number" => chars <= 8,
        "name" => {
            if value.is_ascii() {
                chars <= 20
            } else {
                chars <= 10
            }
        }
        "phrase" => chars <= 5,
        // time, date and anything new: WeChat parses these loosely.
        _ => chars <= 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types() {
        assert_eq!(key_type("thing1"), "thing");
        assert_eq!(key_type("character_string12"), "character_string");
        assert_eq!(key_type("date"), "date");
    }

    #[test]
    fn rules_by_type() {
        let cases = [
            ("thing", "短文本", true),
            ("thing", "一二三四五六七八九十一二三四五六七八九十", true),
            ("thing", "一二三四五六七八九十一二三四五六七八九十一", false),
            ("number", "123.45", true),
            ("number", "12a", false),
            ("number", "1.2.3", false),
            ("letter", "abc", true),
            ("letter", "ab1", false),
            ("symbol", "%$", true),
            ("symbol", "%%%%%%", false),
            ("character_string", "A-42_x", true),
            ("character_string", "订单", false),
            ("phone_number", "+86 (10) 1234-567", true),
            ("phone_number", "call me", false),
            ("name", "张三", true),
            ("name", "张三张三张三张三张三张", false),
            ("phrase", "已发货", true),
            ("time", "15:01", true),
            ("thing", "", false),
        ];
        for (kind, value, ok) in cases {
            assert_eq!(subscribe_value_ok(kind, value), ok, "{kind}={value}");
        }
    }
}
