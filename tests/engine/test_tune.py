"""Sweeps on Ray Tune: validation before anything starts, ranking (time to target, trials
that never reach it), ASHA early stopping, placement inside each trial's placement group,
the results folder (table, best.yaml, plot), a failed trial resumed from its checkpoint,
and PBT continuing a trial from another's checkpoint."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from engine.config import load_config
from engine.config.sweep_space import list_spaces, load_sweep
from engine.experiment import run_experiment
from engine.report.sweep_report import trial_rows
from engine.tune import main

pytestmark = [pytest.mark.engine]

EXPERIMENT = """
experiment:
  workload.name: synthetic
  clients.num: 12
  training: {local_steps: 5, batch_size: 10}
  stop.max_versions: 12
  eval.every: 3
  executors.num: 1
"""


def space(tmp_path: Path, body: str, name: str = "space.yaml") -> str:
    path = tmp_path / name
    path.write_text(EXPERIMENT + body)
    return str(path)


def actors() -> list[dict[str, Any]]:
    """Every actor of this Ray with its placement group and bundle index. Ray has no
    public API for an actor's placement without the dashboard, so read the GCS table."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    out = []
    for raw in state._connect_and_get_accessor().get_actor_table(None, None):
        a = gcs_pb2.ActorTableData.FromString(raw)
        group = a.placement_group_id.hex()
        bundles = {
            int(k.split("_")[2])
            for k in a.required_resources
            if k.startswith("bundle_group_") and k.count("_") == 3
        }
        out.append(
            {
                "id": a.actor_id.hex(),
                "cls": a.class_name,
                "pid": a.pid,
                "alive": a.state == gcs_pb2.ActorTableData.ActorState.Value("ALIVE"),
                "group": group,
                "bundle": bundles.pop() if bundles else None,
            }
        )
    return out


# ---- validation: no Ray needed, nothing written -------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("space: {training.lrr: {loguniform: [0.01, 1]}}", "unknown key 'training.lrr' (did you mean 'lr'?)"),
        ("space: {training.lr: {loguniform: [0, 1]}}", "loguniform needs low > 0"),
        ("space: {training.lr: {uniform: [0.01]}}", "give one of {choice: [...]}"),
        # the range's low end is fine, the high end is not: both are built
        ("space: {eval.every: {choice: [3, 0]}}", "space key 'eval.every' = 0: eval.every must be >= 1"),
        # an int key given a float range: the value in between fails to build
        ("space: {training.local_steps: {uniform: [2, 8]}}", "training.local_steps must be int"),
        ("space: {out_dir: {choice: [a, b]}}", "cannot vary per trial"),
        ("metrc: accuracy\nspace: {seed: {grid: [0, 1]}}", "unknown sweep setting 'metrc'"),
        ("num_samples: many\nspace: {seed: {grid: [0, 1]}}", "num_samples must be int"),
        ("metric: time_to_target\nspace: {seed: {grid: [0, 1]}}", "needs a target: set stop.target_accuracy"),
        ("metric: local_accuracy\nspace: {seed: {grid: [0, 1]}}", "set eval.local_test_fraction (e.g. 0.2)"),
        ("search: grid\nspace: {training.lr: {uniform: [0.01, 1]}}", "search grid needs finite dimensions"),
        (
            "scheduler: pbt\nspace: {algorithm.name: {choice: [fedavg, fedbuff]}}",
            "pbt cannot vary algorithm.name",
        ),
    ],
)
def test_bad_space_fails_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    out = tmp_path / "out"
    assert main(["--space", space(tmp_path, body), f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedray: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_bad_override_and_missing_extra_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = space(tmp_path, "space: {seed: {grid: [0, 1]}}")
    assert main(["--space", path, "clients.nmu=3"]) == 2
    assert "base experiment: unknown key 'clients.nmu'" in capsys.readouterr().err
    assert main(["--space", path, "tune.serch=grid"]) == 2
    assert "unknown sweep setting 'serch'" in capsys.readouterr().err
    if importlib.util.find_spec("optuna") is None:
        assert main(["--space", path, "tune.search=optuna"]) == 2
        assert "pip install 'fedray[optuna]'" in capsys.readouterr().err


def test_shipped_spaces_validate() -> None:
    """Every shipped space builds all its probe trials (bases resolve from the repo)."""
    names = [name for name, _ in list_spaces()]
    assert {"fedavg", "fedprox", "fedbuff", "fedasync", "fedcompass", "stragglers"} <= set(names)
    for name in names:
        sweep = load_sweep(name, [], "/nonexistent/{name}")
        assert sweep.dimensions, name


# ---- sweeps on a local Ray -------------------------------------------------------------------


class FakeResult:
    """What trial_rows reads of a Tune Result."""

    def __init__(self, lr: float, reports: list[dict[str, Any]], error: Exception | None = None) -> None:
        self.config = {"training.lr": lr}
        self.metrics = {**reports[-1], "trial_id": f"t{lr}"} if reports else {}
        self.metrics_dataframe = pd.DataFrame(reports)
        self.error = error
        self.path = f"/storage/t{lr}"


def test_time_to_target_ranks_trials_that_never_reach_it_last(tmp_path: Path) -> None:
    body = "metric: time_to_target\nspace: {training.lr: {uniform: [0.01, 1]}}"
    sweep = load_sweep(space(tmp_path, body), ["stop.target_accuracy=0.7"], str(tmp_path / "out"))

    def reports(acc: float, ttt: float, done: int = 1) -> list[dict[str, Any]]:
        row = {"version": 12, "sim_time": 9.0, "wall_time": 3.0, "loss": 1.0}
        first = {**row, "accuracy": 0.1, "best_accuracy": 0.1, "time_to_target": math.inf, "run_done": 0}
        return [
            first,
            {**row, "accuracy": acc, "best_accuracy": acc, "time_to_target": ttt, "run_done": done},
        ]

    grid = [
        FakeResult(0.01, reports(0.6, math.inf)),  # never reached, but the most accurate of those
        FakeResult(0.02, reports(0.5, math.inf)),
        FakeResult(0.03, reports(0.8, 5.0)),
        FakeResult(0.04, reports(0.7, 2.0, done=0)),  # stopped early by a scheduler, after reaching it
        FakeResult(0.05, [], error=RuntimeError("boom")),
    ]
    table = trial_rows(sweep, grid)
    assert table["training.lr"].tolist() == [0.04, 0.03, 0.01, 0.02, 0.05]
    assert table.status.tolist() == ["stopped early", "completed", "completed", "completed", "error"]
    assert table["rank"].tolist() == [1, 2, 3, 4, 5]
    assert table.time_to_target.tolist()[:2] == [2.0, 5.0] and table.time_to_target[2:].isna().all()
    assert table.best_accuracy.tolist()[:4] == [0.7, 0.8, 0.6, 0.5]


@pytest.mark.usefixtures("ray_local")
def test_asha_stops_a_poor_trial_early(tmp_path: Path) -> None:
    """One trial at a time, the good one first: at the first rung (version 3) the poor
    one is below the rung's median and ASHA stops it; the good one runs to the end.
    Also: the results folder, Tune's storage elsewhere, and where the actors ran.

    Nothing here depends on timing. max_concurrent=1 lets the search create the second
    trial only once the first has completed, and the grid creates lr 0.1 first. A Tune
    function trial reports synchronously: each report waits until the scheduler has
    decided on it, and the run's evaluations come in version order, each reported. So
    ASHA sees all of the good trial's rungs before the poor trial's first report, and
    the poor trial's evaluation at version 3 is the one it is judged on. Virtual time
    makes every accuracy the same on every run."""
    body = """
scheduler: asha
reduction_factor: 2
grace_period: 3
max_concurrent: 1
space:
  training.lr: {grid: [0.1, 0.0005]}
"""
    before = {a["id"] for a in actors()}
    out, store = tmp_path / "out", tmp_path / "store"  # Tune's storage elsewhere (as s3:// would be)
    args = ["--quiet", "stop.max_versions=18", f"out_dir={out}", f"tune.storage_path={store}"]
    assert main(["--space", space(tmp_path, body), *args]) == 0
    table = pd.read_csv(out / "trials.csv").set_index("training.lr")
    assert all(Path(d).parent.parent == store / "out" for d in table.run_dir)
    assert not (out / "trials").exists()
    assert table.loc[0.1, "status"] == "completed" and table.loc[0.1, "version"] == 18
    assert table.loc[0.0005, "status"] == "stopped early" and table.loc[0.0005, "version"] == 3
    assert not (Path(table.loc[0.0005, "run_dir"]) / "metrics.csv").exists()
    # What ASHA saw: every evaluation of the good trial (and its final report), then the
    # poor trial's first two. At version 3, the first rung, the poor one (still near chance:
    # 10 classes) is far below the good one, the rung's cutoff.
    good_seen, poor_seen = (
        pd.read_csv(Path(table.loc[lr, "run_dir"]).parent / "progress.csv") for lr in (0.1, 0.0005)
    )
    assert good_seen.version.tolist() == [0, 3, 6, 9, 12, 15, 18, 18]
    assert poor_seen.version.tolist() == [0, 3] and poor_seen.timestamp.min() >= good_seen.timestamp.max()
    assert poor_seen.accuracy.iloc[1] < 0.1 and good_seen.accuracy.iloc[1] > 0.4
    # The table's figures are the trial's own run results (synced by Tune).
    good = table.loc[0.1]
    metrics = pd.read_csv(Path(good.run_dir) / "metrics.csv").dropna(subset=["accuracy"])
    assert metrics.accuracy.iloc[-1] == pytest.approx(good.accuracy) and good.accuracy <= good.best_accuracy
    best = load_config(out / "best.yaml")
    assert best.training.lr == 0.1 and best.stop.max_versions == 18 and best.clients.num == 12
    assert yaml.safe_load((out / "summary.json").read_text())["best"]["params"] == {"training.lr": 0.1}
    assert (out / "sweep.png").stat().st_size > 5000

    # Each trial's server and executor ran in a trial's placement group, each pinned to
    # its own bundle: the server 1, the executor 2 (bundle 0 is the Tune trial process;
    # Tune reuses it and its group for the next trial, so two trials may share a group).
    new = [a for a in actors() if a["id"] not in before]
    placed = [(a["cls"], a["group"], a["bundle"]) for a in new if a["cls"] in ("Server", "Executor")]
    servers = [g for c, g, _ in placed if c == "Server"]
    assert len(servers) == 2
    assert {(c, b) for c, _, b in placed} == {("Server", 1), ("Executor", 2)}
    assert {g for _, g, _ in placed} == set(servers)  # executors sit in the trials' groups
    # One server per trial, but one executor for both: the trial process set its executor
    # up again for the second trial instead of starting another (and importing torch again).
    assert [c for c, _, _ in placed].count("Executor") == 1


@pytest.mark.usefixtures("ray_local")
def test_failed_trial_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """The trial's server process is killed once the trial has saved a checkpoint. With
    max_failures=1 Tune runs the trial again from that checkpoint, and the run ends with
    exactly the results of one that never failed. Its target is out of reach: it has no
    time to target, and ranks nonetheless."""
    body = """
max_failures: 1
metric: time_to_target
space:
  seed: {choice: [3]}
"""
    overrides = ["stop.max_versions=30", "checkpoint.every=3", "stop.target_accuracy=0.99"]
    sweep = load_sweep(space(tmp_path, body), overrides, str(tmp_path / "unused"))
    out = tmp_path / "out"
    killed: list[int] = []
    stop = threading.Event()

    def kill_after_a_checkpoint() -> None:
        while not stop.wait(0.05) and not any((out / "trials").glob("*/checkpoint_*")):
            pass
        for a in actors():  # the trial's server: the reference run's is in no placement group
            if a["cls"] == "Server" and a["alive"] and a["pid"] and int(a["group"] or "0", 16):
                os.kill(a["pid"], signal.SIGKILL)
                killed.append(a["pid"])

    killer = threading.Thread(target=kill_after_a_checkpoint, daemon=True)
    killer.start()
    with ThreadPoolExecutor(1) as pool:  # the reference run, meanwhile on the other core
        ref_cfg = sweep.trial_config({"seed": 3}, out_dir=str(tmp_path / "ref"))
        reference = pool.submit(run_experiment, ref_cfg)
        try:
            assert main(["--space", space(tmp_path, body), "--quiet", *overrides, f"out_dir={out}"]) == 0
        finally:
            stop.set()
            killer.join()
        _, ref = reference.result()
    assert len(killed) == 1
    (row,) = pd.read_csv(out / "trials.csv").itertuples()
    assert row.status == "completed" and row.version == 30 and pd.isna(row.time_to_target)
    reported = pd.read_csv(Path(row.run_dir).parent / "progress.csv").version.tolist()
    assert reported.count(0) == 1 and reported[-1] == 30  # resumed, not started over
    for name in ("metrics.csv", "events.csv"):
        a, b = (pd.read_csv(Path(d) / name) for d in (ref, row.run_dir))
        wall = [c for c in a.columns if c == "wall_time"]
        pd.testing.assert_frame_equal(a.drop(columns=wall), b.drop(columns=wall), check_exact=True)


@pytest.mark.usefixtures("ray_local")
def test_pbt_continues_a_poor_trial_from_a_good_one(tmp_path: Path) -> None:
    """Two trials, a poor learning rate and a good one, perturbed together at version 12:
    the poor trial goes on from the good one's checkpoint (its model and all)."""
    body = """
scheduler: pbt
synch: true
perturbation_interval: 12
space:
  training.lr: {grid: [0.0005, 0.1]}
"""
    out = tmp_path / "out"
    assert main(["--space", space(tmp_path, body), "--quiet", "stop.max_versions=18", f"out_dir={out}"]) == 0
    table = pd.read_csv(out / "trials.csv")
    assert table.status.tolist() == ["completed", "completed"] and (table.version == 18).all()
    # Alone, lr 0.0005 stays near chance (3-4% at version 18); from the good model it does not.
    assert table.accuracy.min() > 0.5
    # The grid's first trial started with lr 0.0005 (the table shows the final, perturbed configs).
    first = table.sort_values("trial_id").run_dir.iloc[0]
    poor = pd.read_csv(Path(first).parent / "progress.csv").accuracy.tolist()
    cut = next(i for i, acc in enumerate(poor) if acc > 0.5)  # where it took the good model
    assert cut >= 4 and max(poor[:cut]) < 0.1 and min(poor[cut:]) > 0.5  # v0..v12 its own, then not
