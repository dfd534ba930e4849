"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``): a head and two GPU
worker nodes (fake GPUs), one CPU each. An experiment spread over the nodes gives the
results of one on a single node; a sweep runs across them; a worker node lost mid-run
does not lose the run (its executor is replaced on a node with room, its jobs re-run)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import fedray
from engine.config import Config, load_config
from engine.experiment import run_experiment
from engine.runtime.connect import resolve_executors
from tests.conftest import tiny, workers_at_normal_priority

pytestmark = [pytest.mark.engine]

COMMON = ("clients.speed.family=lognormal", "clients.speed.jitter=0.3", "stop.max_versions=15")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from engine.runtime.connect import token_auth

    token_auth()  # as the engine does when it starts Ray
    with workers_at_normal_priority():
        yield from _cluster()


def _cluster() -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):  # the GPU worker type of cluster.yaml, in miniature
        c.add_node(num_cpus=1, num_gpus=1, resources={"gpu_node": 1})
    ray.init(address=c.address, logging_level="ERROR")
    c.wait_for_nodes()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


class ExecutorNodes:
    """An on_progress hook that records which node each executor of the run is on."""

    def __init__(self, executors: int) -> None:
        self.executors = executors
        self.nodes: dict[int, str] = {}

    def __call__(self, info: dict[str, Any]) -> None:
        import ray

        if self.nodes or info.get("phase") != "running":
            return
        for i in range(self.executors):
            actor = ray.get_actor(f"fedray-{info['run_id']}-executor-{i}")
            self.nodes[i] = ray.get(actor.ready.remote())["node"]


def frames(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    metrics = pd.read_csv(path / "metrics.csv").drop(columns=["wall_time"])
    return metrics, pd.read_csv(path / "events.csv")


def run(cfg: Config, **hooks: Any) -> tuple[dict[str, Any], Path]:
    result, path = run_experiment(cfg, **hooks)
    assert path is not None
    return result, path


@pytest.fixture(scope="module")
def one_node(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one executor, so one node."""
    _, path = run(tiny(*COMMON, "executors.num=1", f"out_dir={tmp_path_factory.mktemp('one') / 'r'}"))
    return path


def test_spread_over_nodes_gives_the_same_results(cluster: Any, one_node: Path, tmp_path: Path) -> None:
    import ray

    assert ray.cluster_resources()["GPU"] == 2 and len(ray.nodes()) == 3
    # The GPU check of engine.run sees the workers' GPUs (the check itself runs no GPU code).
    assert resolve_executors(tiny("executors.num=2", "executors.num_gpus=0.5")) == 2
    where = ExecutorNodes(3)
    _, path = run(tiny(*COMMON, "executors.num=3", f"out_dir={tmp_path / 'spread'}"), on_progress=where)
    assert len(set(where.nodes.values())) == 3  # one CPU per node: one executor on each
    for ref, spread in zip(frames(one_node), frames(path), strict=True):
        pd.testing.assert_frame_equal(ref, spread, check_exact=True)


def test_sweep_across_nodes(cluster: Any, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "experiment: {clients.num: 12, training.local_steps: 5, training.batch_size: 10, "
        "stop.max_versions: 9, eval.every: 3, executors.num: 1}\n"
        "space: {training.lr: {grid: [0.03, 0.1]}}\n"
    )
    out = tmp_path / "out"
    table, folder = fedray.sweep(space, out_dir=str(out))  # the Python API (engine/api.py)
    assert folder == out and table.equals(pd.read_csv(out / "trials.csv"))
    assert table.status.tolist() == ["completed", "completed"] and set(table["training.lr"]) == {0.03, 0.1}
    assert load_config(out / "best.yaml").training.lr == table.iloc[0]["training.lr"]


def test_worker_node_lost_mid_run(cluster: Any, one_node: Path, tmp_path: Path) -> None:
    """Two executors on three one-CPU nodes: remove a worker node that hosts one once the
    run is under way; its replacement starts on the node with room and the run ends with
    the reference's results."""
    import ray

    head = ray.get_runtime_context().get_node_id()
    removed: list[str] = []
    where = ExecutorNodes(2)

    def remove_a_node(info: dict[str, Any]) -> None:
        where(info)
        if removed or info.get("version", 0) < 3:
            return
        victim = next(n for n in where.nodes.values() if n != head)
        node = next(n for n in cluster.worker_nodes if n.node_id == victim)
        cluster.remove_node(node)
        removed.append(victim)

    result, path = run(
        tiny(*COMMON, "executors.num=2", f"out_dir={tmp_path / 'lost'}"), on_progress=remove_a_node
    )
    assert removed and result["summary"]["executors_replaced"] >= 1
    for ref, lost in zip(frames(one_node), frames(path), strict=True):
        pd.testing.assert_frame_equal(ref, lost, check_exact=True)


def test_a_plug_in_travels_to_the_executors_with_py_modules(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The algorithm lives in a package that only the driver can import; Ray ships it to
    the server and the executors (on every node) through ``ray.py_modules``."""
    package = tmp_path / "nova_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    examples = Path(__file__).resolve().parents[2] / "examples"
    (package / "fednova.py").write_text((examples / "fednova.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))  # the driver validates the config with it
    import ray

    address = cluster.address
    cfg = tiny(
        *COMMON,
        "algorithm.name=nova_plugin.fednova:FedNova",
        f"ray.py_modules=[{package}]",
        f"ray.address={address}",
    )
    ray.shutdown()  # the engine attaches itself, with the runtime environment
    try:
        result, _ = run_experiment(cfg, write=False)
    finally:
        ray.init(address=address, logging_level="ERROR")  # as the fixture left it
    assert result["summary"]["versions"] == 15
    local, _ = run_experiment(replace(cfg, executors=replace(cfg.executors, backend="local")), write=False)
    assert result["events"] == local["events"]  # the same algorithm ran, wherever it ran
