"""HeteroFL in whole runs, in-process (executors.backend=local, no Ray): determinism, every
job's bytes and duration from its sub-model, rate 1 for everyone is the FedAvg run, resume
from a checkpoint, job results independent of what an executor ran before, the CLI and the
study command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from algorithms.task import Task
from engine import run as cli
from engine import study
from engine.config import Config
from engine.core.backend import JobSpec
from engine.core.delays import DelayModel
from engine.core.recorder import EVENTS_COLUMNS
from engine.experiment import run_experiment
from engine.worker.data import load_data
from engine.worker.worker import ExecutorSpec, Worker
from tests import conftest
from workloads.models import MLP, forward_flops, narrow

# An MLP 60-16-16-10 on Synthetic: 1418 entries; at rate 0.5 (8 units a layer) 650.
HETERO = (
    "algorithm.name=heterofl",
    "algorithm.clients_per_round=4",
    "algorithm.rates=[1.0,0.5]",
    "clients.speed.family=tiers",
    "clients.speed.tier_fractions=[0.5,0.5]",
    "clients.speed.tier_factors=[1,4]",
)
FULL, HALF = 1418, 650
MLP_16 = "workload.hidden=[16,16]"
SHAPES = ("workload.name=shapes", "workload.train_samples=600", "workload.test_samples=100")


def tiny(*overrides: str) -> Config:
    return conftest.tiny("executors.backend=local", *overrides)


def run(cfg: Config, **kw: Any) -> dict[str, Any]:
    result, _ = run_experiment(cfg, write=False, **kw)
    return result


def scores(result: dict[str, Any]) -> list[tuple[int, float, float]]:
    return [(m["version"], m["accuracy"], m["loss"]) for m in result["metrics"]]


def test_runs_are_deterministic_and_every_job_costs_its_sub_model() -> None:
    cfg = tiny(*HETERO, MLP_16)
    one, two = run(cfg), run(cfg)
    assert one["events"] == two["events"] and scores(one) == scores(two)
    np.testing.assert_array_equal(one["model"], two["model"])
    assert one["model"].size == FULL and scores(one)[-1][2] < scores(one)[0][2]  # it learns

    delays = DelayModel(cfg.clients, cfg.seed)
    sizes = load_data(cfg).shards.sizes
    slow = {c for c in range(12) if delays.speed_factor[c] == 4}
    assert len(slow) == 6
    full = MLP(60, (16, 16), 10)
    fraction = forward_flops(narrow(full, 0.5), (60,)) / forward_flops(full, (60,))
    assert fraction == 2 * (60 * 8 + 8 * 8 + 8 * 10) / (2 * (60 * 16 + 16 * 16 + 16 * 10))  # 1248 / 2752
    events = pd.DataFrame(one["events"], columns=EVENTS_COLUMNS)
    assert len(events) == 48 and not events.dropped.any()
    for e in events.itertuples():
        entries = HALF if e.client in slow else FULL
        assert e.bytes_down == e.bytes_up == 4 * entries
        task = Task(steps=5, batch_size=10, lr=0.05)
        compute = delays.compute_time(e.client, e.job, task.samples(int(sizes[e.client])))
        if e.client in slow:
            compute *= fraction
        down, up = delays.download_time(e.client, e.bytes_down), delays.upload_time(e.client, e.bytes_up)
        assert abs(e.finish_time - e.dispatch_time - (down + compute + up)) < 1e-12
    s = one["summary"]
    assert s["bytes_up"] == s["bytes_down"] == int(events.bytes_up.sum())
    assert s["algorithm_stats"]["mean_rate"] == (events.bytes_up == 4 * FULL).mean() * 0.5 + 0.5


def test_rate_one_for_everyone_is_the_fedavg_run() -> None:
    common = ("algorithm.clients_per_round=4", MLP_16)
    hetero = run(tiny(*common, "algorithm.name=heterofl", "algorithm.rates=[1.0]"))
    fedavg = run(tiny(*common, "algorithm.name=fedavg"))
    assert hetero["events"] == fedavg["events"] and scores(hetero) == scores(fedavg)
    np.testing.assert_array_equal(hetero["model"], fedavg["model"])


def test_identical_when_resumed_from_a_checkpoint() -> None:
    spread = (
        *HETERO,
        "algorithm.rate_mode=random",
        "algorithm.proportions=[1,3]",
        "algorithm.mask_classifier=true",
        "partition.name=shards",
        "partition.classes_per_client=2",
        *SHAPES,
        "clients.speed.jitter=0.2",
        "stop.max_versions=8",
        "eval.every=4",
        "checkpoint.every=4",
    )
    rows: list[dict[str, Any]] = []
    one = run(tiny(*spread), on_evaluation=rows.append)
    assert [r["version"] for r in rows] == [0, 4, 8] and rows[1]["checkpoint"] is not None
    two = run(tiny(*spread), resume=rows[1]["checkpoint"])
    assert one["events"] == two["events"] and scores(one) == scores(two)
    np.testing.assert_array_equal(one["model"], two["model"])
    assert one["summary"]["algorithm_stats"] == two["summary"]["algorithm_stats"]
    # random rates with chances 1:3, and every upload carries its 10 class flags
    ups = {e[7] for e in one["events"]}
    assert len(ups) == 2 and all((up - 10) % 4 == 0 for up in ups)
    assert 0.5 < one["summary"]["algorithm_stats"]["mean_rate"] < 1.0


def test_a_job_does_not_depend_on_what_its_executor_ran_before() -> None:
    """Executors keep one narrow module per rate and build it off torch's stream: a job gives
    the same upload on a fresh executor as on one that ran other rates' jobs first (as with
    any number of executors sharing a run's jobs)."""
    # pfl-research's CNN: its dropout draws from torch's global stream, which the job seeds
    cnn = ("workload.model=cifar_cnn", "workload.side=32", "workload.channels=3")
    cfg = tiny(*HETERO, *SHAPES, *cnn)
    data, spec = load_data(cfg), ExecutorSpec.of(cfg)

    def job(uid: int, client: int, rate: float) -> JobSpec:
        from algorithms.heterofl import WidthTask

        return JobSpec(uid, client, 0, WidthTask(steps=3, batch_size=8, lr=0.05, rate=rate), 0)

    fresh, used = Worker(0), Worker(0)
    fresh.setup(spec, data)
    used.setup(spec, data)
    start = fresh.initial_params()
    used.compute([(job(1, 3, 1.0), start)])
    used.compute([(job(2, 5, 0.5), start)])
    a = fresh.compute([(job(3, 7, 0.5), start)])[0]
    b = used.compute([(job(3, 7, 0.5), start)])[0]
    np.testing.assert_array_equal(a.payload["delta"], b.payload["delta"])
    assert a.bytes_up == b.bytes_up < 4 * start.size


def test_runs_from_the_cli_and_the_study_command(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["--config", "configs/heterofl.yaml", "stop.max_versions=4", "eval.every=2", "clients.num=12"]
    assert cli.main([*args, "--quiet", f"out_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "heterofl" and summary["versions"] == 4
    assert 0.25 <= summary["algorithm_stats"]["mean_rate"] <= 1.0
    spec = tmp_path / "study.yaml"
    spec.write_text(
        "study:\n"
        "  algorithms:\n"
        "    fedavg: {name: fedavg, clients_per_round: 4}\n"
        "    heterofl: {name: heterofl, clients_per_round: 4, rates: [1.0, 0.5]}\n"
        "  profiles:\n"
        "    tiers: {speed: {family: tiers, tier_fractions: [0.5, 0.5], tier_factors: [1, 4]}}\n"
        "  seeds: [0]\n"
        "workload: {name: synthetic, hidden: [16, 16]}\n"
        "clients: {num: 12}\n"
        "training: {local_steps: 5, batch_size: 10, lr: 0.05}\n"
        "stop: {max_versions: 4}\n"
        "eval: {every: 2}\n"
        "executors: {backend: local}\n"
    )
    assert study.main(["--config", str(spec), "--quiet", f"out_dir={tmp_path / 'study'}"]) == 0
    table = pd.read_csv(tmp_path / "study" / "comparison.csv").set_index("algorithm")
    assert set(table.index) == {"fedavg", "heterofl"} and (table.versions == 4).all()
    assert table.loc["fedavg", "bytes_total"] == 4 * 4 * 2 * 4 * FULL
    # the slow tier's sub-models cost less both ways, and so does the round: less virtual time
    assert table.loc["heterofl", "bytes_total"] < table.loc["fedavg", "bytes_total"]
    assert table.loc["heterofl", "sim_time"] < table.loc["fedavg", "sim_time"]
