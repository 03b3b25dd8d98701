"""Fixtures of the store tests: a fresh database per test, in tmp_path."""

import pytest

from store import Store


@pytest.fixture
def store(tmp_path):
    st = Store.open(tmp_path / "distillery.db")
    yield st
    st.close()


def _add_pool(st, n, split="pool"):
    """n examples with ids e0..e{n-1}; returns the ids."""
    rows = [{"id": f"e{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(n)]
    st.add_examples(rows, split)
    return [r["id"] for r in rows]


@pytest.fixture
def add_pool():
    return _add_pool
