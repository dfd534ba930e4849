"""Server fine-tuning: SGD on a server dataset after every aggregation.

Config ``server.steps > 0`` holds ``server.data_samples`` training examples out of the
clients' data (a keyed random draw, before partitioning) and gives them to the server,
which trains each new aggregate on them for ``server.steps`` steps before publishing it
(server-side fine-tuning on proxy data, the simplest of the server-side methods that
distillation methods such as FedDF generalise). It lasts ``server.steps *
server.seconds_per_step`` virtual seconds on top of the aggregation time, so a
synchronous round pays it in full while PFL hides it behind client compute.

It is server work (engine/core/server_queue.py) that runs as a job on the executor pool
(or the in-process backend), so the loop goes on while it computes. It is deterministic:
a generator and torch's global seed keyed by (seed, version).
"""

from __future__ import annotations

import numpy as np

from algorithms.task import Task
from engine.core.rng import int_seed, stream
from workloads import DatasetMeta, ParamLayout, Workload


class FineTuner:
    """Local SGD on the server's own examples, from a model it is handed."""

    def __init__(
        self, workload: Workload, meta: DatasetMeta, x: np.ndarray, y: np.ndarray, seed: int
    ) -> None:
        import torch

        from engine.worker.training import ClientData

        self.torch = torch
        self.model = workload.model(meta)
        self.layout = ParamLayout.of(self.model)
        self.data = ClientData(
            x=workload.to_tensor(x), y=torch.from_numpy(np.asarray(y, dtype=np.int64)), loss_fn=workload.loss
        )
        self.seed = seed

    def __call__(self, model: np.ndarray, task: Task, version: int) -> np.ndarray:
        from engine.worker.training import local_sgd, seed_global

        self.layout.load(self.model, model)
        # Keyed like every other draw, so the result depends on nothing but the version.
        seed_global(int_seed(self.seed, "server_step_global", version), self.torch.device("cpu"))
        generator = self.torch.Generator().manual_seed(int_seed(self.seed, "server_step", version))
        local_sgd(self.model, self.data, task, generator)
        return self.layout.flatten(self.model)


def server_examples(num_train: int, num: int, seed: int) -> np.ndarray:
    """The sorted indices of the ``num`` training examples held out for the server."""
    if not 0 < num < num_train:
        raise ValueError(
            f"server.data_samples={num} must be below the {num_train} training examples; "
            "lower server.data_samples"
        )
    return np.sort(stream(seed, "server_data").choice(num_train, size=num, replace=False))
