"""Byzantine clients and robust aggregation in whole runs, in-process
(executors.backend=local): what the attacks do to the mean and what the robust rules keep,
the attackers listed in summary.json, and identical results run after run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from algorithms.attacks import byzantine_clients
from engine.config import Config
from engine.core.recorder import EVENTS_COLUMNS
from engine.core.rng import stream
from engine.experiment import run_experiment
from tests import conftest

# i.i.d. shards of the synthetic data, so that without attackers every rule learns alike;
# 20 clients, 10 per round, 12 rounds: about a second a run.
IID = (
    "executors.backend=local",
    "partition.name=iid",
    "clients.num=20",
    "algorithm.name=fedavg",
    "algorithm.clients_per_round=10",
    "algorithm.aggregator.byzantine=3",
    "stop.max_versions=12",
    "eval.every=4",
)


def tiny(*overrides: str) -> Config:
    return conftest.tiny(*IID, *overrides)


def run(cfg: Config, **kw: Any) -> dict[str, Any]:
    result, _ = run_experiment(cfg, write=False, **kw)
    return result


def events(result: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(result["events"], columns=EVENTS_COLUMNS)


def final_loss(*overrides: str) -> float:
    return float(run(tiny(*overrides))["summary"]["final_loss"])


SIGN_FLIP_30 = ("clients.byzantine.fraction=0.3", "clients.byzantine.attack=sign_flip")


def test_sign_flip_hurts_the_mean_and_not_median_or_krum() -> None:
    clean = final_loss()
    mean = final_loss(*SIGN_FLIP_30)
    median = final_loss(*SIGN_FLIP_30, "algorithm.aggregator.name=median")
    krum = final_loss(*SIGN_FLIP_30, "algorithm.aggregator.name=krum")
    # 6 of 20 clients flip: the mean keeps (0.7 - 0.3) of each round's step.
    assert mean > clean + 0.2
    assert mean > median + 0.1 and mean > krum + 0.1
    assert krum < clean + 0.05  # Krum picks an honest update every round


def test_attacked_clients_in_the_summary() -> None:
    result = run(tiny(*SIGN_FLIP_30, "seed=3"))
    byz = result["summary"]["byzantine"]
    expected = byzantine_clients(20, 0.3, stream(3, "byzantine")).tolist()
    assert byz["clients"] == expected and len(expected) == 6
    assert byz["attack"] == "sign_flip" and byz["fraction"] == 0.3
    ev = events(result)
    applied = ev[(ev.dropped == 0) & ev.client.isin(expected)]
    assert byz["updates_applied"] == len(applied) > 0
    assert "byzantine" not in run(tiny("stop.max_versions=1"))["summary"]  # no attackers, no section


@pytest.mark.parametrize(
    "attack",
    [
        ("clients.byzantine.attack=gaussian", "clients.byzantine.noise_std=0.1"),
        (
            "clients.byzantine.attack=alie",
            "algorithm.aggregator.name=trimmed_mean",
            "algorithm.aggregator.trim=0.3",
        ),
    ],
    ids=["gaussian", "alie"],
)
def test_attacked_runs_are_identical_run_after_run(attack: tuple[str, ...]) -> None:
    cfg = tiny("clients.byzantine.fraction=0.3", *attack, "clients.speed.jitter=0.2")
    one, two = run(cfg), run(cfg)
    assert one["events"] == two["events"]
    assert [(m["accuracy"], m["loss"]) for m in one["metrics"]] == [
        (m["accuracy"], m["loss"]) for m in two["metrics"]
    ]
    np.testing.assert_array_equal(one["model"], two["model"])
    clean = run(tiny(*attack[1:], "clients.speed.jitter=0.2"))
    assert not np.array_equal(one["model"], clean["model"])  # the attack did something


def test_label_flip_changes_only_the_attackers_training() -> None:
    """First-round jobs start from the same model with the same keyed randomness: the
    honest clients' training losses are those of a run without attack, bit for bit, and
    every attacker's differs (it trains on flipped labels)."""
    first = ("stop.max_versions=1",)
    flipped = run(tiny(*first, "clients.byzantine.fraction=0.3", "clients.byzantine.attack=label_flip"))
    clean = run(tiny(*first))
    attackers = flipped["summary"]["byzantine"]["clients"]
    a, b = events(flipped).set_index("client"), events(clean).set_index("client")
    assert sorted(a.index) == sorted(b.index) and a.index.isin(attackers).any()
    same = a.train_loss == b.train_loss.reindex(a.index)
    assert (same == ~a.index.isin(attackers)).all()


def test_a_run_with_alie_colluders_resumes_exactly() -> None:
    """A checkpointed ALIE run resumes to the uninterrupted run's results (the colluders
    are drawn again from the seed; states holding colluders' updates round-trip in
    tests/unit/test_byzantine.py)."""
    cfg = tiny(
        "clients.byzantine.fraction=0.3",
        "clients.byzantine.attack=alie",
        "algorithm.aggregator.name=median",
        "clients.speed.family=pareto",
        "stop.max_versions=8",
        "checkpoint.every=4",
    )
    rows: list[dict[str, Any]] = []
    one = run(cfg, on_evaluation=rows.append)
    two = run(cfg, resume=rows[1]["checkpoint"])
    assert one["events"] == two["events"]
    np.testing.assert_array_equal(one["model"], two["model"])
