"""The optional server step: SGD on a server dataset after every aggregation.

Config ``server.steps > 0`` holds ``server.data_samples`` training examples out of the
clients' data (a keyed random draw, before partitioning) and gives them to the server,
which trains each new aggregate on them for ``server.steps`` steps before publishing it
(server-side fine-tuning on proxy data, the simplest of the server steps that
distillation methods such as FedDF generalise). The step lasts ``server.steps *
server.seconds_per_step`` virtual seconds on top of the aggregation time, so a
synchronous round pays it in full while PFL hides it behind client compute.

It runs on the server actor itself: it is the server's own work, it is short by design
(a few minibatches), and keeping it off the executors keeps their queues about clients.
It is deterministic: one thread, and a generator keyed by (seed, version).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from algorithms.base import ServerStep, Task
from engine.rng import int_seed, stream
from workloads import Dataset, DatasetMeta, ParamLayout, Workload

if TYPE_CHECKING:
    from engine.sections import ServerConfig


class ServerTrainer:
    """``ServerStep`` as local SGD on the server's own examples."""

    def __init__(
        self,
        workload: Workload,
        meta: DatasetMeta,
        x: np.ndarray,
        y: np.ndarray,
        cfg: ServerConfig,
        seed: int,
    ) -> None:
        import torch

        from algorithms.client import ClientData

        torch.set_num_threads(1)  # the server's share of the machine; also keeps results exact
        self.torch = torch
        self.model = workload.model(meta)
        self.layout = ParamLayout.of(self.model)
        self.data = ClientData(
            x=workload.to_tensor(x), y=torch.from_numpy(np.asarray(y, dtype=np.int64)), loss_fn=workload.loss
        )
        self.task = Task(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr)
        self.seed = seed

    def __call__(self, model: np.ndarray, version: int) -> np.ndarray:
        from algorithms.client import local_sgd

        self.layout.load(self.model, model)
        generator = self.torch.Generator().manual_seed(int_seed(self.seed, "server_step", version))
        local_sgd(self.model, self.data, self.task, generator)
        return self.layout.flatten(self.model)


def hold_out(dataset: Dataset, num: int, seed: int) -> tuple[Dataset, np.ndarray]:
    """(the dataset without ``num`` random training examples, their indices in it)."""
    n = len(dataset.y_train)
    if not 0 < num < n:
        raise ValueError(
            f"server.data_samples={num} must be below the {n} training examples; lower server.data_samples"
        )
    server_idx = np.sort(stream(seed, "server_data").choice(n, size=num, replace=False))
    keep = np.ones(n, dtype=bool)
    keep[server_idx] = False
    natural = dataset.natural_partition
    if natural is not None:
        # Renumber each client's indices into the reduced training set.
        new_index = np.cumsum(keep) - 1
        natural = [new_index[p[keep[p]]] for p in natural]
    clients = replace(
        dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep], natural_partition=natural
    )
    return clients, server_idx


def server_step(
    cfg: ServerConfig, workload: Workload, dataset: Dataset, seed: int
) -> tuple[Dataset, ServerStep | None]:
    """(the clients' dataset, the server step) for ``cfg``; no step when ``cfg.steps`` is 0."""
    if cfg.steps == 0:
        return dataset, None
    clients, idx = hold_out(dataset, cfg.data_samples, seed)
    x, y = dataset.x_train[idx], dataset.y_train[idx]
    return clients, ServerTrainer(workload, DatasetMeta.of(dataset), x, y, cfg, seed)
