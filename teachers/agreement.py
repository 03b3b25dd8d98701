"""Which teacher rationales to accept: those whose final answer equals gold,
or, without gold, the teachers' majority answer.

The majority is of *teachers*, not of texts: a rationale is stored once per
text (id = hash(example, text)), so two teachers that wrote the same words are
one row but two votes.  Each teacher has one vote per example, split equally
over the answers it gave there (its samples): a teacher cannot outvote the
others by sampling more, and one that contradicts itself counts half for each
side rather than picking a side at random.

Answers are extracted by the ONE shared extractor (`student.scoring`, pure
Python, no torch) so that scoring the student and judging teachers can never
disagree about what "the answer" of a text is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from student.scoring import answers_equal, extract_answer, normalize_gold


def rationale_answer(text: str | None, fmt: str = "number") -> str | None:
    """The final answer of a teacher rationale.  Strict: the answer must be
    marked ("#### 42", "Answer: 42", \\boxed{42}); a rationale that only
    happens to contain numbers has no answer and is stored but not accepted."""
    return extract_answer(text, fmt, fallback=False)  # type: ignore[arg-type]


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


def agree_rationales(produced: Sequence[tuple[str, str, str | None]], gold: str | int | float | None,
                     fmt: str = "number") -> tuple[dict[str, bool], float]:
    """The vote for one example: `produced` has one (rationale id, teacher,
    answer) per text a teacher wrote (per sample), so a text two teachers
    wrote appears twice with the same id.  Returns ({rationale id: accepted},
    agreement fraction); every copy of one id has one answer, hence one flag."""
    flags, frac = agree([a for _, _, a in produced], gold, fmt, voters=[t for _, t, _ in produced])
    verdict: dict[str, bool] = {}
    for (rid, _, _), ok in zip(produced, flags):
        verdict[rid] = verdict.get(rid, False) or ok
    return verdict, frac


def agree_texts(texts: Sequence[str | None], gold: str | int | float | None, fmt: str = "number"
                ) -> tuple[list[str | None], list[bool], float]:
    """Extract each rationale's answer, then `agree`: (answers, flags, fraction)."""
    answers = [rationale_answer(t, fmt) for t in texts]
    flags, frac = agree(answers, gold, fmt)
    return answers, flags, frac
