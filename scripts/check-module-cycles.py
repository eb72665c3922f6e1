#!/usr/bin/env python3
"""Fails when the modules of a wxpush crate import each other in a cycle.

For every crate of the workspace, it reads each source file's `use crate::…`, `crate::…` and
`super::…` paths (comments and doc comments are skipped) and draws an edge from the file's module
to the module it names, at two levels: between top-level modules of the crate (`store` →
`message`), and between sibling modules inside one folder (`wechat::sender` → `wechat::token`).
A folder's own `mod.rs`/`lib.rs` is not a sibling: it declares and re-exports its children,
which is structure, not a dependency. Unit-test files (`tests.rs`, `*_tests.rs`) may reach back
into the module they test and are left out. Any strongly connected set of two or more modules is
a cycle, printed with the edges and the files that make them; the exit code is 1.

Usage: scripts/check-module-cycles.py [CRATE_DIR ...]   (default: every workspace crate)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["api", "wxcrypto", "pusher", "sandbox", "operator", "tests"]
PATH_RE = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\}", re.S)


def module_of(src: pathlib.Path, file: pathlib.Path) -> list[str]:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def referenced(text: str, here: list[str], is_dir_mod: bool) -> list[list[str]]:
    """Absolute module paths (as lists) that `text` refers to."""
    out = []
    base_super = here[:-1] if not is_dir_mod else here[:-1]
    def resolve(head, tail):
        segs = [s for s in tail.split("::") if s]
        if head == "crate":
            return segs
        # `super` from a file module `a/b.rs` (module a::b) is `a`; from `a/b/mod.rs` also `a`.
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
            elif item == "self":
                out.append(resolve(head, prefix))
    for m in PATH_RE.finditer(text):
        out.append(resolve(m.group(1), m.group(2)))
    return out


def edges_for(crate_dir: pathlib.Path):
    src = crate_dir / "src"
    files = sorted(p for p in src.rglob("*.rs"))
    modules = {tuple(module_of(src, f)) for f in files}
    is_folder = {m[:-1] for m in modules if len(m) > 1}
    edges = {}
    for f in files:
        if f.name == "tests.rs" or f.name.endswith("_tests.rs") or f.parent.name == "bin":
            continue
        here = module_of(src, f)
        if not here:
            continue  # lib.rs / main.rs: the crate root wires modules together
        is_dir_mod = f.name == "mod.rs"
        text = strip_comments(f.read_text())
        # unit tests inside a file may use anything of the crate
        text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", text)[0]
        for target in referenced(text, here, is_dir_mod):
            # the longest known module prefix of the path
            while target and tuple(target) not in modules:
                target = target[:-1]
            if not target:
                continue
            a, b = here, target
            if a[0] != b[0]:
                edge = (a[0], b[0])
            else:
                # inside one top-level folder: siblings at the first level below the folder
                if len(a) < 2 or len(b) < 2 or tuple(a[:1]) not in is_folder:
                    continue
                if a[1] == b[1]:
                    continue
                edge = (a[0] + "::" + a[1], b[0] + "::" + b[1])
            edges.setdefault(edge, set()).add(str(f.relative_to(ROOT)))
    return edges


def cycles(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    def strong(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def main(argv):
    crates = argv[1:] or CRATES
    failed = False
    for c in crates:
        d = ROOT / c
        if not (d / "src").is_dir():
            continue
        edges = edges_for(d)
        found = cycles(edges)
        for comp in found:
            failed = True
            print(f"{c}: import cycle among {', '.join(comp)}")
            for (a, b), files in sorted(edges.items()):
                if a in comp and b in comp:
                    print(f"    {a} -> {b}  ({', '.join(sorted(files))})")
        print(f"{c}: {len(edges)} module edges, {len(found)} cycles")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
