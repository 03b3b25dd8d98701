"""Which teacher rationales to accept: those whose final answer equals gold,
or, without gold, the teachers' majority answer.

The majority is of *teachers*, not of texts: a rationale is stored once per
text (id = hash(example, text)), so two teachers that wrote the same words are
one row but two votes.  Each teacher has one vote per example, split equally
over the answers it gave there (its samples): a teacher cannot outvote the
others by sampling more, and one that contradicts itself counts half for each
side rather than picking a side at random.

Answers are extracted, and voted on, by the ONE shared module
(`prompts.answers`, pure Python, no torch) so that scoring the student and
judging teachers can never disagree about what "the answer" of a text is.
"""

from __future__ import annotations

from collections.abc import Sequence

from prompts.answers import agree, extract_answer


def rationale_answer(text: str | None, fmt: str = "number") -> str | None:
    """The final answer of a teacher rationale.  Strict: the answer must be
    marked ("#### 42", "Answer: 42", \\boxed{42}); a rationale that only
    happens to contain numbers has no answer and is stored but not accepted."""
    return extract_answer(text, fmt, fallback=False)  # type: ignore[arg-type]




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
