"""Every algorithm, end to end, on a tiny budget, in-process (no Ray: the Ray backend gives
the same numbers, tests/engine/test_engine.py)."""

from __future__ import annotations

import math

import pytest

from algorithms import ALGORITHMS
from engine.config import Config
from engine.experiment import run_experiment
from tests import conftest

pytestmark = [pytest.mark.smoke]


def tiny(*overrides: str) -> Config:
    return conftest.tiny("executors.backend=local", *overrides)


SHAPES = (
    "workload.name=shapes",
    "workload.side=16",
    "workload.train_samples=480",
    "workload.test_samples=100",
)
# Per-algorithm sizes for a 12-client run; algorithms not listed use their defaults.
SIZE: dict[str, tuple[str, ...]] = {
    **{
        n: ("algorithm.clients_per_round=4",)
        for n in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
    },
    "fedasync": ("algorithm.concurrency=4",),
    "fedbuff": ("algorithm.concurrency=4",),
    "fedcompass": ("algorithm.q_max=10", "algorithm.q_min=2"),
    "fedfix": ("algorithm.delta_t=0.2",),
    "fedat": ("algorithm.num_tiers=2", "algorithm.clients_per_tier_round=3"),
    # PFL with server fine-tuning (SGD on held-out server data) end to end.
    "pfl": ("server.steps=2", "server.data_samples=100", "server.seconds_per_step=0.01"),
    # sub-models need hidden layers to narrow: Synthetic's MLP, each client's width drawn per round
    "heterofl": ("workload.hidden=[16,16]", "algorithm.rate_mode=random", "algorithm.clients_per_round=4"),
    # split learning cuts a CNN: Synthetic's model has no layer to cut, so small Shapes
    **{n: (*SHAPES, "algorithm.clients_per_round=4") for n in ("splitfed", "splitfed_v2", "cse_fsl")},
    "fsl_sage": (*SHAPES, "algorithm.clients_per_round=4", "algorithm.align_epochs=10"),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_learns_on_synthetic(name: str) -> None:
    cfg = tiny(f"algorithm.name={name}", *SIZE.get(name, ()), "stop.max_versions=24", "eval.every=8")
    result, _ = run_experiment(cfg, write=False)
    metrics = result["metrics"]
    assert [m["version"] for m in metrics] == [0, 8, 16, 24]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert metrics[-1]["loss"] < metrics[0]["loss"]  # it learns


def test_shapes_cnn_workload_runs() -> None:
    cfg = tiny(
        "workload.name=shapes",
        "workload.train_samples=1200",
        "workload.test_samples=200",
        "partition.name=dirichlet_per_class",
        "partition.alpha=1.0",
        "stop.max_versions=4",
        "eval.every=2",
    )
    result, _ = run_experiment(cfg, write=False)
    assert len(result["metrics"]) == 3 and math.isfinite(result["metrics"][-1]["loss"])
