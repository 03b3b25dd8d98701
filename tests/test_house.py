"""The house rules of docs/architecture.md ("import rule"), read from the code:
which package may import which, no two modules importing each other, SQL only
in store/, LiteLLM only in teachers/, and modules of a readable size.

Every import counts, including the lazy ones inside functions: a lazy import
still ties the two modules together.

The sources are read once, by this file run as a script in a fresh
interpreter (`python tests/test_house.py` prints the facts as JSON): CPython
3.11.7's `ast.parse` can fail with "AST constructor recursion depth mismatch"
when called deep inside a long-lived process such as a full pytest session
(fixed upstream in 3.11.8, gh-106905), and a fresh interpreter always starts
from a shallow stack."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
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


def _imports(name: str, path: Path, mods: dict[str, Path], tree: ast.AST) -> set[str]:
    """Our modules that `name` imports (the most specific module each import names)."""
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


def _sql_uses(rel: str, tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] in ("sqlite3", "sqlite_utils") for n in names):
                out.append(f"{rel}:{node.lineno} imports {names}")
        if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "executescript", "conn", "_owner"):
            out.append(f"{rel}:{node.lineno} uses .{node.attr}")
    return out


def _litellm_imports(rel: str, tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        if any(n.split(".")[0] == "litellm" for n in names):
            out.append(f"{rel}:{node.lineno}")
    return out


def collect() -> dict:
    """The facts the tests check, read from every module of ours."""
    mods = _modules()
    facts: dict = {"graph": {}, "sql": [], "litellm": [], "lines": {}}
    for name, path in mods.items():
        rel = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        facts["graph"][name] = sorted(_imports(name, path, mods, tree))
        top = name.split(".")[0]
        if top != "store":
            facts["sql"] += _sql_uses(rel, tree)
        if top != "teachers":
            facts["litellm"] += _litellm_imports(rel, tree)
        facts["lines"][rel] = len(text.splitlines())
    return facts


@functools.lru_cache(maxsize=1)
def _facts() -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve())], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _graph() -> dict[str, set[str]]:
    return {m: set(deps) for m, deps in _facts()["graph"].items()}


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
        for w in sorted(g.get(v, ())):
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


def test_sql_only_in_the_store():
    bad = _facts()["sql"]
    assert not bad, "SQL outside store/:\n" + "\n".join(bad)


def test_litellm_only_in_the_teachers():
    bad = _facts()["litellm"]
    assert not bad, "LiteLLM imported outside teachers/: " + ", ".join(bad)


def test_modules_stay_readable():
    long = [f"{rel}: {n} lines" for rel, n in sorted(_facts()["lines"].items()) if n > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines (split them by idea):\n" + "\n".join(long)


def test_the_checks_see_a_planted_violation(tmp_path):
    """The checks are not vacuous: the same readers flag a module that breaks each rule."""
    src = ("import sqlite3\nimport litellm\n"
           "def f(st):\n    st.conn.execute('SELECT 1')\n")
    tree = ast.parse(src)
    assert len(_sql_uses("x.py", tree)) == 3  # the import, .conn, .execute
    assert _litellm_imports("x.py", tree) == ["x.py:2"]
    mods = {"student.a": tmp_path / "a.py", "teachers.b": tmp_path / "b.py"}
    (tmp_path / "a.py").write_text("from teachers import b\n")
    assert _imports("student.a", tmp_path / "a.py", mods, ast.parse("from teachers import b\n")) == {"teachers.b"}


if __name__ == "__main__":
    print(json.dumps(collect()))
