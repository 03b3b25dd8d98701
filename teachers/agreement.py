"""Which teacher rationales to accept: those whose final answer equals gold,
or, without gold, the teachers' majority answer.

Answers are extracted by the ONE shared extractor (`student.scoring`, pure
Python, no torch) so that scoring the student and judging teachers can never
disagree about what "the answer" of a text is.
"""

from __future__ import annotations

from collections.abc import Sequence

from student.scoring import answers_equal, extract_answer, normalize_gold


def rationale_answer(text: str | None, fmt: str = "number") -> str | None:
    """The final answer of a teacher rationale.  Strict: the answer must be
    marked ("#### 42", "Answer: 42", \\boxed{42}); a rationale that only
    happens to contain numbers has no answer and is stored but not accepted."""
    return extract_answer(text, fmt, fallback=False)  # type: ignore[arg-type]


def agree(answers: Sequence[str | None], gold: str | int | float | None, fmt: str = "number"
          ) -> tuple[list[bool], float]:
    """Accepted flags (one per answer) and the agreement fraction.

    With gold: accept the answers equal to gold; the fraction is the share of
    all answers (unparseable ones included) that equal it.  A gold that cannot
    be read in this format accepts nothing.

    Without gold: the answers are grouped by equality; the largest group wins
    when it is strictly larger than every other group (a tie accepts nothing:
    the teachers disagree and there is no way to tell who is right).  The
    fraction is that group's share of all answers.  One parseable answer is its
    own majority (fraction 1/len(answers))."""
    n = len(answers)
    if n == 0:
        return [], 0.0
    if gold is not None and not (isinstance(gold, str) and not gold.strip()):
        g = normalize_gold(gold, fmt)  # type: ignore[arg-type]
        if g is None:
            return [False] * n, 0.0
        flags = [answers_equal(a, g, fmt) for a in answers]  # type: ignore[arg-type]
        return flags, sum(flags) / n
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
    groups.sort(key=len, reverse=True)
    if len(groups) > 1 and len(groups[0]) == len(groups[1]):
        return [False] * n, len(groups[0]) / n
    winners = set(groups[0])
    return [i in winners for i in range(n)], len(winners) / n


def agree_texts(texts: Sequence[str | None], gold: str | int | float | None, fmt: str = "number"
                ) -> tuple[list[str | None], list[bool], float]:
    """Extract each rationale's answer, then `agree`: (answers, flags, fraction)."""
    answers = [rationale_answer(t, fmt) for t in texts]
    flags, frac = agree(answers, gold, fmt)
    return answers, flags, frac
