"""Teacher client throughput vs the ideal, side by side with a plain loop.

Against the local OpenAI-compatible fake server (tests/fakeserver.py, in its
own process so its threads do not compete with the client for the GIL) with a
fixed latency L per request, our TeacherPool with a concurrency cap C should
approach the ideal throughput C/L.  The baseline is what a script would do
without it: a sequential `litellm.completion` loop (ideal 1/L).  Then the same
batch is replayed: every answer must come from the cache (zero HTTP requests).

The batch is 30 waves of C requests (120 with the full run): the first wave
starts together and the last one drains unevenly, one-off costs that a
12-wave batch (96 requests) charged ~4% of the figure, and the loop's teach
step sends hundreds of requests per iteration (pool size × samples), not a
dozen waves.

    python bench/teacher_bench.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.db import Store  # noqa: E402
from teachers import TeacherConfig, TeacherPool, TeacherRequest  # noqa: E402
from teachers.provider import import_litellm  # noqa: E402
from tests.fakeserver import FakeServerProcess  # noqa: E402


def batch(n: int, tag: str) -> list[TeacherRequest]:
    return [TeacherRequest("bench", [{"role": "user", "content": f"[{tag}] Question {i}: what is {i} + 1?"}],
                           template="rationale") for i in range(n)]


async def raw_httpx(base_url: str, n: int, c: int) -> float:
    """The machine's ceiling: the same requests through bare httpx at concurrency c
    (no LiteLLM, no cache, no retries).  Returns seconds."""
    import httpx

    sem = asyncio.Semaphore(c)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=c * 2), timeout=30) as client:
        async def one(i: int) -> None:
            async with sem:
                r = await client.post(base_url + "/chat/completions", headers={"Authorization": "Bearer x"},
                                      json={"model": "fake", "max_tokens": 64,
                                            "messages": [{"role": "user", "content": f"[raw] Question {i}"}]})
                r.raise_for_status()

        await one(-1)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batch (under a minute)")
    ap.add_argument("--latency", type=float, default=0.2, help="server latency L in seconds")
    ap.add_argument("--concurrency", type=int, default=8, help="client concurrency cap C")
    ap.add_argument("-n", type=int, default=None, help="requests in the batch")
    args = ap.parse_args()
    n = args.n or (30 if args.quick else 120) * args.concurrency
    n_seq = 8 if args.quick else 24
    L, C = args.latency, args.concurrency
    litellm = import_litellm()

    with FakeServerProcess(latency=L) as srv, tempfile.TemporaryDirectory() as tmp:
        cfg = TeacherConfig(name="bench", model="openai/fake", api_base=srv.base_url, temperature=0.0,
                            max_tokens=64, max_concurrency=C, max_retries=2, timeout_s=30)
        store = Store.open(Path(tmp) / "distillery.db")
        # warm-up: imports, HTTP client creation (not timed, for either side)
        asyncio.run(TeacherPool([cfg], store).run(batch(C, "warm")))
        litellm.completion(model=cfg.model, api_base=cfg.api_base, api_key="x", max_retries=0,
                           messages=[{"role": "user", "content": "warm"}], max_tokens=64)

        # ours: the whole batch through the pool
        srv.reset_counts()
        reqs = batch(n, "run")
        t0, c0 = time.perf_counter(), time.process_time()
        results = asyncio.run(TeacherPool([cfg], store).run(reqs))
        t_ours, cpu_ours = time.perf_counter() - t0, time.process_time() - c0
        ok = sum(r.status == "ok" for r in results)
        ours_rps = n / t_ours
        ours_reqs = srv.requests

        # baseline: a plain sequential litellm.completion loop
        srv.reset_counts()
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n_seq):
            litellm.completion(model=cfg.model, api_base=cfg.api_base, api_key="x", max_retries=0, temperature=0.0,
                               max_tokens=64, messages=[{"role": "user", "content": f"[seq] Question {i}"}])
        t_seq, cpu_seq = time.perf_counter() - t0, time.process_time() - c0
        seq_rps = n_seq / t_seq

        # floor of this machine: bare httpx at the same concurrency
        t_raw = asyncio.run(raw_httpx(cfg.api_base, n, C))
        raw_rps = n / t_raw

        # replay: the same batch again, from a fresh pool over the same store
        srv.reset_counts()
        t0 = time.perf_counter()
        again = asyncio.run(TeacherPool([cfg], store).run(reqs))
        t_replay = time.perf_counter() - t0
        replay_requests = srv.requests
        cached = sum(r.cached for r in again)
        store.close()

    # the same pool against a slower server (remote APIs answer in seconds): LiteLLM's
    # fixed per-call CPU matters less as L grows
    L2 = 5 * L
    with FakeServerProcess(latency=L2) as srv2, tempfile.TemporaryDirectory() as tmp2:
        cfg2 = cfg.model_copy(update={"api_base": srv2.base_url})
        store2 = Store.open(Path(tmp2) / "distillery.db")
        asyncio.run(TeacherPool([cfg2], store2).run(batch(C, "warm")))
        n2 = C * 4
        t0 = time.perf_counter()
        asyncio.run(TeacherPool([cfg2], store2).run(batch(n2, "slow")))
        ratio_slow = (n2 / (time.perf_counter() - t0)) / (C / L2)
        store2.close()

    ideal = C / L
    print(f"setup: latency L={L * 1000:.0f} ms, concurrency C={C}, batch={n} (sequential baseline: {n_seq})")
    print(f"ideal_throughput_rps: {ideal:.1f}")
    print(f"ours_throughput_rps: {ours_rps:.1f} ({ok}/{n} ok, {ours_reqs} HTTP requests, {t_ours:.2f} s)")
    print(f"raw_httpx_rps: {raw_rps:.1f} (same batch, bare httpx at C={C}: what this machine allows; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"raw_httpx_vs_ideal: {raw_rps / ideal:.3f}")
    print(f"ours_vs_raw_httpx: {ours_rps / raw_rps:.3f}")
    print(f"sequential_litellm_rps: {seq_rps:.1f} ({t_seq:.2f} s for {n_seq})")
    print(f"client_cpu_ms_per_request: ours {cpu_ours / n * 1000:.1f}, plain litellm.completion {cpu_seq / n_seq * 1000:.1f}")
    print(f"sequential_vs_ideal: {seq_rps / ideal:.3f}")
    print(f"speedup_vs_sequential: {ours_rps / seq_rps:.2f}x")
    print(f"throughput_vs_ideal_at_L={L2 * 1000:.0f}ms: {ratio_slow:.3f} ({n2} requests)")
    print(f"replay_time_s: {t_replay:.3f} ({cached}/{n} cached; first run {t_ours:.2f} s)")
    print(f"replay_requests: {replay_requests} (goal: = 0)")
    print(f"throughput_vs_ideal: {ours_rps / ideal:.3f} (goal: ≥ 0.9)")


if __name__ == "__main__":
    main()
