"""What one client job computes (``Task``) and how clients train by default
(``LocalTraining``): plain data shared by the server-side contract (algorithms/base.py) and
the executor-side training code (engine/worker/training.py), so neither imports the other."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LocalTraining:
    """How clients train locally (config section ``training``).

    ``batch_sizes`` gives clients different batch sizes (devices with more or less
    memory): client ``i`` uses ``batch_sizes[i % len(batch_sizes)]``, so each size serves
    an equal share of clients. Client ids carry no other meaning (speeds and shards are
    drawn independently of them), so this split is as good as a random one and needs no
    stream. Empty: every client uses ``batch_size``. A client's compute time follows its
    own batch, since virtual time is charged per example (``Task.samples``).
    """

    local_steps: int = 10
    epochs: float = 0.0  # > 0 overrides local_steps: ceil(epochs * shard / batch) steps
    batch_size: int = 32  # 0 means full batch
    batch_sizes: tuple[int, ...] = ()  # per-client batch sizes, round-robin by client id
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, 0 meaning full batch (got {self.batch_size})")
        if any(b < 0 for b in self.batch_sizes):
            sizes = list(self.batch_sizes)
            raise ValueError(f"batch_sizes must all be >= 0, 0 meaning full batch (got {sizes})")

    def batch_size_of(self, client: int) -> int:
        """Client ``client``'s batch size (0 means full batch)."""
        return self.batch_sizes[client % len(self.batch_sizes)] if self.batch_sizes else self.batch_size

    def steps_for(self, num_samples: int, batch_size: int) -> int:
        """Local steps a client with ``num_samples`` examples runs for one job at
        ``batch_size`` (its ``batch_size_of``)."""
        if self.epochs <= 0:
            return self.local_steps
        batch = num_samples if batch_size == 0 else min(batch_size, num_samples)
        return max(1, math.ceil(self.epochs * num_samples / max(1, batch)))


@dataclass(frozen=True)
class Task:
    """What one client job computes; travels to the executor with the job."""

    steps: int
    batch_size: int  # 0 means full batch
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0  # FedProx proximal term; 0 is plain local SGD

    def samples(self, shard_size: int) -> int:
        """Examples processed by the job: drives its virtual compute time. An epoch is
        ``ceil(n / batch)`` steps with a short last batch (``client.batch_indices``)."""
        if self.batch_size == 0 or self.batch_size >= shard_size:
            return self.steps * shard_size
        epochs, rest = divmod(self.steps, math.ceil(shard_size / self.batch_size))
        return epochs * shard_size + rest * self.batch_size
