"""One prompt template: a YAML file rendered by a sandboxed Jinja2 environment.

A template file has `name`, `description`, `system`, `user` (Jinja2 strings),
`variables` (required names) and optionally `optional` (names that may be left
out; they render as `none`).  Every problem a user can make while editing one
is caught when the file is *loaded* (YAML error, missing key, Jinja syntax
error, a variable used but not declared, an attribute starting with "_"), or
when it is *rendered* (a required variable missing, a variable passed that is
not declared, a sandbox violation, a limit passed), and reported as
`TemplateError` naming the file and the line in that file, so `distillery
prompts edit` can refuse it before any teacher is called.

Limits: a template is code that a user (or whoever can write prompts/) runs
inside a long-lived daemon, and the sandbox bounds what it may touch, not how
long it runs.  Each part renders under RENDER_SECONDS of wall time and
RENDER_CHARS of output: output is streamed (`generate`) and counted, time is
checked by a trace function installed only on the template's own frames (a
loop that prints nothing still executes its lines), and `*`/`**` are
intercepted so that `"x" * 10**9` is refused before it allocates.
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

PARTS = ("system", "user")
KEYS = {"name", "description", "system", "user", "variables", "optional"}


class TemplateError(ValueError):
    """A broken template or bad render arguments; the message names file:line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if path and line else path
        super().__init__(f"{where}: {message}" if where else message)


RENDER_SECONDS = 2.0  # per part; real prompts render in well under a millisecond
RENDER_CHARS = 1_000_000  # per part; a prompt is sent to a model, whose context is far smaller
_MAX_EXPONENT = 1_000


class _Env(SandboxedEnvironment):
    """The sandbox, with `*` and `**` checked before they run."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > RENDER_CHARS:
                    raise SecurityError(f"{type(seq).__name__} * {n} would hold {len(seq) * n:,} items; "
                                        f"the limit is {RENDER_CHARS:,}")
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is over the limit of {_MAX_EXPONENT}")
        return super().call_binop(context, operator, left, right)


def _env() -> SandboxedEnvironment:
    # keep_trailing_newline=False: a YAML block scalar ends with "\n" we don't want.
    return _Env(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=False)


class _TooSlow(Exception):
    pass


class _Deadline:
    """sys.settrace hook that raises _TooSlow inside a template frame once the
    time is up.  Only frames of compiled templates ("<template>") are traced
    line by line, so the cost is confined to the template's own code."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.events = 0

    def __call__(self, frame, event, arg):
        return self._line if frame.f_code.co_filename == "<template>" else None

    def _line(self, frame, event, arg):
        self.events += 1
        if self.events % 256 == 0 and time.monotonic() > self.end:
            raise _TooSlow()
        return self._line


_ENV = _env()


@dataclass
class Template:
    name: str
    description: str
    system: str
    user: str
    variables: list[str]
    optional: list[str] = field(default_factory=list)
    body: str = ""  # the YAML file text, as stored in prompt_versions
    path: str = "<template>"
    _first_line: dict[str, int] = field(default_factory=dict, repr=False)  # file line of each part's line 1
    _compiled: dict[str, jinja2.Template] = field(default_factory=dict, repr=False)

    # -- construction -----------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "Template":
        p = Path(path)
        try:
            body = p.read_text(encoding="utf-8")
        except OSError as e:
            raise TemplateError(f"cannot read template: {e.strerror}", path=str(p)) from None
        except UnicodeDecodeError:
            raise TemplateError("not UTF-8 text", path=str(p)) from None
        return cls.from_text(body, path=str(p))

    @classmethod
    def from_text(cls, body: str, *, path: str = "<template>") -> "Template":
        try:
            data = yaml.safe_load(body)
            root = yaml.compose(body)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(e, "problem", None) or str(e)
            raise TemplateError(f"invalid YAML: {problem}; fix the indentation/quoting", path=path, line=line) from None
        if not isinstance(data, dict):
            raise TemplateError("a template is a YAML mapping with keys name, description, system, user, variables", path=path, line=1)
        lines = _key_lines(root)
        unknown = set(data) - KEYS
        if unknown:
            k = sorted(unknown)[0]
            raise TemplateError(f"unknown key {k!r}; allowed: {', '.join(sorted(KEYS))}", path=path, line=lines.get(k, (1, 1))[0])
        for k in ("name", "user", "variables"):
            if k not in data:
                raise TemplateError(f"missing key {k!r}", path=path, line=1)
        for k in ("name", "description", "system", "user"):
            if data.get(k) is not None and not isinstance(data[k], str):
                raise TemplateError(f"{k!r} must be a string", path=path, line=lines.get(k, (1, 1))[0])
        var_lists: dict[str, list[str]] = {}
        for k in ("variables", "optional"):
            v = data.get(k) or []
            if not isinstance(v, list) or not all(isinstance(x, str) and x.isidentifier() for x in v):
                raise TemplateError(f"{k!r} must be a list of variable names", path=path, line=lines.get(k, (1, 1))[0])
            var_lists[k] = v
        both = set(var_lists["variables"]) & set(var_lists["optional"])
        if both:
            raise TemplateError(f"{sorted(both)[0]!r} is listed both in 'variables' and 'optional'", path=path, line=lines.get("optional", (1, 1))[0])
        t = cls(
            name=data["name"],
            description=(data.get("description") or "").strip(),
            system=data.get("system") or "",
            user=data["user"],
            variables=var_lists["variables"],
            optional=var_lists["optional"],
            body=body,
            path=path,
        )
        for part in PARTS:
            t._first_line[part] = lines.get(part, (1, 1))[1]
        t._compile()
        return t

    def _compile(self) -> None:
        declared = set(self.variables) | set(self.optional)
        for part in PARTS:
            src = getattr(self, part)
            try:
                ast = _ENV.parse(src)
            except jinja2.TemplateSyntaxError as e:
                raise TemplateError(f"Jinja syntax error in {part!r}: {e.message}", path=self.path, line=self._file_line(part, e.lineno)) from None
            for node in ast.find_all((nodes.Getattr,)):
                if node.attr.startswith("_"):
                    raise TemplateError(f"access to attribute {node.attr!r} is not allowed (sandbox)", path=self.path, line=self._file_line(part, node.lineno))
            used = meta.find_undeclared_variables(ast)
            for name in sorted(used - declared):
                line = next((n.lineno for n in ast.find_all(nodes.Name) if n.name == name), 1)
                raise TemplateError(
                    f"variable {name!r} is used in {part!r} but not declared; add it to 'variables' (required) or 'optional'",
                    path=self.path,
                    line=self._file_line(part, line),
                )
            self._compiled[part] = _ENV.from_string(src)

    def _file_line(self, part: str, jinja_line: int | None) -> int:
        return self._first_line.get(part, 1) + max((jinja_line or 1) - 1, 0)

    # -- identity ---------------------------------------------------------
    @property
    def version(self) -> str:
        """sha256 of the file body: the id of this version in prompt_versions."""
        return hashlib.sha256(self.body.encode("utf-8")).hexdigest()

    # -- rendering --------------------------------------------------------
    def render(self, **variables: Any) -> list[dict[str, str]]:
        """Chat messages for these variables: a system message when the
        template has one, then the user message."""
        missing = [v for v in self.variables if v not in variables]
        if missing:
            raise TemplateError(
                f"missing variable {missing[0]!r} for template {self.name!r} (required: {', '.join(self.variables)})",
                path=self.path,
            )
        declared = set(self.variables) | set(self.optional)
        extra = sorted(set(variables) - declared)
        if extra:
            raise TemplateError(
                f"unknown variable {extra[0]!r} passed to template {self.name!r}; declared: {', '.join(sorted(declared))}",
                path=self.path,
            )
        ctx = {name: None for name in self.optional}
        ctx.update(variables)
        messages = []
        for part in PARTS:
            text = self._render_part(part, ctx).strip()
            if part == "system" and not text:
                continue
            messages.append({"role": part, "content": text})
        return messages

    def _render_part(self, part: str, ctx: dict[str, Any]) -> str:
        previous = sys.gettrace()
        sys.settrace(_Deadline(RENDER_SECONDS))
        try:
            out: list[str] = []
            size = 0
            for chunk in self._compiled[part].generate(**ctx):
                size += len(chunk)
                if size > RENDER_CHARS:
                    raise TemplateError(f"{part!r} renders more than {RENDER_CHARS:,} characters, the limit of a "
                                        "template part; check its loops", path=self.path, line=self._file_line(part, None))
                out.append(chunk)
            return "".join(out)
        except _TooSlow as e:
            raise TemplateError(f"{part!r} did not finish rendering within {RENDER_SECONDS:g} s, the limit of a "
                                "template part; check its loops", path=self.path, line=self._error_line(part, e)) from None
        except TemplateError:
            raise
        except SecurityError as e:
            raise TemplateError(f"refused by the sandbox in {part!r}: {e}", path=self.path, line=self._error_line(part, e)) from None
        except jinja2.UndefinedError as e:
            raise TemplateError(f"undefined value in {part!r}: {e.message}", path=self.path, line=self._error_line(part, e)) from None
        except jinja2.TemplateError as e:
            raise TemplateError(f"error in {part!r}: {e}", path=self.path, line=self._error_line(part, e)) from None
        except Exception as e:  # e.g. a filter applied to the wrong type
            raise TemplateError(f"error in {part!r}: {type(e).__name__}: {e}", path=self.path, line=self._error_line(part, e)) from None
        finally:
            sys.settrace(previous)

    def _error_line(self, part: str, exc: BaseException) -> int:
        # Jinja rewrites tracebacks so template frames carry template line numbers.
        line = None
        for fr in traceback.extract_tb(exc.__traceback__):
            if fr.filename == "<template>":
                line = fr.lineno
        return self._file_line(part, line)


def _key_lines(root: yaml.Node | None) -> dict[str, tuple[int, int]]:
    """For each top-level key: (1-based line of the key, 1-based line where the
    value's text starts).  A block scalar (| or >) starts on the next line."""
    out: dict[str, tuple[int, int]] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for k, v in root.value:
        if not isinstance(k, yaml.ScalarNode):
            continue
        key_line = k.start_mark.line + 1
        start = v.start_mark.line + 1
        if isinstance(v, yaml.ScalarNode) and v.style in ("|", ">"):
            start += 1
        out[str(k.value)] = (key_line, start)
    return out
