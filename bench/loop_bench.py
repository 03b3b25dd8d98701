"""How much of an iteration the loop itself costs.

Runs the `tiny` preset (the in-code 2-layer student, teacher `self`) for a few
iterations in a fresh workspace and splits every iteration's wall time into
the work the loop exists to orchestrate — student generation, training,
teacher calls — and everything else: orchestration, store transactions,
template rendering, scoring, building the training set, adapter loading.
The ideal is 0 overhead; the headline is the share of wall time it takes.

    .venv/bin/python bench/loop_bench.py [--quick] [--iterations N] [--threads T]

The tiny model makes generation and training as cheap as they get, so this is
the worst case for the overhead share: with a real model the same overhead is
a far smaller fraction.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 iterations on the preset's pool (under a minute)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--pool", type=int, default=None, help="pool size (default: the preset's, 32 without --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny model)")
    args = ap.parse_args()

    import torch
    from rich.console import Console

    torch.set_num_threads(args.threads)
    from loop.orchestrator import Orchestrator
    from loop.workspace import init_workspace, load_workspace_config, open_store

    iterations = args.iterations or (2 if args.quick else 4)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        init_workspace(ws, "tiny")
        cfg = load_workspace_config(ws)
        pool = args.pool or (cfg.task.pool_size if args.quick else 32)
        # gold_fallback: the untrained tiny student never writes a correct
        # rationale, so without it nothing would be trained; with it every
        # iteration trains, as a real run does
        cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"pool_size": pool}),
                                     "loop": cfg.loop.model_copy(update={"gold_fallback": True})})
        st = open_store(ws)
        o = Orchestrator(ws, cfg, st, console=Console(file=open(os.devnull, "w")), quiet=True,
                         max_iterations=iterations)
        o.show_train_progress = False
        t0 = time.perf_counter()
        o.preflight()
        load = time.perf_counter() - t0
        out = o.execute()
        st.close()
    t = o.timings
    wall = t.get("iteration", 0.0)
    gen, train, teacher = t.get("generate", 0.0), t.get("train_call", 0.0), t.get("teacher", 0.0)
    work = gen + train + teacher
    overhead = max(wall - work, 0.0)
    n = len(out.iterations)
    print(f"tiny preset (+ loop.gold_fallback), teacher self, pool {pool}, {n} iterations, torch threads {args.threads} (model load {load:.2f}s, not counted)")
    print(f"{'':<28}{'seconds':>10}{'share':>9}")
    for name, v in (("iteration wall time", wall), ("  generation", gen), ("  training", train),
                    ("  teacher calls", teacher), ("  overhead (everything else)", overhead)):
        print(f"{name:<28}{v:>10.3f}{(v / wall if wall else 0):>9.3f}")
    print(f"  of which store commits      {t.get('store', 0.0):>10.3f}{(t.get('store', 0.0) / wall if wall else 0):>9.3f}")
    print(f"ideal overhead share: 0.000")
    print(f"overhead_share: {overhead / wall if wall else float('nan'):.3f} (goal: < 0.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
