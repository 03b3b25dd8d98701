"""`distillery data add FILE.jsonl`: parse and validate every line first, then
insert all rows in one transaction (all-or-nothing).

A line is {"question", "answer", "rationale"?, "id"?, "meta"?}.  GSM8K's form
(an answer holding the worked solution and `#### final`) is split into
answer = final and rationale = the solution without <<...>> calculator notes.
Ids are content hashes of (question, answer) unless given, so importing the
same file again adds nothing.

Limits (documented in README, "Your data"): one oversized line would make
every later run tokenize it and fail, so sizes are checked here, before
anything is written.  An id that already names a different question, and a
question that is already in the other split (dev would leak into training,
or the pool into the held-out score), are errors too, not "already present".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from store import Store
from store.records import example_id

from loop.errors import UserError

FIELDS = ("question", "answer", "rationale", "id", "meta")
MAX_LINE_BYTES = 1_000_000  # checked before JSON decoding
MAX_QUESTION_CHARS = 20_000
MAX_ANSWER_CHARS = 1_000
MAX_RATIONALE_CHARS = 50_000
MAX_META_CHARS = 20_000  # of the meta object as JSON
MAX_ID_CHARS = 200
_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"\n?\s*####\s*(.*?)\s*$", re.S)


class DataError(UserError):
    pass


def _gsm8k(answer: str) -> tuple[str, str | None] | None:
    """(final, worked solution) when `answer` is in GSM8K form, else None."""
    if "####" not in answer:
        return None
    head, _, tail = answer.rpartition("####")
    final = tail.strip().replace(",", "")
    solution = _CALC.sub("", head).strip()
    return final, (solution or None)


def _check_size(where: str, field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise DataError(f"{where}: \"{field}\" has {len(text):,} characters; the limit is {limit:,}; "
                        "shorten it or leave the line out")


def parse_line(obj: object, where: str) -> dict:
    """Validate one decoded line; `where` is 'FILE:LINE' for messages."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object {{\"question\": ..., \"answer\": ...}}, got {type(obj).__name__}")
    unknown = [k for k in obj if k not in FIELDS]
    if unknown:
        raise DataError(
            f"{where}: unknown field {', '.join(repr(k) for k in unknown)}; allowed fields are "
            f"{', '.join(FIELDS)} (put anything else under \"meta\")"
        )
    for f in ("question", "answer"):
        if f not in obj:
            raise DataError(f"{where}: missing field \"{f}\"; every line needs \"question\" and \"answer\"")
    q = obj["question"]
    if not isinstance(q, str) or not q.strip():
        raise DataError(f"{where}: \"question\" must be a non-empty string, got {json.dumps(q)[:60]}")
    a = obj["answer"]
    if isinstance(a, bool) or not isinstance(a, (str, int, float)) and a is not None:
        raise DataError(
            f"{where}: \"answer\" must be a string or a number (or null when unknown), got {type(a).__name__}"
        )
    if isinstance(a, (int, float)):
        a = str(a)
    rationale = obj.get("rationale")
    if rationale is not None and (not isinstance(rationale, str) or not rationale.strip()):
        raise DataError(f"{where}: \"rationale\" must be a non-empty string when given")
    if isinstance(a, str):
        g = _gsm8k(a)
        if g is not None:
            final, solution = g
            if not final:
                raise DataError(f"{where}: \"answer\" has '####' but no final answer after it; write '#### 42'")
            a = final
            rationale = rationale or solution
        else:
            a = a.strip()
            if not a:
                raise DataError(f"{where}: \"answer\" is empty; give the gold answer or null when unknown")
    eid = obj.get("id")
    if eid is not None and (not isinstance(eid, str) or not eid.strip() or any(c.isspace() for c in eid)):
        raise DataError(f"{where}: \"id\" must be a non-empty string without spaces, got {json.dumps(eid)[:60]}")
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise DataError(f"{where}: \"meta\" must be a JSON object, got {type(meta).__name__}")
    _check_size(where, "question", q, MAX_QUESTION_CHARS)
    if a is not None:
        _check_size(where, "answer", a, MAX_ANSWER_CHARS)
    if rationale:
        _check_size(where, "rationale", rationale, MAX_RATIONALE_CHARS)
    if eid is not None:
        _check_size(where, "id", eid, MAX_ID_CHARS)
    if meta is not None:
        _check_size(where, "meta", json.dumps(meta), MAX_META_CHARS)
    row = {"question": q.strip(), "answer": a, "id": eid or example_id(q.strip(), a)}
    if rationale:
        row["rationale"] = rationale
    if meta is not None:
        row["meta"] = meta
    return row


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """Every row of the file with its 'FILE:LINE', validated; raises DataError at the first bad line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file; check the path") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read it ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: not UTF-8 text; save the file as UTF-8") from None
    rows: list[tuple[str, dict]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        if len(line.encode()) > MAX_LINE_BYTES:
            raise DataError(f"{where}: the line has {len(line.encode()):,} bytes; the limit is {MAX_LINE_BYTES:,} "
                            "per example; shorten it or leave the line out")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: malformed JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
            ) from None
        rows.append((where, parse_line(obj, where)))
    if not rows:
        raise DataError(f"{p}: no examples in the file; each line must be one JSON object")
    return rows


def _check_conflicts(store: Store, rows: list[tuple[str, dict]], split: str) -> None:
    """Refuse ids that name another question and questions already in the other split."""
    seen: dict[str, tuple[str, dict]] = {}
    for where, row in rows:
        if row["id"] in seen and (seen[row["id"]][1]["question"], seen[row["id"]][1]["answer"]) != (row["question"], row["answer"]):
            raise DataError(f"{where}: id {row['id']!r} is also used by {seen[row['id']][0]} for a different "
                            "question or answer; give each example its own id")
        seen.setdefault(row["id"], (where, row))
        old = store.get_example(row["id"])
        if old is not None and (old["question"], old["answer"]) != (row["question"], row["answer"]):
            raise DataError(f"{where}: id {row['id']!r} already names a different example in the workspace "
                            f"({old['split']}: {old['question'][:60]!r}, answer {old['answer']!r}); give this one "
                            "another id, or `distillery data remove` the old one first")
        if old is not None and old["split"] != split:
            raise DataError(f"{where}: example {row['id']!r} is already in the {old['split']} split; an example "
                            f"cannot be in both (it would be {'trained on and scored' if split == 'dev' else 'scored and trained on'})")
    other = "pool" if split == "dev" else "dev"
    by_q = store.examples_by_question(r["question"] for _, r in rows)
    for where, row in rows:
        hit = by_q.get(row["question"])
        if hit is not None and hit["split"] == other:
            raise DataError(f"{where}: this question is already in the {other} split (example {hit['id']}); "
                            f"a question in both pool and dev would be scored on what it was trained on; "
                            "leave the line out")


def import_file(store: Store, path: str | Path, split: str = "pool") -> dict:
    """Validate the whole file, then add its rows in one transaction."""
    if split not in ("pool", "dev"):
        raise DataError(f"--split must be 'pool' or 'dev', not {split!r}")
    rows = read_jsonl(path)
    _check_conflicts(store, rows, split)
    added, skipped = store.add_examples([r for _, r in rows], split, restore=True)
    return {"file": str(path), "split": split, "rows": len(rows), "added": added, "skipped": skipped}
