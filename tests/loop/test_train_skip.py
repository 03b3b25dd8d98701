"""When version k equals version k-1, `train` reuses k-1's adapter instead of
adding epochs on the same data — but only where that really repeats the
previous training (unit test of the decision; the orchestrator is a stand-in)."""

from types import SimpleNamespace

import pytest

from loop.config import Config
from loop.steps import _same_training_as_before


def orchestrator(changed, first_k=0, **cfg):
    conf = Config(preset="tiny")
    for dotted, value in cfg.items():
        section, key = dotted.split("__")
        setattr(getattr(conf, section), key, value)
    store = SimpleNamespace(changed_examples=lambda run_id, k: changed)
    return SimpleNamespace(cfg=conf, store=store, run_id=1, first_k=lambda: first_k)


def test_unchanged_version_after_own_training_is_skipped():
    assert _same_training_as_before(orchestrator([]), 2)


@pytest.mark.parametrize(
    "o, k",
    [
        (orchestrator(["ex1"]), 2),  # the dataset changed
        (orchestrator([]), 0),  # the first iteration always trains
        (orchestrator([], first_k=3), 3),  # a replay's first iteration has new settings
        (orchestrator([], train__warm_start=False), 2),  # cold start: k-1's adapter is not the start
        (orchestrator([], loss__on_policy=0.5), 2),  # on-policy batches sample new completions
    ],
)
def test_everything_else_trains(o, k):
    assert not _same_training_as_before(o, k)
