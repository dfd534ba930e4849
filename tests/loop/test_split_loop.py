"""Split learning in whole runs, in-process (no Ray): SplitFed v1 is FedAvg on the whole model,
every job's bytes and duration by hand, CSE-FSL's client step is exactly SGD on its head's
loss, the server trains on activations in arrival order one client at a time, FSL-SAGE's
alignments, a resume mid-run, ``stop.max_bytes``, and the CLI and study commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import algorithms.split_rules as rules
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
from workloads.base import ParamLayout
from workloads.split import aux_model, split_model

# Shapes (28x28) with its CNN cut at flatten: 13248 client entries, 32*7*7 = 1568 activations.
SPLIT = (
    "executors.backend=local",
    "workload.name=shapes",
    "workload.train_samples=480",
    "workload.test_samples=100",
    "partition.name=iid",
    "clients.num=4",
    "algorithm.clients_per_round=4",
    "training.local_steps=3",
    "training.batch_size=16",
    "server.seconds_per_sample=0.002",
    "stop.max_versions=3",
    "eval.every=1",
)
CLIENT_BYTES, ACTIVATION_BYTES = 4 * 13248, 4 * 32 * 7 * 7


def tiny(*overrides: str) -> Config:
    return conftest.tiny(*SPLIT, *overrides)


def run(cfg: Config, **kw: Any) -> dict[str, Any]:
    result, _ = run_experiment(cfg, write=False, **kw)
    return result


def events(result: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(result["events"], columns=EVENTS_COLUMNS)


def test_splitfed_v1_is_fedavg_on_the_whole_model() -> None:
    """A server copy per client, trained on its activations and averaged with the client
    parts, is FedAvg's math; only the bytes and the timing differ."""
    split = run(tiny("algorithm.name=splitfed"))
    fedavg = run(tiny("algorithm.name=fedavg", "server.seconds_per_sample=0"))
    np.testing.assert_allclose(split["model"], fedavg["model"], rtol=0, atol=1e-6)
    assert split["summary"]["bytes_up"] != fedavg["summary"]["bytes_up"]


@pytest.mark.parametrize("name", ["splitfed", "splitfed_v2", "cse_fsl", "fsl_sage"])
def test_every_job_costs_its_bytes_and_time_by_hand(name: str) -> None:
    cfg = tiny(f"algorithm.name={name}", "stop.max_versions=1")
    result = run(cfg)
    delays, sps = DelayModel(cfg.clients, cfg.seed), 0.002
    ev = events(result)
    assert len(ev) == 4 and not ev.dropped.any()
    info = result["summary"]["algorithm_stats"]
    for e in ev.itertuples():
        compute = delays.compute_time(e.client, e.job, 48)  # 3 steps of 16 of a 120-example shard
        if name.startswith("splitfed"):
            trip_up, trip_down = 16 * (ACTIVATION_BYTES + 8), 16 * ACTIVATION_BYTES
            assert (e.bytes_up, e.bytes_down) == (CLIENT_BYTES + 3 * trip_up, CLIENT_BYTES + 3 * trip_down)
            cut = _cut(cfg)
            expected = (
                delays.download_time(e.client, CLIENT_BYTES)
                + compute * cut.client_fraction
                + 3 * delays.round_trip_time(e.client, trip_up, trip_down)
                + 48 * cut.server_fraction * sps
                + delays.upload_time(e.client, CLIENT_BYTES)
            )
            assert e.finish_time - e.dispatch_time == pytest.approx(expected, rel=1e-12)
        else:
            head = 4 * (1568 * 128 + 128 + 1290)
            streamed = 16 * (ACTIVATION_BYTES + 8)  # steps 0 of 3 with Q=5: one upload
            aux_up = head if name == "cse_fsl" else 0
            assert (e.bytes_up, e.bytes_down) == (CLIENT_BYTES + aux_up + streamed, CLIENT_BYTES + aux_up)
    if name == "splitfed_v2":  # clients in turn: each job starts when the one before ends
        order = ev.sort_values("dispatch_time")
        assert order.client.tolist() == sorted(order.client)
        assert (order.dispatch_time.to_numpy()[1:] == order.finish_time.to_numpy()[:-1]).all()
    if name in ("cse_fsl", "fsl_sage"):
        assert info["server_steps"] == 4  # one logged batch per job
        # the version appears when the server has trained on the last job's activations
        assert result["summary"]["sim_time"] >= ev.finish_time.max()


def _cut(cfg: Config) -> rules.CutSizes:
    from algorithms import ALGORITHMS
    from engine.core.binding import bind_cut
    from workloads import WORKLOADS, DatasetMeta

    data = load_data(cfg)
    algorithm = ALGORITHMS["splitfed"](cfg.algorithm.params, cfg.training, data.shards.sizes)
    bind_cut(algorithm, WORKLOADS["shapes"](cfg.workload.params), DatasetMeta.of(data.dataset), cfg.seed)
    return algorithm.sizes()


def test_cse_fsl_client_step_is_sgd_on_the_head_loss() -> None:
    """With Q=1 the client part (and the head) descend cross-entropy of head(client(x)) exactly,
    and the server part is untouched by the job; every step's activations are logged."""
    cfg = tiny("algorithm.name=cse_fsl", "algorithm.upload_every=1")
    data, spec = load_data(cfg), ExecutorSpec.of(cfg)
    worker = Worker(0)
    worker.setup(spec, data)
    algorithm: Any = worker.algorithm
    start = worker.initial_params()
    head0 = algorithm.aux_init
    task = algorithm.base_task(1, aux=head0, train_aux=True, upload_every=1)[0]
    out = worker.compute([(JobSpec(0, 1, 0, task, 0), start)])[0]
    e = algorithm.sizes().client_entries
    assert not out.payload["delta"][e:].any()  # the server part did not move
    assert out.extra["rows"].tolist() == [16, 16, 16] and out.extra["z"].shape == (48, 1568)

    # by hand: the same minibatches (the job's keyed generator), plain SGD on both modules
    from engine.core.rng import int_seed
    from engine.worker.training import batch_indices

    model = worker.workload.model(worker.meta)
    ParamLayout.of(model).load(model, start)
    client, _ = split_model(model, "flatten")
    head = aux_model((1568,), 10, 128, seed=cfg.seed)
    ParamLayout.of(head).load(head, head0)
    idx_all = data.shards.shard(1)
    x = worker.workload.to_tensor(data.dataset.x_train[idx_all])
    y = torch.from_numpy(np.asarray(data.dataset.y_train[idx_all], dtype=np.int64))
    generator = torch.Generator().manual_seed(int_seed(cfg.seed, "train", 1, 0))
    params = [*client.parameters(), *head.parameters()]
    for idx in batch_indices(len(y), 3, 16, generator):
        loss = torch.nn.functional.cross_entropy(head(client(x[idx])), y[idx])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(0.05 * g)
    by_hand = ParamLayout.of(model).flatten(model)[:e]
    np.testing.assert_allclose(start[:e] - out.payload["delta"][:e], by_hand, rtol=0, atol=1e-6)
    np.testing.assert_allclose(head0 - out.extra["aux_delta"], ParamLayout.of(head).flatten(head), atol=1e-6)


def test_the_server_trains_on_each_client_in_arrival_order_one_at_a_time() -> None:
    """One shared server part: a server job per finished client job, queued in the order the
    jobs ended, each starting when the one before it is done."""
    cfg = tiny("algorithm.name=cse_fsl", "server.seconds_per_sample=0.5", "stop.max_versions=1")
    result = run(cfg)
    ends = sorted(events(result).finish_time)
    per_job = 16 * (1 - _cut(cfg).client_fraction) * 0.5  # one logged batch of 16 per job
    t = 0.0
    for end in ends:  # FIFO, capacity 1
        t = max(t, end) + per_job
    assert result["summary"]["sim_time"] == pytest.approx(t, rel=1e-12)
    assert result["summary"]["algorithm_stats"]["server_queue_seconds"] == pytest.approx(4 * per_job)


def test_fsl_sage_aligns_heads_and_resumes_exactly() -> None:
    spread = (
        "algorithm.name=fsl_sage",
        "algorithm.align_every=2",
        "algorithm.align_epochs=2",
        "algorithm.upload_every=2",
        "clients.speed.family=pareto",
        "clients.speed.jitter=0.2",
        "stop.max_versions=6",
        "eval.every=3",
        "checkpoint.every=3",
    )
    rows: list[dict[str, Any]] = []
    one = run(tiny(*spread), on_evaluation=rows.append)
    assert one["summary"]["algorithm_stats"]["aligned_heads"] == 4
    # the aligned head goes down once after each alignment (versions 2 and 4)
    down = events(one).groupby("version_start").bytes_down.sum()
    head = 4 * (1568 * 128 + 128 + 1290)
    assert down[2] - down[1] == down[4] - down[3] == 4 * head
    two = run(tiny(*spread), resume=rows[1]["checkpoint"])
    assert one["events"] == two["events"]
    np.testing.assert_array_equal(one["model"], two["model"])


def test_max_bytes_ends_the_run_after_the_round_that_crosses_it() -> None:
    first = run(tiny("algorithm.name=splitfed", "stop.max_versions=1"))
    per_round = first["summary"]["bytes_up"] + first["summary"]["bytes_down"]
    result = run(tiny("algorithm.name=splitfed", "stop.max_versions=0", f"stop.max_bytes={1.5 * per_round}"))
    assert result["summary"]["stop_reason"] == "max_bytes" and result["summary"]["versions"] == 2
    assert result["summary"]["bytes_up"] + result["summary"]["bytes_down"] == 2 * per_round


def test_runs_from_the_cli_and_the_study_command(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    # no workload named: split learning gets shapes, whose CNN it can cut
    args = ["algorithm.name=fsl_sage", "executors.backend=local", "stop.max_versions=1", "clients.num=10"]
    small = ("workload.train_samples=300", "workload.test_samples=100", "workload.side=16")
    assert cli.main([*args, *small, f"out_dir={out}", "--quiet"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["workload"]["name"] == "shapes"
    f = tmp_path / "s.yaml"
    f.write_text(
        "study:\n  algorithms:\n    v1: {name: splitfed}\n    cse: {name: cse_fsl}\n  seeds: [0]\n"
        "workload: {name: shapes, side: 16, train_samples: 200, test_samples: 50}\nclients: {num: 4}\n"
        "algorithm: {clients_per_round: 4}\nexecutors: {backend: local}\nstop: {max_versions: 2}\n"
    )
    assert study.main(["--config", str(f), f"out_dir={tmp_path / 'study'}", "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "study" / "comparison.csv")
    assert sorted(table.algorithm) == ["cse", "v1"]
    assert cli.main(["algorithm.name=splitfed", "workload.name=synthetic"]) == 2  # nothing to cut
    assert cli.main(["algorithm.name=fedavg", "server.seconds_per_sample=0.1"]) == 2  # no server part
