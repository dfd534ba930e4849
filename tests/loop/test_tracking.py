"""Experiment tracking end to end, in-process (executors.backend=local), no network: a tiny
run's TensorBoard event files, MLflow file store and W&B offline run, each read back with
the tool's own reader, hold exactly what metrics.csv and summary.json hold."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.config import Config
from engine.experiment import run_experiment
from tests import conftest


def tiny(*overrides: str) -> Config:
    return conftest.tiny("executors.backend=local", *overrides)


def test_tensorboard_and_mlflow_hold_every_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tracking_client = pytest.importorskip("mlflow.tracking")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the engine opts in itself
    out = tmp_path / "run"
    cfg = tiny(
        "track.tensorboard=true",
        "track.mlflow=true",
        "checkpoint.every=6",  # checkpoints and tracking folders in out_dir together
        "eval.local_test_fraction=0.2",
        f"out_dir={out}",
    )
    _, path = run_experiment(cfg)
    assert path == out
    metrics = pd.read_csv(out / "metrics.csv")
    summary = json.loads((out / "summary.json").read_text())
    versions = metrics.version.tolist()
    assert versions == [0, 3, 6, 9, 12]
    # the results and the tracking folders side by side (the results' rename kept them)
    assert {"metrics.csv", "summary.json", "checkpoints", "tensorboard", "mlruns"} <= {
        p.name for p in out.iterdir()
    }

    # TensorBoard, read back with its own EventAccumulator: one scalar per column at step = version
    # (TensorBoard scalars are float32)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for column in ("accuracy", "loss", "sim_time", "local_accuracy", "bytes_up", "updates"):
        scalars = events.Scalars(column)
        assert [e.step for e in scalars] == versions
        assert [e.value for e in scalars] == [float(np.float32(v)) for v in metrics[column]], column
    (final,) = events.Scalars("summary/final_accuracy")
    assert (final.step, final.value) == (12, float(np.float32(summary["final_accuracy"])))
    assert "config" in " ".join(events.Tags()["tensors"])  # the config as text (and as hparams)

    # MLflow, read back from the local file store with its own client
    client = tracking_client.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("fedray")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["algorithm.name"] == "fedbuff" and params["clients.num"] == "12"
    assert params["out_dir"] == str(out.resolve())
    for column in ("accuracy", "loss", "sim_time", "local_accuracy_p10", "bytes_down"):
        history = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
        assert [m.step for m in history] == versions
        assert [m.value for m in history] == metrics[column].astype(float).tolist(), column
    assert run.data.metrics["summary/final_accuracy"] == summary["final_accuracy"]
    assert run.data.metrics["summary/updates_applied"] == summary["updates_applied"]
    assert run.data.tags["fedray.stop_reason"] == "max_versions"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]


def test_a_failed_run_ends_its_mlflow_run_failed(tmp_path: Path) -> None:
    tracking_client = pytest.importorskip("mlflow.tracking")

    def boom(row: dict[str, Any]) -> None:
        if row["version"] >= 3:
            raise RuntimeError("the caller's hook failed")

    out = tmp_path / "run"
    cfg = tiny("track.mlflow=true", f"out_dir={out}")
    with pytest.raises(RuntimeError, match="hook failed"):
        run_experiment(cfg, on_evaluation=boom)
    client = tracking_client.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("fedray").experiment_id])
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0, 3]


def _wandb_records(path: Path) -> list[Any]:
    """The records of a W&B run file (``run-<id>.wandb``): a 7-byte header, then LevelDB's
    log format (32 KiB blocks of chunks: crc32c, length, type), each record one protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # block trailer
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += room  # zero padding up to the next block
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)  # W&B writes either


def test_wandb_offline_run_holds_every_evaluation(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    pytest.importorskip("wandb.proto.wandb_internal_pb2")
    out = tmp_path / "run"
    cfg = tiny("track.wandb=true", f"out_dir={out}")
    run_experiment(cfg)
    metrics = pd.read_csv(out / "metrics.csv")
    summary = json.loads((out / "summary.json").read_text())
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing was sent
    history: dict[int, dict[str, float]] = {}
    config: dict[str, Any] = {}
    final: dict[str, Any] = {}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {_key(i): json.loads(i.value_json) for i in record.history.item}
            history[int(items.get("_step", record.history.step.num))] = items
        elif kind in ("run", "config"):  # the config comes with the run record, changes after it
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({_key(i): json.loads(i.value_json) for i in updates})
        elif kind == "summary":
            final.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    assert sorted(history) == metrics.version.tolist()
    assert [history[v]["accuracy"] for v in metrics.version] == metrics.accuracy.tolist()
    assert [history[v]["sim_time"] for v in metrics.version] == metrics.sim_time.tolist()
    assert config["algorithm"]["name"] == "fedbuff" and config["clients"]["num"] == 12
    assert final["summary/final_accuracy"] == summary["final_accuracy"]
    assert final["summary/stop_reason"] == "max_versions"
