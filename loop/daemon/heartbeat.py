"""The run's live status: one small JSON file in the workspace, rewritten
atomically, that `distillery status` reads without touching the writer.

Why a file and not the database: the heartbeat is written every few seconds
while long steps run; putting it in SQLite would take the write lock that
`data add` and the inspection commands also want, for no lasting value.  What
lasts (step status, metrics, events) goes to the database as usual.

Layout of <workspace>/.distillery/:
    run.lock     fcntl lock held by the one writer (see loop/daemon/service.py)
    run.pid      {"pid", "since", "run", "argv"} of the writer
    status.json  this file: run, iteration, step, progress, heartbeat, spend, last error
    run.log      output of a detached run
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATE_DIR = ".distillery"


def state_dir(ws: Path) -> Path:
    return Path(ws) / STATE_DIR


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class Heartbeat:
    """Holds the current status in memory and writes it to status.json on every
    change (at most `min_interval` apart) and from a background thread every
    `every` seconds, so a stuck step shows as an ageing heartbeat."""

    def __init__(self, ws: Path | None, every: float = 2.0, min_interval: float = 0.5) -> None:
        self.path = state_dir(ws) / "status.json" if ws is not None else None
        self.every = every
        self.min_interval = min_interval
        self.doc: dict[str, Any] = {"pid": os.getpid(), "started": utcnow(), "state": "starting"}
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        if self.path is None or self._thread is not None:
            return self
        self._write(force=True)
        self._thread = threading.Thread(target=self._beat, name="distillery-heartbeat", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def update(self, force: bool = False, **fields: Any) -> None:
        with self._lock:
            self.doc.update(fields)
        self._write(force=force)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._write(force=True)

    def _write(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last_write < self.min_interval:
            return
        with self._lock:
            self.doc["heartbeat"] = utcnow()
            self.doc["heartbeat_unix"] = time.time()
            doc = dict(self.doc)
            self._last_write = now
            try:
                write_json_atomic(self.path, doc)
            except OSError:
                pass  # the status file is advisory; never fail a run over it
