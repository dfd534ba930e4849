"""CMFL in whole runs, in-process: the skipped uploads cost no bytes, the sign planes are
charged on the way down, and a run resumes from a checkpoint identically."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.config import Config
from engine.core.recorder import EVENTS_COLUMNS
from engine.experiment import run_experiment
from tests import conftest


def tiny(*overrides: str) -> Config:
    return conftest.tiny("executors.backend=local", "algorithm.name=cmfl", *overrides)


def run(cfg: Config, **kw):  # type: ignore[no-untyped-def]
    result, _ = run_experiment(cfg, write=False, **kw)
    return result


def test_skipped_uploads_cost_nothing_and_the_signs_are_charged_down() -> None:
    result = run(tiny("algorithm.threshold=0.6", "algorithm.clients_per_round=5", "stop.max_versions=6"))
    events = pd.DataFrame(result["events"], columns=EVENTS_COLUMNS)
    model_bytes = result["model"].nbytes
    skipped = int(result["summary"]["algorithm_stats"]["skipped"])
    assert 0 < skipped < len(events)  # the threshold bites, and not on everyone
    assert (events.bytes_up == 0).sum() == skipped
    assert set(events.bytes_up[events.bytes_up > 0]) == {model_bytes}
    # round 1 sends the model alone; later rounds add two planes of ceil(size / 8) bytes
    planes = 2 * -(-result["model"].size // 8)
    first_round = events.version_start == 0
    assert set(events.bytes_down[first_round]) == {model_bytes}
    assert set(events.bytes_down[~first_round]) == {model_bytes + planes}
    assert result["summary"]["bytes_up"] == (len(events) - skipped) * model_bytes


def test_threshold_zero_is_fedavg_bit_for_bit() -> None:
    cmfl = run(tiny("algorithm.threshold=0", "stop.max_versions=4"))
    fedavg = run(conftest.tiny("executors.backend=local", "algorithm.name=fedavg", "stop.max_versions=4"))
    assert cmfl["events"] == fedavg["events"]
    np.testing.assert_array_equal(cmfl["model"], fedavg["model"])


def test_resumes_from_a_checkpoint_identically() -> None:
    spread = (
        "algorithm.threshold=0.6",
        "clients.speed.family=pareto",
        "clients.speed.shape=1.5",
        "stop.max_versions=8",
        "eval.every=4",
        "checkpoint.every=4",
    )
    rows: list[dict] = []
    one = run(tiny(*spread), on_evaluation=rows.append)
    assert rows[1]["checkpoint"] is not None
    two = run(tiny(*spread), resume=rows[1]["checkpoint"])
    assert one["events"] == two["events"]
    assert one["summary"]["algorithm_stats"] == two["summary"]["algorithm_stats"]
    np.testing.assert_array_equal(one["model"], two["model"])
