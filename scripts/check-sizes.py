#!/usr/bin/env python3
"""The size rules of docs/architecture.md, checked on the source tree.

1. No function body of the library crates is over MAX_FN lines (from its `fn` line to the
   closing brace at the same indentation, as rustfmt writes it). Test files are not counted.
2. No file under pusher/src is over MAX_FILE lines unless its first lines (the module doc) say
   why it stays one file: a paragraph opening `//! **Why one file` (or without the bold).

    python3 scripts/check-sizes.py              # the tree; exits 1 on a finding
    python3 scripts/check-sizes.py --self-test  # the check itself, on small trees

Written by hand: it is a few lines of line counting over rustfmt's layout, which no linter of
crates.io checks (clippy's `too_many_lines` counts only code lines and has no per-file rule).
"""
import pathlib
import re
import sys
import tempfile

MAX_FN = 120
MAX_FILE = 600
CRATES = ["pusher/src", "operator/src", "api/src", "sandbox/src", "wxcrypto/src"]
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def is_test(path: pathlib.Path) -> bool:
    name = path.name
    return name == "tests.rs" or name.endswith("_tests.rs") or "tests" in path.parts


def long_functions(root: pathlib.Path):
    for crate in CRATES:
        for p in sorted((root / crate).rglob("*.rs")):
            if is_test(p):
                continue
            lines = p.read_text().split("\n")
            i = 0
            while i < len(lines):
                m = FN.match(lines[i])
                if m and not lines[i].rstrip().endswith(";"):
                    indent, name = m.group(1), m.group(7)
                    j = i + 1
                    while j < len(lines) and lines[j] != indent + "}":
                        j += 1
                    n = j - i + 1
                    if n > MAX_FN:
                        yield f"{p.relative_to(root)}: fn {name} is {n} lines (at most {MAX_FN})"
                    i = j
                i += 1


def long_files(root: pathlib.Path):
    for p in sorted((root / "pusher/src").rglob("*.rs")):
        if is_test(p):
            continue
        lines = p.read_text().split("\n")
        if len(lines) > MAX_FILE and not any(
            re.match(r"//! (\*\*)?Why one file", line) for line in lines[:80]
        ):
            yield (
                f"{p.relative_to(root)}: {len(lines)} lines (at most {MAX_FILE} without a "
                "`//! **Why one file` paragraph at its top)"
            )


def check(root: pathlib.Path) -> list:
    return list(long_functions(root)) + list(long_files(root))


def self_test() -> int:
    def tree(files: dict) -> pathlib.Path:
        d = pathlib.Path(tempfile.mkdtemp())
        for name, text in files.items():
            f = d / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        return d

    def body(n: int, indent: str = "") -> str:
        inner = "\n".join(f"{indent}    let _ = {k};" for k in range(n - 2))
        return f"{indent}fn f() {{\n{inner}\n{indent}}}\n"

    cases = [
        ("a function of 120 lines passes", {"pusher/src/a.rs": body(120)}, 0),
        ("a function of 121 lines fails", {"pusher/src/a.rs": body(121)}, 1),
        ("a method in an impl counts", {"operator/src/a.rs": "impl A {\n" + body(121, "    ") + "}\n"}, 1),
        ("test files are not counted", {"pusher/src/x/tests.rs": body(200)}, 0),
        ("a long file without a reason fails", {"pusher/src/a.rs": "//! A.\n" + "\n" * 650}, 1),
        ("a long file with a reason passes", {"pusher/src/a.rs": "//! A.\n//!\n//! **Why one file.** x.\n" + "\n" * 650}, 0),
    ]
    ok = 0
    for name, files, want in cases:
        got = len(check(tree(files)))
        good = got == want
        ok += good
        print(f"self-test: {name}: {got} finding(s) ({'ok' if good else 'WRONG'})")
    print(f"self-test: {ok} of {len(cases)} cases as expected")
    return 0 if ok == len(cases) else 1


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = pathlib.Path(__file__).resolve().parent.parent
    found = check(root)
    for f in found:
        print(f"check-sizes: {f}", file=sys.stderr)
    if found:
        return 1
    print(f"check-sizes: no function over {MAX_FN} lines, no unexplained file over {MAX_FILE} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
