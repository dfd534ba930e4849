"""A run's data as the server prepares it: the workload's dataset, the examples held out
for server fine-tuning (when configured), the clients' shards and local test splits.

A workload that makes each client's data from the client id alone (``on_demand``, e.g.
synthetic) is not loaded at all: its shards are ``GeneratedShards``, made by the executor
that runs a job, so memory does not grow with the population."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.core.evaluation import split_local_test
from engine.core.rng import stream
from engine.worker.finetune import server_examples
from workloads import WORKLOADS, Dataset, DatasetMeta, Workload
from workloads.partition import partition

if TYPE_CHECKING:
    from engine.config import Config


@dataclass(frozen=True)
class ShardIndex:
    """Every client's training indices, flattened: client i owns
    ``indices[offsets[i]:offsets[i + 1]]``. One array pair instead of 10,000 small
    arrays keeps the object store and pickling cheap."""

    indices: np.ndarray
    offsets: np.ndarray

    @staticmethod
    def of(shards: list[np.ndarray]) -> ShardIndex:
        sizes = np.array([len(s) for s in shards], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = np.concatenate(shards).astype(np.int64) if shards else np.empty(0, np.int64)
        return ShardIndex(flat, offsets)

    def shard(self, client: int) -> np.ndarray:
        return self.indices[self.offsets[client] : self.offsets[client + 1]]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class GeneratedShards:
    """Shards made when a job needs them, by the workload, from the client id: nothing is
    held per client but its number of examples."""

    workload: Workload
    seed: int
    sizes: np.ndarray

    def examples(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of ``client``'s training examples."""
        x, y = self.workload.client_shard(self.seed, client)  # type: ignore[attr-defined]
        return x, y


def on_demand(workload: Workload) -> bool:
    """Whether ``workload`` makes each client's shard from its id (its ``on_demand`` param)."""
    return bool(getattr(workload.params, "on_demand", False))


@dataclass(frozen=True)
class RunData:
    """Everything an executor needs of a run's data, as one object (put in Ray's object
    store once). Every index is into ``dataset``'s training set."""

    dataset: Dataset
    shards: ShardIndex | GeneratedShards
    local_test: ShardIndex | None = None
    server_idx: np.ndarray | None = None  # the server's fine-tuning examples


def load_data(cfg: Config) -> RunData:
    """The run's data; deterministic in the seed. Examples held out for the server are
    taken before partitioning, so the clients' shards never contain them."""
    workload = WORKLOADS[cfg.workload.name](cfg.workload.params)
    if on_demand(workload):  # engine/config/checks.py refused what needs the examples up front
        sizes = workload.shard_sizes(cfg.clients.num, cfg.seed)  # type: ignore[attr-defined]
        held_out = workload.held_out(cfg.clients.num, cfg.seed)  # type: ignore[attr-defined]
        return RunData(held_out, GeneratedShards(workload, cfg.seed, sizes))
    dataset = workload.load(cfg.clients.num, cfg.seed)
    y, natural = dataset.y_train, dataset.natural_partition
    server_idx = kept = None
    if cfg.server.steps > 0:
        server_idx = server_examples(len(y), cfg.server.data_samples, cfg.seed)
        keep = np.ones(len(y), dtype=bool)
        keep[server_idx] = False
        kept = np.flatnonzero(keep)
        if natural is not None:  # renumber each client's indices into the reduced set
            new_index = np.cumsum(keep) - 1
            natural = [new_index[p[keep[p]]] for p in natural]
        y = y[keep]
    shards = partition(cfg.partition, y, cfg.clients.num, dataset.num_classes, cfg.seed, natural=natural)
    if kept is not None:
        shards = [kept[s] for s in shards]  # back to indices into the whole training set
    if cfg.executors.stack > 1:
        check_stackable(cfg, workload, dataset)
    local_test = None
    if cfg.eval.local_test_fraction > 0:
        shards, held = split_local_test(
            shards, cfg.eval.local_test_fraction, lambda c: stream(cfg.seed, "local_test", c)
        )
        local_test = ShardIndex.of(held)
    return RunData(dataset, ShardIndex.of(shards), local_test, server_idx)


def check_stackable(cfg: Config, workload: Workload, dataset: Dataset) -> None:
    """executors.stack needs a model of linear layers (engine/worker/stacked.py): say so
    before any job runs, naming what is in the way."""
    from engine.config import ConfigError
    from engine.worker.stacked import unstackable_layers

    others = unstackable_layers(workload.model(DatasetMeta.of(dataset)))
    if others:
        raise ConfigError(
            f"executors.stack={cfg.executors.stack} trains jobs together as one vmapped computation, "
            f"which fedray does for linear layers only; the {cfg.workload.name} model has "
            f"{', '.join(others)}: set executors.stack=1"
        )
