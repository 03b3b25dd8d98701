"""Structural checks that a teacher rationale *derives* its answer.

Teachers that see the gold answer (or the student's wrong output) in their
prompt often write a text that only restates it: "The student's answer is: 10",
"The correct final answer is given as 10.\\n#### 10", a copy of the student's
output, a copy of the previous demonstration.  Agreement with gold cannot catch
these (their answer IS gold), and training on them teaches the student to
assert answers instead of computing them.  `check_rationale` returns the first
failed check's reason code; the checks, in order, and what each catches:

1. ``copy_of_student_output`` / 2. ``copy_of_previous``: a near-verbatim copy
   (normalised word similarity >= ``near_duplicate``) of what the teacher was
   shown: not new, whatever else is wrong with it (checked first because it is
   the most telling reason).
3. ``no_answer_line``: no strictly marked final answer, or text after it.  The
   training target must end in the marked answer the scorer extracts; a
   rationale that rambles on after ``#### 8`` teaches the student to do so too.
4. ``meta_talk``: the text talks about the student, the given/expected answer,
   the answer key... instead of the problem.  Phrases that also occur in the
   question are not counted (a word problem may be about "30 students").
5. ``no_reasoning``: nothing but the answer line (choice/text: fewer than
   ``min_reasoning_words`` words before it).
6. ``wrong_arithmetic`` (number): an explicit ``a op b = r`` with r wrong.
   Unparseable or ambiguous expressions are skipped, never failed.
7. ``no_computation`` (number): no computation whose result is used later;
   "So she has 8.\\n#### 8" states but does not derive.
8. ``missing_quantities`` (number): the reasoning ignores the question's
   numbers, i.e. it solves some other problem (or none).
9. ``gold_quoted`` (number): the gold number appears before any computation
   produces it: the teacher announced the answer and then decorated it.
   Operands do not count ("1 * 2 = 2" for "doubles"), nor a gold that is one
   of the question's own numbers.

Pure Python (re, difflib, fractions, pydantic): no torch, no LiteLLM here.
"""

from __future__ import annotations

import difflib
import math
import re
from fractions import Fraction

from pydantic import BaseModel, ConfigDict, Field

from prompts.answers import (
    _CHOICE_IN_MARKER,
    _MARKERS,
    _normalize_text,
    answers_equal,
    canonical_number,
    normalize_gold,
    normalize_number,
)
from teachers.agreement import rationale_answer


class VerifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    structural: bool = True  # run the structural checks (off: only the answer line is required)
    teacher: str | None = None  # name of a [[teachers]] entry used as judge; the loop calls it
    min_reasoning_words: int = Field(8, ge=0)  # choice/text: words required before the answer line
    question_quantities: float = Field(0.5, ge=0, le=1)  # number: share of the question's numbers used
    near_duplicate: float = Field(0.9, gt=0, le=1)  # similarity at/above which a text is a copy


REASONS: dict[str, str] = {
    "copy_of_student_output": "near-verbatim copy of the student's output",
    "copy_of_previous": "near-verbatim copy of the previous demonstration",
    "no_answer_line": "no marked final answer (#### / Answer: / \\boxed{}) on the last line",
    "meta_talk": "talks about the student or a given answer instead of solving the problem",
    "no_reasoning": "no reasoning before the answer line",
    "wrong_arithmetic": "an explicit computation has a wrong result",
    "no_computation": "no computation whose result is used: the answer is stated, not derived",
    "missing_quantities": "the reasoning ignores most of the question's numbers",
    "gold_quoted": "the gold answer appears before any computation produces it",
    # set by the loop's judge call and by agree, after the structural checks
    "judge_rejected": "the [verify] judge teacher answered FAIL",
    "judge_failed": "the [verify] judge gave no verdict (call failed or reply unreadable)",
    "wrong_answer": "derives an answer that is not the gold answer",
    "no_majority": "without gold: its answer is not the teachers' majority",
}

# --------------------------------------------------------------------------- meta talk

# (pattern, weak).  A weak match is ignored when the question mentions students
# at all (then "the student" is the problem's subject); a strong match only when
# the matched phrase itself (minus a leading "the") occurs in the question.
_POSS = r"(?:'s|’s|s'|s’)"
_META = [
    (re.compile(rf"\bstudents?{_POSS}\s+(?:(?:final|original|previous|own|initial)\s+)?"
                r"(?:answer|solution|response|mistake|error|attempt|reasoning|output|work|calculation)s?\b", re.I),
     False),
    (re.compile(r"\bthe\s+student\s+(?:wrote|answered|responded|claimed|claims|mistakenly|incorrectly|correctly"
                r"|forgot|should\s+have|did\s+not|didn't|made\s+(?:a|an)\s+(?:mistake|error))\b", re.I), False),
    (re.compile(r"\byour\s+(?:final\s+)?(?:answer|solution|response|attempt|mistake|error|reasoning)\b", re.I), False),
    (re.compile(r"\b(?:gold|expected|reference|target|provided|given|official)\s+(?:final\s+)?(?:answer|solution)s?\b"
                r"(?!\s+(?:choices?|options?))", re.I), False),
    (re.compile(r"\banswers?\s+(?:is\s+|was\s+)?(?:provided|given|supplied|stated)\b", re.I), False),
    (re.compile(r"\bas\s+given\b(?!\s+(?:in|by)\s+the\s+(?:problem|question|statement))", re.I), False),
    (re.compile(r"\b(?:we\s+(?:are|were)\s+told|it\s+is\s+(?:given|stated)|the\s+(?:problem|question)\s+"
                r"(?:says|states|tells\s+us))\s+(?:that\s+)?the\s+(?:correct\s+|final\s+)*answer\b", re.I), False),
    (re.compile(r"\banswer\s+key\b", re.I), False),
    (re.compile(r"\bthe\s+(?:previous|original|earlier|initial)\s+(?:answer|solution|attempt|response)\b", re.I),
     False),
    (re.compile(r"\bthe\s+students?\b", re.I), True),
]


def _squash(s: str) -> str:
    return " ".join(s.lower().split())


def _meta_talk(text: str, question: str) -> bool:
    q = _squash(question)
    q_has_student = re.search(r"\bstudent", q) is not None
    for pattern, weak in _META:
        for m in pattern.finditer(text):
            if weak:
                if not q_has_student:
                    return True
                continue
            core = re.sub(r"^the\s+", "", _squash(m.group(0)))
            if core not in q:
                return True
    return False


def similarity(a: str, b: str) -> float:
    """difflib ratio of the texts lower-cased, punctuation dropped, whitespace
    collapsed: 1.0 for copies that only differ in case/spacing/punctuation.
    Compared word by word: a character-level match of two 3,000-character
    rationales takes seconds, word lists take milliseconds."""
    na = re.sub(r"[^\w\s]", " ", a.lower()).split()
    nb = re.sub(r"[^\w\s]", " ", b.lower()).split()
    if na == nb:
        return 1.0
    return difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()

# --------------------------------------------------------------------------- answer line


def _answer_start(text: str, fmt: str) -> int | None:
    """Offset where the final answer's marker starts, or None when the text has
    no strict answer or the answer is not on the last non-empty line."""
    answer = rationale_answer(text, fmt)
    if answer is None:
        return None
    last_start = text.rstrip().rfind("\n") + 1
    # Mirror extract_answer: the first marker kind present wins, and within it
    # the last occurrence whose tail holds an answer of this format.
    for marker in _MARKERS:
        found = list(marker.finditer(text))
        if not found:
            continue
        for m in reversed(found):
            rest = m["rest"]
            ok = (normalize_number(rest) is not None if fmt == "number"
                  else _CHOICE_IN_MARKER.match(rest) is not None if fmt == "choice"
                  else bool(_normalize_text(rest)))
            if ok:
                return m.start() if m.start() >= last_start else None
        break
    # choice answers found without a marker ("option B", "(C)"): the whole last line.
    tail = rationale_answer(text[last_start:], fmt)
    return last_start if tail is not None and answers_equal(tail, answer, fmt) else None  # type: ignore[arg-type]

# --------------------------------------------------------------------------- arithmetic

# Unsigned numbers only: scoring's _NUMBER reads "16 - 8" as -8 and "12 / 3" as
# a fraction, which is right for answers but wrong inside a computation.
_NUM = r"(?<![\d.])(?:[$€£¥]\s?)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?!\d)"
_PLAIN = re.compile(_NUM)
_TOKEN = re.compile(rf"(?P<num>{_NUM})|(?P<op>[-+*/×÷−–·]|(?<![A-Za-z])[xX](?![A-Za-z]))"
                    r"|(?P<lp>\()|(?P<rp>\))|(?P<eq>=)|(?P<word>[A-Za-z]+)|(?P<other>\S)")
_OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "x": "*", "X": "*", "·": "*",
        "/": "/", "÷": "/"}
_GLUE_OK = set("<[{\"'“‘*")  # adjacent punctuation that may open an expression (GSM8K <<, markdown, quotes)


def _value(s: str) -> Fraction:
    return Fraction(re.sub(r"[$€£¥,\s]", "", s))


def _tokens(text: str) -> list[tuple[str, str, int, int]]:
    # LaTeX operators become their symbols, padded so that offsets stay those of `text`
    text = re.sub(r"\\(?:times|cdot|div)\b", lambda m: ("÷" if m[0] == "\\div" else "×").center(len(m[0])), text)
    return [(m.lastgroup or "", m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _evaluate(seq: list[tuple[str, str, int, int]]) -> tuple[Fraction, bool, set[str | None]] | None:
    """Exact value of a token sequence (standard precedence, parentheses), whether
    it has an operator, and the units seen ("5 apples + 3 apples"); None if it
    is not a complete expression."""
    toks, units = [], []
    for i, t in enumerate(seq):  # a single word right after a number is its unit
        nxt = seq[i + 1][0] if i + 1 < len(seq) else "end"
        if t[0] == "word" and i and seq[i - 1][0] in ("num", "rp") and nxt in ("op", "rp", "end"):
            units[-1:] = [t[1].lower().rstrip("s")] if units else []
            continue
        toks.append(t)
        if t[0] == "num":
            units.append(None)
    pos = 0

    def factor() -> Fraction:
        nonlocal pos
        kind, txt = toks[pos][0], toks[pos][1]
        pos += 1
        if kind == "num":
            return _value(txt)
        if kind != "lp":
            raise ValueError
        v = expr()
        if toks[pos][0] != "rp":
            raise ValueError
        pos += 1
        return v

    def level(sub, ops) -> Fraction:
        nonlocal pos
        v = sub()
        while pos < len(toks) and toks[pos][0] == "op" and _OPS[toks[pos][1]] in ops:
            op = _OPS[toks[pos][1]]
            pos += 1
            w = sub()
            v = v + w if op == "+" else v - w if op == "-" else v * w if op == "*" else v / w
        return v

    def term() -> Fraction:
        return level(factor, "*/")

    def expr() -> Fraction:
        return level(term, "+-")

    try:
        v = expr()
    except (ValueError, IndexError, ZeroDivisionError):
        return None
    if pos != len(toks):
        return None
    return v, any(t[0] == "op" for t in toks), set(units)


def _close(stated: Fraction, exact: Fraction, places: int) -> bool:
    """Whether a stated result is the exact value: equal, or (stated with
    `places` decimals) a rounding of it: "10 / 3 = 3.33" within 1% where no
    exact decimal exists, "7 / 8 = 0.88" as the exact value rounded to places."""
    if stated == exact:
        return True
    if "/" in canonical_number(exact):
        return abs(stated - exact) <= abs(exact) / 100
    return places > 0 and abs(stated - exact) <= Fraction(1, 2 * 10**places)


def _cut(toks: list[tuple[str, str, int, int]], s: int) -> bool:
    """Whether the expression starting at token s was cut out of something larger
    ("2(5+3)", "2^3 + 5", "3:30 + 45", "2 * -3 + 1"): then it is skipped."""
    if s == 0:
        return False
    p = toks[s - 1]
    adjacent = p[3] == toks[s][2]
    if p[0] == "num" or (p[0] == "rp" and adjacent):
        return True
    if p[0] in ("other", "word") and adjacent and p[1] not in _GLUE_OK:
        return True
    if p[0] == "op":  # a leading operator is a bullet or markdown ("- 5 + 3", "**5 + 3") unless after an operand
        j = s - 1
        while j >= 0 and toks[j][0] == "op":
            j -= 1
        return j >= 0 and toks[j][0] in ("num", "rp")
    return False


def _computations(text: str) -> tuple[list[tuple[Fraction, int, int, int, int]], bool]:
    """(result value, result start, result end, left start, left end) of each
    parsed computation, and whether any parsed computation states a wrong result."""
    toks = _tokens(text)
    out: list[tuple[Fraction, int, int, int, int]] = []
    prev_eq = -1
    for i, t in enumerate(toks):
        if t[0] != "eq":
            continue
        lo, prev_eq = prev_eq + 1, i
        left = None
        for s in range(max(lo, i - 60), i):  # the longest suffix that is an expression with an operator
            left = _evaluate(toks[s:i])
            if left is not None and left[1]:
                break
            left = None
        if left is None:
            continue
        lval, _, units = left
        additive = {_OPS[x[1]] for x in toks[s:i] if x[0] == "op"} & {"+", "-"}
        if additive and len(units) > 1:  # "2 hours + 30 minutes": mixed units, not checkable
            continue
        if _cut(toks, s):
            continue
        k, neg = i + 1, False
        if k + 1 < len(toks) and toks[k][0] == "op" and _OPS[toks[k][1]] == "-" and toks[k + 1][0] == "num":
            k, neg = k + 1, True
        if k >= len(toks) or toks[k][0] != "num":
            continue
        # the right side: a number, or a chain "= 10 + 3 = 13" (longest expression prefix)
        stop = next((j for j in range(k, len(toks)) if toks[j][0] == "eq"), len(toks))
        rhs, end = None, k + 1
        for e in range(min(stop, k + 60), k, -1):
            rhs = _evaluate(toks[k:e])
            if rhs is not None:
                end = e
                break
        after = text[toks[end - 1][3]:toks[end - 1][3] + 2]
        if rhs is None or after[:1] in ("%", "^") or re.match(r":\d", after):
            continue  # percentages, powers, clock times: not plain arithmetic
        first = _value(toks[k][1]) * (-1 if neg else 1)
        places = len(toks[k][1].partition(".")[2])
        r_ok = _close(first, lval, places) or (rhs[1] and not neg and rhs[0] == lval)
        if not r_ok:
            return out, True
        out.append((first, toks[k][2], toks[k][3], toks[s][2], toks[i - 1][3]))
    return out, False


def _numbers(text: str) -> list[tuple[Fraction, int]]:
    """(absolute value, offset) of every plain number in the text."""
    return [(_value(m.group(0)), m.start()) for m in _PLAIN.finditer(text)]

# --------------------------------------------------------------------------- the check


_FIRST_ANSWER_LINE = re.compile(r"^[^\n]*####[ \t]*\S[^\n]*$", re.M)


def end_at_answer(text: str) -> str:
    """The rationale up to the end of its first `#### <answer>` line.

    Every template asks for the final answer on the last line as "#### X";
    a teacher without a stop sequence (the self teacher, a small local model)
    often goes on ("#### 15\n#### 15\n#### 20 ..."), and the student would
    learn to ramble after its answer.  The loop applies this cut the way a
    stop sequence would, before the checks; texts without a `####` line are
    returned unchanged (their answer line is checked as written)."""
    m = _FIRST_ANSWER_LINE.search(text or "")
    return text[: m.end()].rstrip() if m else text


def check_rationale(text: str, *, question: str, fmt: str = "number", gold: str | None = None,
                    student_output: str | None = None, previous: str | None = None,
                    cfg: VerifyConfig | None = None) -> str | None:
    """The first failed check's reason code (see REASONS), or None when the text passes.

    With ``cfg.structural`` False only ``no_answer_line`` runs (no copy checks): a rationale
    without a marked final answer on its last line cannot be trained on anyway.
    The number-only checks (wrong_arithmetic .. gold_quoted) run for fmt "number"."""
    cfg = cfg or VerifyConfig()
    text = text or ""
    if cfg.structural:
        # Copies first: "a copy of the student's wrong output" says more than
        # "no answer line", which a copy of an unfinished output also lacks.
        if student_output and student_output.strip() and similarity(text, student_output) >= cfg.near_duplicate:
            return "copy_of_student_output"
        if previous and previous.strip() and similarity(text, previous) >= cfg.near_duplicate:
            return "copy_of_previous"
    start = _answer_start(text, fmt)
    if start is None:
        return "no_answer_line"
    if not cfg.structural:
        return None
    if _meta_talk(text, question or ""):
        return "meta_talk"
    reasoning = text[:start]
    words = re.findall(r"[^\W_]+", reasoning)
    if not words or (fmt != "number" and len(words) < cfg.min_reasoning_words):
        return "no_reasoning"
    if fmt != "number":
        return None
    comps, wrong = _computations(reasoning)
    if wrong:
        return "wrong_arithmetic"
    later = _numbers(text)
    if not any(v2 == abs(c[0]) and off >= c[2] for c in comps for v2, off in later):
        return "no_computation"
    q_nums = {v for v, _ in _numbers(question or "")}
    r_nums = {v for v, _ in _numbers(reasoning)}
    need = math.ceil(Fraction(str(cfg.question_quantities)) * len(q_nums))
    if len(q_nums & r_nums) < need:
        return "missing_quantities"
    g = normalize_gold(gold, "number") if gold is not None else None
    if g is not None and abs(Fraction(g)) not in q_nums:
        # Operands do not count ("1 * 2 = 2" for "doubles" uses 2 as an input);
        # the first other occurrence must be a computation's result.
        inputs = [(c[3], c[4]) for c in comps]
        first = next((off for v, off in _numbers(reasoning) if v == abs(Fraction(g))
                      and not any(lo <= off < hi for lo, hi in inputs)), None)
        if first is not None and first not in {c[1] for c in comps}:
            return "gold_quoted"
    return None


_VERDICT = re.compile(r"\bverdict\W*?[:=\-]?[\s*_`\"']*(pass(?:ed)?|fail(?:ed)?|accept(?:ed)?|reject(?:ed)?)\b",
                      re.I)
_BARE_VERDICT = re.compile(r"^[\s*_`#]*(pass(?:ed)?|fail(?:ed)?)[*_`]*[ \t]*(?:[:.!\-–—]|(?=\n)|$)", re.I)
_REASON = re.compile(r"\breason(?:ing)?[\s*_`]*[:\-][\s*_`]*", re.I)


def parse_verdict(text: str) -> tuple[bool | None, str]:
    """A judge's reply -> (passed, reason).  The judge is asked for a first line
    ``VERDICT: PASS`` or ``VERDICT: FAIL`` and a line ``REASON: ...``.  Lenient
    about case and markdown (``**VERDICT:** pass``), ACCEPT/REJECT for PASS/FAIL,
    and a reply whose first line starts with a bare PASS/FAIL.  The reason is
    the text after ``REASON:`` (else the rest of the text after the verdict),
    whitespace-collapsed, at most 300 characters.  (None, reason) when no
    verdict can be found (the reason is then the whole reply, for display)."""
    text = text or ""
    verdict, v_start, v_end = None, 0, 0
    for m in _VERDICT.finditer(text):
        eol = text.find("\n", m.end())
        line = text[text.rfind("\n", 0, m.start()) + 1:eol if eol >= 0 else len(text)]
        if re.search(r"\bpass", line, re.I) and re.search(r"\bfail", line, re.I):
            continue  # an echoed instruction ("VERDICT: PASS or VERDICT: FAIL"), not a verdict
        verdict, v_start, v_end = m.group(1).lower().startswith(("pass", "accept")), m.start(), m.end()
        break
    if verdict is None:
        b = _BARE_VERDICT.match(text)
        if b:
            verdict, v_start, v_end = b.group(1).lower().startswith("pass"), b.start(1), b.end()
    if verdict is None:
        reason = text
    elif (r := _REASON.search(text, v_end)) is not None:
        reason = text[r.end():]
    elif (r := _REASON.search(text)) is not None:  # REASON written before the VERDICT line
        reason = text[r.end():v_start]
    else:
        reason = text[v_end:]
    reason = " ".join(reason.split()).strip(" -–—:*_`").strip()
    return verdict, reason[:300]
