"""VLLMClient against a real HTTP server on 127.0.0.1 that speaks vLLM's
runtime-LoRA and chat-completions endpoints (tests/vllm_fakeserver.py; vLLM
itself cannot run here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from student.vllm_client import (  # noqa: E402
    VLLMAdapterNotFound,
    VLLMBadRequest,
    VLLMBadResponse,
    VLLMClient,
    VLLMLoRANotEnabled,
    VLLMServerError,
    VLLMUnavailable,
)
from tests.vllm_fakeserver import FakeVLLMServer  # noqa: E402

BASE = "base-model"


@pytest.fixture
def adapter_dir(tmp_path):
    d = tmp_path / "iter-1"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"")
    return d


PROMPTS = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]


def test_load_generate_unload(adapter_dir):
    with FakeVLLMServer() as srv, VLLMClient(srv.url + "/v1/") as client:
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
        chats = srv.chats()
        assert len(chats) == 10 and all(b["max_tokens"] == 9 and b["model"] == "iter-1" for b in chats)
        # the plain distribution, as the transformers backend samples it, whatever the
        # model's generation_config.json says
        assert all(b["top_k"] == -1 and b["min_p"] == 0.0 and b["repetition_penalty"] == 1.0 for b in chats)
        assert srv.counts["/v1/chat/completions"] == 10 and srv.loads == ["iter-1"]
        cards = client.model_cards()
        assert [(c["id"], c["parent"]) for c in cards] == [(BASE, None), ("iter-1", BASE)]
        assert cards[1]["root"] == str(adapter_dir.absolute())
        client.unload_adapter("iter-1")
        assert srv.adapters == {} and srv.unloads == ["iter-1"]
        client.unload_adapter("iter-1", missing_ok=True)
        with pytest.raises(VLLMAdapterNotFound, match="cannot be found"):
            client.unload_adapter("iter-1")


def test_greedy_only_and_base_model(adapter_dir):
    with FakeVLLMServer() as srv, VLLMClient(srv.url) as client:  # base URL without /v1 works too
        out = client.generate(PROMPTS[:2], BASE)
        assert out == [[f"{BASE}|q0|t=0.0|s=None|0"], [f"{BASE}|q1|t=0.0|s=None|0"]]
        assert client.generate([], BASE) == []


def test_reloading_a_name_replaces_it(tmp_path, adapter_dir):
    second = tmp_path / "iter-2"
    second.mkdir()
    (second / "adapter_config.json").write_text("{}")
    with FakeVLLMServer() as srv, VLLMClient(srv.url) as client:
        client.load_adapter("student", adapter_dir)
        client.load_adapter("student", second)
        assert srv.adapters == {"student": str(second.absolute())}
        with pytest.raises(VLLMBadRequest, match="already been loaded"):
            client.load_adapter("student", adapter_dir, replace=False)


def test_missing_runtime_lora_routes_name_the_env_flag(adapter_dir):
    with FakeVLLMServer(runtime_updating=False) as srv, VLLMClient(srv.url) as client:
        with pytest.raises(VLLMLoRANotEnabled, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            client.load_adapter("a", adapter_dir)
        with pytest.raises(VLLMLoRANotEnabled, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            client.unload_adapter("a")


@pytest.mark.parametrize("new_format", [True, False])
def test_lora_disabled_names_enable_lora(adapter_dir, new_format):
    with FakeVLLMServer(enable_lora=False, new_error_format=new_format) as srv, VLLMClient(srv.url) as client:
        with pytest.raises(VLLMLoRANotEnabled, match="--enable-lora"):
            client.load_adapter("a", adapter_dir)


def test_unknown_adapter_and_bad_path(tmp_path):
    with FakeVLLMServer(new_error_format=False) as srv, VLLMClient(srv.url) as client:
        with pytest.raises(VLLMAdapterNotFound, match="does not exist"):
            client.generate(PROMPTS[:1], "never-loaded")
        with pytest.raises(VLLMAdapterNotFound, match="No adapter found"):
            client.load_adapter("x", tmp_path / "nothing-here")


def test_transient_5xx_is_retried_then_reported(adapter_dir):
    with FakeVLLMServer() as srv, VLLMClient(srv.url, retries=2, retry_backoff=0.01) as client:
        srv.fail_next = [503, 503]
        assert client.generate(PROMPTS[:1], BASE) == [[f"{BASE}|q0|t=0.0|s=None|0"]]
        srv.fail_next = [503, 503, 503]
        with pytest.raises(VLLMServerError, match="503"):
            client.generate(PROMPTS[:1], BASE)


def test_malformed_answer_is_a_bad_response():
    with FakeVLLMServer() as srv, VLLMClient(srv.url) as client:
        srv.malformed = True
        with pytest.raises(VLLMBadResponse):
            client.generate(PROMPTS[:1], BASE)


def test_no_server_is_unavailable_with_a_hint():
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with VLLMClient(f"http://127.0.0.1:{port}/v1", retries=1, retry_backoff=0.01) as client:
        with pytest.raises(VLLMUnavailable, match=f"no vLLM server answers at http://127.0.0.1:{port}/v1"):
            client.models()


def test_bad_base_url_and_sampling_settings():
    with pytest.raises(VLLMBadRequest, match="http://"):
        VLLMClient("127.0.0.1:8000")
    with FakeVLLMServer() as srv, VLLMClient(srv.url) as client:
        with pytest.raises(VLLMBadRequest, match="temperature"):
            client.generate(PROMPTS[:1], BASE, n_samples=2, temperature=0)


def test_a_saved_student_adapter_is_what_vllm_expects(tmp_path, tiny_student):
    """The directory save_adapter writes has the two files vLLM reads."""
    d = tiny_student.save_adapter(tmp_path / "iter-3")
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
    assert sorted(cfg["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with FakeVLLMServer() as srv, VLLMClient(srv.url) as client:
        client.load_adapter("iter-3", d)
        assert client.generate(PROMPTS[:1], "iter-3")[0][0].startswith("iter-3|q0")


def test_an_untrained_adapter_answers_like_the_base_model(tiny_student):
    """The loop asks vLLM's base model for the untrained adapter instead of
    loading it (loop/core/generation.py): a freshly initialised LoRA has B = 0."""
    from student.generate import generate

    b = [p for n, p in tiny_student.adapter_params("student").items() if "lora_B" in n]
    assert b and not any(p.any() for p in b)
    prompts = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(3)]
    assert generate(tiny_student, prompts, max_new_tokens=6) == generate(tiny_student, prompts, max_new_tokens=6,
                                                                          adapter="base")
