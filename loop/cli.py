"""`distillery` entry point: builds the root Typer app from the command modules
and maps our error hierarchy onto exit codes (0 ok, 2 bad input, 1 failure)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import click
import typer

from . import cli_prompts, cli_run, cli_store
from store.errors import StoreError

from .errors import DistilleryError

app = typer.Typer(
    name="distillery",
    help="Agentic teacher-student distillation loop, versioned in SQLite.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _module in (cli_store, cli_prompts, cli_run):
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
    except DistilleryError as e:
        sys.stderr.write(f"Error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return 130
    code = rv if isinstance(rv, int) else 0
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
