"""Large populations: shards made on demand from the client id give the same run as the
loaded data, and a population of 200,000 runs without being listed (algorithms/idle.py,
engine/core/delays.py's lazy profiles, engine/worker/data.py's GeneratedShards)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from engine.config import ConfigError
from engine.core.delays import DelayModel
from engine.experiment import run_experiment
from engine.worker.data import GeneratedShards, load_data
from tests import conftest

HETEROGENEOUS = (
    "clients.speed.family=lognormal",
    "clients.speed.sigma=1.0",
    "clients.network.sigma=0.5",
    "clients.availability.mode=periodic",
    "clients.availability.period=40",
    "clients.availability.on_fraction=0.6",
)


def _frames(cfg: object, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    run_experiment(cfg, write=True)
    metrics = pd.read_csv(path / "metrics.csv").drop(columns=["wall_time"])
    return metrics, pd.read_csv(path / "events.csv")


@pytest.mark.parametrize(
    "algorithm",
    [
        ("algorithm.name=fedbuff", "algorithm.concurrency=5", "algorithm.buffer_size=2"),
        ("algorithm.name=fedavg", "algorithm.clients_per_round=4", "workload.samples_per_client=40"),
    ],
)
def test_shards_made_on_demand_give_the_loaded_run(tmp_path: Path, algorithm: tuple[str, ...]) -> None:
    runs = []
    for flag in ("false", "true"):
        out = tmp_path / flag
        overrides = (*HETEROGENEOUS, *algorithm, f"workload.on_demand={flag}", f"out_dir={out}")
        cfg = conftest.tiny("executors.backend=local", *overrides)
        runs.append(_frames(cfg, out))
    (m0, e0), (m1, e1) = runs
    pd.testing.assert_frame_equal(m0, m1)
    pd.testing.assert_frame_equal(e0, e1)
    assert len(e0) > 12


def test_a_population_of_200k_is_never_listed(tmp_path: Path) -> None:
    cfg = conftest.tiny(
        "executors.backend=local",
        *HETEROGENEOUS,
        "clients.num=200000",
        "workload.on_demand=true",
        "workload.samples_per_client=20",
        "workload.test_clients=30",
        "algorithm.name=fedbuff",
        "algorithm.concurrency=20",
        "algorithm.buffer_size=5",
        "stop.max_versions=6",
        f"out_dir={tmp_path}",
    )
    data = load_data(cfg)
    assert isinstance(data.shards, GeneratedShards) and len(data.dataset.x_train) == 0
    assert len(data.shards.sizes) == 200_000 and len(data.dataset.y_test) == 30 * 4
    result, _ = run_experiment(cfg, write=True)
    assert result["summary"]["versions"] == 6
    assert result["summary"]["delays"]["described_clients"] == 10_000
    events = pd.read_csv(tmp_path / "events.csv")
    assert events["client"].nunique() == len(events) >= 30  # 200k clients: none drawn twice
    delays = DelayModel(cfg.clients, cfg.seed)
    dispatched = zip(events["client"], events["dispatch_time"], strict=True)
    assert all(delays.is_available(c, t) for c, t in dispatched)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("partition.name=iid", "partition.name=natural"),
        ("eval.local_test_fraction=0.2", "eval.local_test_fraction=0.2"),
    ],
)
def test_what_on_demand_cannot_do_is_refused(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        conftest.tiny("executors.backend=local", "workload.on_demand=true", override)
