//! The binaries' own words at their edges: `crdgen --help` is an answer, not a usage error; the
//! operator reports a failed connection to the API server once, with each cause once; the flags
//! of the pusher and the operator, and the pusher's defaults, are the ones their docs give.

use std::collections::BTreeSet;
use std::process::Command;

use wxpush_tests::pusher::tempdir;
use wxpush_tests::{binary, docs};

#[test]
fn crdgen_help_exits_0_and_a_bad_flag_exits_2() {
    let out = Command::new(binary("crdgen"))
        .arg("--help")
        .output()
        .expect("crdgen runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("usage: crdgen"), "{text}");
    let out = Command::new(binary("crdgen"))
        .arg("--no-such-flag")
        .output()
        .expect("crdgen runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: crdgen"));
}

#[test]
fn the_operator_prints_a_failed_connection_once() {
    let dir = tempdir();
    // A closed loopback port: the connection is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- {{name: c, cluster: {{server: \
             'https://127.0.0.1:{port}'}}}}\ncontexts:\n- {{name: x, context: {{cluster: c, \
             user: u}}}}\ncurrent-context: x\nusers:\n- {{name: u, user: {{token: t}}}}\n"
        ),
    )
    .expect("write the kubeconfig");
    let out = Command::new(binary("wxpush-operator"))
        .args(["--listen", "127.0.0.1:0", "--leader-election", "false"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("the operator runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let reports: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("Connection refused"))
        .collect();
    assert_eq!(reports.len(), 1, "one line reports it: {err}");
    let line = reports[0];
    assert!(line.starts_with("wxpush-operator: "), "{line}");
    for part in line.split(": ") {
        assert_eq!(
            line.matches(part).count(),
            1,
            "`{part}` is repeated in: {line}"
        );
    }
}

/// Every flag of `wxpush-pusher` and its commands is in docs/pusher.md, every flag the docs
/// give it exists, and the defaults in its usage lines are the ones `--help` states.
#[test]
fn the_pusher_flags_and_defaults_are_the_documented_ones() {
    let doc = docs::read("docs/pusher.md");
    let commands = doc
        .split("## Commands")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/pusher.md has a Commands section");
    let mut known = BTreeSet::new();
    let mut undocumented = Vec::new();
    let mut wrong_defaults = Vec::new();
    let documented = docs::flags(&doc, false);
    let usage = docs::usage_defaults(commands);
    for command in [
        &[][..],
        &["serve"],
        &["check-config"],
        &["store-to-json"],
        &["demo"],
    ] {
        let help = docs::help("wxpush-pusher", command);
        for flag in docs::flags(&help, false) {
            if !documented.contains(&flag) {
                undocumented.push(format!("{command:?} {flag}"));
            }
            known.insert(flag);
        }
        for (flag, default) in docs::help_defaults(&help) {
            if let Some(doc_value) = usage.get(&flag)
                && *doc_value != default
            {
                wrong_defaults.push(format!("{flag}: docs {doc_value}, --help {default}"));
            }
        }
    }
    assert!(known.len() > 10, "{known:?}");
    assert!(usage.len() >= 4, "{usage:?}");
    assert!(
        undocumented.is_empty(),
        "flags missing from docs/pusher.md: {undocumented:?}"
    );
    assert!(
        wrong_defaults.is_empty(),
        "docs/pusher.md usage lines: {wrong_defaults:?}"
    );
    let stale: Vec<String> = docs::flags(commands, false)
        .into_iter()
        .filter(|f| !known.contains(f))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/pusher.md (Commands) names flags the pusher does not have: {stale:?}"
    );
}

/// Every flag of `wxpush-operator` is in docs/operator.md, and every flag that page names is
/// the operator's.
#[test]
fn the_operator_flags_are_the_documented_ones() {
    let help = docs::help("wxpush-operator", &[]);
    let flags = docs::flags(&help, false);
    assert!(flags.len() > 10, "{flags:?}");
    let (undocumented, stale) = docs::flags_against_page(&help, &docs::read("docs/operator.md"));
    assert!(
        undocumented.is_empty(),
        "flags missing from docs/operator.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/operator.md names flags the operator does not have: {stale:?}"
    );
}
