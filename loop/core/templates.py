"""The prompt templates a run uses, read from the workspace (defaults
otherwise) and test-rendered: strictly before a run (a broken one is an input
error), leniently between iterations (the previous version is kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from loop.errors import UserError

TEMPLATES = ("rationale", "refine", "student", "demonstration", "verify")


class TemplateSet:
    """Loads the templates of workspace `ws`, skipping the parse and the test
    render of a file that has not changed since the last load."""

    def __init__(self, ws: Path) -> None:
        self.ws = Path(ws)
        self._cache: dict[str, tuple] = {}

    def load(self, strict: bool, previous: dict[str, Any] | None = None,
             warn: Callable[[str, Exception], None] | None = None) -> dict[str, Any]:
        """The templates, each test-rendered.  strict: a broken one is a
        UserError; otherwise (between iterations of a running daemon) the
        `previous` version is kept and `warn(name, error)` told, so a half-saved
        edit cannot kill a long run."""
        import prompts
        from prompts import SAMPLE_VARIABLES, TemplateError

        out = {}
        for name in TEMPLATES:
            try:
                path = prompts.template_path(name, self.ws)
                body = path.read_bytes()
                cached = self._cache.get(name)
                if cached is not None and cached[0] == (str(path), body):
                    out[name] = cached[1]  # unchanged file: skip parsing and test-rendering
                    continue
                t = prompts.load_template(name, self.ws)
                vars_ = {v: SAMPLE_VARIABLES.get(v, "x") for v in t.variables}
                vars_.update({v: SAMPLE_VARIABLES[v] for v in t.optional if v in SAMPLE_VARIABLES})
                t.render(**vars_)
                out[name] = t
                self._cache[name] = ((str(path), body), t)
            except TemplateError as e:
                if strict:
                    raise UserError(f"template {name!r}: {e}; fix the file or check it with `distillery prompts render {name}`") from None
                if warn is not None:
                    warn(name, e)
                out[name] = (previous or {})[name]
        return out
