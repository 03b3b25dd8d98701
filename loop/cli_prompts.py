"""CLI commands: prompts (registered on the root app by loop.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
