"""Options and helpers shared by every CLI command module."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

WorkspaceOpt = Annotated[
    Path,
    typer.Option("-w", "--workspace", help="Workspace directory (default: current directory).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
