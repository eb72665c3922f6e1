//! What the docs say about the binaries' flags, next to what `--help` says, for the tests that
//! keep the two the same.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::{binary, workspace_root};

/// A file of the workspace (`docs/pusher.md`), as text.
pub fn read(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `--flag` in `text` (not `--help` or `--version`, nor a prefix such as `--fault-`).
/// With `after_backtick`, only those that open a code span (`` `--listen ADDR` ``), which is how
/// the docs name a flag of their own binary rather than one of a command they quote.
pub fn flags(text: &str, after_backtick: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("--").map(|i| from + i) {
        let end = text[at + 2..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .map_or(text.len(), |i| at + 2 + i);
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let boundary = before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'-'));
        let backticked = before == Some(b'`');
        let flag = &text[at..end];
        if boundary
            && (backticked || !after_backtick)
            && flag.len() > 2
            && flag.as_bytes()[2].is_ascii_lowercase()
            && !flag.ends_with('-')
            && flag != "--help"
            && flag != "--version"
        {
            out.insert(flag.to_string());
        }
        from = end.max(at + 2);
    }
    out
}

/// `binary args… --help`, as text.
pub fn help(name: &str, args: &[&str]) -> String {
    let out = Command::new(binary(name))
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    assert!(out.status.success(), "{name} {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `[default: …]` of each flag in a clap `--help` text.
pub fn help_defaults(help: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let flag_line =
            trimmed.starts_with("--") || trimmed.starts_with('-') && trimmed.contains(", --");
        if flag_line {
            current = trimmed
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_string());
        }
        if let (Some(flag), Some(at)) = (&current, line.find("[default: ")) {
            let value = &line[at + "[default: ".len()..];
            let value = value.split([']', ';']).next().unwrap_or(value);
            out.insert(flag.clone(), value.to_string());
        }
    }
    out
}

/// The `[--flag value]` pairs of a usage line in the docs (`[--count 2000]`; not `[--rate N]`).
pub fn usage_defaults(text: &str) -> BTreeMap<String, String> {
    text.split('[')
        .skip(1)
        .filter_map(|s| {
            let inner = s.split(']').next()?;
            let mut words = inner.split_whitespace();
            let flag = words.next()?.strip_prefix("--")?;
            let value = words.next()?;
            // `N`, `URL`: a placeholder, not a default.
            let placeholder = value.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            (words.next().is_none() && !placeholder)
                .then(|| (format!("--{flag}"), value.to_string()))
        })
        .collect()
}

/// The metric families of a Prometheus text exposition, each by the name the docs use
/// (counters with `_total`), with its type (`counter`, `gauge`, `histogram`).
pub fn metric_families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().unwrap_or_default();
            let kind = parts.next().unwrap_or_default().to_string();
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            (name, kind)
        })
        .collect()
}

/// Compares the flags of `help` (a `--help` text) with those the page `doc` names: the flags
/// missing from the page, and the flags the page names as its binary's own (in a code span)
/// that `help` does not have.
pub fn flags_against_page(help: &str, doc: &str) -> (Vec<String>, Vec<String>) {
    let given = flags(help, false);
    let documented = flags(doc, false);
    let undocumented = given
        .iter()
        .filter(|f| !documented.contains(*f))
        .cloned()
        .collect();
    let stale = flags(doc, true)
        .into_iter()
        .filter(|f| !given.contains(f))
        .collect();
    (undocumented, stale)
}

/// Every file below `dir` (recursively) whose extension is one of `extensions`, appended to
/// `out`. A missing directory adds nothing.
pub fn files_below(dir: &std::path::Path, extensions: &[&str], out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_below(&path, extensions, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
        {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_found_where_they_are_written() {
        let text = "`--listen ADDR`, run --count 3; a--b, `cargo test --lib`, `--fault-*`, --help";
        let all: Vec<String> = flags(text, false).into_iter().collect();
        assert_eq!(all, ["--count", "--lib", "--listen"]);
        let own: Vec<String> = flags(text, true).into_iter().collect();
        assert_eq!(own, ["--listen"]);
    }

    #[test]
    fn defaults_are_read_from_help_and_usage() {
        let help = "Options:\n      --count <COUNT>\n          How many\n\n          [default: 2000]\n\
                    \n  -r, --rate <R>  The rate [default: 100; with --faults, less]\n";
        let d = help_defaults(help);
        assert_eq!(d.get("--count").map(String::as_str), Some("2000"));
        assert_eq!(d.get("--rate").map(String::as_str), Some("100"));
        let u = usage_defaults("demo [--count 2000] [--json] [--rate N] [--url URL --appid A]");
        assert_eq!(u.len(), 1);
        assert_eq!(u.get("--count").map(String::as_str), Some("2000"));
    }
}
