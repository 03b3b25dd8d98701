"""version: dataset version k, from version k-1 and this iteration's
accepted rationales."""

from __future__ import annotations

from collections import defaultdict

from prompts.answers import extract_answer

from loop.core.steps.context import StepContext, StepResult


def version(ctx: StepContext) -> StepResult:
    """Dataset version k = version k-1 with the accepted rationales of this
    iteration: `replace` swaps an example's demonstrations for the new ones,
    `accumulate` adds them.  Optionally the gold rationale seeds examples no
    teacher got right (loop.gold_fallback)."""
    k, cfg, store = ctx.k, ctx.cfg, ctx.store
    accepted = ctx.step_info(k, "agree").get("accepted_ids", [])
    rats = store.get_rationales(accepted)
    new: dict[str, list[str]] = defaultdict(list)
    for rid in accepted:
        if rid in rats and rid not in new[rats[rid]["example_id"]]:
            new[rats[rid]["example_id"]].append(rid)
    prev = store.dataset(ctx.run_id, k - 1) if k > 0 else {}
    changes: dict[str, list[tuple[str, float]] | None] = {}
    for eid, rids in new.items():
        if cfg.loop.combine == "accumulate" and eid in prev:
            old = [r for r, _ in prev[eid]]
            merged = old + [r for r in rids if r not in old]
            changes[eid] = [(r, 1.0) for r in merged]
        else:
            changes[eid] = [(r, 1.0) for r in rids]
    # An accepted rationale can be one the example already has (rationale ids
    # are content hashes: a self teacher that memorised its demonstration
    # writes it again word for word).  That is no change, and is not counted.
    changes = {eid: demos for eid, demos in changes.items() if list(prev.get(eid, [])) != demos}
    # `distillery data remove`: a removed example leaves the dataset from this version on
    removed = set(store.removed_examples())
    for eid in set(changes) | set(prev):
        if eid in removed:
            if eid in prev:
                changes[eid] = None
            else:
                changes.pop(eid, None)
    gold_added = 0
    gold_writes = []
    if cfg.loop.gold_fallback:
        for ex in store.list_examples("pool"):
            if ex["id"] in prev or ex["id"] in changes or not ex.get("rationale"):
                continue
            gold_writes.append(ex)
            gold_added += 1

    def write() -> None:
        for ex in gold_writes:
            rid = store.add_rationale(ex["id"], ex["rationale"], extract_answer(ex["rationale"], ctx.fmt), "gold",
                                      run_id=ctx.run_id, k=k)
            store.set_accepted(rid, True, 1.0, run_id=ctx.run_id, k=k)
            changes[ex["id"]] = [(rid, 1.0)]
        store.write_dataset_version(ctx.run_id, k, changes)

    size = len((set(prev) | set(changes) | {ex["id"] for ex in gold_writes}) - removed)
    info = {"changed": len(changes) + gold_added, "gold_added": gold_added, "combine": cfg.loop.combine,
            "size": size, "size_before": len(prev), "removed": sum(1 for d in changes.values() if d is None)}
    return StepResult(info, write)
