"""A real HTTP server on 127.0.0.1 that speaks the part of vLLM's
OpenAI-compatible API the student uses (vLLM itself cannot run in the tests).

It mirrors vLLM's behaviour (vllm/entrypoints/openai/serving_models.py):
/v1/models lists the base model (no "parent") and every loaded adapter
("parent" = the base, "root" = its path); the /v1/load_lora_adapter and
/v1/unload_lora_adapter routes exist only when VLLM_ALLOW_RUNTIME_LORA_UPDATING
is set (else FastAPI's 404 {"detail": "Not Found"}); without --enable-lora a
load fails with 400 "LoRA is not enabled."; loading a name twice is a 400
"... has already been loaded."; a chat request naming an unknown model is a 404
with vLLM's error body.

Chat answers come from `answer(model, adapter_path, body) -> [n texts]`
(adapter_path None for the base model); the default scripts
f"{model}|{last user message}|t={temperature}|s={seed}|{i}".  Every request is
counted per route and kept; loads and unloads are recorded in order."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def scripted_answer(model: str, adapter_path: str | None, body: dict) -> list[str]:
    user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    t, s = body.get("temperature"), body.get("seed")
    return [f"{model}|{user}|t={t}|s={s}|{i}" for i in range(body.get("n", 1))]


class FakeVLLMServer:
    def __init__(self, answer=scripted_answer, *, base: str = "base-model", enable_lora: bool = True,
                 runtime_updating: bool = True, new_error_format: bool = True):
        self.answer = answer
        self.base = base
        self.enable_lora = enable_lora
        self.runtime_updating = runtime_updating
        self.new_error_format = new_error_format
        self.adapters: dict[str, str] = {}  # name -> lora_path, what the server holds now
        self.loads: list[str] = []  # names loaded, in order
        self.unloads: list[str] = []
        self.counts: Counter = Counter()  # route -> requests
        self.requests: list[tuple[str, dict]] = []  # (route, body) of every POST
        self.fail_next: list[int] = []  # status codes to answer the next chat requests with
        self.malformed = False
        self.errors: list[str] = []  # exceptions raised by `answer`
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status, message, kind):
                if fake.new_error_format:
                    self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})
                else:
                    self._send(status, {"object": "error", "message": message, "type": kind, "code": status})

            def do_GET(self):
                with fake.lock:
                    fake.counts[self.path] += 1
                    cards = [{"id": fake.base, "object": "model", "root": fake.base, "parent": None}]
                    cards += [{"id": n, "object": "model", "root": p, "parent": fake.base} for n, p in fake.adapters.items()]
                if self.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": cards})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                with fake.lock:
                    fake.counts[self.path] += 1
                    fake.requests.append((self.path, body))
                if self.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                    if not fake.runtime_updating:
                        return self._send(404, {"detail": "Not Found"})
                    return self._load(body) if "unload" not in self.path else self._unload(body)
                if self.path == "/v1/chat/completions":
                    return self._chat(body)
                self._send(404, {"detail": "Not Found"})

            def _load(self, body):
                name, path = body.get("lora_name"), body.get("lora_path")
                if not name or not path:
                    return self._error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
                with fake.lock:
                    if name in fake.adapters:
                        return self._error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
                    if not fake.enable_lora:
                        return self._error(400, "LoRA is not enabled.", "BadRequestError")
                    if not (Path(path) / "adapter_config.json").is_file():
                        return self._error(404, f"No adapter found for {path}", "NotFoundError")
                    fake.adapters[name] = path
                    fake.loads.append(name)
                self._send(200, f"Success: LoRA adapter '{name}' added successfully.")

            def _unload(self, body):
                name = body.get("lora_name")
                with fake.lock:
                    if name not in fake.adapters:
                        return self._error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
                    del fake.adapters[name]
                    fake.unloads.append(name)
                self._send(200, f"Success: LoRA adapter '{name}' removed successfully.")

            def _chat(self, body):
                with fake.lock:
                    status = fake.fail_next.pop(0) if fake.fail_next else None
                    model = body.get("model")
                    path = fake.adapters.get(model)
                if status:
                    return self._error(status, "engine overloaded", "ServiceUnavailable")
                if fake.malformed:
                    return self._send(200, "this is not json")
                if model != fake.base and path is None:
                    return self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
                try:
                    texts = fake.answer(model, path, body)
                except Exception as e:  # a test's answer table has no entry: say so, loudly
                    with fake.lock:
                        fake.errors.append(f"{type(e).__name__}: {e}")
                    return self._error(500, f"fake server cannot answer: {e}", "InternalServerError")
                choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                           for i, t in enumerate(texts)][::-1]  # out of order on purpose: the client must sort
                self._send(200, {"id": "x", "object": "chat.completion", "model": model, "choices": choices})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def chats(self) -> list[dict]:
        """Bodies of the chat requests so far."""
        with self.lock:
            return [b for p, b in self.requests if p == "/v1/chat/completions"]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
