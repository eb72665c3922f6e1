//! What a test needs from the machine (root, `mount`, a network namespace, a tool) and what
//! happens when it is missing.
//!
//! A missing capability never lets a test pass quietly:
//! - in CI (`CI=true`) and in the test command (`scripts/test.sh` sets `WXPUSH_STRICT=1`) the
//!   test fails, naming what is missing and how to get it;
//! - elsewhere (a developer's `cargo test`) the test stops early and writes a `SKIPPED` banner
//!   straight to the terminal, past the test harness's output capture, so that it shows even
//!   when the test is reported as passed.
//!
//! ```no_run
//! # fn mount_something() -> Result<(), String> { Ok(()) }
//! let Some(_mount) = wxpush_tests::capability::require("a tmpfs (mount needs root)", mount_something())
//! else {
//!     return;
//! };
//! ```

use std::fmt::Display;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Whether a missing capability fails the test: `CI=true` (or `1`), or `WXPUSH_STRICT=1`.
pub fn strict() -> bool {
    strict_in(|name| std::env::var(name).ok())
}

fn strict_in(var: impl Fn(&str) -> Option<String>) -> bool {
    let on = |name: &str| {
        var(name).is_some_and(|v| {
            let v = v.trim();
            v == "1" || v.eq_ignore_ascii_case("true")
        })
    };
    on("CI") || on("WXPUSH_STRICT")
}

/// `Some(value)` when the capability is there. When `found` is an error: panics in strict mode
/// (see [`strict`]); otherwise writes a loud `SKIPPED` banner and returns `None`, and the caller
/// returns at once.
#[must_use = "the test must stop when the capability is missing"]
pub fn require<T, E: Display>(what: &str, found: Result<T, E>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(e) => {
            missing(what, &e.to_string());
            None
        }
    }
}

/// Fails (strict mode) or reports a skip for a missing `what`; `why` says what went wrong.
fn missing(what: &str, why: &str) {
    fail_or_skip(strict(), what, why);
}

fn fail_or_skip(strict: bool, what: &str, why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    assert!(
        !strict,
        "{test}: {what} is missing: {why} (CI=true or WXPUSH_STRICT=1: a missing capability fails)"
    );
    // `eprintln!` would be captured and hidden for a passing test; a direct write is not.
    let line = "*".repeat(78);
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{line}\nSKIPPED {test}: {what} is missing: {why}\n\
         (outside CI only: with CI=true or WXPUSH_STRICT=1 this test fails)\n{line}"
    );
}

/// The effective user is root.
pub fn root() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("no Uid line in /proc/self/status")?;
    if euid == "0" {
        Ok(())
    } else {
        Err(format!("running as uid {euid}, not root"))
    }
}

/// `program args…` runs and exits 0 (for instance `tmux -V`, `unshare -n true`).
pub fn runs(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_capability_hands_back_its_value() {
        assert_eq!(require("x", Ok::<_, String>(7)), Some(7));
    }

    #[test]
    fn ci_or_the_test_command_makes_a_missing_capability_fail() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        assert!(strict_in(env(&[("CI", "true")])));
        assert!(strict_in(env(&[("CI", "1")])));
        assert!(strict_in(env(&[("WXPUSH_STRICT", "1")])));
        assert!(!strict_in(env(&[])));
        assert!(!strict_in(env(&[("CI", "false"), ("WXPUSH_STRICT", "0")])));
    }

    #[test]
    #[should_panic(expected = "a tmpfs is missing: not root")]
    fn in_strict_mode_a_missing_capability_fails_the_test() {
        fail_or_skip(true, "a tmpfs", "not root");
    }

    #[test]
    fn a_missing_tool_is_an_error_naming_it() {
        let err = runs("wxpush-no-such-tool", &[]).expect_err("not installed");
        assert!(err.contains("wxpush-no-such-tool"), "{err}");
        assert!(runs("false", &[]).is_err());
        assert!(runs("true", &[]).is_ok());
    }
}
