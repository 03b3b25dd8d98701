"""Client of a vLLM OpenAI-compatible server that serves the student's LoRA adapters.

With generation.backend = "vllm" the loop generates through vLLM instead of
transformers (loop/core/generation.py drives this client):

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve <base model> --enable-lora \\
        --max-lora-rank 64 --port 8000

Each iteration registers its adapter (`POST /v1/load_lora_adapter` with
``{"lora_name", "lora_path"}``; the path is read by the server, so it must be
visible on the server's filesystem) and generates with ``model=<adapter name>``
through `/v1/chat/completions` (the server applies the model's chat template).
Index 0 of each answer list is greedy (temperature 0); the sampled answers come
from one request with ``n=n_samples`` and ``seed = seed + i`` for prompt i.
Requests run concurrently (the server batches them), in a bounded thread pool.

HTTP failures become a small hierarchy with messages that say what to fix:
the runtime-LoRA routes missing (VLLM_ALLOW_RUNTIME_LORA_UPDATING unset), LoRA
disabled (no --enable-lora), an unknown adapter, a refused request, a server
error, or no server at all.  Connection errors and 5xx are retried briefly.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from student.errors import StudentError

RETRY_STATUS = {502, 503, 504}


class VLLMError(StudentError):
    """Base class of errors talking to a vLLM server."""


class VLLMUnavailable(VLLMError):
    """No server answered at the base URL (not started, wrong port) or it kept failing."""


class VLLMLoRANotEnabled(VLLMError):
    """The server cannot load adapters at run time (--enable-lora / VLLM_ALLOW_RUNTIME_LORA_UPDATING)."""


class VLLMAdapterNotFound(VLLMError):
    """The adapter name is not loaded on the server, or its path has no adapter."""


class VLLMBadRequest(VLLMError):
    """The server refused the request (4xx other than the cases above)."""


class VLLMServerError(VLLMError):
    """The server failed (5xx) after the retries."""


class VLLMBadResponse(VLLMError):
    """The server's answer was not the JSON an OpenAI-compatible server sends."""


def _api_root(base_url: str) -> str:
    """Accept "http://host:8000", ".../v1" or ".../v1/"; return ".../v1"."""
    url = base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise VLLMBadRequest(f"vLLM base URL {base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
    return url if url.endswith("/v1") else url + "/v1"


def _error_message(resp: httpx.Response) -> str:
    """The message of a vLLM/OpenAI error body: {"error": {"message"}} (new) or
    {"message"} (older vLLM), else the raw text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):
            return str(body["detail"])
    return resp.text.strip()[:500]


def _route_missing(resp: httpx.Response) -> bool:
    """A 404/405 from the web framework itself (FastAPI: {"detail": "Not Found"}),
    as opposed to vLLM's own error body about an adapter."""
    if resp.status_code not in (404, 405):
        return False
    try:
        body = resp.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and ("error" in body or "message" in body))


class VLLMClient:
    """Synchronous client; thread-safe (one httpx.Client shared by the pool)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_concurrency: int = 32,
        retries: int = 2,
        retry_backoff: float = 0.5,
    ) -> None:
        self.base_url = _api_root(base_url)
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.max_concurrency = max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VLLMClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transport

    def _request(self, method: str, route: str, **kw) -> httpx.Response:
        url = f"{self.base_url}/{route}"
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, url, **kw)
            except httpx.TimeoutException as exc:
                last = VLLMUnavailable(f"vLLM server at {self.base_url} timed out on {route} ({exc})")
            except httpx.TransportError as exc:
                last = VLLMUnavailable(f"no vLLM server answers at {self.base_url} ({exc})")
            else:
                if resp.status_code not in RETRY_STATUS:
                    return resp
                last = VLLMServerError(f"vLLM server {route}: HTTP {resp.status_code}: {_error_message(resp)}")
            if attempt < self.retries:
                time.sleep(self.retry_backoff * 2**attempt)
        raise last

    @staticmethod
    def _raise_for(resp: httpx.Response, route: str, adapter: str | None = None) -> None:
        if resp.status_code < 400:
            return
        msg = _error_message(resp)
        low = msg.lower()
        if resp.status_code >= 500:
            raise VLLMServerError(f"vLLM server {route}: HTTP {resp.status_code}: {msg}")
        if "lora" in low and ("not enabled" in low or "enable-lora" in low or "enable_lora" in low):
            raise VLLMLoRANotEnabled(
                f"vLLM server refused {route}: {msg.rstrip('.')}; start it with --enable-lora "
                "(and --max-lora-rank at least the adapter's rank)"
            )
        if resp.status_code == 404:
            raise VLLMAdapterNotFound(f"vLLM server {route}: {msg}" + (f" (adapter {adapter!r})" if adapter else ""))
        raise VLLMBadRequest(f"vLLM server {route}: HTTP {resp.status_code}: {msg}")

    # ---- adapters

    def model_cards(self) -> list[dict]:
        """The server's model cards: the base model ("root" = its path) and every
        loaded adapter ("parent" = the base model, "root" = the adapter's path)."""
        resp = self._request("GET", "models")
        self._raise_for(resp, "models")
        try:
            cards = resp.json()["data"]
            if not all(isinstance(c["id"], str) for c in cards):
                raise TypeError("a model id is not a string")
            return cards
        except (ValueError, KeyError, TypeError) as exc:
            raise VLLMBadResponse(f"vLLM server /models answered {resp.text[:200]!r} ({exc})") from None

    def models(self) -> list[str]:
        """Names the server serves: the base model and every loaded adapter."""
        return [c["id"] for c in self.model_cards()]

    def load_adapter(self, name: str, path: str | Path, *, replace: bool = True) -> None:
        """Register the PEFT adapter directory `path` under `name`.  With
        `replace`, an adapter already loaded under that name is unloaded first
        (vLLM refuses to load a name twice)."""
        body = {"lora_name": name, "lora_path": str(Path(path).absolute())}
        resp = self._request("POST", "load_lora_adapter", json=body)
        if resp.status_code == 400 and "already been loaded" in _error_message(resp) and replace:
            self.unload_adapter(name)
            resp = self._request("POST", "load_lora_adapter", json=body)
        if _route_missing(resp):
            # The route itself is missing: vLLM only mounts it with the env flag.
            raise VLLMLoRANotEnabled(
                f"vLLM server at {self.base_url} has no /load_lora_adapter route (HTTP {resp.status_code}); "
                "start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment and --enable-lora"
            )
        self._raise_for(resp, "load_lora_adapter", name)

    def unload_adapter(self, name: str, *, missing_ok: bool = False) -> None:
        resp = self._request("POST", "unload_lora_adapter", json={"lora_name": name})
        if _route_missing(resp):
            raise VLLMLoRANotEnabled(
                f"vLLM server at {self.base_url} has no /unload_lora_adapter route (HTTP {resp.status_code}); "
                "start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment"
            )
        if resp.status_code == 404 and missing_ok:
            return
        self._raise_for(resp, "unload_lora_adapter", name)

    # ---- generation

    def _chat(self, body: dict) -> list[str]:
        resp = self._request("POST", "chat/completions", json=body)
        self._raise_for(resp, "chat/completions", body.get("model"))
        try:
            choices = sorted(resp.json()["choices"], key=lambda c: c.get("index", 0))
            texts = [c["message"]["content"] or "" for c in choices]
        except (ValueError, KeyError, TypeError) as exc:
            raise VLLMBadResponse(f"vLLM server chat/completions answered {resp.text[:200]!r} ({exc})") from None
        if len(texts) != body["n"]:
            raise VLLMBadResponse(f"vLLM server returned {len(texts)} choices, asked for {body['n']}")
        return texts

    def generate(
        self,
        prompts: list[list[dict]],
        adapter_name: str,
        *,
        n_samples: int = 0,
        temperature: float = 0.8,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int = 0,
    ) -> list[list[str]]:
        """Per prompt: [greedy answer, n_samples sampled answers], from the
        server's model `adapter_name` (a loaded adapter, or the base model)."""
        if n_samples and temperature <= 0:
            raise VLLMBadRequest(f"sampling needs temperature > 0 (got {temperature})")

        def answer(i: int) -> list[str]:
            # The transformers backend samples from the plain distribution (no top-k,
            # min-p or repetition penalty); vLLM would otherwise take those from the
            # model's generation_config.json, which changes even greedy answers.
            base = {"model": adapter_name, "messages": prompts[i], "max_tokens": max_new_tokens,
                    "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "skip_special_tokens": True}
            out = self._chat({**base, "n": 1, "temperature": 0.0, "top_p": 1.0})
            if n_samples:
                out += self._chat(
                    {**base, "n": n_samples, "temperature": temperature, "top_p": top_p, "seed": seed + i}
                )
            return out

        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(answer, range(len(prompts))))
