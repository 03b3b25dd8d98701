"""The vLLM server of generation.backend = "vllm" as this process uses it
(loop/core/generation.py sends it the steps' prompts).

Adapters on the server:
- the untrained adapter (None) is the base model itself: a fresh LoRA has
  B = 0, so its output equals the base model's; requests name the base model
  and nothing is loaded;
- a trained adapter directory is loaded under a name unique to its weights
  (`student-k{k}-{sha8}`): vLLM may reuse prefix-cache blocks cached under a
  name for a later adapter loaded under the same name, so a name never stands
  for two sets of weights;
- what the server holds is asked (`/v1/models`), never assumed: on the first
  use in a process (after a crash the previous process's state is unknown),
  at every switch, and again when a request names an adapter the server no
  longer has (it was restarted); then the adapter is loaded again and the
  chunk retried once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from loop.errors import RunFailure

# `vllm serve --max-lora-rank` accepts only these values
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def server_command(cfg) -> str:
    """The command that starts a server this workspace can use."""
    from urllib.parse import urlsplit

    url = cfg.generation.vllm_base_url or "http://127.0.0.1:8000/v1"
    try:
        port = urlsplit(url).port or 8000
    except ValueError:
        port = 8000
    rank = next((r for r in VLLM_LORA_RANKS if r >= cfg.lora.r), cfg.lora.r)
    return (f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve {cfg.student.name} --enable-lora "
            f"--max-lora-rank {rank} --port {port}")


def api_key(cfg) -> str | None:
    env = cfg.generation.vllm_api_key_env
    return os.environ.get(env) if env else None


def adapter_name(adapter: str, sha: str) -> str:
    """The server-side name of an adapter directory: its weights' sha256 makes
    it unique, the iteration that wrote it makes it readable."""
    m = re.search(r"iter-(\d+)", adapter)
    return f"student-k{m.group(1)}-{sha[:8]}" if m else f"student-{sha[:8]}"


def base_model(cards: list[dict], url: str) -> str:
    """The base model's name among /v1/models' cards (adapters have a parent)."""
    from student.vllm_client import VLLMBadResponse

    base = [c["id"] for c in cards if not c.get("parent")]
    if not base:
        raise VLLMBadResponse(f"vLLM server at {url} lists no base model in /v1/models ({[c['id'] for c in cards]})")
    return base[0]


class VLLMServer:
    """The vLLM server as this process uses it: a client, and the adapter this
    process made the server hold (None until the server has been asked)."""

    def __init__(self, cfg, ws: Path) -> None:
        from student.vllm_client import VLLMClient

        g = cfg.generation
        self.cfg, self.ws = cfg, Path(ws)
        # a chunk's batch_size questions are all in flight at once: the server batches them
        self.client = VLLMClient(g.vllm_base_url, api_key=api_key(cfg), max_concurrency=g.batch_size)
        self.base: str | None = None
        self.loaded: str | None = None  # the adapter name this process loaded (or found loaded)
        self.current: tuple[str | None, str] | None = None  # (adapter, model name) requests go to

    def generate(self, step: str, adapter: str | None, sha: str | None, prompts: list[list[dict]], *,
                 seed: int, **params) -> list[list[str]]:
        from student.vllm_client import VLLMAdapterNotFound, VLLMError

        try:
            name = self.model_for(step, adapter, sha)
            try:
                return self.client.generate(prompts, name, seed=seed, **params)
            except VLLMAdapterNotFound:
                # the server no longer holds it (restarted, or unloaded by someone else)
                self.current = self.loaded = None
                name = self.model_for(step, adapter, sha)
                return self.client.generate(prompts, name, seed=seed, **params)
        except VLLMError as e:
            raise RunFailure(self._failure(step, str(e))) from None

    def model_for(self, step: str, adapter: str | None, sha: str | None) -> str:
        """The model name to request for `adapter`, loading it on the server
        (and unloading the previous one) when the server does not hold it."""
        from student.vllm_client import VLLMError, VLLMUnavailable

        if self.current is not None and self.current[0] == adapter:
            return self.current[1]
        cards = self.client.model_cards()
        first_use = self.base is None
        self.base = base_model(cards, self.client.base_url)
        name = self.base if adapter is None else adapter_name(adapter, sha)
        if first_use:
            self._unload_leftovers(cards, keep=name)
        if self.loaded is not None and self.loaded != name:
            self.client.unload_adapter(self.loaded, missing_ok=True)
            self.loaded = None
        if adapter is not None:
            if name not in {c["id"] for c in cards}:
                path = (self.ws / adapter).resolve()
                try:
                    self.client.load_adapter(name, path)
                except VLLMUnavailable:
                    raise
                except VLLMError as e:
                    raise RunFailure(self._failure(step, f"the vLLM server did not load adapter {name!r} from "
                                                         f"{path}: {e}; the server must be able to read that "
                                                         "directory")) from None
            self.loaded = name
        self.current = (adapter, name)
        return name

    def _unload_leftovers(self, cards: list[dict], keep: str) -> None:
        """Adapters of this workspace that a previous process loaded and did not
        unload (it was killed): their path lies under the workspace."""
        ws = self.ws.resolve()
        for c in cards:
            if c.get("parent") and c["id"] != keep and c.get("root") and Path(c["root"]).is_relative_to(ws):
                self.client.unload_adapter(c["id"], missing_ok=True)

    def _failure(self, step: str, problem: str) -> str:
        return (f"the student's {step} answers (generation.backend = \"vllm\"): {problem}. Start the server with "
                f"`{server_command(self.cfg)}` (the base model is student.name); `distillery run` then resumes")
