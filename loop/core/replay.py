"""`distillery replay [RUN:]K|best [--set key=value]... [--name NAME]`.

A replay is a new run branched from iteration K of a run (store.branch_run):
it inherits that run's datasets, predictions and adapters up to K and
continues from K+1 with the parent's settings changed by `--set`.  Prompt
templates are read from the workspace as in any run, so editing
prompts/refine.yaml and replaying changes exactly the refinement calls.
Unchanged settings reproduce the same datasets: training and generation are
seeded by (seed, k), and every teacher call (the self teacher included) is
answered by the cache, so a faithful replay makes zero teacher requests.
"""

from __future__ import annotations

import copy
import tomllib
from typing import Any

from pydantic import ValidationError

from teachers import redact

from loop.config.schema import Config
from loop.errors import ConfigError, UserError


def parse_target(text: str) -> tuple[str | None, int | str]:
    """'[RUN:]K' -> (run name or None, K); '[RUN:]best' -> (run, "best")."""
    run, sep, k = text.rpartition(":")
    if sep and not run:
        raise UserError(f"replay target {text!r}: the run name before ':' is empty; write RUN:K or just K")
    if k == "best":
        return (run or None), "best"
    try:
        kk = int(k)
        if kk < 0:
            raise ValueError
    except ValueError:
        raise UserError(f"replay target {text!r}: expected [RUN:]K with K an iteration number, e.g. 1 or main:1") from None
    if sep and not run:
        raise UserError(f"replay target {text!r}: the run name before ':' is empty; write RUN:K or just K")
    return (run or None), kk


def parse_value(raw: str) -> Any:
    """A --set value: TOML syntax when it parses (numbers, booleans, strings in
    quotes, arrays), the raw text otherwise (so model=openai/x needs no quotes)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_sets(config: dict, sets: list[str]) -> dict:
    """Apply `key.path=value` assignments to a config dict (a copy).  `teachers`
    is a list: index it as teachers.0.temperature."""
    out = copy.deepcopy(config)
    for item in sets:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set loop.combine=accumulate")
        parts = key.split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(f"--set {key}: {where} is not an index of the list (0..{len(node) - 1})")
                node = node[int(part)]
            elif isinstance(node, dict):
                if part not in node or not isinstance(node[part], (dict, list)):
                    raise UserError(f"--set {key}: no section {where!r} in the config; see distillery.toml for the keys")
                node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise UserError(f"--set {key}: {last} is not an index of the list")
            node[int(last)] = parse_value(raw)
        else:
            node[last] = parse_value(raw)
    return out


def validate(config: dict, sets: list[str]) -> Config:
    try:
        return Config.model_validate(config)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"--set: {loc}: {err['msg']} (from {', '.join(sets) or 'the parent config'})") from None


def create_replay(store, default_run: str, target: str, sets: list[str], name: str | None = None) -> tuple[dict, Config]:
    """Branch the run; returns (new run row, its config).  Nothing is written
    when the target or a --set is wrong."""
    run_name, k = parse_target(target)
    run = store.find_run(run_name or default_run)
    if run is None:
        names = ", ".join(r["name"] for r in store.list_runs()) or "none yet"
        raise UserError(f"no run named {run_name or default_run!r} to replay (runs: {names})")
    if k == "best":
        from loop.report.summary import best_k, done_iterations

        k = best_k(done_iterations(store, run))
        if k is None:
            raise UserError(f"run {run['name']!r} has no finished iteration with a dev accuracy to replay from")
    try:
        it = store.get_iteration(run["id"], k)
    except LookupError:
        it = None
    if it is None or it["status"] != "done":
        raise UserError(f"run {run['name']!r} has no finished iteration {k} to replay from; see `distillery iterations --run {run['name']}`")
    cfg = validate(apply_sets(run["config"], sets), sets)
    if name is None:
        base = f"{run['name']}-replay{k}"
        name, n = base, 2
        while store.find_run(name) is not None:
            name, n = f"{base}-{n}", n + 1
    elif store.find_run(name) is not None:
        raise UserError(f"a run named {name!r} already exists; choose another --name")
    cfg = cfg.model_copy(update={"run_name": name})
    new_id = store.branch_run(run["id"], k, name, redact(cfg.model_dump(mode="json")))
    store.log_event(new_id, k, None, "replay", f"replay of {run['name']}:{k}", {"sets": sets, "parent": run["name"]})
    return store.get_run(new_id), cfg
