"""`distillery run` prints Distillery's own display only: the libraries'
warnings and progress bars from loading the student are off (student/model.py
`_quiet_libraries`), and `--verbose` lets them through.  The trainer's own
bar ("train: ... step/s") stays."""

from __future__ import annotations

import re
import warnings

import pytest

from tests.loop.helpers import cli

# a warning class name as `warnings` prints it, or the source line it shows
LIBRARY_WARNING = re.compile(r"\b[A-Z]\w*Warning\b|warnings\.warn\(")
# a tqdm rate of a bar other than ours: ours counts steps ("step/s")
LIBRARY_BAR = re.compile(r"\d(it/s|s/it)\b|\bit/s\]")


def test_run_prints_no_library_warnings_or_bars(ws):
    # with the hub's bars switched off by the user, turning transformers' back on after loading warns
    r = cli("run", "-w", str(ws), "--iterations", "1", env_extra={"HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    both = r.stdout + r.stderr
    assert not LIBRARY_WARNING.search(both), both
    assert not LIBRARY_BAR.search(both), both
    assert "step/s" in r.stderr  # the trainer's bar is ours: kept
    assert "iteration 0" in r.stdout


def test_verbose_lets_the_library_warnings_through(ws):
    # peft asks transformers' deprecated `is_gradient_checkpointing` when it wraps
    # the model (the versions in requirements.lock), even for the tiny student
    r = cli("run", "-w", str(ws), "--iterations", "1", "--verbose")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FutureWarning" in r.stderr and "is_gradient_checkpointing" in r.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_loading_catches_plain_tqdm_bars_and_warnings(verbose, monkeypatch, capsys):
    """What GGUF loading does: a plain tqdm bar on sys.stderr, which
    transformers' progress-bar switch does not reach, and a FutureWarning."""
    from tqdm.auto import tqdm

    from student.model import VERBOSE_ENV, _quiet_libraries

    monkeypatch.setenv(VERBOSE_ENV, "1" if verbose else "0")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with _quiet_libraries(stderr=True):
            for _ in tqdm(range(3), desc="Converting tensors", mininterval=0):
                pass
            warnings.warn("deprecated, going away", FutureWarning)
    err = capsys.readouterr().err
    assert ("Converting tensors" in err) is verbose
    assert any(w.category is FutureWarning for w in seen) is verbose
