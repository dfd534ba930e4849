"""The loop's rules, in-process (executors.backend=local, no Ray): exact equalities,
stops, drops, availability, over-selection, deadlines, stacking and resume for every
heterogeneity algorithm. The Ray tier (tests/engine/) checks that the Ray backend gives
the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from algorithms.base import Update
from algorithms.fedavg import FedAvg, FedAvgState
from engine.config import Config, ConfigError
from engine.core.rng import int_seed
from engine.experiment import run_experiment
from engine.worker.data import load_data
from tests import conftest
from workloads import WORKLOADS, DatasetMeta, ParamLayout


def tiny(*overrides: str) -> Config:
    return conftest.tiny("executors.backend=local", *overrides)


def run(cfg: Config, tmp_path: Path | None = None, **kw):  # type: ignore[no-untyped-def]
    assert cfg.executors.backend == "local"
    result, path = run_experiment(cfg, write=tmp_path is not None, **kw)
    return result, path


def frames(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    metrics = pd.read_csv(path / "metrics.csv").drop(columns=["wall_time"])
    events = pd.read_csv(path / "events.csv")
    return metrics, events


def _pooled_gd(cfg: Config, steps: int) -> np.ndarray:
    """Centralised gradient descent on the union of the clients' shards, same init."""
    workload = WORKLOADS[cfg.workload.name](cfg.workload.params)
    loaded = load_data(cfg)
    data, idx = loaded.dataset, loaded.shards.indices
    torch.manual_seed(int_seed(cfg.seed, "init"))
    model = workload.model(DatasetMeta.of(data))
    x = workload.to_tensor(data.x_train[idx])
    y = torch.from_numpy(data.y_train[idx])
    opt = torch.optim.SGD(model.parameters(), lr=cfg.training.lr)
    for _ in range(steps):
        opt.zero_grad()
        workload.loss(model(x), y).backward()
        opt.step()
    return ParamLayout.of(model).flatten(model)


def test_fedavg_one_full_batch_step_equals_gradient_descent() -> None:
    cfg = tiny(
        "algorithm.name=fedavg",
        "algorithm.clients_per_round=12",
        "algorithm.weighting=samples",
        "training.local_steps=1",
        "training.batch_size=0",
        "training.lr=0.5",
        "stop.max_versions=3",
    )
    result, _ = run(cfg)
    np.testing.assert_allclose(result["model"], _pooled_gd(cfg, steps=3), atol=1e-6, rtol=0)


def test_fedbuff_with_k_equal_concurrency_reproduces_fedavg() -> None:
    # Equal delays: same speed, and 5 steps x batch 5 stays within every shard (>= 40 examples),
    # so every job processes the same number of examples.
    equal = (
        "clients.speed.family=constant",
        "clients.speed.jitter=0",
        "clients.network.sigma=0",
        "training.batch_size=5",
        "stop.max_versions=6",
        "eval.every=1",
    )
    fedavg, _ = run(
        tiny(*equal, "algorithm.name=fedavg", "algorithm.clients_per_round=4", "algorithm.weighting=uniform")
    )
    fedbuff, _ = run(
        tiny(
            *equal,
            "algorithm.name=fedbuff",
            "algorithm.concurrency=4",
            "algorithm.buffer_size=4",
            "algorithm.staleness=const",
        )
    )
    np.testing.assert_allclose(fedbuff["model"], fedavg["model"], atol=1e-6, rtol=0)
    acc_a = [m["accuracy"] for m in fedavg["metrics"]]
    acc_b = [m["accuracy"] for m in fedbuff["metrics"]]
    assert acc_a == pytest.approx(acc_b, abs=1e-6) and len(acc_a) == 7
    assert [e[:3] for e in fedbuff["events"]] == [
        e[:3] for e in fedavg["events"]
    ]  # same clients, jobs, versions
    assert fedbuff["summary"]["mean_staleness"] == 0.0


def test_local_test_splits_are_scored_and_batch_sizes_differ_by_client(tmp_path: Path) -> None:
    cfg = tiny(
        "eval.local_test_fraction=0.25",
        "training.epochs=1",
        "training.batch_sizes=[4,16]",
        "stop.max_versions=4",
        f"out_dir={tmp_path / 'run'}",
    )
    result, path = run(cfg, tmp_path)
    workload = WORKLOADS[cfg.workload.name](cfg.workload.params)
    loaded = load_data(cfg)
    data, shards, local_test = loaded.dataset, loaded.shards, loaded.local_test
    assert local_test is not None
    # Every client trains on 3/4 of its shard and is scored on the rest, disjointly.
    assert np.array_equal(local_test.sizes, (shards.sizes + local_test.sizes) // 4)
    assert not set(shards.indices) & set(local_test.indices)
    # Each job ran one epoch of its shard at its client's batch size (4 or 16, round-robin).
    events = pd.read_csv(path / "events.csv")
    batch = np.where(events.client % 2 == 0, 4, 16)
    assert events.local_steps.tolist() == np.ceil(shards.sizes[events.client] / batch).astype(int).tolist()
    # The final model scored independently on each client's split: the mean over clients.
    model = workload.model(DatasetMeta.of(data))
    ParamLayout.of(model).load(model, result["model"])
    with torch.no_grad():
        splits = [local_test.shard(c) for c in range(cfg.clients.num)]
        hits = [
            model(workload.to_tensor(data.x_train[i])).argmax(1).numpy() == data.y_train[i] for i in splits
        ]
    per_client = [float(np.mean(h)) for h in hits]
    last = result["metrics"][-1]
    assert last["local_accuracy"] == pytest.approx(np.mean(per_client), abs=1e-9)
    assert last["local_accuracy_p10"] == pytest.approx(np.percentile(per_client, 10), abs=1e-9)
    assert result["summary"]["final_local_accuracy"] == last["local_accuracy"]
    written = pd.read_csv(path / "metrics.csv")
    assert {"local_accuracy", "local_accuracy_p10", "local_loss"} <= set(written.columns)


def test_stacked_jobs_are_close_to_one_at_a_time(tmp_path: Path) -> None:
    common = ("algorithm.name=fedavg", "algorithm.clients_per_round=8", "stop.max_versions=4", "eval.every=2")
    runs = {}
    for name, stack in (("stacked", "executors.stack=3"), ("plain", "executors.stack=1")):
        runs[name] = run(tiny(*common, stack, f"out_dir={tmp_path / name}"), tmp_path)
    stacked, plain = runs["stacked"][0]["model"], runs["plain"][0]["model"]
    # Batched kernels round differently from one job at a time, and only that.
    np.testing.assert_allclose(stacked, plain, atol=1e-5, rtol=0)
    assert not np.array_equal(stacked, plain)


def test_partial_sums_give_the_per_update_run_up_to_float64_rounding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds of 7 summed 3 at a time (groups 3 + 3 + 1) with dropout: every update
    arrives in a partial sum, and the run has the same jobs, the same events (one row per
    job, bytes as uploaded) and a model within rounding of the run that sends each update."""
    summed_updates: list[bool] = []
    on_update = FedAvg.on_update

    def spy(self: FedAvg, state: FedAvgState, update: Update, now: float) -> FedAvgState:
        summed_updates.append(update.partial is not None and update.delta.size == 0)
        return on_update(self, state, update, now)

    monkeypatch.setattr(FedAvg, "on_update", spy)
    common = (
        "algorithm.name=fedavg",
        "algorithm.clients_per_round=7",
        "clients.availability.dropout=0.2",
        "stop.max_versions=6",
    )
    runs = {}
    for name in ("summed", "each"):
        k = 3 if name == "summed" else 0
        runs[name] = run(tiny(*common, f"executors.partial_sums={k}", f"out_dir={tmp_path / name}"), tmp_path)
    (summed, summed_path), (each, each_path) = runs["summed"], runs["each"]
    a, b = frames(summed_path)[1], frames(each_path)[1]
    assert len(a) == len(b) == summed["summary"]["updates_applied"] + summed["summary"]["jobs_dropped"]
    assert a.dropped.sum() > 0
    pd.testing.assert_frame_equal(a.drop(columns="train_loss"), b.drop(columns="train_loss"))
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-5)
    np.testing.assert_allclose(summed["model"], each["model"], atol=1e-6, rtol=0)
    n = summed["summary"]["updates_applied"]
    assert summed_updates == [True] * n + [False] * n  # the summed run's, then the other's


def test_stacking_a_convolutional_model_is_refused_in_one_line() -> None:
    # Found by the server once it has the data (the model's input shape), raised in the driver.
    with pytest.raises(ConfigError, match=r"the shapes model has Conv2d, MaxPool2d: set executors\.stack=1$"):
        run(tiny("workload.name=shapes", "workload.train_samples=200", "executors.stack=4"))


def test_target_accuracy_stops_at_the_first_version_reaching_it() -> None:
    cfg = tiny("stop.max_versions=60", "eval.every=2", "stop.target_accuracy=0.3", "training.lr=0.2")
    result, _ = run(cfg)
    s = result["summary"]
    assert s["stop_reason"] == "target_accuracy"
    accs = [m["accuracy"] for m in result["metrics"]]
    assert accs[-1] >= 0.3 and all(a < 0.3 for a in accs[:-1])
    assert s["time_to_target"] == result["metrics"][-1]["sim_time"]


def test_dropout_and_availability_produce_dropped_jobs_and_the_run_goes_on() -> None:
    cfg = tiny("clients.availability.dropout=0.3", "algorithm.name=fedavg", "algorithm.clients_per_round=6")
    result, _ = run(cfg)
    s = result["summary"]
    assert s["jobs_dropped"] > 0 and s["versions"] == 12
    dropped = [e for e in result["events"] if e[9] == 1]
    assert all(e[7] == 0 for e in dropped)  # nothing uploaded by a dropped job


def test_periodic_availability_is_respected_at_dispatch_and_finish() -> None:
    from engine.core.delays import DelayModel

    cfg = tiny(
        "clients.availability.mode=periodic",
        "clients.availability.period=0.5",
        "clients.availability.on_fraction=0.6",
        "clients.speed.seconds_per_sample=0.002",
    )
    result, _ = run(cfg)
    delays = DelayModel(cfg.clients, cfg.seed)
    events = result["events"]
    assert result["summary"]["versions"] == 12
    for client, _job, _v, dispatched, finished, *_rest, dropped, _rejected, _loss in events:
        assert delays.is_available(client, dispatched)  # never dispatched to an offline client
        assert bool(dropped) == (not delays.is_available(client, finished))  # lost iff offline at finish
    assert any(e[9] for e in events) and not all(e[9] for e in events)


def test_over_selection_never_computes_the_discarded_stragglers() -> None:
    # 1.5 x 4 = 6 clients per round, the first 4 arrivals kept: the 2 slowest of every
    # round are dropped, and the engine holds them back so they are never trained.
    cfg = tiny(
        "algorithm.name=fedavg",
        "algorithm.clients_per_round=4",
        "algorithm.over_selection=1.5",
        "clients.speed.family=tiers",
        "clients.speed.tier_fractions=[0.5,0.5]",
        "clients.speed.tier_factors=[1,10]",
        "stop.max_versions=8",
    )
    result, _ = run(cfg)
    s = result["summary"]
    assert s["versions"] == 8 and s["updates_applied"] == 8 * 4
    assert s["jobs_discarded"] == 7 * 2  # the last round's 2 leftovers are still in flight at the stop
    assert s["engine"]["jobs"] == 8 * 4  # only the kept jobs ever reached an executor
    # Each round ends with its 4th arrival, and the discarded jobs end there too.
    ev = pd.DataFrame(result["events"]).rename(columns={4: "finish", 9: "dropped", 2: "version"})
    for _v, rnd in ev[ev.version < 7].groupby("version"):  # every round but the last, cut by the stop
        kept, dropped = rnd[rnd.dropped == 0], rnd[rnd.dropped == 1]
        assert len(kept) == 4 and len(dropped) == 2
        assert (dropped.finish == kept.finish.max()).all()


def test_round_deadline_drops_late_clients() -> None:
    # Fast tier: ~0.15 s per job; slow tier (10x compute): ~0.6 s. A 0.3 s deadline keeps
    # the fast clients of every round and drops the slow ones.
    cfg = tiny(
        "algorithm.name=fedavg",
        "algorithm.clients_per_round=6",
        "algorithm.deadline=0.3",
        "clients.speed.family=tiers",
        "clients.speed.tier_fractions=[0.5,0.5]",
        "clients.speed.tier_factors=[1,10]",
        "stop.max_versions=5",
    )
    result, _ = run(cfg)
    ev = pd.DataFrame(result["events"]).rename(columns={3: "dispatch", 4: "finish", 9: "dropped"})
    assert result["summary"]["versions"] == 5 and result["summary"]["jobs_discarded"] > 0
    took = ev.finish - ev.dispatch
    assert (took[ev.dropped == 0] <= 0.3).all()  # no kept update came after its deadline
    assert took[ev.dropped == 1].to_numpy() == pytest.approx(0.3)  # the late ones end at it


def test_a_deadline_no_client_meets_stops_as_stalled() -> None:
    cfg = tiny("algorithm.name=fedavg", "algorithm.clients_per_round=6", "algorithm.deadline=0.01")
    result, _ = run(cfg)
    s = result["summary"]
    assert s["stop_reason"].startswith("stalled") and s["versions"] == 0 and s["updates_applied"] == 0


HETEROGENEITY = {
    "fedasync": ("algorithm.concurrency=4",),
    "fedfix": ("algorithm.delta_t=0.2",),
    "fedcompass": ("algorithm.q_max=10", "algorithm.q_min=2"),
    "fedat": ("algorithm.num_tiers=2", "algorithm.clients_per_tier_round=3"),
    "pfl": ("algorithm.max_lost=2", "server.seconds_per_aggregation=0.05", "server.steps=2"),
    "vpfl": ("server.seconds_per_aggregation=0.05",),
}


RESUMED = {  # algorithm states with more in them: a buffer, server optimizer moments
    "fedbuff": ("algorithm.concurrency=6", "algorithm.buffer_size=3"),
    "fedadam": ("algorithm.clients_per_round=4", "algorithm.server_lr=0.05"),
    # stacks of 4 + 2 in flight at the checkpoint: recomputed in their slots, same bits
    "fedavg:stacked": ("algorithm.clients_per_round=6", "executors.stack=4"),
    # groups of 3 + 3 + 1 in flight at the checkpoint: recomputed, they sum again alike
    "fedavg:summed": ("algorithm.clients_per_round=7", "executors.partial_sums=3"),
}


@pytest.mark.parametrize("name", [*RESUMED, *sorted(HETEROGENEITY)])
def test_identical_when_resumed_from_a_checkpoint(name: str) -> None:
    """The second run resumes from the first run's checkpoint at version 4, with jobs in
    flight, and ends exactly as the uninterrupted run."""
    spread = (
        "clients.speed.family=pareto",
        "clients.speed.shape=1.5",
        "clients.speed.jitter=0.2",
        "stop.max_versions=8",
        "eval.every=4",
        "checkpoint.every=4",
        f"algorithm.name={name.split(':')[0]}",
        *{**HETEROGENEITY, **RESUMED}[name],
    )
    rows: list[dict] = []
    one, _ = run(tiny(*spread), on_evaluation=rows.append)
    assert [r["version"] for r in rows] == [0, 4, 8]
    assert rows[0]["checkpoint"] is None and rows[2]["checkpoint"] is None  # none at 0 or at the end
    two, _ = run(tiny(*spread), resume=rows[1]["checkpoint"])
    # It did resume: versions 0 and 4 come from the first run's recorder, wall times and
    # all (a fresh run would have its own). (Counting jobs sent to executors instead was
    # flaky: how many go out before a run stops depends on timing.)
    wall = [(m["version"], m["wall_time"]) for m in one["metrics"][:2]]
    assert [(m["version"], m["wall_time"]) for m in two["metrics"][:2]] == wall
    assert two["metrics"][2]["wall_time"] != one["metrics"][2]["wall_time"]
    assert one["summary"]["versions"] == 8
    assert one["events"] == two["events"]
    assert [(m["version"], m["accuracy"], m["loss"]) for m in one["metrics"]] == [
        (m["version"], m["accuracy"], m["loss"]) for m in two["metrics"]
    ]
    np.testing.assert_array_equal(one["model"], two["model"])
