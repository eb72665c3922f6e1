//! The README's "Configuration reference" table states each policy field's default, and
//! docs/pusher.md's "Configuration" table the engine's own. These tests read both tables and
//! compare every default written as a value (`5s`, `1000`, `stable`, unset) with what the config
//! types fill in, so that the docs and the code cannot drift apart. The README's defaults
//! written as prose ("80% of `volumeSize`", "as above") are compared one by one.

use std::path::Path;
use std::str::FromStr as _;

use serde_json::Value;
use wxpush_api::config::PusherConfig;
use wxpush_api::policy::HumanDuration;

const MINIMAL: &str = "listen: 127.0.0.1:8080\napiBaseUrl: http://127.0.0.1:9000\n\
    credentials: {appId: wxa, appSecret: s}\nauth: {token: a-long-enough-token-0123}\n";

/// The config with every default filled in, as JSON; `extra` is appended to the minimal file.
fn defaults(extra: &str) -> Value {
    let config = PusherConfig::from_yaml(&format!("{MINIMAL}{extra}")).expect("a valid config");
    serde_json::to_value(&config).expect("serialisable")
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One row of the table: the section, its fields and their defaults, as written.
#[derive(Debug)]
struct Row {
    section: String,
    fields: Vec<String>,
    defaults: Vec<String>,
}

/// The code spans of `cell` split on `, ` and ` / `, each item as written.
fn items(cell: &str) -> Vec<String> {
    cell.split(", ")
        .flat_map(|part| part.split(" / "))
        .map(|item| item.trim().to_string())
        .collect()
}

/// `` `x` `` → `x`; `None` when the item is not one whole code span.
fn code(item: &str) -> Option<&str> {
    let inner = item.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

/// The first code span in `item` (`` `url` (secret) `` → `url`).
fn first_code(item: &str) -> &str {
    item.split('`').nth(1).unwrap_or(item)
}

fn table() -> Vec<Row> {
    let text = read("README.md");
    let body = text
        .split("## Configuration reference")
        .nth(1)
        .expect("README.md has a Configuration reference");
    let mut rows = Vec::new();
    let mut section = String::new();
    for line in body
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if !cells[1].is_empty() {
            section = first_code(cells[1]).to_string();
        }
        rows.push(Row {
            section: section.clone(),
            fields: items(cells[2])
                .iter()
                .map(|f| first_code(f).to_string())
                .collect(),
            defaults: items(cells[3]),
        });
    }
    rows
}

/// `section.field` of `config` (`queue.embedded` + `path` → `config.queue.embedded.path`).
fn lookup<'a>(config: &'a Value, section: &str, field: &str) -> &'a Value {
    section
        .split('.')
        .chain([field])
        .fold(config, |v, key| v.get(key).unwrap_or(&Value::Null))
}

/// Whether the README's `doc` says the same as the code's `value`.
fn same(doc: &str, value: &Value) -> bool {
    match value {
        Value::String(s) => {
            s == doc
                || matches!(
                    (HumanDuration::from_str(doc), HumanDuration::from_str(s)),
                    (Ok(a), Ok(b)) if a.get() == b.get()
                )
        }
        Value::Number(n) => doc
            .parse::<f64>()
            .ok()
            .zip(n.as_f64())
            .is_some_and(|(a, b)| a == b),
        Value::Bool(b) => doc == b.to_string(),
        _ => false,
    }
}

#[test]
fn every_default_in_the_readme_table_is_the_codes() {
    let embedded = defaults("");
    let redis = defaults("queue: {redis: {url: redis://127.0.0.1:6379}}\n");
    let rows = table();
    assert!(rows.len() >= 15, "{rows:?}");
    let mut compared = 0;
    let mut wrong = Vec::new();
    for row in &rows {
        assert_eq!(
            row.fields.len(),
            row.defaults.len(),
            "README.md row {row:?}: as many defaults as fields"
        );
        let config = if row.section == "queue.redis" {
            &redis
        } else {
            &embedded
        };
        for (field, doc) in row.fields.iter().zip(&row.defaults) {
            let value = lookup(config, &row.section, field);
            let ok = match (code(doc), doc.as_str()) {
                // A reference to another field: unset here, filled in at run time.
                (Some(d), _)
                    if d.contains('.') && d.starts_with(|c: char| c.is_ascii_alphabetic()) =>
                {
                    value.is_null()
                }
                (Some(d), _) => same(d, value),
                (None, "unset") => value.is_null(),
                // Prose ("—" for a required field, "as above"): the last test.
                (None, _) => continue,
            };
            compared += 1;
            if !ok {
                wrong.push(format!(
                    "{}.{field}: README says {doc}, the code {value}",
                    row.section
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(compared >= 30, "only {compared} defaults compared");
}

/// docs/pusher.md's table of the engine's knobs (`| field | default | meaning |`, fields as
/// dotted paths): every default written as a value, `unset` or `empty` is the code's.
#[test]
fn every_default_in_pusher_md_is_the_codes() {
    let config = defaults("");
    let text = read("docs/pusher.md");
    let body = text
        .split("\n## Configuration\n")
        .nth(1)
        .expect("docs/pusher.md has a Configuration section");
    let mut compared = 0;
    let mut wrong = Vec::new();
    for line in body
        .lines()
        .skip_while(|l| !l.starts_with("| field | default |"))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = line.split(" | ").collect();
        let (field, doc) = (cells[0].trim_start_matches("| "), cells[1]);
        let (Some(path), false) = (code(field), field.contains('*')) else {
            continue; // `a / b` (one of two) or `retry.*` (the README's table)
        };
        let value = path
            .split('.')
            .fold(&config, |v, key| v.get(key).unwrap_or(&Value::Null));
        let ok = match (code(doc), doc) {
            (Some(d), _) => same(d, value),
            (None, "unset") => value.is_null(),
            (None, "empty") => value.is_null() || value.as_array().is_some_and(Vec::is_empty),
            (None, _) => continue,
        };
        compared += 1;
        if !ok {
            wrong.push(format!(
                "{path}: docs/pusher.md says {doc}, the code {value}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(compared >= 20, "only {compared} defaults compared");
}

/// The defaults the table writes as prose.
#[test]
fn the_prose_defaults_are_the_codes() {
    let config = defaults("");
    let rows = table();
    let row = |section: &str, field: &str| {
        rows.iter()
            .find(|r| r.section == section && r.fields.iter().any(|f| f == field))
            .and_then(|r| {
                r.fields
                    .iter()
                    .position(|f| f == field)
                    .map(|i| r.defaults[i].clone())
            })
            .unwrap_or_else(|| panic!("README.md has no row for {section}.{field}"))
    };
    // `queue.embedded.maxBytes`: unset in the file; the budget is 80% of the volume.
    assert_eq!(row("queue.embedded", "maxBytes"), "80% of `volumeSize`");
    assert!(config["queue"]["embedded"]["maxBytes"].is_null());
    // `callbacks.timeouts`: "as above", the same defaults as `timeouts`.
    assert_eq!(row("callbacks", "timeouts"), "as above");
    assert_eq!(config["callbacks"]["timeouts"], config["timeouts"]);
    // `callbacks.retry`: "10 attempts `1s`…`5m` for `24h`".
    assert_eq!(row("callbacks", "retry"), "10 attempts `1s`…`5m` for `24h`");
    let retry = &config["callbacks"]["retry"];
    assert!(same("10", &retry["maxAttempts"]), "{retry}");
    assert!(same("1s", &retry["initialBackoff"]), "{retry}");
    assert!(same("5m", &retry["maxBackoff"]), "{retry}");
    assert!(same("24h", &retry["maxAge"]), "{retry}");
    // `queue.redis.url`: required ("—").
    assert_eq!(row("queue.redis", "url"), "—");
}
