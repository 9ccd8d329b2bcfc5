#!/usr/bin/env python3
"""Fails when the modules of one Rust crate import each other in a cycle.

Usage: check-import-cycles.py SRC_DIR [--list]

Each file under SRC_DIR is a module (`slo/mod.rs` is `slo`, `slo/shared.rs`
is `slo::shared`; `lib.rs`/`main.rs` are the crate root, left out). An edge
A -> B is a `use crate::...` item or a `crate::...` path in A's code (not in
comments, strings or `#[cfg(test)]` modules) naming B or something inside B
(the longest module prefix of the path). Prints each cycle found and exits
1; exits 0 with none. `--list` prints every edge first.
"""

import re
import sys
from pathlib import Path


def module_of(path: Path, root: Path):
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], ["main"]):
        return None
    return "::".join(parts)


CHAR = re.compile(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'\n])'")


def strip_comments_and_strings(src: str) -> str:
    """Blanks comments, string and char literals (keeps code positions)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", src[i:]).group(1)
            end = src.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and CHAR.match(src, i):
            # A char literal; a lifetime (`'a`) has no closing quote.
            i = CHAR.match(src, i).end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_test_modules(code: str) -> str:
    """Drops `#[cfg(test)] mod name { ... }` blocks."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", code)
        if not m:
            return code
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        code = code[: m.start()] + code[i:]


def expand_use(tree: str):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [re.sub(r"as\w+$", "", tree)]
    prefix, inner = m.group(1), m.group(2)
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    out = []
    for it in filter(None, items):
        out += [prefix + x for x in expand_use(it)]
    return out


def edges_of(code: str, modules: set, me: str):
    paths = []
    for m in re.finditer(r"\buse\s+crate::([^;]*);", code):
        paths += expand_use(m.group(1))
    # `crate::a::b` anywhere else (expressions, types, `pub use` re-exports).
    without_use = re.sub(r"\buse\s+crate::[^;]*;", "", code)
    paths += re.findall(r"\bcrate((?:::\w+)+)", without_use)
    found = set()
    for p in paths:
        parts = [x for x in p.strip(":").split("::") if x and x not in ("self", "*")]
        for k in range(len(parts), 0, -1):
            cand = "::".join(parts[:k])
            if cand in modules:
                if cand != me:
                    found.add(cand)
                break
    return found


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def one_cycle(graph, comp):
    """A concrete cycle inside a component, for the message."""
    members = set(comp)
    start = comp[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w in path]
        if back:
            i = path.index(back[0])
            return path[i:] + [back[0]]
        step = next((w for w in nxt if w not in seen), None)
        if step is None:
            return comp + [comp[0]]
        path.append(step)
        seen.add(step)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1])
    files = {}
    for f in sorted(root.rglob("*.rs")):
        mod = module_of(f, root)
        if mod is not None:
            files[mod] = f
    modules = set(files)
    graph = {}
    for mod, f in files.items():
        code = strip_test_modules(strip_comments_and_strings(f.read_text()))
        graph[mod] = edges_of(code, modules, mod)
    if "--list" in argv:
        for mod in sorted(graph):
            for dep in sorted(graph[mod]):
                print(f"{mod} -> {dep}")
    cycles = find_cycles(graph)
    for comp in cycles:
        print("import cycle: " + " -> ".join(one_cycle(graph, comp)) + f"  (component: {', '.join(comp)})")
    if cycles:
        return 1
    print(f"no import cycle among {len(modules)} modules of {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
