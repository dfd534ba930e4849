"""Whole in-process runs (executors.backend=local, no Ray) with differential privacy
(``algorithm.privacy.*``): mode none changes nothing, epsilon is dp-accounting's figure for
what the run really did and grows as it goes, resumed runs are identical, and
``stop.max_epsilon`` ends a run before a release would exceed the budget."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from algorithms.privacy import Spent, epsilon
from engine.core.recorder import EVENTS_COLUMNS
from engine.experiment import run_experiment
from tests import conftest

lib = pytest.importorskip("dp_accounting")

FEDAVG = ("algorithm.name=fedavg", "algorithm.clients_per_round=4", "algorithm.weighting=uniform")
FEDBUFF = ("algorithm.name=fedbuff", "algorithm.concurrency=8", "algorithm.buffer_size=4")
Z, CLIP, DELTA = 2.0, 0.1, 1e-5  # noise std 0.2 on the sum of deltas clipped to 0.1
DP = (f"algorithm.privacy.clip={CLIP}", f"algorithm.privacy.noise_multiplier={Z}")
CENTRAL = ("algorithm.privacy.mode=central", *DP)
LOCAL = ("algorithm.privacy.mode=local", *DP)
SPREAD = ("clients.speed.family=pareto", "clients.speed.shape=1.5", "clients.speed.jitter=0.2")
TIERS = ("clients.speed.family=tiers", "clients.speed.tier_factors=[1,10]")  # some clients 10x slower


def tiny(*overrides: str) -> Any:
    return conftest.tiny("executors.backend=local", *overrides)


def run(cfg: Any, **kw: Any) -> dict[str, Any]:
    return run_experiment(cfg, write=False, **kw)[0]


def uploads(result: dict[str, Any]) -> Counter[int]:
    events = [dict(zip(EVENTS_COLUMNS, e, strict=True)) for e in result["events"]]
    return Counter(e["client"] for e in events if not e["dropped"])


def sampled_epsilon(clients: int, per_round: int, rounds: int) -> float:
    """dp-accounting's figure for ``rounds`` rounds of ``per_round`` of ``clients`` clients
    sampled without replacement, a replaced client moving the clipped sum by 2C."""
    acct = lib.rdp.RdpAccountant(neighboring_relation=lib.NeighboringRelation.REPLACE_ONE)
    event = lib.SampledWithoutReplacementDpEvent(clients, per_round, lib.GaussianDpEvent(Z / 2))
    acct.compose(lib.SelfComposedDpEvent(event, rounds))
    return float(acct.get_epsilon(DELTA))


@pytest.mark.parametrize("algorithm", [FEDAVG, FEDBUFF], ids=["fedavg", "fedbuff"])
def test_mode_none_is_the_run_without_privacy(algorithm: tuple[str, ...]) -> None:
    plain = run(tiny(*algorithm, "stop.max_versions=6"))
    none = run(tiny(*algorithm, "stop.max_versions=6", "algorithm.privacy.mode=none", *DP))
    assert none["events"] == plain["events"]
    np.testing.assert_array_equal(none["model"], plain["model"])
    strip = [{k: v for k, v in m.items() if k != "wall_time"} for m in plain["metrics"]]
    assert [{k: v for k, v in m.items() if k != "wall_time"} for m in none["metrics"]] == strip
    assert "epsilon" not in strip[0] and "epsilon" not in none["summary"] and "privacy" not in none["summary"]


def test_fedavg_central_epsilon_is_the_librarys_and_grows(tmp_path: Path) -> None:
    cfg = tiny(*FEDAVG, *CENTRAL, f"out_dir={tmp_path / 'run'}")
    result, path = run_experiment(cfg, write=True)
    assert path is not None
    metrics = pd.read_csv(path / "metrics.csv")
    assert list(metrics.version) == [0, 3, 6, 9, 12] and "epsilon" in metrics.columns
    # Every round samples 4 of the 12 (all idle) clients: the epsilon of v rounds is the
    # library's for v such events, at each evaluation and in the summary.
    assert metrics.epsilon[0] == 0.0
    assert list(metrics.epsilon.diff()[1:] > 0) == [True] * 4
    assert metrics.epsilon[2] == pytest.approx(sampled_epsilon(12, 4, 6), rel=1e-12)
    assert result["summary"]["epsilon"] == sampled_epsilon(12, 4, 12) == metrics.epsilon.iloc[-1]
    assert result["summary"]["privacy"] == {
        "mode": "central",
        "delta": DELTA,
        "accountant": "rdp",
        "noise_multiplier": Z,
        "clip": CLIP,
        "neighbouring": "one client's data replaced (replace-one)",
        "max_epsilon": None,
    }
    # the noise really moves the model: without it the same run ends elsewhere
    quiet = run(
        tiny(
            *FEDAVG,
            "algorithm.privacy.mode=central",
            f"algorithm.privacy.clip={CLIP}",
            "algorithm.privacy.noise_multiplier=0",
        )
    )
    assert not np.array_equal(quiet["model"], result["model"]) and quiet["summary"]["epsilon"] == np.inf


def test_fedbuff_central_counts_k_squared_per_flush_from_the_events() -> None:
    result = run(tiny(*FEDBUFF, *CENTRAL, *TIERS))
    # Replay the buffer from events.csv: updates apply in this order, every 4 a flush (no
    # staleness limit, so none is discarded); a client spends k^2 per flush it joined with k.
    events = [dict(zip(EVENTS_COLUMNS, e, strict=True)) for e in result["events"]]
    applied = [e["client"] for e in events if not e["dropped"]]
    spent: Counter[int] = Counter()
    for start in range(0, len(applied) - len(applied) % 4, 4):
        for client, k in Counter(applied[start : start + 4]).items():
            spent[client] += k * k
    assert len(applied) // 4 == 12 == result["summary"]["versions"]
    worst = max(spent.values())
    assert (
        max(max(Counter(applied[s : s + 4]).values()) for s in range(0, 48, 4)) == 2
    )  # fast clients come twice
    acct = lib.rdp.RdpAccountant()
    acct.compose(lib.SelfComposedDpEvent(lib.GaussianDpEvent(Z / 2), worst))
    assert result["summary"]["epsilon"] == acct.get_epsilon(DELTA)


def test_local_dp_counts_each_clients_uploads() -> None:
    result = run(tiny(*FEDBUFF, *LOCAL, *SPREAD))
    most = max(uploads(result).values())
    assert result["summary"]["epsilon"] == epsilon(Spent(gaussian=most), Z, DELTA)
    assert [m["epsilon"] for m in result["metrics"]] == sorted(m["epsilon"] for m in result["metrics"])


@pytest.mark.parametrize(
    ("algorithm", "mode"), [(FEDAVG, CENTRAL), (FEDBUFF, LOCAL)], ids=["central", "local"]
)
def test_identical_when_resumed_from_a_checkpoint(algorithm: tuple[str, ...], mode: tuple[str, ...]) -> None:
    common = (*algorithm, *mode, *SPREAD, "stop.max_versions=8", "eval.every=4", "checkpoint.every=4")
    rows: list[dict[str, Any]] = []
    one = run(tiny(*common), on_evaluation=rows.append)
    two = run(tiny(*common), resume=rows[1]["checkpoint"])
    assert one["events"] == two["events"]
    np.testing.assert_array_equal(one["model"], two["model"])
    keys = ("version", "accuracy", "loss", "epsilon")
    assert [[m[k] for k in keys] for m in one["metrics"]] == [[m[k] for k in keys] for m in two["metrics"]]
    assert one["summary"]["epsilon"] == two["summary"]["epsilon"] > 0


def test_max_epsilon_stops_before_the_round_that_would_exceed_it() -> None:
    budget = (sampled_epsilon(12, 4, 5) + sampled_epsilon(12, 4, 6)) / 2
    result = run(tiny(*FEDAVG, *CENTRAL, f"stop.max_epsilon={budget}"))
    summary = result["summary"]
    assert summary["stop_reason"] == "max_epsilon" and summary["versions"] == 5
    assert summary["epsilon"] == sampled_epsilon(12, 4, 5) <= budget
    assert result["metrics"][-1]["version"] == 5 and result["metrics"][-1]["epsilon"] == summary["epsilon"]
    assert summary["privacy"]["max_epsilon"] == budget


def test_max_epsilon_under_local_dp_stops_before_any_client_would_exceed_it() -> None:
    budget = (epsilon(Spent(gaussian=4), Z, DELTA) + epsilon(Spent(gaussian=5), Z, DELTA)) / 2
    result = run(tiny(*FEDBUFF, *LOCAL, *SPREAD, f"stop.max_epsilon={budget}"))
    assert result["summary"]["stop_reason"] == "max_epsilon"
    assert max(uploads(result).values()) == 4  # nobody uploaded a fifth time
    assert result["summary"]["epsilon"] == epsilon(Spent(gaussian=4), Z, DELTA) <= budget
