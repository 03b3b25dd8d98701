"""teachers/provider.py: the one LiteLLM import, the one API-key resolution
(client, Router, batch path and `distillery teachers check` alike), and the
provider check the loop's preflight asks for.  No request is made."""

from __future__ import annotations

import asyncio

import pytest

from teachers import TeacherAuthError, TeacherConfig
from teachers.budget import estimate_prompt_tokens
from teachers.checks import check_teachers
from teachers.client import TeacherClient
from teachers.provider import LOCAL_DUMMY_KEY, endpoint_key, import_litellm, provider_problem


def test_endpoint_key_reads_the_named_variable(monkeypatch):
    monkeypatch.setenv("PROVIDER_TEST_KEY", "sk-123")
    assert endpoint_key("t", "PROVIDER_TEST_KEY", None) == "sk-123"
    assert endpoint_key("t", "PROVIDER_TEST_KEY", "http://127.0.0.1:1/v1") == "sk-123"


@pytest.mark.parametrize("value", [None, ""])
def test_endpoint_key_unset_or_empty_is_an_auth_error(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("PROVIDER_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("PROVIDER_TEST_KEY", value)
    with pytest.raises(TeacherAuthError) as e:
        endpoint_key("t", "PROVIDER_TEST_KEY", None)
    assert str(e.value) == ("teacher 't': environment variable PROVIDER_TEST_KEY is not set; "
                            "export PROVIDER_TEST_KEY=<your key> (api_key_env in distillery.toml names it)")
    assert e.value.teacher == "t"


def test_endpoint_key_without_a_variable():
    # a local server gets a dummy key (a real OPENAI_API_KEY must not leak to it);
    # a hosted provider gets None, so LiteLLM reads the provider's standard variable
    assert endpoint_key("t", None, "http://127.0.0.1:1/v1") == LOCAL_DUMMY_KEY
    assert endpoint_key("t", None, None) is None


def test_the_client_resolves_keys_the_same_way(monkeypatch):
    monkeypatch.delenv("PROVIDER_TEST_KEY", raising=False)
    cfg = TeacherConfig(name="t", model="openai/x", api_key_env="PROVIDER_TEST_KEY")
    with pytest.raises(TeacherAuthError) as from_client:
        TeacherClient(cfg, store=None).api_key()
    with pytest.raises(TeacherAuthError) as direct:
        endpoint_key("t", "PROVIDER_TEST_KEY", None)
    assert str(from_client.value) == str(direct.value)


def test_teachers_check_reports_a_missing_key_as_the_client_would(monkeypatch):
    monkeypatch.delenv("PROVIDER_TEST_KEY", raising=False)
    cfgs = [TeacherConfig(name="hosted", model="openai/gpt-4o-mini", api_key_env="PROVIDER_TEST_KEY"),
            TeacherConfig(name="self", model="self")]
    rows = {r["name"]: r for r in asyncio.run(check_teachers(cfgs))}
    with pytest.raises(TeacherAuthError) as e:
        endpoint_key("hosted", "PROVIDER_TEST_KEY", None)
    assert rows["hosted"]["reachable"] is False and rows["hosted"]["fatal"] is True
    assert rows["hosted"]["note"] == str(e.value)
    assert rows["self"]["reachable"] is None and not rows["self"]["fatal"]


def test_import_litellm_is_set_up_once():
    litellm = import_litellm()
    assert import_litellm() is litellm
    assert litellm.suppress_debug_info is True and litellm.telemetry is False


def test_provider_problem():
    assert provider_problem("openai/gpt-4o-mini") is None
    assert provider_problem("openai/anything", "http://127.0.0.1:1/v1") is None
    why = provider_problem("nosuchprovider/x")
    assert why and "\n" not in why and len(why) <= 160


def test_request_type_is_shared_not_imported_in_a_circle():
    import teachers
    import teachers.client
    import teachers.pool

    assert teachers.TeacherRequest is teachers.pool.TeacherRequest is teachers.client.TeacherRequest


def test_estimate_prompt_tokens_is_three_characters_a_token():
    # the docstring's rule: chars // 3, plus 4 per message, plus 2
    assert estimate_prompt_tokens([{"content": "x" * 30}]) == 10 + 4 + 2
    assert estimate_prompt_tokens([{"content": "x" * 30}, {"content": None}]) == 10 + 8 + 2
