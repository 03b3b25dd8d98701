"""Fixtures of the loop tests (helpers in tests/loop/helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakeserver import FakeOpenAIServer  # noqa: E402
from tests.loop.helpers import make_workspace, teacher_answer  # noqa: E402


@pytest.fixture
def teacher_server():
    with FakeOpenAIServer(answer=teacher_answer) as srv:
        yield srv


@pytest.fixture
def ws(tmp_path, teacher_server):
    return make_workspace(tmp_path / "ws", teacher_server.base_url)


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """One workspace whose run `main` finished its 3 iterations, shared by the
    tests that only read it or branch from it (saves re-running the loop).
    Yields (workspace, server)."""
    from tests.loop.helpers import run_inprocess

    with FakeOpenAIServer(answer=teacher_answer) as srv:
        ws = make_workspace(tmp_path_factory.mktemp("finished") / "ws", srv.base_url)
        assert run_inprocess(ws, "run") == 0
        yield ws, srv
