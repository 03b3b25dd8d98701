"""Experiment trackers: `[track] report_to = ["tensorboard", "mlflow", "wandb"]`.

What is logged, by the orchestrator only (the one process of the loop):

- per optimizer step, on a run-wide step axis (the train steps of the earlier
  iterations + this step, so it never goes back): `train/loss` and each term
  (`train/loss_sft`, `_kd`, `_contrastive`, `_feature`), `train/lr`,
  `train/tokens_per_s`, `train/grad_norm`, ... and `train/iteration`.  Both
  training paths report through `on_step` (loop/core/steps/train.py `_TrainDisplay`: in
  this process directly, from a `[train] processes > 1` job through its
  streamed records), so both log the same;
- per iteration, with k as the step: every number of `Orchestrator.metrics(k)`
  as `iteration/<name>` (dev/pool accuracy, errors, refinements asked and
  accepted, `iteration/rejected/<reason>`, teacher calls and spend,
  `iteration/seconds/<step>`, ...) and of the teachers' calls
  (`iteration/teachers/<name>/<stat>`, `iteration/teacher_prompt_tokens`, ...);
- once per tracker run: the run's resolved config (credentials redacted),
  flattened to dotted keys, as hyper-parameters.

Each library's own API is used, not accelerate's trackers: the job path calls
`on_step` from the thread that reads the job's output, and accelerate's
MLflowTracker logs through MLflow's fluent API, whose active run is
thread-local (from that thread it would start a second MLflow run); its
TensorBoardTracker writes the hyper-parameters into a new timestamped sub-run
at every call; neither can reopen the same tracker run when `distillery run`
resumes.  SummaryWriter, MlflowClient (explicit run id, no global state) and a
wandb Run object have none of these problems.

Where it goes (`[track] dir`, default WS/track, shared by the workspace's runs
so replays compare side by side): `tensorboard/<run>/` event files, `mlflow.db`
(MLflow's SQLite store: recent MLflow refuses its `file:` store unless told
otherwise; $MLFLOW_TRACKING_URI overrides it), `wandb/` (W&B's
files; offline with `wandb_mode = "offline"` or $WANDB_MODE=offline), and
`state/<run>.json`, the ledger.

The ledger holds, per tracker, its run id (resumed, not duplicated), the last
global step and the iterations it logged.  A value is marked in the ledger
before it is sent, so a resumed run never logs a step twice: after a crash the
trainer repeats the steps since its last checkpoint, and those keep the values
first logged.  An iteration committed but not logged when the process died is
logged when the run resumes.  A tracker that fails at run time is switched off
with a warning: an observer must not stop a long run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from loop.errors import UserError

log = logging.getLogger(__name__)

# tracker -> (modules it imports, what to pip install); a table, so the check is testable on a missing module
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), "tensorboard"),
    # the light MLflow client plus what its local SQLite store needs (the full `mlflow` package has all three)
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow-skinny sqlalchemy alembic"),
    "wandb": (("wandb",), "wandb"),
}
LOSS_TERMS = ("sft", "kd", "contrastive", "feature")


class TrackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    dir: str | None = None  # default: WS/track; a relative path is relative to the workspace
    project: str = Field("distillery", min_length=1)  # the MLflow experiment and the W&B project
    # None: W&B's own choice ($WANDB_MODE, else online, which needs `wandb login`)
    wandb_mode: Literal["online", "offline", "disabled"] | None = None

    def root(self, ws: Path) -> Path:
        p = Path(self.dir).expanduser() if self.dir else Path("track")
        return p if p.is_absolute() else Path(ws) / p


def check_trackers(track: TrackConfig, requirements: dict = REQUIREMENTS) -> None:
    """Preflight: each tracker's packages are importable (found, not imported:
    importing wandb or mlflow costs a second).  UserError (exit 2) with the fix."""
    for name in dict.fromkeys(track.report_to):
        modules, pip = requirements[name]
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f"track.report_to = {track.report_to!r}: {name!r} needs the Python package(s) {', '.join(missing)}, "
                f"not installed here; install them with `pip install {pip}` (or `pip install \"distillery[track]\"`), "
                f"or remove {name!r} from track.report_to"
            )


# --------------------------------------------------------------------------- values


def _safe(name: str) -> str:  # a run name as a directory name, as loop/core/orchestrator.py writes runs/<run>
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "run"


def _key(name: str) -> str:
    # the characters every tracker accepts in a metric name (MLflow is the strictest)
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def step_values(record: dict, k: int) -> dict[str, float]:
    """One optimizer step's record (student/train.py) as `train/...` scalars."""
    out = {"train/iteration": float(k)}
    for key, v in record.items():
        if key == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        name = "loss" if key == "total" else f"loss_{key}" if key in LOSS_TERMS else key
        out[_key(f"train/{name}")] = float(v)
    return out


def iteration_values(metrics: dict, teachers: dict | None = None) -> dict[str, float]:
    """Every number in an iteration's metrics as `iteration/...` scalars:
    nested tables flattened with "/" (`rejected/<reason>`, `seconds/<step>`),
    lists counted (`fixed`, `broken`), text and missing values left out; and
    the teachers' calls (Store.teacher_call_stats: tokens, latency, cost) as
    `iteration/teachers/<name>/<stat>`, with the token totals over teachers."""
    out: dict[str, float] = {}

    def add(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for kk, vv in v.items():
                add(f"{prefix}/{kk}", vv)
        elif isinstance(v, (list, tuple)):
            out[_key(prefix)] = float(len(v))
        elif isinstance(v, (int, float)):  # bool included: 0/1
            out[_key(prefix)] = float(v)

    for key, v in metrics.items():
        add(f"iteration/{'seconds' if key == 'times' else key}", v)
    out["iteration/rejected_total"] = float(sum((metrics.get("rejected") or {}).values()))
    teachers = teachers or {}
    add("iteration/teachers", teachers)
    for stat in ("prompt_tokens", "completion_tokens"):
        out[f"iteration/teacher_{stat}"] = float(sum(s.get(stat) or 0 for s in teachers.values()))
    return out


def flat_config(doc: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """A config document as {dotted.key: scalar}: what every tracker takes as
    hyper-parameters.  Lists of tables are numbered (teachers.0.model); other
    lists and null become JSON text."""
    out: dict[str, str | int | float | bool] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flat_config(x, f"{key}.{i}."))
        elif isinstance(v, (str, int, float, bool)):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    return out


# --------------------------------------------------------------------------- backends
# Each: log(values, step, axis) with axis "train" (run-wide step) or "iteration" (k),
# hparams(flat), where() -> one line for the terminal, close(status: done | stopped | failed).


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, track: TrackConfig, root: Path, run_name: str, state: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = root / "tensorboard" / _safe(run_name)
        self.writer = SummaryWriter(str(self.dir))

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()  # a killed loop keeps what it logged

    def hparams(self, flat: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        # written into this run's own event file (SummaryWriter.add_hparams would open a
        # timestamped sub-run), with the metrics the HPARAMS tab should show beside them
        for summary in hparams(flat, {"iteration/dev_acc": 0.0, "iteration/best_dev_acc": 0.0}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def where(self) -> str:
        return f"tensorboard: {self.dir}; view with `tensorboard --logdir {self.dir.parent}`"

    def close(self, status: str) -> None:
        self.writer.close()


class _MLflow:
    name = "mlflow"
    _STATUS = {"done": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def __init__(self, track: TrackConfig, root: Path, run_name: str, state: dict):
        # the one-time creation of the SQLite tables is logged at INFO: not news to the user
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        if state.get("uri") != self.uri:  # another store has none of what the ledger says was logged
            state.clear()
            state["uri"] = self.uri
        self.client = MlflowClient(tracking_uri=self.uri)
        if state.get("id") and not self._exists(state["id"]):  # removed from the store: start a new one
            state.clear()
            state["uri"] = self.uri
        if state.get("id"):
            self.run_id = state["id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            exp = self.client.get_experiment_by_name(track.project)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(
                track.project, artifact_location=(root / "mlflow-artifacts").resolve().as_uri())
            self.run_id = self.client.create_run(exp_id, run_name=run_name, tags={"distillery.run": run_name}).info.run_id
            state["id"] = self.run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def hparams(self, flat: dict) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        # MLflow refuses longer values; a config value that long is a prompt-sized string, cut rather than lost
        params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flat.items()]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def where(self) -> str:
        return f"mlflow: run {self.run_id}; view with `mlflow ui --backend-store-uri {self.uri}`"

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=self._STATUS[status])


class _WandB:
    name = "wandb"

    def __init__(self, track: TrackConfig, root: Path, run_name: str, state: dict):
        import wandb

        state.setdefault("id", secrets.token_hex(4))
        extra = {"mode": track.wandb_mode} if track.wandb_mode else {}
        # console="off": W&B must not wrap the terminal Distillery draws on; silent: no "wandb:" lines
        # (its terminal messages follow the process-wide settings of wandb.setup, not the run's)
        settings = wandb.Settings(console="off", silent=True)
        wandb.setup(settings)
        self.run = wandb.init(project=track.project, name=run_name, id=state["id"], resume="allow", dir=str(root),
                              settings=settings, **extra)
        # two x axes: W&B's own step must only grow, and iterations interleave with steps
        self.run.define_metric("train/global_step")
        self.run.define_metric("train/*", step_metric="train/global_step")
        self.run.define_metric("iteration/k")
        self.run.define_metric("iteration/*", step_metric="iteration/k")

    def log(self, values: dict[str, float], step: int, axis: str) -> None:
        axis_key = "train/global_step" if axis == "train" else "iteration/k"
        self.run.log({**values, axis_key: step})

    def hparams(self, flat: dict) -> None:
        self.run.config.update(flat, allow_val_change=True)

    def where(self) -> str:
        if self.run.settings.mode == "offline":
            return f"wandb: offline run {self.run.id}; upload with `wandb sync {Path(self.run.dir).parent}`"
        return f"wandb: {self.run.url or self.run.id}"

    def close(self, status: str) -> None:
        self.run.finish(exit_code=1 if status == "failed" else 0)


_BACKENDS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _WandB}
_START_HINT = {
    "tensorboard": "check that the directory can be written",
    "mlflow": "check $MLFLOW_TRACKING_URI (unset: a SQLite file in the track directory)",
    "wandb": "run `wandb login`, or set wandb_mode = \"offline\" in [track]",
}


# --------------------------------------------------------------------------- the run's trackers


class Tracking:
    """The trackers of one run.  Calls are serialized: a training job's steps
    arrive on its reader thread while the main thread may log too."""

    def __init__(self, backends: list | None = None, ledger: Path | None = None, states: dict | None = None,
                 warn: Callable[[str], None] | None = None):
        self.backends = list(backends or [])
        self.ledger = ledger
        self.states = states if states is not None else {}
        self.warn = warn or log.warning
        self._lock = threading.Lock()

    def step_logger(self, offset: int, k: int) -> Callable[[dict], None]:
        """on_step's hook for iteration k: `offset` = train steps of the earlier iterations."""
        return lambda record: self._log("train", offset + int(record["step"]), step_values(record, k))

    def log_iteration(self, k: int, metrics: dict, teachers: dict | None = None) -> None:
        """teachers: Store.teacher_call_stats(run, k)."""
        self._log("iteration", k, iteration_values(metrics, teachers))

    def has_iteration(self, k: int) -> bool:
        return all(k in self.states[b.name].get("iterations", []) for b in self.backends)

    def hparams(self, flat: dict) -> None:
        with self._lock:
            todo = [b for b in self.backends if not self.states[b.name].get("hparams")]
            for b in todo:
                self.states[b.name]["hparams"] = True
            if self._save():
                for b in todo:
                    self._call(b, b.hparams, flat)

    def _log(self, axis: str, step: int, values: dict[str, float]) -> None:
        with self._lock:
            todo = []
            for b in self.backends:
                st = self.states[b.name]
                if axis == "train":
                    if step <= st.get("step", 0):
                        continue  # logged before a crash; the first values stand
                    st["step"] = step
                else:
                    done = st.setdefault("iterations", [])
                    if step in done:
                        continue
                    done.append(step)
                todo.append(b)
            if not todo:
                return
            if self._save():  # marked before sending: at most once, even if killed in between
                for b in todo:
                    self._call(b, b.log, values, step, axis)

    def _call(self, b, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any failure of a tracker library
            self.backends.remove(b)
            self.warn(f"track: {b.name} failed ({type(e).__name__}: {e}); it logs nothing more in this run")

    def _save(self) -> bool:
        if self.ledger is None:
            return True
        tmp = self.ledger.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.states, indent=1, sort_keys=True))
            os.replace(tmp, self.ledger)
            return True
        except OSError as e:
            # without the ledger a resumed run would log steps twice; and this may run on a
            # training job's reader thread, which must not die
            names = ", ".join(b.name for b in self.backends)
            self.backends = []
            self.warn(f"track: cannot write {self.ledger} ({e}); {names} log nothing more in this run")
            return False

    def where(self) -> list[str]:
        return [b.where() for b in self.backends]

    def close(self, status: str) -> None:
        """status: done | stopped | failed.  Idempotent."""
        with self._lock:
            backends, self.backends = self.backends, []
            for b in backends:
                try:
                    b.close(status)
                except Exception as e:  # noqa: BLE001 - closing must not hide the run's own outcome
                    self.warn(f"track: closing {b.name} failed ({type(e).__name__}: {e})")


def start(track: TrackConfig, root: Path, run_name: str, warn: Callable[[str], None] | None = None) -> Tracking:
    """Open (or reopen, from the ledger) the trackers of `run_name` under `root`."""
    if not track.report_to:
        return Tracking()
    ledger = root / "state" / f"{_safe(run_name)}.json"
    try:
        ledger.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"track.dir: cannot create {ledger.parent} ({e}); set [track] dir to a writable directory") from None
    try:
        states = json.loads(ledger.read_text())
    except FileNotFoundError:
        states = {}
    except ValueError as e:  # written atomically, so only a hand edit breaks it
        raise UserError(f"{ledger}: not readable as JSON ({e}); fix it, or delete it to start new tracker runs") from None
    backends = []
    for name in dict.fromkeys(track.report_to):
        try:
            backends.append(_BACKENDS[name](track, root, run_name, states.setdefault(name, {})))
        except Exception as e:  # noqa: BLE001 - the library's own error, shown with the fix
            for b in backends:
                b.close("failed")
            first = (str(e).splitlines() or [""])[0][:300]
            raise UserError(f"track.report_to: cannot start {name} ({type(e).__name__}: {first}); "
                            f"{_START_HINT[name]}") from None
    t = Tracking(backends, ledger, states, warn)
    t._save()
    return t


def steps_before(o, k: int) -> int:
    """Optimizer steps of iterations < k of o's run (o: anything with .store
    and .run_id, e.g. a StepContext; a replay's inherited ones
    included, so its axis continues its parent's): the offset of k's steps."""
    total = 0
    for kk in range(k):
        try:
            it = o.store.get_iteration(o.run_id, kk)
        except LookupError:
            break
        total += (it.get("metrics") or {}).get("train_steps") or 0
    return total


def train_logger(o, k: int) -> Callable[[dict], None]:
    """The per-step hook of o.tracker for iteration k's training (o: the
    train step's StepContext).  Made on
    the main thread (it reads the store); called from any."""
    if not o.tracker.backends:
        return lambda record: None
    return o.tracker.step_logger(steps_before(o, k), k)


def open_tracking(o) -> Tracking:
    """The orchestrator's trackers, after its run is opened: hyper-parameters
    once, then the iterations committed but not logged yet (a crash between
    the two, or a tracker added to a run)."""
    track = o.cfg.track
    if not track.report_to:
        return Tracking()
    from teachers import redact

    from rich.markup import escape

    t = start(track, track.root(o.ws), o.run_name, warn=lambda msg: o.console.print(f"[yellow]{escape(msg)}[/]"))
    t.hparams(flat_config({"run": o.run_name, **redact(o.cfg.model_dump(mode="json"))}))
    for it in o.store.list_iterations(o.run_id):
        if it["status"] == "done" and it["k"] >= o.first_k() and not t.has_iteration(it["k"]):
            t.log_iteration(it["k"], it["metrics"] or {}, o.store.teacher_call_stats(o.run_id, it["k"]))
    if not o.quiet:
        for line in t.where():
            o.console.print(f"[dim]tracking {escape(line)}[/]")
    return t
