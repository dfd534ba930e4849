"""A run's data as the server prepares it: the workload's dataset, the server's held-out
examples (when a server step is configured), and the clients' shards."""

from __future__ import annotations

from typing import TYPE_CHECKING

from algorithms.base import ServerStep
from engine.executor import ShardIndex
from engine.server_step import server_step
from workloads import WORKLOADS, Dataset
from workloads.partition import partition

if TYPE_CHECKING:
    from engine.config import Config


def load_data(cfg: Config) -> tuple[Dataset, ShardIndex, ServerStep | None]:
    """(the clients' dataset, their shards, the server step or None); deterministic in the seed."""
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
    return dataset, ShardIndex.of(shards), step
