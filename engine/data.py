"""A run's data as the server prepares it: the workload's dataset, the server's held-out
examples (when a server step is configured), and the clients' shards."""

from __future__ import annotations

from typing import TYPE_CHECKING

from algorithms.base import ServerStep
from engine.evaluation import split_local_test
from engine.executor import ShardIndex
from engine.rng import stream
from engine.server_step import server_step
from workloads import WORKLOADS, Dataset, DatasetMeta, Workload
from workloads.partition import partition

if TYPE_CHECKING:
    from engine.config import Config


def load_data(cfg: Config) -> tuple[Dataset, ShardIndex, ShardIndex | None, ServerStep | None]:
    """(the clients' dataset, their training shards, their local test splits or None, the
    server step or None); deterministic in the seed."""
    workload = WORKLOADS[cfg.workload.name](cfg.workload.params)
    dataset, step = server_step(cfg.server, workload, workload.load(cfg.clients.num, cfg.seed), cfg.seed)
    shards = partition(
        cfg.partition,
        dataset.y_train,
        cfg.clients.num,
        dataset.num_classes,
        cfg.seed,
        natural=dataset.natural_partition,
    )
    if cfg.executors.stack > 1:
        check_stackable(cfg, workload, dataset)
    local_test = None
    if cfg.eval.local_test_fraction > 0:
        shards, held = split_local_test(
            shards, cfg.eval.local_test_fraction, lambda c: stream(cfg.seed, "local_test", c)
        )
        local_test = ShardIndex.of(held)
    return dataset, ShardIndex.of(shards), local_test, step


def check_stackable(cfg: Config, workload: Workload, dataset: Dataset) -> None:
    """executors.stack needs a model of linear layers (algorithms/stacked.py): say so
    before any job runs, naming what is in the way."""
    from algorithms.stacked import unstackable_layers
    from engine.config import ConfigError

    others = unstackable_layers(workload.model(DatasetMeta.of(dataset)))
    if others:
        raise ConfigError(
            f"executors.stack={cfg.executors.stack} trains jobs together as one vmapped computation, "
            f"which fedray does for linear layers only; the {cfg.workload.name} model has "
            f"{', '.join(others)}: set executors.stack=1"
        )
