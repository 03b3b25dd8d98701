"""Answer extraction, correctness and the answer vote: the one extractor that
the loop's scoring, the teachers' verification and their agreement all use, so
they can never disagree about what "the answer" of a text is.

It lives in `prompts/` because the answer format is part of the prompt
contract: the templates ask for `#### <answer>` in the task's `answer_format`,
and this module reads exactly that back.  `prompts` imports nothing else of
ours, and the teachers and the loop may both import it (docs/architecture.md,
"import rule").  Pure Python (re, fractions, collections): nothing heavy may be
imported here; the teachers never import torch.

Formats:

- ``number``: GSM8K style ``#### 42``, ``Answer: 42``, "the answer is $1,234.50",
  ``\\boxed{42}``; commas, currency signs, percent signs, negative numbers
  (ASCII or Unicode minus), decimals and fractions like ``3/4``.  The answer is
  normalised to a canonical string through an exact `Fraction`, so "1,234.50"
  and "1234.5" are both "1234.5", and "3/4" and ".75" are both "0.75"; a
  fraction without a finite decimal stays "p/q" ("1/3").  Without any marker the
  last number of the text is the answer (``fallback=False`` turns that off).
- ``choice``: one letter A–E ("Answer: (C)", "#### C", "the answer is c", "option B",
  "(C)", or a bare "C." reply); returned upper-case.
- ``text``: the text after the last ``####`` / ``Answer:`` (else the last
  non-empty line), lower-cased, whitespace collapsed, trailing period dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

Format = Literal["number", "choice", "text"]
FORMATS = ("number", "choice", "text")

# A number: optional sign and currency (either order), digits with thousands
# separators or plain, optional decimals, optional "/ denominator".  The
# look-behind keeps "3-5" from reading as -5 and "v2" from reading as 2.
_NUMBER = re.compile(
    r"""
    (?<![\w.])
    (?P<sign>[-−]\s?)?
    (?:[$€£¥]\s?)?
    (?P<sign2>[-−]\s?)?
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?![\d.]))?
    (?![\d])
    """,
    re.VERBOSE,
)

# Markers of a final answer, most explicit first.  Each captures the rest of
# its line; the LAST occurrence of the first marker kind present wins.
_MARKERS = [
    re.compile(r"####\s*(?P<rest>[^\n]*)"),
    re.compile(r"\\boxed\{(?P<rest>[^{}]*)\}"),
    re.compile(r"(?i)\bfinal answer\s*(?:is|:|=)?\s*[:=]?\s*(?P<rest>[^\n]*)"),
    re.compile(r"(?i)\banswer\s*(?:is|:|=)\s*[:=]?\s*(?P<rest>[^\n]*)"),
]

_CHOICE_IN_MARKER = re.compile(r"^\W*\(?\s*(?P<c>[A-Ea-e])\s*\)?(?![A-Za-z])")
_PAREN_CHOICE = re.compile(r"\((?P<c>[A-E])\)")
# "option B" / "choice (b)": a bare letter must be upper-case ("option is a good one").
_NAMED_CHOICE = re.compile(
    r"\b(?:[Oo]ption|[Cc]hoice)\s*(?:is\s*)?[:=]?\s*(?:\((?P<p>[A-Ea-e])\)|(?P<c>[A-E])(?![A-Za-z]))"
)
_BARE_CHOICE = re.compile(r"^\W*\(?(?P<c>[A-E])\)?[.):]?\s*$")


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- numbers


def _fraction(match: re.Match) -> Fraction | None:
    num = Fraction(match["num"].replace(",", ""))
    if match["den"] is not None:
        den = Fraction(match["den"])
        if den == 0:
            return None
        num = num / den
    if match["sign"] or match["sign2"]:
        num = -num
    return num


def canonical_number(value: Fraction) -> str:
    """Exact canonical text of a number: integers plain ("-3"), terminating
    fractions as decimals without trailing zeros ("1234.5", "0.75"), others as
    "p/q" ("1/3")."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    twos = fives = 0
    while d % 2 == 0:
        d //= 2
        twos += 1
    while d % 5 == 0:
        d //= 5
        fives += 1
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * (10**places // value.denominator)
    digits = str(scaled).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return ("-" if value < 0 else "") + text


def normalize_number(text: str) -> str | None:
    """The canonical form of the first number in `text`, or None."""
    for m in _NUMBER.finditer(text):
        value = _fraction(m)
        if value is not None:
            return canonical_number(value)
    return None


def _last_number(text: str) -> str | None:
    found = None
    for m in _NUMBER.finditer(text):
        value = _fraction(m)
        if value is not None:
            found = value
    return None if found is None else canonical_number(found)


# --------------------------------------------------------------------------- extraction


def _marker_tails(text: str) -> list[str]:
    """The text after each marker of the most explicit kind present, in order."""
    for marker in _MARKERS:
        tails = [m["rest"] for m in marker.finditer(text)]
        if tails:
            return tails
    return []


def _normalize_text(s: str) -> str:
    s = " ".join(s.split()).strip().lower()
    return s.rstrip(".").strip()


def extract_answer(text: str | None, fmt: Format = "number", *, fallback: bool = True) -> str | None:
    """The final answer in `text` as a canonical string, or None when there is none.

    `fallback`: for numbers, use the last number in the text when no answer
    marker holds one; for text, use the last non-empty line."""
    _check_fmt(fmt)
    if not text:
        return None
    tails = _marker_tails(text)
    if fmt == "number":
        for tail in reversed(tails):
            value = normalize_number(tail)
            if value is not None:
                return value
        return _last_number(text) if fallback else None
    if fmt == "choice":
        for tail in reversed(tails):
            m = _CHOICE_IN_MARKER.match(tail)
            if m:
                return m["c"].upper()
        named = [m["p"] or m["c"] for m in _NAMED_CHOICE.finditer(text)]
        if named:
            return named[-1].upper()
        parens = _PAREN_CHOICE.findall(text)
        if parens:
            return parens[-1]
        m = _BARE_CHOICE.match(text.strip())
        return m["c"] if m else None
    # text
    for tail in reversed(tails):
        value = _normalize_text(tail)
        if value:
            return value
    if not fallback:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return _normalize_text(lines[-1]) if lines else None


def answers_equal(a: str | None, b: str | None, fmt: Format = "number") -> bool:
    """Whether two extracted answers are the same answer (None equals nothing)."""
    _check_fmt(fmt)
    if a is None or b is None:
        return False
    if fmt == "number":
        na, nb = normalize_number(a), normalize_number(b)
        if na is None or nb is None:
            return False
        return Fraction(na) == Fraction(nb)
    if fmt == "choice":
        return a.strip().upper() == b.strip().upper()
    return _normalize_text(a) == _normalize_text(b)


def normalize_gold(gold: str | int | float | None, fmt: Format = "number") -> str | None:
    """A gold answer in canonical form.  Accepts a bare answer ("72", "C") or a
    whole reference solution ending in "#### 72"."""
    _check_fmt(fmt)
    if gold is None:
        return None
    if isinstance(gold, bool):
        raise ValueError(f"gold answer must be text or a number, got {gold!r}")
    if isinstance(gold, int):
        return str(gold)
    if isinstance(gold, float):
        return canonical_number(Fraction(str(gold)))
    return extract_answer(str(gold), fmt)


def is_correct(text: str | None, gold: str | int | float | None, fmt: Format = "number") -> bool | None:
    """Whether `text`'s final answer matches `gold`; None when there is no gold
    (unlabelled examples are not scored), False when `text` has no answer."""
    gold_answer = normalize_gold(gold, fmt)
    if gold is None:
        return None
    if gold_answer is None:
        return False
    return answers_equal(extract_answer(text, fmt), gold_answer, fmt)

def agree(answers: Sequence[str | None], gold: str | int | float | None, fmt: str = "number", *,
          voters: Sequence[str] | None = None) -> tuple[list[bool], float]:
    """Accepted flags (one per answer) and the agreement fraction.

    `voters[i]` is who gave answers[i] (a teacher name); each voter's weight
    of 1 is split equally over its answers.  Without voters every answer is
    its own voter.  The fraction is the accepted answers' share of the votes.

    With gold: accept the answers equal to gold.  A gold that cannot be read
    in this format accepts nothing.

    Without gold: the answers are grouped by equality; the group with the
    most votes wins when it has strictly more than every other group (a tie
    accepts nothing: the teachers disagree and there is no way to tell who is
    right).  Unparseable answers vote for nothing but count in the total.
    One parseable answer is its own majority."""
    n = len(answers)
    if n == 0:
        return [], 0.0
    who = list(voters) if voters is not None else list(range(n))
    if len(who) != n:
        raise ValueError(f"agree: {len(who)} voters for {n} answers; give one voter per answer")
    shares = Counter(who)
    weight = [Fraction(1, shares[v]) for v in who]  # exact: split votes that tie must compare equal
    total = len(shares)
    if gold is not None and not (isinstance(gold, str) and not gold.strip()):
        g = normalize_gold(gold, fmt)  # type: ignore[arg-type]
        if g is None:
            return [False] * n, 0.0
        flags = [answers_equal(a, g, fmt) for a in answers]  # type: ignore[arg-type]
        return flags, float(sum(w for w, f in zip(weight, flags) if f) / total)
    groups: list[list[int]] = []  # indices of equal answers
    for i, a in enumerate(answers):
        if a is None:
            continue
        for grp in groups:
            if answers_equal(a, answers[grp[0]], fmt):  # type: ignore[arg-type]
                grp.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return [False] * n, 0.0
    tally = sorted(((sum(weight[i] for i in grp), grp) for grp in groups), key=lambda t: t[0], reverse=True)
    top, winners = tally[0][0], set(tally[0][1])
    if len(tally) > 1 and tally[1][0] == top:
        return [False] * n, float(top / total)
    return [i in winners for i in range(n)], float(top / total)
