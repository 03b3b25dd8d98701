"""Fixtures for the teacher tests: a real SQLite store in tmp, the fake
OpenAI-compatible server, and teacher configs with fast retries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from store.db import Store  # noqa: E402
from teachers.config import TeacherConfig  # noqa: E402
from tests.fakeserver import fake_server  # noqa: E402,F401  (fixture)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "distillery.db")
    yield s
    s.close()


@pytest.fixture
def make_cfg(monkeypatch):
    """TeacherConfig for the fake server with millisecond backoff."""
    monkeypatch.setenv("FAKE_TEACHER_KEY", "x")

    def make(server, **kw) -> TeacherConfig:
        base = dict(name="fake", model="openai/fake", api_base=server.base_url, api_key_env="FAKE_TEACHER_KEY",
                    temperature=0.0, max_tokens=64, timeout_s=2.0, max_retries=4,
                    backoff_initial_s=0.001, backoff_max_s=0.01, retry_after_max_s=0.2, max_concurrency=8)
        base.update(kw)
        return TeacherConfig(**base)

    return make
