"""Faulty updates, in-process: a NaN or Inf update is rejected before it touches the model
and counted as a dropped job; a run whose global loss stops being finite ends as
'diverged' at that version and still writes every result file."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

import algorithms
from algorithms.base import Task, Update
from algorithms.fedavg import FedAvg
from algorithms.fedbuff import FedBuff, FedBuffState
from engine.core.recorder import EVENTS_COLUMNS
from engine.experiment import run_experiment
from tests.conftest import tiny

RUN = ("executors.backend=local", "algorithm.concurrency=4", "algorithm.buffer_size=2")


class NaNClient(FedBuff):
    """Client 3 trains with a NaN learning rate: its update is all NaN."""

    name: ClassVar[str] = "nan_client"

    def task_for(self, client: int) -> Task:
        task = super().task_for(client)
        return replace(task, lr=math.nan) if client == 3 else task


class NaNClientRounds(FedAvg):
    """FedAvg whose client 3 trains with a NaN learning rate."""

    name: ClassVar[str] = "nan_client_rounds"

    def task_for(self, client: int) -> Task:
        task = super().task_for(client)
        return replace(task, lr=math.nan) if client == 3 else task


class Exploding(FedBuff):
    """Its third version's model is Inf: everything after it is garbage."""

    name: ClassVar[str] = "exploding"

    def on_update(self, state: FedBuffState, update: Update, now: float) -> FedBuffState:
        state = super().on_update(state, update, now)
        if state.version == 3 and np.isfinite(state.model).all():
            state = replace(state, model=state.model * np.float32(np.inf))
        return state


def test_a_nan_update_is_rejected_and_counted_as_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(algorithms.ALGORITHMS, NaNClient.name, NaNClient)
    cfg = tiny(*RUN, f"algorithm.name={NaNClient.name}", "stop.max_versions=10")
    result, _ = run_experiment(cfg, write=False)
    ev = pd.DataFrame(result["events"], columns=EVENTS_COLUMNS)
    bad = ev[ev.rejected == 1]
    assert len(bad) > 0 and (bad.client == 3).all() and (bad.dropped == 1).all()
    assert len(bad) == (ev.client == 3).sum()  # every job of client 3, and no other
    assert result["summary"]["jobs_rejected"] == len(bad)
    assert (bad.bytes_up > 0).all()  # it was uploaded: the network carried it
    assert np.isfinite(result["model"]).all()
    assert result["summary"]["versions"] == 10 and math.isfinite(result["metrics"][-1]["loss"])


def test_a_nan_update_summed_on_an_executor_is_left_out_of_the_sum_and_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With partial sums, the executor sums its group's finite updates only and sends the
    NaN one on its own, which the server rejects as it would without partial sums."""
    monkeypatch.setitem(algorithms.ALGORITHMS, NaNClientRounds.name, NaNClientRounds)
    events = {}
    for k in (4, 0):
        cfg = tiny(
            "executors.backend=local",
            f"algorithm.name={NaNClientRounds.name}",
            "algorithm.clients_per_round=8",
            "stop.max_versions=6",
            f"executors.partial_sums={k}",
        )
        result, _ = run_experiment(cfg, write=False)
        assert np.isfinite(result["model"]).all() and result["summary"]["versions"] == 6
        events[k] = pd.DataFrame(result["events"], columns=EVENTS_COLUMNS)
    bad = events[4][events[4].rejected == 1]
    assert len(bad) > 0 and (bad.client == 3).all() and len(bad) == (events[4].client == 3).sum()
    columns = ["client", "job", "finish_time", "bytes_up", "dropped", "rejected"]
    pd.testing.assert_frame_equal(events[4][columns], events[0][columns])


def test_a_run_whose_loss_is_not_finite_stops_as_diverged_and_writes_its_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(algorithms.ALGORITHMS, Exploding.name, Exploding)
    out = tmp_path / "run"
    cfg = tiny(*RUN, f"algorithm.name={Exploding.name}", "stop.max_versions=40", f"out_dir={out}")
    _, path = run_experiment(cfg)
    assert path is not None
    summary = json.loads((path / "summary.json").read_text())
    assert summary["stop_reason"] == "diverged"
    metrics = pd.read_csv(path / "metrics.csv")
    # eval.every=3: version 3 is the first evaluated version, and the first with the Inf model
    assert metrics.version.tolist() == [0, 3] and not math.isfinite(metrics.loss.iloc[-1])
    assert summary["versions"] == 3 and summary["model_version"] == 3
    assert not np.isfinite(np.load(path / "model.npy")).all()  # the model it ended with
    for name in ("config.yaml", "events.csv", "accuracy.png", "timeline.png"):
        assert (path / name).is_file()
