"""Suite-wide settings: no network at import, small thread pools, isolated state.

Each package's tests live in their own folder with their own conftest.py."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty workspace directory; DISTILLERY_WORKSPACE points at it so no test
    touches the user's real workspace."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("DISTILLERY_WORKSPACE", str(ws))
    return ws
