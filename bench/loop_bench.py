"""How much of an iteration the loop itself costs.

Runs the `tiny` preset (the in-code 2-layer student, teacher `self`) for a few
iterations in a fresh workspace and splits every iteration's wall time into
the work the loop exists to orchestrate — student generation, training,
teacher calls — and everything else: orchestration, store transactions,
template rendering, scoring, building the training set, adapter loading.
The ideal is 0 overhead; the headline is the share of wall time it takes.

    .venv/bin/python bench/loop_bench.py [--quick] [--iterations N] [--threads T]
    .venv/bin/python bench/loop_bench.py --stop-latency [--quick]

--stop-latency measures something else: how long `distillery run` takes to
exit after SIGTERM arrives in the middle of each long step (baseline, teach,
train, evaluate), on the demo preset (the real SmolLM2 student, self teacher;
--quick: the tiny preset).  Each step is caught by watching status.json, the
run is resumed for the next one, and the ideal is 0 s.

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
    ap.add_argument("--stop-latency", action="store_true", help="SIGTERM latency per step (demo preset; --quick: tiny)")
    args = ap.parse_args()
    if args.stop_latency:
        return stop_latency("tiny" if args.quick else "demo")

    import torch
    from rich.console import Console

    torch.set_num_threads(args.threads)
    from loop.core.orchestrator import Orchestrator
    from loop.config.workspace import init_workspace, load_workspace_config, open_store

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
        out = o.run_iterations()
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


STOP_STEPS = ("baseline", "teach", "train", "evaluate")


def stop_latency(preset: str) -> int:
    """SIGTERM in the middle of each long step of iteration 0; seconds to exit."""
    import json
    import signal
    import subprocess

    from loop.config.workspace import init_workspace

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        init_workspace(ws, preset)
        status = ws / ".distillery" / "status.json"
        for step in STOP_STEPS:
            p = subprocess.Popen([sys.executable, "-m", "loop", "run", "-w", str(ws)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT))
            entered = None
            while p.poll() is None:
                try:
                    doc = json.loads(status.read_text())
                except (OSError, ValueError):
                    doc = {}
                if doc.get("pid") == p.pid and doc.get("iteration") == 0 and doc.get("step") == step:
                    entered = entered or time.monotonic()
                    if time.monotonic() - entered >= 2.0:  # well inside the step
                        break
                elif entered is not None:
                    break  # the step ended within 2 s: signal the next one's start
                time.sleep(0.05)
            if p.poll() is not None:
                print(f"{step:<9} the run ended before the step (exit {p.returncode})")
                continue
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=600)
            results[step] = time.monotonic() - t0
            print(f"{step:<9} exit {p.returncode} {results[step]:6.2f} s after SIGTERM")
    print(f"preset {preset}: SIGTERM 2 s into each step (or as the next begins); ideal 0 s")
    worst = max(results.values()) if results else float("nan")
    print(f"stop_latency_s: {worst:.2f} (goal: < 10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
