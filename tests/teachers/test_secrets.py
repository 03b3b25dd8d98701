"""Keys reach LiteLLM only from the environment (api_key_env).  A credential
written in the settings is refused when the config is validated; whatever is
stored anyway (teacher_calls.request, errors, the run's config) goes through
`redact`; and after calls over every route a planted key is nowhere in the
workspace: database, -wal, -shm, logs."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from pydantic import ValidationError

from store.db import Store
from teachers import TeacherBadRequest, TeacherClient, TeacherConfig, TeacherPool, TeacherRequest, redact
from tests.fakeserver import planted_secret

SECRET = planted_secret()

REFUSED = {
    "api_base user:password@": {"api_base": f"http://user:{SECRET}@127.0.0.1:1/v1"},
    "api_base :password@": {"api_base": f"http://:{SECRET}@127.0.0.1:1/v1"},
    "api_base ?api_key=": {"api_base": f"http://127.0.0.1:1/v1?api_key={SECRET}"},
    "api_base ?key=": {"api_base": f"https://example.com/v1?alt=json&key={SECRET}"},
    "extra.api_key": {"extra": {"api_key": SECRET}},
    "extra.key": {"extra": {"key": SECRET}},
    "extra.token": {"extra": {"token": SECRET}},
    "extra.secret": {"extra": {"client_secret": SECRET}},
    "extra.password": {"extra": {"password": SECRET}},
    "extra.authorization": {"extra": {"authorization": SECRET}},
    "extra.apiKey (camelCase)": {"extra": {"apiKey": SECRET}},
    "extra_headers.Authorization": {"extra": {"extra_headers": {"Authorization": f"Bearer {SECRET}"}}},
    "headers.x-api-key": {"extra": {"headers": {"x-api-key": SECRET}}},
    "extra_body.access_token": {"extra": {"extra_body": {"access_token": SECRET}}},
    "a Bearer value under a harmless name": {"extra": {"extra_headers": {"X-Debug": f"Bearer {SECRET}"}}},
    "a URL with user:password@ in extra": {"extra": {"metadata": {"proxy": f"http://u:{SECRET}@proxy:3128"}}},
    "api_key_env holding the key itself": {"api_key_env": SECRET},
}


@pytest.mark.parametrize("route", list(REFUSED))
def test_a_credential_in_the_settings_is_refused_with_the_fix(route):
    with pytest.raises(ValidationError) as ei:
        TeacherConfig(name="t", model="openai/x", **REFUSED[route])
    (err,) = ei.value.errors()
    assert err["type"] == "credential_in_config"  # the loop prints these without the value
    assert "api_key_env" in err["msg"] and SECRET not in err["msg"]
    key = next(iter(REFUSED[route]))
    assert err["loc"] == (key,) and err["msg"].startswith(key), err["msg"]


def test_assignment_is_validated_too():
    cfg = TeacherConfig(name="t", model="openai/x")
    with pytest.raises(ValidationError, match="credential_in_config"):
        cfg.api_base = f"http://u:{SECRET}@h/v1"


@pytest.mark.parametrize("key,fix", [("timeout", "timeout_s"), ("n", "samples"), ("model", "model"),
                                     ("base_url", "api_base"), ("stream", "whole responses")])
def test_extra_cannot_set_what_the_client_sets(key, fix):
    with pytest.raises(ValidationError) as ei:
        TeacherConfig(name="t", model="openai/x", extra={key: 1})
    assert f"extra.{key}" in str(ei.value) and fix in str(ei.value)


def test_settings_without_credentials_pass_and_are_their_own_redaction():
    cfg = TeacherConfig(name="t", model="openai/x", api_base="http://127.0.0.1:8080/v1?alt=json",
                        api_key_env="OPENAI_API_KEY",
                        extra={"seed": 3, "max_completion_tokens": 64, "top_k": 5,
                               "extra_headers": {"X-Request-Source": "distillery"}})
    dump = cfg.model_dump(mode="json")
    assert redact(dump) == dump  # a stored valid config reloads unchanged (replay validates it again)


def test_redact_masks_credentials_anywhere_in_a_structure():
    doc = {"teachers": [{"api_base": f"http://user:{SECRET}@host/v1?api_key={SECRET}&alt=json",
                         "api_key_env": "MY_KEY", "max_tokens": 5,
                         "extra": {"extra_headers": {"Authorization": f"Bearer {SECRET}",
                                                     "X-Debug": f"Bearer {SECRET}"},
                                   "nested": [{"password": SECRET}], "note": f"uses {SECRET}"}}]}
    out = redact(doc, (SECRET,))
    assert SECRET not in json.dumps(out)
    t = out["teachers"][0]
    assert t["api_base"] == "http://[redacted]@host/v1?api_key=[redacted]&alt=json"
    assert t["api_key_env"] == "MY_KEY" and t["max_tokens"] == 5  # names of variables and counts are kept
    assert t["extra"]["extra_headers"] == {"Authorization": "[redacted]", "X-Debug": "Bearer [redacted]"}
    assert doc["teachers"][0]["extra"]["nested"][0]["password"] == SECRET  # a copy: the input is untouched


def _grep(root, needle: str) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and needle.encode() in p.read_bytes()]


def test_a_planted_key_is_nowhere_in_the_workspace(fake_server, make_cfg, monkeypatch, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    store = Store.open(ws / "distillery.db")
    log = logging.FileHandler(ws / "distillery.log")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(log)
    root.setLevel(logging.DEBUG)  # whatever anything logs at any level lands in the workspace
    try:
        # 1. the supported route: the key in the variable api_key_env names; the server checks it
        monkeypatch.setenv("FAKE_TEACHER_KEY", SECRET)
        fake_server.api_key = SECRET
        fake_server.queue_faults(["500", "429"])  # failed attempts are recorded too
        # 2. a header under a harmless name that passes validation, carrying the key by mistake
        leaky = make_cfg(fake_server, name="leaky", extra={"extra_headers": {"X-Debug": SECRET}})
        good = make_cfg(fake_server, name="good")
        pool = TeacherPool([good, leaky], store, budget_usd=1.0)
        batch = [TeacherRequest(t, [{"role": "user", "content": f"q{i}"}], template="rationale")
                 for t in ("good", "leaky") for i in range(3)]
        assert all(r.status == "ok" for r in asyncio.run(pool.run(batch)))
        assert f"Bearer {SECRET}" in fake_server.auth_headers  # the key was really used

        # 3. settings that skipped validation (built in code): every credential field at once.
        # extra.api_key collides with the client's own argument: a TypeError, which must not
        # be retried as if it were transient, nor stored.
        raw = dict(good.model_dump(), name="raw", max_retries=5,
                   extra={"api_key": SECRET, "extra_headers": {"Authorization": f"Bearer {SECRET}"}})
        bypass = TeacherConfig.model_construct(**raw)
        before = fake_server.requests
        with pytest.raises(TeacherBadRequest) as ei:
            asyncio.run(TeacherClient(bypass, store).complete([{"role": "user", "content": "q"}]))
        assert fake_server.requests == before  # no request, no retry
        assert "extra" in str(ei.value) and SECRET not in str(ei.value)
        (attempts,) = store.conn.execute("SELECT attempts FROM teacher_calls WHERE teacher = 'raw'").fetchone()
        assert attempts == 1

        # 4. the run's config, stored the way loop/core/orchestrator.py _open_run stores it
        config = {"teachers": [good.model_dump(mode="json"), leaky.model_dump(mode="json"), raw],
                  "generation": {"vllm_base_url": f"http://user:{SECRET}@127.0.0.1:1/v1"}}
        store.create_run("main", redact(config))

        requests = [json.loads(r[0]) for r in store.conn.execute("SELECT request FROM teacher_calls")]
        assert {r["params"].get("extra_headers", {}).get("X-Debug") for r in requests} >= {"[redacted]"}
        assert _grep(ws, SECRET) == []  # with the WAL still holding the writes
    finally:
        root.removeHandler(log)
        root.setLevel(old_level)
        log.close()
    store.close()
    assert _grep(ws, SECRET) == []  # and after the checkpoint on close
    assert (ws / "distillery.db").stat().st_size > 0


def test_prices_are_not_credentials_and_a_redacted_config_still_validates():
    """input_cost_per_token holds the word "token": masking it broke every replay of a priced run."""
    from loop.config.schema import Config

    cfg = Config.model_validate({"teachers": [{"name": "t", "model": "openai/x", "api_base": "http://127.0.0.1:1/v1",
                                                "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}]})
    dumped = cfg.model_dump(mode="json")
    assert redact(dumped) == dumped
    assert Config.model_validate(redact(dumped)) == cfg
