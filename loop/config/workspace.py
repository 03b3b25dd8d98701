"""A workspace is a folder with distillery.toml, prompts/ and distillery.db.

`find_workspace` resolves it from -w, then $DISTILLERY_WORKSPACE, then the
current directory and its parents (like git); `init_workspace` creates one
from a preset; `load_workspace_config` and `open_store` read it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from store import DB_NAME, EmptyDatabase, Store

from loop.config.schema import Config, load_config
from loop.errors import UserError
from loop.config.presets import PRESETS, preset_toml

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


def open_store(ws: Path, *, write: bool = False) -> Store:
    """The workspace database (migrations applied).  Opened read-only where it
    cannot be written, so inspection works on a read-only workspace; `write`
    (a command that will write) refuses that at once instead, before any work
    is done.  Refuses a workspace whose database is missing or empty rather
    than silently creating a new one in its place."""
    db = ws / DB_NAME
    if not db.is_file():
        raise WorkspaceNotFound(f"{db} is missing. Restore it from a backup if you have one; or start an empty "
                                f"database with {_reinit_advice(ws, empty=False)}")
    try:
        return Store.open(db, readonly=False if write else None)
    except EmptyDatabase as e:
        raise UserError(f"{e}. To start a new one: {_reinit_advice(ws, empty=True)}") from None


def _reinit_advice(ws: Path, *, empty: bool) -> str:
    """What `init --force` does to this workspace, said exactly, since the
    user is about to run it on the word of an error message."""
    try:
        preset = load_workspace_config(ws).preset
    except UserError:
        preset = "demo"
    moved = f" (the empty one is moved to {DB_NAME}.bak-<date>-<time>)" if empty else ""
    return (f"`distillery init {ws} --force --preset {preset}`: it creates a new {DB_NAME}{moved}, rewrites "
            f"{CONFIG_NAME} from the {preset} preset, first copying yours (when it differs) to "
            f"{CONFIG_NAME}.bak-<date>-<time> (copy your settings back from it), and keeps prompts/")


def backup(path: Path, *, move: bool = False) -> Path:
    """Keep `path` as PATH.bak-YYYYmmdd-HHMMSS (a free name: -1, -2... on a
    clash) before it is replaced; copied (metadata too), or renamed with
    `move`, which takes SQLite's -wal/-shm files beside a database along."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.bak-{stamp}")
    n = 0
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.bak-{stamp}-{n}")
    if move:
        os.replace(path, dest)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.replace(side, dest.with_name(dest.name + suffix))
    else:
        shutil.copy2(path, dest)
    return dest


def init_workspace(directory: str | Path, preset: str = "demo", *, force: bool = False) -> dict:
    """Create a workspace: distillery.toml from the preset, the default
    templates in prompts/, distillery.db with the schema.  Returns what was done.

    With force, an existing workspace's config is rewritten, its previous
    version copied to distillery.toml.bak-<date>-<time> first; templates the
    user edited and the database (runs, data) are kept, missing ones are
    created, and an empty database file is moved aside the same way and
    replaced.  A database that cannot be used (damaged, newer, read-only)
    stops it before anything is written."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; use --preset {' | '.join(PRESETS)}")
    ws = Path(directory).expanduser()
    if ws.exists() and not ws.is_dir():
        raise UserError(f"{ws} exists and is not a directory; choose another DIR")
    cfg_path, db_path = ws / CONFIG_NAME, ws / DB_NAME
    existing = [p.name for p in (cfg_path, db_path) if p.exists()]
    if existing and not force:
        raise WorkspaceExists(
            f"{ws} is already a workspace ({', '.join(existing)} exist); pass --force to rewrite its config from "
            f"the preset (yours is copied to {CONFIG_NAME}.bak-<date>-<time> first; your edited templates and the "
            "database are kept), or choose another DIR"
        )
    text = preset_toml(preset)
    ws.mkdir(parents=True, exist_ok=True)
    backups: list[dict] = []
    kept_database = db_path.exists()
    try:
        Store.open(db_path, readonly=False).close()  # creates the file and applies migrations
    except EmptyDatabase:
        backups.append({"file": str(db_path), "backup": str(backup(db_path, move=True)), "why": "empty"})
        Store.open(db_path, readonly=False).close()
        kept_database = False
    prompts_dir = ws / PROMPTS_DIR
    prompts_dir.mkdir(exist_ok=True)
    import prompts  # lazily: the prompts package is only needed here

    prompts.copy_defaults(prompts_dir)  # never overwrites a template
    if cfg_path.exists() and cfg_path.read_text(encoding="utf-8") != text:
        backups.append({"file": str(cfg_path), "backup": str(backup(cfg_path)), "why": "replaced"})
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
        "kept_database": kept_database,
        "backups": backups,
    }
