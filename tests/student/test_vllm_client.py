"""VLLMClient against a real HTTP server on 127.0.0.1 that speaks vLLM's
runtime-LoRA and chat-completions endpoints (vLLM itself cannot run here).

The test server mirrors vLLM's behaviour (vllm/entrypoints/openai/serving_models.py):
the /v1/load_lora_adapter and /v1/unload_lora_adapter routes exist only when
VLLM_ALLOW_RUNTIME_LORA_UPDATING is set (else FastAPI's 404 {"detail": "Not Found"});
without --enable-lora loading fails with 400 "LoRA is not enabled."; loading a
name twice is a 400 "... has already been loaded."; an unknown model is a 404.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from student.vllm_client import (
    VLLMAdapterNotFound,
    VLLMBadRequest,
    VLLMBadResponse,
    VLLMClient,
    VLLMLoRANotEnabled,
    VLLMServerError,
    VLLMUnavailable,
)

BASE = "base-model"


class FakeVLLM:
    """A threaded HTTP server with vLLM's LoRA semantics and scripted answers:
    the answer text is f"{model}|{last user message}|t={temperature}|s={seed}|{i}"."""

    def __init__(self, *, enable_lora=True, runtime_updating=True, new_error_format=True):
        self.enable_lora = enable_lora
        self.runtime_updating = runtime_updating
        self.new_error_format = new_error_format
        self.adapters: dict[str, str] = {}
        self.requests: list[tuple[str, dict]] = []
        self.fail_next: list[int] = []  # status codes to answer the next chat requests with
        self.malformed = False
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
                    self._send(status, {"error": {"message": message, "type": kind, "code": status}})
                else:
                    self._send(status, {"object": "error", "message": message, "type": kind, "code": status})

            def do_GET(self):
                if self.path == "/v1/models":
                    ids = [BASE, *fake.adapters]
                    return self._send(200, {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                with fake.lock:
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
                self._send(200, f"Success: LoRA adapter '{name}' added successfully.")

            def _unload(self, body):
                name = body.get("lora_name")
                with fake.lock:
                    if name not in fake.adapters:
                        return self._error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
                    del fake.adapters[name]
                self._send(200, f"Success: LoRA adapter '{name}' removed successfully.")

            def _chat(self, body):
                with fake.lock:
                    status = fake.fail_next.pop(0) if fake.fail_next else None
                if status:
                    return self._error(status, "engine overloaded", "ServiceUnavailable")
                if fake.malformed:
                    return self._send(200, "this is not json")
                model = body.get("model")
                if model != BASE and model not in fake.adapters:
                    return self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
                user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                t, s = body.get("temperature"), body.get("seed")
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": f"{model}|{user}|t={t}|s={s}|{i}"},
                     "finish_reason": "stop"}
                    for i in range(body.get("n", 1))
                ][::-1]  # out of order on purpose: the client must sort by index
                self._send(200, {"id": "x", "object": "chat.completion", "model": model, "choices": choices})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def adapter_dir(tmp_path):
    d = tmp_path / "iter-1"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"")
    return d


PROMPTS = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]


def test_load_generate_unload(adapter_dir):
    with FakeVLLM() as srv, VLLMClient(srv.url + "/v1/") as client:
        client.load_adapter("iter-1", adapter_dir)
        assert srv.adapters == {"iter-1": str(adapter_dir.absolute())}
        assert client.models() == [BASE, "iter-1"]
        out = client.generate(PROMPTS, "iter-1", n_samples=2, temperature=0.7, max_new_tokens=9, seed=10)
        assert len(out) == 5
        for i, rows in enumerate(out):
            assert rows == [
                f"iter-1|q{i}|t=0.0|s=None|0",  # greedy first
                f"iter-1|q{i}|t=0.7|s={10 + i}|0",
                f"iter-1|q{i}|t=0.7|s={10 + i}|1",
            ]
        chats = [b for p, b in srv.requests if p == "/v1/chat/completions"]
        assert len(chats) == 10 and all(b["max_tokens"] == 9 and b["model"] == "iter-1" for b in chats)
        client.unload_adapter("iter-1")
        assert srv.adapters == {}
        client.unload_adapter("iter-1", missing_ok=True)
        with pytest.raises(VLLMAdapterNotFound, match="cannot be found"):
            client.unload_adapter("iter-1")


def test_greedy_only_and_base_model(adapter_dir):
    with FakeVLLM() as srv, VLLMClient(srv.url) as client:  # base URL without /v1 works too
        out = client.generate(PROMPTS[:2], BASE)
        assert out == [[f"{BASE}|q0|t=0.0|s=None|0"], [f"{BASE}|q1|t=0.0|s=None|0"]]
        assert client.generate([], BASE) == []


def test_reloading_a_name_replaces_it(tmp_path, adapter_dir):
    second = tmp_path / "iter-2"
    second.mkdir()
    (second / "adapter_config.json").write_text("{}")
    with FakeVLLM() as srv, VLLMClient(srv.url) as client:
        client.load_adapter("student", adapter_dir)
        client.load_adapter("student", second)
        assert srv.adapters == {"student": str(second.absolute())}
        with pytest.raises(VLLMBadRequest, match="already been loaded"):
            client.load_adapter("student", adapter_dir, replace=False)


def test_missing_runtime_lora_routes_name_the_env_flag(adapter_dir):
    with FakeVLLM(runtime_updating=False) as srv, VLLMClient(srv.url) as client:
        with pytest.raises(VLLMLoRANotEnabled, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            client.load_adapter("a", adapter_dir)
        with pytest.raises(VLLMLoRANotEnabled, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            client.unload_adapter("a")


@pytest.mark.parametrize("new_format", [True, False])
def test_lora_disabled_names_enable_lora(adapter_dir, new_format):
    with FakeVLLM(enable_lora=False, new_error_format=new_format) as srv, VLLMClient(srv.url) as client:
        with pytest.raises(VLLMLoRANotEnabled, match="--enable-lora"):
            client.load_adapter("a", adapter_dir)


def test_unknown_adapter_and_bad_path(tmp_path):
    with FakeVLLM(new_error_format=False) as srv, VLLMClient(srv.url) as client:
        with pytest.raises(VLLMAdapterNotFound, match="does not exist"):
            client.generate(PROMPTS[:1], "never-loaded")
        with pytest.raises(VLLMAdapterNotFound, match="No adapter found"):
            client.load_adapter("x", tmp_path / "nothing-here")


def test_transient_5xx_is_retried_then_reported(adapter_dir):
    with FakeVLLM() as srv, VLLMClient(srv.url, retries=2, retry_backoff=0.01) as client:
        srv.fail_next = [503, 503]
        assert client.generate(PROMPTS[:1], BASE) == [[f"{BASE}|q0|t=0.0|s=None|0"]]
        srv.fail_next = [503, 503, 503]
        with pytest.raises(VLLMServerError, match="503"):
            client.generate(PROMPTS[:1], BASE)


def test_malformed_answer_is_a_bad_response():
    with FakeVLLM() as srv, VLLMClient(srv.url) as client:
        srv.malformed = True
        with pytest.raises(VLLMBadResponse):
            client.generate(PROMPTS[:1], BASE)


def test_no_server_is_unavailable_with_a_hint():
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with VLLMClient(f"http://127.0.0.1:{port}/v1", retries=1, retry_backoff=0.01) as client:
        with pytest.raises(VLLMUnavailable, match="--enable-lora"):
            client.models()


def test_bad_base_url_and_sampling_settings():
    with pytest.raises(VLLMBadRequest, match="http://"):
        VLLMClient("127.0.0.1:8000")
    with FakeVLLM() as srv, VLLMClient(srv.url) as client:
        with pytest.raises(VLLMBadRequest, match="temperature"):
            client.generate(PROMPTS[:1], BASE, n_samples=2, temperature=0)


def test_a_saved_student_adapter_is_what_vllm_expects(tmp_path, tiny_student):
    """The directory save_adapter writes has the two files vLLM reads."""
    d = tiny_student.save_adapter(tmp_path / "iter-3")
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
    assert sorted(cfg["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with FakeVLLM() as srv, VLLMClient(srv.url) as client:
        client.load_adapter("iter-3", d)
        assert client.generate(PROMPTS[:1], "iter-3")[0][0].startswith("iter-3|q0")
