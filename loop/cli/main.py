"""`distillery` entry point: builds the root Typer app from the command modules
and maps our error hierarchy onto exit codes (0 ok, 2 bad input, 1 failure)."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import click
import typer

from loop.cli import prompts as cli_prompts
from loop.cli import run as cli_run
from loop.cli import teachers as cli_teachers
from loop.cli import views as cli_store
from store.errors import CorruptDatabase, DatabaseFault, StoreError

from loop.errors import DistilleryError

app = typer.Typer(
    name="distillery",
    help="Agentic teacher-student distillation loop, versioned in SQLite.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _module in (cli_store, cli_prompts, cli_teachers, cli_run):
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="distillery")
    except (click.exceptions.Abort, typer.Abort):
        sys.stderr.write("Aborted.\n")
        return 1
    except typer.Exit as e:
        return e.exit_code
    except (click.exceptions.ClickException, typer.TyperException) as e:
        # usage errors: Typer >= 0.29 raises them from its vendored click, whose
        # classes are not click's, so both families are caught here.
        e.show()
        return getattr(e, "exit_code", 2) or 2
    except StoreError as e:
        # a run/iteration/example that does not exist, an ambiguous id prefix...
        sys.stderr.write(f"Error: {e}\n")
        return 2
    except DatabaseFault as e:
        # the database file itself: damaged (exit 1, as for a failure at run
        # time: the fix is a recovery, not another command line), or
        # read-only, newer, empty, not ours (exit 2).  The message says how.
        sys.stderr.write(f"Error: {e}\n")
        return 1 if isinstance(e, CorruptDatabase) else 2
    except DistilleryError as e:
        sys.stderr.write(f"Error: {e}\n")
        return e.exit_code
    except OSError as e:
        # A file the command must write (the run lock, the heartbeat, an
        # adapter) in a workspace it may not write: the user's to fix.  Any
        # other OSError is unexpected and keeps its traceback.
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not e.filename:
            raise
        sys.stderr.write(f"Error: {_unwritable(Path(os.fsdecode(e.filename)), e.strerror)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return 130
    code = rv if isinstance(rv, int) else 0
    return code


def _unwritable(path: Path, why: str) -> str:
    """The message for a file the command may not touch (mostly: write in a
    read-only workspace).  Names the workspace it lies in (the nearest folder
    up with distillery.toml), since that is what to make writable."""
    from loop.config.workspace import CONFIG_NAME

    ws = next((d for d in path.absolute().parents if (d / CONFIG_NAME).is_file()), None)
    if ws is None:
        return f"cannot write {path}: {why}; make {path.parent} writable or choose another path"
    return (f"cannot write {path}: {why}; this command writes to the workspace {ws}: make it writable "
            f"(e.g. `chmod -R u+rwX {ws}`) or copy it to a writable place; commands that only read (runs, "
            "iterations, show, status, diff, trace, export, report) work on a read-only workspace")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
