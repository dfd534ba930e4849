"""SCAFFOLD, FedAvg-M and SCAFFOLD-M in whole runs, in-process (executors.backend=local):
learning under one-class shards, against FedAvg; client control variates in memory or on
disk; determinism; resume from a checkpoint; the bytes charged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.config import Config
from engine.experiment import run_experiment
from tests import conftest

SKEW = ("partition.name=shards", "partition.classes_per_client=1", "algorithm.clients_per_round=4")


def tiny(*overrides: str) -> Config:
    return conftest.tiny("executors.backend=local", *overrides)


def run(cfg: Config, **kw):  # type: ignore[no-untyped-def]
    result, _ = run_experiment(cfg, write=False, **kw)
    return result


def losses(result) -> list[float]:  # type: ignore[no-untyped-def]
    return [m["loss"] for m in result["metrics"]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scaffold_learns_under_one_class_shards_and_matches_fedavg(seed: int) -> None:
    """12 rounds of 4 of 12 one-class clients, 5 local steps. Seen (final loss, from about
    2-3): seed 0 FedAvg 0.550, SCAFFOLD 0.484; seed 1 0.375 / 0.306; seed 2 0.495 / 0.441."""
    fedavg = losses(run(tiny(*SKEW, "algorithm.name=fedavg", f"seed={seed}")))
    scaffold = losses(run(tiny(*SKEW, "algorithm.name=scaffold", f"seed={seed}")))
    assert fedavg[0] == scaffold[0]  # the same initial model
    assert scaffold[-1] < 0.5 * scaffold[0]
    assert scaffold[-1] <= 1.05 * fedavg[-1]


@pytest.mark.parametrize("name", ["fedavg_m", "scaffold_m"])
def test_momentum_variants_learn_under_one_class_shards(name: str) -> None:
    loss = losses(run(tiny(*SKEW, f"algorithm.name={name}", "algorithm.momentum=0.5")))
    assert loss[-1] < 0.5 * loss[0]


@pytest.mark.parametrize("name", ["scaffold", "scaffold_m"])
def test_client_states_on_disk_or_in_memory_give_identical_runs(name: str, tmp_path: Path) -> None:
    common = (*SKEW, f"algorithm.name={name}", "stop.max_versions=6")
    memory = run(tiny(*common))
    again = run(tiny(*common))
    folder = tmp_path / "states"
    disk = run(tiny(*common, "server.client_state=disk", f"server.client_state_dir={folder}"))
    for other in (again, disk):  # deterministic, and the store changes nothing
        assert other["events"] == memory["events"]
        assert [(m["accuracy"], m["loss"]) for m in other["metrics"]] == [
            (m["accuracy"], m["loss"]) for m in memory["metrics"]
        ]
        np.testing.assert_array_equal(other["model"], memory["model"])
    stored = sorted(folder.glob("*.npy"))
    assert stored  # the clients' c_i, one float32 file each
    assert all(np.load(p).dtype == np.float32 for p in stored)


def test_scaffold_bytes_are_twice_the_model_both_ways() -> None:
    result = run(tiny(*SKEW, "algorithm.name=scaffold", "stop.max_versions=3"))
    model_bytes = result["model"].nbytes
    s = result["summary"]
    assert s["updates_applied"] == 12
    assert s["bytes_up"] == s["bytes_down"] == 12 * 2 * model_bytes
    # FedAvg-M uploads its delta only, but downloads the momentum buffer too.
    m = run(tiny(*SKEW, "algorithm.name=fedavg_m", "stop.max_versions=3"))["summary"]
    assert m["bytes_up"] == 12 * model_bytes and m["bytes_down"] == 12 * 2 * model_bytes


def test_scaffold_m_resumes_from_a_checkpoint_identically() -> None:
    """Control variates (server's and clients'), the momentum buffer and the 4 jobs in
    flight at version 4 (their tasks carry the broadcast vector) go through the checkpoint."""
    spread = (
        *SKEW,
        "algorithm.name=scaffold_m",
        "clients.speed.family=pareto",
        "clients.speed.shape=1.5",
        "stop.max_versions=8",
        "eval.every=4",
        "checkpoint.every=4",
    )
    rows: list[dict] = []
    one = run(tiny(*spread), on_evaluation=rows.append)
    assert [r["version"] for r in rows] == [0, 4, 8] and rows[1]["checkpoint"] is not None
    two = run(tiny(*spread), resume=rows[1]["checkpoint"])
    assert one["events"] == two["events"]
    assert [(m["accuracy"], m["loss"]) for m in one["metrics"]] == [
        (m["accuracy"], m["loss"]) for m in two["metrics"]
    ]
    np.testing.assert_array_equal(one["model"], two["model"])
