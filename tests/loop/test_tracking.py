"""[track] report_to: the tiny loop logs to real TensorBoard, MLflow and W&B
(offline) files, read back with TensorBoard's EventAccumulator, MlflowClient
and W&B's own protobuf records; no network, no mocks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from loop.errors import ConfigError, UserError
from loop.core.tracking import TrackConfig, check_trackers, start
from tests.loop.helpers import make_workspace, run_inprocess

# MLflow's own use of SQLAlchemy 2.1 (its SQLite store); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")



# --------------------------------------------------------------------------- readers


def tb_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tb_hparams(path: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(path))
    acc.Reload()
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hp = data.session_start_info.hparams
            return {k: (v.string_value if v.HasField("string_value") else v.number_value) for k, v in hp.items()}
    return {}


def wandb_records(ws: Path) -> tuple[list[dict], dict]:
    """History rows and config of every offline W&B run file in the workspace.

    wandb no longer ships a Python reader of its `.wandb` files; the format is
    LevelDB's log (a 7-byte file header, 32 KiB blocks of chunks with a 7-byte
    header: crc32, length, type) holding `wandb_internal_pb2.Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows, config = [], {}
    for f in sorted(ws.glob("track/wandb/offline-run-*/run-*.wandb")):
        data = f.read_bytes()
        assert data[:4] == b":W&B"
        pos, block, pending = 7, 32768, b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            chunk = data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind == 0:
                break
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):  # FULL or LAST: a whole record
                rec = pb.Record.FromString(pending)
                if rec.WhichOneof("record_type") == "history":
                    rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
                elif rec.WhichOneof("record_type") == "config":
                    config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
    return rows, config


# --------------------------------------------------------------------------- the loop


def _with_track(ws: Path, report_to: list[str]) -> None:
    with open(ws / "distillery.toml", "a") as f:
        f.write(f'\n[track]\nreport_to = {json.dumps(report_to)}\nwandb_mode = "offline"\n')


def _iterations(ws: Path) -> list[dict]:
    from store import Store

    st = Store.open(ws)
    try:
        return [it for it in st.list_iterations(st.get_run("main")["id"]) if it["status"] == "done"]
    finally:
        st.close()


def test_loop_logs_steps_iterations_and_config(tmp_path, teacher_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    ws = make_workspace(tmp_path / "ws", teacher_server.base_url, max_iterations=2)
    trackers = ["tensorboard", "mlflow", "wandb"]  # all three are in requirements-test.lock
    _with_track(ws, trackers)
    assert run_inprocess(ws, "run") == 0
    its = _iterations(ws)
    assert [it["k"] for it in its] == [0, 1]
    steps = [it["metrics"]["train_steps"] for it in its]
    total = sum(steps)
    assert all(s > 0 for s in steps)  # both iterations trained: the step axis spans them

    # TensorBoard: one scalar per optimizer step on the run-wide axis, one per iteration at k
    tb = tb_scalars(ws / "track" / "tensorboard" / "main")
    for tag in ("train/loss", "train/loss_sft", "train/loss_kd", "train/lr", "train/tokens_per_s", "train/grad_norm"):
        assert [s for s, _ in tb[tag]] == list(range(1, total + 1)), tag
    assert [v for _, v in tb["train/iteration"]] == [0.0] * steps[0] + [1.0] * steps[1]
    assert all(v > 0 for _, v in tb["train/tokens_per_s"])
    for it in its:
        m = it["metrics"]
        assert tb["iteration/dev_acc"][it["k"]] == (it["k"], pytest.approx(m["dev_acc"]))
        assert tb["iteration/spend_usd"][it["k"]][1] == pytest.approx(m["spend_usd"])
    assert [s for s, _ in tb["iteration/pool_errors"]] == [0, 1]
    assert tb["iteration/refinements_asked"][1][1] > 0  # the fake teacher is asked to refine at k = 1
    assert any(t.startswith("iteration/rejected/") for t in tb)  # its careless seeds are rejected, by reason
    assert tb["iteration/teacher_completion_tokens"][0][1] > 0
    assert "iteration/seconds/train" in tb
    hp = tb_hparams(ws / "track" / "tensorboard" / "main")
    assert hp["train.max_steps"] == 3 and hp["student.name"] == "tiny" and hp["teachers.0.model"] == "openai/fake"

    # MLflow: the SQLite store in the track directory
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'track' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillery")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "main" and run.info.status == "FINISHED"
    for key in ("train/loss", "train/lr", "train/tokens_per_s"):
        hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in hist] == list(range(1, total + 1)), key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")] == \
        pytest.approx([v for _, v in tb["train/loss"]])
    dev = sorted(client.get_metric_history(run.info.run_id, "iteration/dev_acc"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in dev] == [(it["k"], pytest.approx(it["metrics"]["dev_acc"])) for it in its]
    params = run.data.params
    assert params["train.max_steps"] == "3" and params["loop.max_iterations"] == "2" and params["run"] == "main"

    # W&B offline: its own run file, two x axes
    rows, config = wandb_records(ws)
    train_rows = [r for r in rows if "train/global_step" in r]
    assert [r["train/global_step"] for r in train_rows] == list(range(1, total + 1))
    assert [r["train/loss"] for r in train_rows] == pytest.approx([v for _, v in tb["train/loss"]])
    assert [r["iteration/k"] for r in rows if "iteration/k" in r] == [0, 1]
    assert config["train.max_steps"] == 3

    # resuming for one more iteration reopens the same tracker runs and logs nothing twice
    assert run_inprocess(ws, "run", "--iterations", "3") == 0
    its = _iterations(ws)
    total = sum(it["metrics"]["train_steps"] for it in its)
    tb = tb_scalars(ws / "track" / "tensorboard" / "main")
    assert [s for s, _ in tb["train/loss"]] == list(range(1, total + 1))
    assert [s for s, _ in tb["iteration/dev_acc"]] == [0, 1, 2]
    (run,) = client.search_runs([exp.experiment_id])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "iteration/dev_acc")) == [0, 1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == total


def test_steps_logged_before_a_crash_are_not_logged_again(tmp_path):
    """After a crash the trainer repeats the steps since its last checkpoint:
    the reopened trackers keep the values first logged and go on after them."""
    track = TrackConfig(report_to=["tensorboard"])
    t = start(track, tmp_path, "main")
    log = t.step_logger(10, 0)
    for s in (1, 2, 3):
        log({"step": s, "total": float(s), "lr": 0.1})
    t.log_iteration(0, {"dev_acc": 0.5})
    # no close: the process died
    t = start(track, tmp_path, "main")
    log = t.step_logger(10, 0)
    for s in (2, 3, 4):  # resumed from the checkpoint of step 1
        log({"step": s, "total": 100.0 + s, "lr": 0.1})
    t.log_iteration(0, {"dev_acc": 0.9})
    t.close("done")
    tb = tb_scalars(tmp_path / "tensorboard" / "main")
    assert tb["train/loss"] == [(11, 1.0), (12, 2.0), (13, 3.0), (14, 104.0)]
    assert tb["iteration/dev_acc"] == [(0, 0.5)]


# --------------------------------------------------------------------------- bad config


def test_unknown_tracker_is_a_config_error(tmp_path, teacher_server, capsys):
    ws = make_workspace(tmp_path / "ws", teacher_server.base_url)
    _with_track(ws, ["tensorboard", "comet"])
    from loop.config.schema import load_config

    with pytest.raises(ConfigError, match=r"track\.report_to\[1\] = 'comet'.*'tensorboard' or 'mlflow' or 'wandb'"):
        load_config(ws / "distillery.toml")
    assert run_inprocess(ws, "run") == 2
    assert "track.report_to" in capsys.readouterr().err
    assert not (ws / "track").exists()


def test_missing_tracker_package_names_the_pip_command():
    # a tracker whose module is genuinely absent (the real table's modules are installed here)
    table = {"wandb": (("distillery_no_such_module_xyz",), "wandb")}
    with pytest.raises(UserError, match=r"track\.report_to.*'wandb' needs .*distillery_no_such_module_xyz.*"
                                        r"`pip install wandb`"):
        check_trackers(TrackConfig(report_to=["wandb"]), table)


def test_installed_trackers_pass_the_check():
    check_trackers(TrackConfig(report_to=["tensorboard", "mlflow"]))


def test_a_training_job_logs_the_same_steps(tmp_path, teacher_server, monkeypatch):
    """[train] processes = 2: the job's ranks log nothing; the loop logs the
    steps they stream, from the thread that reads them (MLflow included, whose
    fluent API would have lost its active run there)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = make_workspace(tmp_path / "ws", teacher_server.base_url, max_iterations=1)
    toml = ws / "distillery.toml"
    toml.write_text(toml.read_text().replace("max_steps = 3\n", "max_steps = 3\nprocesses = 2\n"))
    _with_track(ws, ["tensorboard", "mlflow"])
    assert run_inprocess(ws, "run") == 0
    tb = tb_scalars(ws / "track" / "tensorboard" / "main")
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3]
    assert [s for s, _ in tb["iteration/dev_acc"]] == [0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'track' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("distillery").experiment_id])
    hist = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in hist) == [(s, pytest.approx(v)) for s, v in tb["train/loss"]]
