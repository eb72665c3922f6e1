#!/usr/bin/env python3
"""Fails when the modules of a wxpush crate import each other in a cycle, or when a pusher
module uses a module of a higher layer than its own.

For every crate of the workspace, it reads each source file's `use crate::…`, `crate::…` and
`super::…` paths (comments and doc comments are skipped) and draws an edge from the file's module
to the module it names. Edges are drawn at every level of the module tree, between the two
children of the deepest module that holds both ends: `store::embedded::writer` →
`store::index::…` is the edge `store::embedded` → `store::index`. A folder's own file
(`mod.rs`, or `x.rs` beside a folder `x/`) is a node of its own, `x::self`: a child that uses an
item of its parent draws `x::child` → `x::self`, and the parent that uses a child draws the edge
back. Two kinds of lines are structure, not dependencies, and draw no edge: `mod` declarations
and re-exports (`pub use …`, `pub(crate) use …`). Unit-test files (`tests.rs`, `*_tests.rs`) and
inline `#[cfg(test)] mod tests` may reach back into the module they test and are left out.

Any strongly connected set of two or more nodes is a cycle, printed with the edges and the files
that make them.

The pusher's top-level modules are also checked against the table of layers in
docs/architecture.md ("Layers of the pusher"): a module may use modules of its own layer or
below, never above; a module missing from the table fails too.

The exit code is 1 on any finding.

Usage: scripts/check-module-cycles.py [CRATE_DIR ...]   (default: every workspace crate)
       scripts/check-module-cycles.py --self-test        (checks the checker on small trees)
"""
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["api", "wxcrypto", "pusher", "sandbox", "operator", "tests", "bench/loop"]
LAYERED = "pusher"
LAYER_DOC = "docs/architecture.md"
LAYER_HEADING = "Layers of the pusher"
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
PATH_RE = re.compile(rf"\b(crate|super)((?:::{IDENT})+)(::\*)?")
GLOB_RE = re.compile(rf"\b(crate|super)((?:::{IDENT})*)::\*")
USE_GROUP_RE = re.compile(rf"\buse\s+(crate|super)((?:::{IDENT})*)::\{{([^;]*)\}}", re.S)
STRUCTURE_RE = re.compile(
    r"^\s*(?:#\[[^\]]*\]\s*)*pub(?:\([^)]*\))?\s+use\b[^;]*;"  # re-exports
    r"|^\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*;",  # declarations
    re.M | re.S,
)
SELF = "self"


def module_of(src: pathlib.Path, file: pathlib.Path) -> list[str]:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    # string literals may hold `//` (URLs); drop them before cutting line comments
    text = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', text)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def referenced(text: str, here: list[str], is_dir_mod: bool) -> list[list[str]]:
    """Absolute module paths (as lists) that `text` refers to."""
    out = []
    # `super` in `a/b.rs` (module a::b) and in `a/b/mod.rs` (also a::b) both name `a`.
    base_super = here[:-1]

    def resolve(head, tail):
        segs = [s for s in tail.split("::") if s]
        if head == "crate":
            return segs
        parent = list(base_super)
        while segs and segs[0] == "super":
            parent = parent[:-1]
            segs = segs[1:]
        return parent + segs

    for m in USE_GROUP_RE.finditer(text):
        head, prefix, inner = m.group(1), m.group(2), m.group(3)
        for item in re.split(r"[,\s{}]+", inner):
            item = item.split(" as ")[0].strip()
            if item and item not in ("self", "*"):
                out.append(resolve(head, prefix + "::" + item.split("::")[0]))
            elif item in ("self", "*"):
                out.append(resolve(head, prefix))
    for m in GLOB_RE.finditer(text):
        out.append(resolve(m.group(1), m.group(2)))
    for m in PATH_RE.finditer(text):
        out.append(resolve(m.group(1), m.group(2)))
    return out


def node(path: tuple, depth: int) -> str:
    """The node standing for module `path` among the children of its ancestor at `depth`."""
    if len(path) == depth:
        return "::".join(path + (SELF,))
    return "::".join(path[: depth + 1])


def edges_for(crate_dir: pathlib.Path, root: pathlib.Path = ROOT):
    src = crate_dir / "src"
    files = sorted(p for p in src.rglob("*.rs"))
    modules = {tuple(module_of(src, f)) for f in files}
    edges = {}
    for f in files:
        if f.name == "tests.rs" or f.name.endswith("_tests.rs") or f.parent.name == "bin":
            continue
        here = tuple(module_of(src, f))
        if not here:
            continue  # lib.rs / main.rs: the crate root wires modules together
        text = strip_comments(f.read_text())
        # unit tests inside a file may use anything of the crate
        text = re.split(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)[0]
        text = STRUCTURE_RE.sub("", text)
        text = re.sub(r"pub\(in [^)]*\)", "pub", text)  # a visibility names no dependency
        targets = referenced(text, list(here), f.name == "mod.rs")
        # a module's own file names its children by their bare names (`writer::Writer`)
        for child in sorted(m[-1] for m in modules if m[:-1] == here and len(m) == len(here) + 1):
            if re.search(rf"(?<![:\w])(?:self::)?{child}::", text):
                targets.append(list(here) + [child])
        for target in targets:
            # the longest known module prefix of the path
            while target and tuple(target) not in modules:
                target = target[:-1]
            b = tuple(target)
            if not b or b == here:
                continue
            depth = 0
            while depth < min(len(here), len(b)) and here[depth] == b[depth]:
                depth += 1
            edge = (node(here, depth), node(b, depth))
            edges.setdefault(edge, set()).add(str(f.relative_to(root)))
    return edges


def cycles(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def read_layers(doc: pathlib.Path) -> dict[str, int]:
    """Module → layer, from the table under the heading LAYER_HEADING: rows `| n | `a`, `b` |`."""
    text = doc.read_text()
    at = text.find(LAYER_HEADING)
    if at < 0:
        raise SystemExit(f"{doc}: no section '{LAYER_HEADING}'")
    layers = {}
    for line in text[at:].splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for module in re.findall(r"`([a-z_]+)`", m.group(2)):
                layers[module] = int(m.group(1))
    if not layers:
        raise SystemExit(f"{doc}: the section '{LAYER_HEADING}' has no table of layers")
    return layers


def layer_violations(edges, layers, src: pathlib.Path):
    out = []
    tops = sorted({p.stem for p in src.glob("*.rs") if p.stem not in ("lib", "main")}
                  | {p.name for p in src.iterdir() if p.is_dir() and p.name != "bin"})
    for m in tops:
        if m == "tests" or m.endswith("_tests"):
            continue  # unit tests sit outside the layers, as their files sit outside the edges
        if m not in layers:
            out.append(f"module {m} is not in the table of layers")
    for (a, b), files in sorted(edges.items()):
        if "::" in a or "::" in b:
            continue  # inside one top-level module
        la, lb = layers.get(a), layers.get(b)
        if la is not None and lb is not None and lb > la:
            out.append(f"{a} (layer {la}) uses {b} (layer {lb})  ({', '.join(sorted(files))})")
    return out


def check(crate: str, crate_dir: pathlib.Path, layers, root: pathlib.Path = ROOT) -> bool:
    edges = edges_for(crate_dir, root)
    found = cycles(edges)
    ok = True
    for comp in found:
        ok = False
        print(f"{crate}: import cycle among {', '.join(comp)}")
        for (a, b), files in sorted(edges.items()):
            if a in comp and b in comp:
                print(f"    {a} -> {b}  ({', '.join(sorted(files))})")
    bad = layer_violations(edges, layers, crate_dir / "src") if layers is not None else []
    for line in bad:
        ok = False
        print(f"{crate}: layer violation: {line}")
    print(f"{crate}: {len(edges)} module edges, {len(found)} cycles"
          + (f", {len(bad)} layer violations" if layers is not None else ""))
    return ok


def self_test() -> int:
    """Runs the check on small trees: each must pass or fail as stated."""
    doc = "### " + LAYER_HEADING + "\n\n| layer | modules |\n|---|---|\n| 1 | `low` |\n| 2 | `high`, `x` |\n"
    cases = {
        "a clean tree passes": (True, {
            "lib.rs": "pub mod low; pub mod high;",
            "low.rs": "pub fn f() {}",
            "high/mod.rs": "mod inner;\npub use inner::g;\n",
            "high/inner.rs": "use crate::low::f;\npub fn g() { f() }",
        }),
        "a layer violation fails": (False, {
            "lib.rs": "pub mod low; pub mod high;",
            "low.rs": "use crate::high::g;\npub fn f() { g() }",
            "high.rs": "pub fn g() {}",
        }),
        "a module without a layer fails": (False, {
            "lib.rs": "pub mod low; pub mod other;",
            "low.rs": "pub fn f() {}",
            "other.rs": "pub fn g() {}",
        }),
        "a cycle through mod.rs fails": (False, {
            "lib.rs": "pub mod x;",
            "x/mod.rs": "mod w;\npub struct S;\npub fn run() { w::go() }\n",
            "x/w.rs": "use super::S;\npub fn go() { let _ = S; }",
        }),
        "a cycle between sibling files fails": (False, {
            "lib.rs": "pub mod x;",
            "x/mod.rs": "mod a;\nmod b;\n",
            "x/a.rs": "use super::b::B;\npub struct A(B);",
            "x/b.rs": "pub struct B;\npub fn f(_: &super::a::A) {}",
        }),
        "a re-export in mod.rs is not an edge": (True, {
            "lib.rs": "pub mod x;",
            "x/mod.rs": "mod w;\npub use w::go;\npub struct S;\n",
            "x/w.rs": "use super::S;\npub fn go() { let _ = S; }",
        }),
    }
    failed = 0
    for name, (want, files) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            (root / "doc.md").write_text(doc)
            for path, text in files.items():
                p = root / "c" / "src" / path
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text)
            layers = read_layers(root / "doc.md")
            got = check("self-test", root / "c", layers, root)
        verdict = "ok" if got == want else "WRONG"
        failed += got != want
        print(f"self-test: {name}: {'passed' if got else 'failed'} ({verdict})")
    print(f"self-test: {len(cases) - failed} of {len(cases)} cases as expected")
    return 1 if failed else 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    crates = argv[1:] or CRATES
    ok = True
    for c in crates:
        d = ROOT / c
        if not (d / "src").is_dir():
            continue
        layers = read_layers(ROOT / LAYER_DOC) if c == LAYERED else None
        ok &= check(c, d, layers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
