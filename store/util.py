"""Small helpers shared by the store modules: hashing, timestamps, JSON."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

# Ids of examples and rationales are the first 16 hex digits (64 bits) of a
# sha256: short enough to read and type in the CLI, collision-free in practice
# for millions of rows.  Texts keep the full 64-digit hash.
ID_LEN = 16


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_id(*parts: str) -> str:
    """Stable id over several strings (NUL-separated so ("ab","c") != ("a","bc"))."""
    return sha256_text("\x00".join(parts))[:ID_LEN]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def dumps(obj: Any) -> str | None:
    if obj is None:
        return None
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


def loads(text: str | None) -> Any:
    if text is None:
        return None
    return json.loads(text)


def compact_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces (what the cache stores)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
