"""Fault injection for the crash tests.

`crash_point(name)` is called at named points of an iteration ("step:k:before",
"step:k:inside" -- within the step's commit transaction -- and "step:k:after").
When $DISTILLERY_CRASH_AT lists the point (comma-separated), the process dies
there: `die()` sends itself SIGKILL, so nothing after it runs, no `finally`
included.  Costs one environment lookup when unset.

Tests that need many crashes inside one process replace `die` (e.g. with a
function raising `SimulatedCrash`): a BaseException is not caught by any
`except Exception`, so it unwinds to the test and rolls back the open
transaction exactly as a kill would.  It does run `finally` blocks, which a
kill does not, so the real SIGKILL is still what the subprocess tests use."""

from __future__ import annotations

import os
import signal

ENV_VAR = "DISTILLERY_CRASH_AT"


class SimulatedCrash(BaseException):
    """Raised by a test's replacement for `die`; never by production code."""


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


die = _sigkill  # replaced by in-process crash tests


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV_VAR)
    if spec and name in spec.split(","):
        die()
