"""The built-in generated task: multi-step arithmetic word problems.

Every problem has an exact integer answer and a gold rationale that walks
through the operations one line each and ends with `#### <answer>` (the GSM8K
convention that prompts.answers extracts).  Difficulty = number of operations
after the starting quantity.  Generation is a pure function of
(seed, split, size, difficulty, max_number): the same config always yields the
same questions, and pool and dev never share a question, so dev accuracy
measures generalisation rather than memorisation.

`ensure_task(store, cfg)` imports both splits into the workspace database; it
is idempotent because example ids are content hashes (re-adding adds nothing).
"""

from __future__ import annotations

import random
from typing import Any

NAMES = [
    "Ava", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gina", "Hugo", "Iris", "Jack",
    "Kara", "Leo", "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tara", "Ugo",
]
ITEMS = [
    "apples", "books", "coins", "stickers", "marbles", "pencils", "shells",
    "cards", "cookies", "stamps", "buttons", "candles", "eggs", "flowers",
]


def _step(rng: random.Random, v: int, name: str, item: str, max_number: int) -> tuple[str, str, int, str]:
    """One operation on the running total v: (sentence, rationale line, new value, kind).

    Operands stay small and results stay non-negative so a 135M model can do
    the arithmetic; multiplication only by 2 or 3 and only while v is small."""
    choices = ["add"]
    if v >= 2:
        choices.append("sub")
    if v <= max_number // 2 and v >= 1:
        choices.append("mul")
    kind = rng.choice(choices)
    if kind == "add":
        b = rng.randint(1, max_number)
        friend = rng.choice([n for n in NAMES if n != name])
        sentence = rng.choice([
            f"Then {name} buys {b} more {item}.",
            f"Then {friend} gives {name} {b} {item}.",
            f"Then {name} finds {b} more {item}.",
        ])
        nv = v + b
        line = f"{name} gets {b} more, so {v} + {b} = {nv}."
    elif kind == "sub":
        b = rng.randint(1, v - 1) if v > 1 else 1
        friend = rng.choice([n for n in NAMES if n != name])
        sentence = rng.choice([
            f"Then {name} gives {b} {item} to {friend}.",
            f"Then {name} loses {b} {item}.",
            f"Then {name} uses {b} of the {item}.",
        ])
        nv = v - b
        line = f"{name} has {b} fewer, so {v} - {b} = {nv}."
    else:
        b = rng.choice([2, 3])
        word = {2: "doubles", 3: "triples"}[b]
        sentence = f"Then {name} {word} the number of {item}."
        nv = v * b
        line = f"{name} {word} it, so {v} * {b} = {nv}."
    return sentence, line, nv, kind


def make_problem(rng: random.Random, difficulty: int, max_number: int = 20) -> dict[str, Any]:
    """One problem: {"question", "answer", "rationale", "meta"} (answer as a string)."""
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    v = rng.randint(2, max_number)
    sentences = [f"{name} has {v} {item}."]
    lines = [f"{name} starts with {v} {item}."]
    kinds = []
    for _ in range(difficulty):
        s, line, v, kind = _step(rng, v, name, item, max_number)
        sentences.append(s)
        lines.append(line)
        kinds.append(kind)
    sentences.append(f"How many {item} does {name} have now?")
    lines.append(f"#### {v}")
    return {
        "question": " ".join(sentences),
        "answer": str(v),
        "rationale": "\n".join(lines),
        "meta": {"task": "arithmetic", "difficulty": difficulty, "ops": kinds},
    }


def generate_split(
    seed: int, split: str, n: int, difficulty: int, *, max_number: int = 20, exclude: set[str] | None = None
) -> list[dict[str, Any]]:
    """n distinct problems for `split`, none of whose questions are in `exclude`.

    The RNG is seeded from (seed, split) as a string so the two splits draw
    from independent streams and adding dev examples never shifts the pool."""
    rng = random.Random(f"distillery-arith:{seed}:{split}:{difficulty}:{max_number}")
    seen = set(exclude or ())
    rows: list[dict[str, Any]] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(
                f"could not generate {n} distinct {split} problems at difficulty {difficulty}; "
                "lower task.pool_size/dev_size or raise task.max_number"
            )
        p = make_problem(rng, difficulty, max_number)
        if p["question"] in seen:
            continue
        seen.add(p["question"])
        p["meta"]["split"] = split
        rows.append(p)
    return rows


def generate_task(
    seed: int, pool_size: int, dev_size: int, difficulty: int, max_number: int = 20
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pool rows, dev rows) — disjoint by question text."""
    pool = generate_split(seed, "pool", pool_size, difficulty, max_number=max_number)
    dev = generate_split(
        seed, "dev", dev_size, difficulty, max_number=max_number, exclude={p["question"] for p in pool}
    )
    return pool, dev


def ensure_task(store, task_cfg) -> dict[str, int]:
    """Import the generated splits into the store when the task is built in.

    Returns {"pool_added", "dev_added"}; zeros on every call after the first."""
    if task_cfg.kind != "arithmetic":
        return {"pool_added": 0, "dev_added": 0}
    pool, dev = generate_task(
        task_cfg.seed, task_cfg.pool_size, task_cfg.dev_size, task_cfg.difficulty,
        task_cfg.max_number,
    )
    with store.transaction():
        pa, _ = store.add_examples(pool, "pool")
        da, _ = store.add_examples(dev, "dev")
    return {"pool_added": pa, "dev_added": da}
