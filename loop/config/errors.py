"""Turning TOML and pydantic errors into messages a user can act on:
the file, the line, the dotted key, what is wrong and what is allowed.

Used by `loop.config.schema.load_config`; kept apart so config.py stays the list of
settings.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from teachers.config import redact

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-.]+)\s*=""")


def toml_syntax_message(path: Path, err: Exception) -> str:
    """'FILE:LINE: invalid TOML: ...' from tomllib's '... (at line L, column C)'."""
    msg = str(err)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if m:
        what = msg[: m.start()].strip()
        return f"{path}:{m.group(1)}: invalid TOML (column {m.group(2)}): {what}; fix the syntax on that line"
    m = re.search(r"\(at end of document\)", msg)
    if m:
        return f"{path}: invalid TOML at the end of the file: {msg[: m.start()].strip()}"
    return f"{path}: invalid TOML: {msg}"


# ---------------------------------------------------------------- types
def _unwrap(ann: Any) -> list[Any]:
    """The members of a Union/Optional annotation (or [ann])."""
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for a in typing.get_args(ann):
            out.extend(_unwrap(a))
        return out
    return [ann]


def _model_of(ann: Any) -> type[BaseModel] | None:
    for a in _unwrap(ann):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        if typing.get_origin(a) in (list, tuple):
            for inner in typing.get_args(a):
                m = _model_of(inner)
                if m:
                    return m
    return None


def _type_words(ann: Any) -> str:
    words = []
    for a in _unwrap(ann):
        if a is type(None):
            words.append("nothing (omit the key)")
        elif typing.get_origin(a) is Literal:
            words.append(" or ".join(repr(v) for v in typing.get_args(a)))
        elif typing.get_origin(a) is list:
            inner = typing.get_args(a)
            words.append("a list of strings" if inner == (str,) else f"a list of {_type_words(inner[0]) if inner else 'values'}")
        elif typing.get_origin(a) is dict:
            words.append("a table")
        elif isinstance(a, type) and issubclass(a, BaseModel):
            words.append("a table")
        elif a is bool:
            words.append("true or false")
        elif a is int:
            words.append("an integer")
        elif a is float:
            words.append("a number")
        elif a is str:
            words.append("a string")
        else:
            words.append(getattr(a, "__name__", str(a)))
    return " or ".join(words)


def allowed(field) -> str:
    """'a number with 0 ≤ value ≤ 1', "'replace' or 'accumulate'", ..."""
    bounds = []
    for m in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                bounds.append(f"{sym} {v}")
    words = _type_words(field.annotation)
    return f"{words} {' and '.join(bounds)}" if bounds else words


# ----------------------------------------------------------- locations
def _walk(model: type[BaseModel], loc: tuple) -> tuple[list, type[BaseModel] | None, Any]:
    """Clean a pydantic loc into the user's path (dropping union-member tags);
    return (path, model of the table holding the last key, its FieldInfo)."""
    path: list = []
    cur: type[BaseModel] | None = model
    table: type[BaseModel] | None = model
    field = None
    for part in loc:
        if isinstance(part, int):
            path.append(part)
            continue
        if cur is None:
            break  # a union-member tag such as 'list[str]' under a plain field
        if part not in cur.model_fields:
            path.append(part)  # an unknown key of table `cur`
            table, field = cur, None
            break
        table, field = cur, cur.model_fields[part]
        path.append(part)
        cur = _model_of(field.annotation)
    return path, table, field


def dotted(path: list) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def find_line(text: str, path: list) -> int | None:
    """The 1-based line of `path` in the TOML text: its `key =` line inside the
    right [table] / n-th [[array]] header; the header itself when the key is
    missing; a dotted `a.b = ` line as a fallback."""
    if not path:
        return None
    key = path[-1] if isinstance(path[-1], str) else None
    table_parts = path[:-1] if key is not None else path
    idx = None
    if table_parts and isinstance(table_parts[-1], int):
        idx = table_parts[-1]
        table_parts = table_parts[:-1]
    want = ".".join(str(p) for p in table_parts)
    header_line = None
    current = ""
    seen: dict[str, int] = {}
    inside = want == ""
    for n, line in enumerate(text.splitlines(), 1):
        h = _HEADER.match(line)
        if h:
            current = h.group(2).replace(" ", "")
            seen[current] = seen.get(current, -1) + 1
            inside = current == want and (idx is None or seen[current] == idx)
            if inside and header_line is None:
                header_line = n
            continue
        if inside and key is not None:
            m = _KEY.match(line)
            if m and m.group(1).strip("\"'") == key:
                return n
    if key is not None:
        full = ".".join(str(p) for p in path if isinstance(p, str))
        for n, line in enumerate(text.splitlines(), 1):
            m = _KEY.match(line)
            if m and (m.group(1) == full or m.group(1).endswith("." + key)):
                return n
            h = _HEADER.match(line)
            if h and h.group(2).replace(" ", "") == full:
                return n  # the key is itself a [table]
    return header_line


def validation_message(path: Path, text: str, model: type[BaseModel], err: ValidationError) -> str:
    """One line per problem: FILE:LINE: key: what is wrong; allowed values."""
    lines: list[str] = []
    seen: set[str] = set()
    for e in err.errors():
        p, table, field = _walk(model, tuple(e["loc"]))
        key = dotted(p)
        line = find_line(text, p)
        where = f"{path}:{line}" if line else f"{path}"
        if e["type"] == "extra_forbidden":
            valid = ", ".join(table.model_fields) if table else ""
            tname = dotted(p[:-1]) if len(p) > 1 else "top level"
            msg = f"{where}: unknown key '{key}'; valid keys of {'[' + tname + ']' if len(p) > 1 else 'the top level'}: {valid}"
        elif e["type"] == "missing":
            msg = f"{where}: missing required key '{key}'; add it" + (
                f" ({allowed(field)})" if field is not None else ""
            )
        elif e["type"] in ("credential_in_config", "conflicting_settings"):
            # a key is never echoed; two settings that exclude each other are named by the message
            msg = f"{where}: {key}: {e['msg']}"
        else:
            got = e.get("input")
            what = e["msg"]
            if e["type"] in ("literal_error",):
                what = "not an allowed value"
            shown = repr(redact(got)) if not isinstance(got, (dict, list)) else type(got).__name__
            msg = f"{where}: {key} = {shown}: {what}"
            if field is not None:
                msg += f"; allowed: {allowed(field)}"
        if key in seen and e["type"] not in ("extra_forbidden", "missing"):
            continue  # one line per key even when a Union reports each member
        seen.add(key)
        lines.append(msg)
    return "\n".join(lines)
