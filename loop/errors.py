"""Errors the CLI turns into exit codes.

UserError (exit 2): bad usage, config, input or template; the message names the
file/line/key and says how to fix it.  Nothing has been written when it is raised.
RunFailure (exit 1): something failed at run time (a teacher down for good, a crash
in training); the run can be resumed.

Other packages raise their own documented errors (teachers.errors, store.errors);
`loop.cli.main.main` maps them onto these two classes at the boundary.
"""

from __future__ import annotations


class DistilleryError(Exception):
    exit_code = 1


class UserError(DistilleryError):
    exit_code = 2


class ConfigError(UserError):
    pass


class RunFailure(DistilleryError):
    exit_code = 1
