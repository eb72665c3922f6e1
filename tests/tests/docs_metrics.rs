//! The docs restate the pusher's and the operator's metrics and the pusher's request limits.
//! These tests compare what they say with what each `Metrics::new` registers and what
//! `message` enforces, so that a metric or a limit added, renamed or changed without its docs
//! fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use wxpush_pusher::metrics::Metrics;
use wxpush_tests::docs;
use wxpush_tests::workspace_root;

fn root() -> PathBuf {
    workspace_root()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Metrics with a sample in every family: a family without one is left out of a scrape.
fn populated() -> Metrics {
    use wxpush_pusher::metrics::{
        AttemptResult, CallbackLabels, CallbackResult, ConsumerLabels, EventName, EventResult,
        FetchResult, Outcome, QueueState, TemplateList, TemplateRuleLabel, TimeoutPhase,
        TokenApiLabel, TokenResult,
    };
    let m = Metrics::new("t");
    m.complete(Outcome::delivered);
    m.attempt(AttemptResult::ok, 0.1);
    m.timeout(TimeoutPhase::Connect);
    m.token_request(TokenApiLabel::Stable, TokenResult::Ok);
    m.set_queue(QueueState::ready, 1);
    m.event(EventName::TemplateSendJobFinish, EventResult::Confirmed);
    m.callbacks
        .get_or_create(&CallbackLabels {
            result: CallbackResult::Ok,
        })
        .inc();
    m.queue_consumer_pending
        .get_or_create(&ConsumerLabels {
            consumer: "pod-1".into(),
        })
        .set(1);
    m.wechat_connections_closed
        .get_or_create(&wxpush_pusher::metrics::ConnCloseLabels {
            reason: wxpush_pusher::metrics::ConnCloseReason::Idle,
        })
        .inc();
    m.template_refusal(TemplateRuleLabel::too_long);
    m.template_fetch(TemplateList::Private, FetchResult::Ok);
    m.set_templates(TemplateList::Private, 1);
    m.invalid_recipients(
        wxpush_pusher::metrics::ProviderLabel::WecomApp,
        &wxpush_pusher::send::InvalidRecipients {
            users: vec!["gone-1".into()],
            ..wxpush_pusher::send::InvalidRecipients::default()
        },
    );
    m
}

/// Every family a scrape shows, by the name the docs use (counters with `_total`), with its
/// type (`counter`, `gauge`, `histogram`).
fn registered() -> BTreeMap<String, String> {
    let metrics = populated();
    let families = docs::metric_families(&metrics.encode());
    // Each registered metric shows one descriptor in the registry's debug output: a family
    // added to `Metrics::new` and not given a sample in `populated` fails here.
    let descriptors = format!("{metrics:?}").matches("Descriptor {").count();
    assert_eq!(
        families.len(),
        descriptors,
        "a family has no sample in populated(): {families:?}"
    );
    families
}

/// The `wxpush_…` words of `text`: metric names, and also crate names and the like, which the
/// callers leave out.
fn words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("wxpush_").map(|i| from + i) {
        let end = text[at..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |i| at + i);
        let boundary = at == 0 || {
            let b = bytes[at - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let word = text[at..end].trim_end_matches('_');
        // `wxpush_*` is a pattern, not a name.
        if boundary && word != "wxpush" {
            out.insert(word.to_string());
        }
        from = end;
    }
    out
}

/// Words of the form `wxpush_…` that are not the pusher's metrics.
fn not_a_pusher_metric(word: &str) -> bool {
    const CRATES: &[&str] = &[
        "wxpush_api",
        "wxpush_operator",
        "wxpush_pusher",
        "wxpush_sandbox",
        "wxpush_tests",
        "wxpush_wxcrypto",
    ];
    // The operator's own metrics are compared with its code below.
    CRATES.contains(&word) || word.starts_with("wxpush_operator_")
}

/// `name` is a registered family, or a series of one (`_bucket`, `_sum`, `_count` of a
/// histogram).
fn is_registered(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| families.get(base).is_some_and(|k| k == "histogram"))
        })
}

/// The part of a Markdown file under `heading` (a whole heading line), up to the next heading
/// of the same or a higher level (outside code blocks, where `#` starts a comment).
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"))
        + heading.len()
        + 2;
    let rest = &text[start..];
    let end = rest
        .lines()
        .scan((0, false), |(offset, fenced), line| {
            let at = *offset;
            *offset += line.len() + 1;
            if line.starts_with("```") {
                *fenced = !*fenced;
            }
            Some((at, line, *fenced))
        })
        .find(|(_, line, fenced)| {
            let hashes = line.chars().take_while(|&c| c == '#').count();
            !fenced && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ')
        })
        .map_or(rest.len(), |(at, _, _)| at);
    &rest[..end]
}

/// Files where the docs, the chart's rules and dashboards name metrics.
fn documents() -> Vec<PathBuf> {
    const KINDS: &[&str] = &["md", "yaml", "yml", "json", "tpl"];
    let root = root();
    let mut out = vec![root.join("README.md")];
    docs::files_below(&root.join("docs"), KINDS, &mut out);
    docs::files_below(&root.join("charts"), KINDS, &mut out);
    out.sort();
    out
}

#[test]
fn the_metrics_are_registered_under_the_names_the_docs_use() {
    let families = registered();
    assert!(families.len() > 20, "{families:?}");
    assert!(families.contains_key("wxpush_messages_accepted_total"));
    assert_eq!(
        families
            .get("wxpush_send_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
}

#[test]
fn architecture_md_lists_every_metric_and_no_other() {
    let text = read(&root().join("docs/architecture.md"));
    let listed: BTreeSet<String> = words(section(&text, "## Metrics"))
        .into_iter()
        .filter(|w| !not_a_pusher_metric(w))
        .collect();
    let families = registered();
    let missing: Vec<&String> = families.keys().filter(|f| !listed.contains(*f)).collect();
    let unknown: Vec<&String> = listed
        .iter()
        .filter(|w| !is_registered(w, &families))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/architecture.md, section Metrics: not listed {missing:?}; listed but not \
         registered by Metrics::new {unknown:?}"
    );
}

#[test]
fn every_metric_the_docs_and_the_chart_name_exists() {
    let families = registered();
    let mut unknown = Vec::new();
    let files = documents();
    assert!(files.len() > 10, "{files:?}");
    for path in files {
        for word in words(&read(&path)) {
            if !not_a_pusher_metric(&word) && !is_registered(&word, &families) {
                unknown.push(format!("{}: {word}", path.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics named in the docs that Metrics::new does not register:\n{}",
        unknown.join("\n")
    );
}

/// The `≤ N` limits of docs/pusher.md's table of body fields (`POST /v1/messages`) are the
/// ones the validation enforces.
#[test]
fn the_body_field_limits_in_pusher_md_are_the_codes() {
    use wxpush_pusher::message::{
        MAX_APPID, MAX_CLIENT_MSG_ID, MAX_DATA_KEYS, MAX_DATA_VALUE, MAX_PAGE, MAX_TEMPLATE_ID,
        MAX_TOUSER, MAX_URL,
    };
    assert_eq!(MAX_TOUSER, MAX_TEMPLATE_ID, "one row documents both");
    let expected: BTreeMap<&str, Vec<usize>> = [
        ("`touser`, `template_id`", vec![MAX_TOUSER]),
        ("`url`", vec![MAX_URL]),
        ("`miniprogram`", vec![MAX_APPID, MAX_PAGE]),
        ("`data`", vec![MAX_DATA_VALUE, MAX_DATA_KEYS]),
        ("`client_msg_id`", vec![MAX_CLIENT_MSG_ID]),
        ("`callback_url`", vec![MAX_URL]),
    ]
    .into_iter()
    .collect();
    let text = read(&root().join("docs/pusher.md"));
    let table = section(&text, "### `POST /v1/messages`");
    let documented: BTreeMap<&str, Vec<usize>> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|row| {
            let mut cells = row.split(" | ");
            let field = cells.next()?.trim_start_matches("| ");
            let rule = cells.next()?;
            let limits: Vec<usize> = rule
                .split("≤ ")
                .skip(1)
                .filter_map(|s| {
                    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                })
                .collect();
            (!limits.is_empty()).then_some((field, limits))
        })
        .collect();
    assert_eq!(documented, expected, "docs/pusher.md vs message::MAX_*");
}

#[test]
fn the_helpers_see_what_they_should() {
    let text =
        "`wxpush_a_total{x}`, wxpush_b; label_wxpush_io_channel, wxpush_pusher::x, wxpush_*\n";
    let found: Vec<String> = words(text).into_iter().collect();
    assert_eq!(found, ["wxpush_a_total", "wxpush_b", "wxpush_pusher"]);
    let md = "# T\n\n## Metrics\n\nwxpush_a\n\n```sh\n# wxpush_b\n```\n### Sub\n\nwxpush_c\n\n\
              ## Next\n\nwxpush_d\n";
    assert_eq!(
        words(section(md, "## Metrics"))
            .into_iter()
            .collect::<Vec<_>>(),
        ["wxpush_a", "wxpush_b", "wxpush_c"]
    );
}

/// docs/operator.md's table of metrics ("Metrics it exports") names every metric the operator
/// registers, with its type, and no other.
#[test]
fn the_operator_docs_table_is_the_registry() {
    // A family without a sample is left out of a scrape: give each one.
    let metrics = wxpush_operator::metrics::Metrics::new();
    metrics.reconciled("applied", 0.1);
    metrics.failed("apply");
    metrics.credential_checked("TokenIssued");
    metrics.set_leader(true);
    let registered: BTreeSet<(String, String)> = docs::metric_families(&metrics.encode())
        .into_iter()
        .collect();
    assert_eq!(registered.len(), 5, "{registered:?}");

    let text = read(&root().join("docs/operator.md"));
    let table = text
        .split("### Metrics it exports")
        .nth(1)
        .expect("docs/operator.md has the section Metrics it exports");
    let documented: BTreeSet<(String, String)> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its rule
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let name = name.split('{').next().unwrap_or(name).to_string();
            (name, cells[2].to_string())
        })
        .collect();
    assert_eq!(documented, registered, "docs/operator.md vs Metrics::new");
}
