"""The house rules of docs/architecture.md ("import rule"), read from the code:
which package may import which, no two modules importing each other, SQL only
in store/, LiteLLM only in teachers/, and modules of a readable size.

Every import counts, including the lazy ones inside functions: a lazy import
still ties the two modules together."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("loop", "teachers", "student", "store", "prompts")
# who may import whom (besides itself)
ALLOWED = {
    "loop": {"teachers", "student", "store", "prompts"},
    "teachers": {"store", "prompts"},
    "student": set(),
    "store": set(),
    "prompts": set(),
}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Our modules that `name` imports (the most specific module each import names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            m = resolve(t)
            if m and m != name and not name.startswith(m + "."):  # a package's own __init__ is not an edge
                out.add(m)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def test_packages_import_only_what_the_rule_allows():
    bad = []
    for mod, deps in _graph().items():
        top = mod.split(".")[0]
        for d in sorted(deps):
            other = d.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                bad.append(f"{mod} imports {d}")
    assert not bad, "the import rule (docs/architecture.md) is broken:\n" + "\n".join(bad)


def test_no_import_cycles():
    g = _graph()
    # Tarjan's strongly connected components: any component of two or more
    # modules is a circle (two modules that import each other, or a ring).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in circles)


def _sources(exclude: str):
    for pkg in PACKAGES:
        if pkg == exclude:
            continue
        for p in sorted((ROOT / pkg).rglob("*.py")):
            yield p, ast.parse(p.read_text(encoding="utf-8"))


def test_sql_only_in_the_store():
    bad = []
    for p, tree in _sources("store"):
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n.split(".")[0] in ("sqlite3", "sqlite_utils") for n in names):
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno} imports {names}")
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "executescript", "conn", "_owner"):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno} uses .{node.attr}")
    assert not bad, "SQL outside store/:\n" + "\n".join(bad)


def test_litellm_only_in_the_teachers():
    bad = []
    for p, tree in _sources("teachers"):
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n.split(".")[0] == "litellm" for n in names):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "LiteLLM imported outside teachers/: " + ", ".join(bad)


def test_modules_stay_readable():
    long = []
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            n = len(p.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                long.append(f"{p.relative_to(ROOT)}: {n} lines")
    assert not long, f"modules over {MAX_LINES} lines (split them by idea):\n" + "\n".join(long)
