"""The Ray backend on a local Ray: the same numbers as the in-process backend and across
executor counts, executor failures, wall mode. The loop's own rules are tested in-process
(tests/loop/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.config import Config, ConfigError
from engine.report.results import EVENTS_COLUMNS
from engine.run import run_experiment
from tests.conftest import tiny

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("ray_local")]


def run(cfg: Config, tmp_path: Path | None = None, **kw):  # type: ignore[no-untyped-def]
    result, path = run_experiment(cfg, write=tmp_path is not None, **kw)
    return result, path


def frames(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    metrics = pd.read_csv(path / "metrics.csv").drop(columns=["wall_time"])
    events = pd.read_csv(path / "events.csv")
    return metrics, events


def test_stacking_a_convolutional_model_is_refused_in_one_line() -> None:
    # Found by the server once it has the data (the model's input shape), raised in the driver.
    with pytest.raises(ConfigError, match=r"the shapes model has Conv2d, MaxPool2d: set executors\.stack=1$"):
        run(tiny("workload.name=shapes", "workload.train_samples=200", "executors.stack=4"))


# A lost stack's jobs run again as a stack, or alone in their slots; a lost sum group's
# jobs run again as a group (none of its outputs arrived, as they travel together): same bits.
LOST = {
    "jobs": (),
    "stacked": ("executors.stack=4",),
    "summed": ("algorithm.name=fedavg", "algorithm.clients_per_round=8", "executors.partial_sums=3"),
    # jobs held back on the server when the executor dies (engine/core/late_binding.py)
    "late_bound": ("executors.queue_seconds=1e-9",),
}


@pytest.mark.parametrize("name", sorted(LOST))
def test_killed_executor_loses_no_update(name: str) -> None:
    import ray

    heavy = ("stop.max_versions=18", "training.local_steps=30", "clients.num=16", *LOST[name])
    reference, _ = run(tiny(*heavy, "executors.backend=local"))  # the same numbers, sooner
    killed: list[str] = []

    def kill_once(info: dict) -> None:  # type: ignore[type-arg]
        if not killed and info.get("version", 0) >= 5:
            name = f"fedray-{info['run_id']}-executor-0"
            ray.kill(ray.get_actor(name))
            killed.append(name)

    result, _ = run(tiny(*heavy), on_progress=kill_once)
    assert killed, "the run ended before the executor could be killed"
    assert result["summary"]["executors_replaced"] >= 1
    assert result["summary"]["updates_applied"] == reference["summary"]["updates_applied"]
    assert result["events"] == reference["events"]
    np.testing.assert_array_equal(result["model"], reference["model"])


def test_late_binding_changes_the_calls_not_the_results() -> None:
    """Executors holding two jobs each (a tiny ``queue_seconds``: the rest wait on the server
    and go out one by one as executors free up) against every job sent when dispatched."""
    cfg = ("algorithm.name=fedavg", "clients.num=20", "algorithm.clients_per_round=20", "stop.max_versions=3")
    eager, _ = run(tiny(*cfg, "executors.queue_seconds=0"))
    late, _ = run(tiny(*cfg, "executors.queue_seconds=1e-9"))
    assert late["events"] == eager["events"]
    np.testing.assert_array_equal(late["model"], eager["model"])
    calls = {k: r["summary"]["engine"]["calls"] for k, r in (("eager", eager), ("late", late))}
    assert calls["eager"] % 3 == 0 and calls["eager"] <= 3 * 6  # 3 rounds of 20 jobs, a few calls each
    # Late: the first round goes as eagerly (no executor's pace is known yet), then 20 calls
    # of one job a round.
    assert calls["late"] == calls["eager"] // 3 + 2 * 20


def test_wall_clock_mode_runs_with_real_sleeps() -> None:
    # 5 steps x batch 10 = 50 examples at 0.02 s: 1 s of virtual compute per job, slept
    # for real as 20 ms (wall_scale 0.02).
    cfg = tiny(
        "clock.mode=wall",
        "clock.wall_scale=0.02",
        "clients.speed.family=constant",
        "clients.speed.seconds_per_sample=0.02",
        "stop.max_versions=6",
    )
    result, _ = run(cfg)
    s = result["summary"]
    assert s["versions"] == 6 and s["updates_applied"] >= 6 * 5
    ev = pd.DataFrame(result["events"], columns=EVENTS_COLUMNS)
    # Each job lasted at least its virtual duration (1 s compute + network) on the scaled real clock.
    assert (ev.finish_time - ev.dispatch_time).min() >= 1.0


# Algorithms whose runs exercise the most machinery: a buffer, stacks, server work with
# fine-tuning on the pool, and a scheduler with timers.
ACROSS = {
    # error-feedback residuals as client states: carried in the checkpoint and across executors
    "fedbuff:topk": (
        "algorithm.concurrency=6",
        "algorithm.buffer_size=3",
        "algorithm.codec.name=topk",
        "algorithm.codec.ratio=0.05",
    ),
    "fedavg:stacked": ("algorithm.name=fedavg", "algorithm.clients_per_round=6", "executors.stack=4"),
    # partial sums: groups of 3 + 3 + 1 summed on either executor, or recomputed after the resume
    "fedavg:summed": ("algorithm.name=fedavg", "algorithm.clients_per_round=7", "executors.partial_sums=3"),
    "pfl": ("algorithm.max_lost=2", "server.seconds_per_aggregation=0.05", "server.steps=2"),
    "fedcompass": ("algorithm.q_max=10", "algorithm.q_min=2"),
    # skipped uploads, and an AutoClip history kept per client across jobs and executors
    "cmfl:autoclip": ("algorithm.threshold=0.55", "training.clip.mode=autoclip"),
    # client control variates and the server's vector carried with the task
    "scaffold_m": ("algorithm.clients_per_round=6",),
    # frozen entries kept by each client, thaw votes, partial downloads per client
    "gwpf": ("algorithm.clients_per_round=6", "algorithm.stable_threshold=0.9"),
    # sub-models of drawn widths, their classifier rows masked to each client's labels
    "heterofl": (
        "algorithm.clients_per_round=6",
        "algorithm.rate_mode=random",
        "algorithm.rates=[1.0,0.5]",
        "algorithm.mask_classifier=true",
        "workload.hidden=[16,16]",
    ),
    # split learning: server jobs computed on the pool (steps on activations, alignments)
    "fsl_sage": (
        "algorithm.clients_per_round=6",
        "algorithm.align_every=2",
        "algorithm.align_epochs=2",
        "workload.name=shapes",
        "workload.side=16",  # 16x16 images: the CNN's work is not what this test is about
        "workload.train_samples=360",
        "workload.test_samples=100",
        "server.seconds_per_sample=0.001",
    ),
}


@pytest.mark.parametrize("name", sorted(ACROSS))
def test_identical_across_backends_executor_counts_and_a_resume(name: str) -> None:
    """The in-process run and a Ray run on 2 executors resumed from the in-process run's
    checkpoint at version 4 (jobs in flight) end alike: events, metrics and model. (The
    in-process backend is checked against uninterrupted runs in tests/loop/, and Ray on 1
    executor against 3 nodes in test_multinode.py.)"""
    spread = (
        "clients.speed.family=pareto",
        "clients.speed.shape=1.5",
        "clients.speed.jitter=0.2",
        "stop.max_versions=8",
        "eval.every=4",
        "checkpoint.every=4",
        f"algorithm.name={name.split(':')[0]}",
        *ACROSS[name],
    )
    rows: list[dict] = []
    local, _ = run(tiny(*spread, "executors.backend=local"), on_evaluation=rows.append)
    assert [r["version"] for r in rows] == [0, 4, 8] and rows[1]["checkpoint"] is not None
    seen: list[dict] = []
    resumed, _ = run(
        tiny(*spread, "executors.num=2"), resume=rows[1]["checkpoint"], on_evaluation=seen.append
    )
    assert resumed["events"] == local["events"]
    assert [(m["version"], m["accuracy"], m["loss"]) for m in resumed["metrics"]] == [
        (m["version"], m["accuracy"], m["loss"]) for m in local["metrics"]
    ]
    np.testing.assert_array_equal(resumed["model"], local["model"])
    # From Ray too, on_evaluation sees every evaluation once, in order, as written.
    assert [(r["version"], r["accuracy"]) for r in seen] == [
        (m["version"], m["accuracy"]) for m in resumed["metrics"]
    ]
