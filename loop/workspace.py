"""A workspace is a folder with distillery.toml, prompts/ and distillery.db.

`find_workspace` resolves it from -w, then $DISTILLERY_WORKSPACE, then the
current directory and its parents (like git); `init_workspace` creates one
from a preset; `load_workspace_config` and `open_store` read it.
"""

from __future__ import annotations

import os
from pathlib import Path

from store import DB_NAME, Store

from .config import Config, load_config
from .errors import UserError
from .presets import PRESETS, preset_toml

CONFIG_NAME = "distillery.toml"
PROMPTS_DIR = "prompts"
ENV_VAR = "DISTILLERY_WORKSPACE"


class WorkspaceNotFound(UserError):
    pass


class WorkspaceExists(UserError):
    pass


def find_workspace(explicit: str | Path | None = None) -> Path:
    """The workspace folder: `explicit` (-w), else $DISTILLERY_WORKSPACE, else
    the nearest folder upwards from the current directory holding distillery.toml."""
    if explicit is not None or os.environ.get(ENV_VAR):
        where = Path(explicit if explicit is not None else os.environ[ENV_VAR]).expanduser()
        origin = "-w" if explicit is not None else f"${ENV_VAR}"
        if not (where / CONFIG_NAME).is_file():
            raise WorkspaceNotFound(
                f"{where} ({origin}) is not a Distillery workspace (no {CONFIG_NAME}); "
                f"create one with `distillery init {where}` or point {origin} at an existing workspace"
            )
        return where.resolve()
    cwd = Path.cwd()
    for d in (cwd, *cwd.parents):
        if (d / CONFIG_NAME).is_file():
            return d
    raise WorkspaceNotFound(
        f"no {CONFIG_NAME} in {cwd} or its parents; run `distillery init` here, "
        f"pass -w DIR, or set ${ENV_VAR}"
    )


def load_workspace_config(ws: Path) -> Config:
    return load_config(ws / CONFIG_NAME)


def open_store(ws: Path) -> Store:
    """The workspace database (migrations applied).  Refuses a workspace whose
    database is missing rather than silently creating an empty one."""
    db = ws / DB_NAME
    if not db.is_file():
        raise WorkspaceNotFound(
            f"{db} is missing; create an empty one with `distillery init {ws} --force` (keeps distillery.toml and prompts/)"
        )
    return Store.open(db)


def init_workspace(directory: str | Path, preset: str = "demo", *, force: bool = False) -> dict:
    """Create a workspace: distillery.toml from the preset, the default
    templates in prompts/, distillery.db with the schema.  Returns what was done.
    With force, an existing workspace's config is rewritten; templates the user
    edited and the database (runs, data) are kept, missing ones are created."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; use --preset {' | '.join(PRESETS)}")
    ws = Path(directory).expanduser()
    if ws.exists() and not ws.is_dir():
        raise UserError(f"{ws} exists and is not a directory; choose another DIR")
    cfg_path, db_path = ws / CONFIG_NAME, ws / DB_NAME
    existing = [p.name for p in (cfg_path, db_path) if p.exists()]
    if existing and not force:
        raise WorkspaceExists(
            f"{ws} is already a workspace ({', '.join(existing)} exist); "
            "pass --force to rewrite its config (your edited templates and the database are kept), or choose another DIR"
        )
    text = preset_toml(preset)
    ws.mkdir(parents=True, exist_ok=True)
    prompts_dir = ws / PROMPTS_DIR
    prompts_dir.mkdir(exist_ok=True)
    import prompts  # lazily: the prompts package is only needed here

    prompts.copy_defaults(prompts_dir)
    with Store.open(db_path):
        pass  # creates the file and applies migrations
    tmp = cfg_path.with_suffix(".toml.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, cfg_path)  # the config appears whole or not at all
    load_config(cfg_path)  # a preset that does not validate is our bug: fail loudly
    return {
        "workspace": str(ws.resolve()),
        "preset": preset,
        "config": str(cfg_path),
        "prompts": sorted(p.name for p in prompts_dir.iterdir()),
        "database": str(db_path),
        "kept_database": DB_NAME in existing,
    }
