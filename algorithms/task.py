"""What one client job computes (``Task``) and how clients train by default
(``LocalTraining``): plain data shared by the server-side contract (algorithms/base.py) and
the executor-side training code (engine/worker/training.py), so neither imports the other."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np


def check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    """One line naming the field, its choices and the bad value (every Params uses it)."""
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(allowed)} (got {value!r})")


CLIP_MODES = ("none", "fixed", "autoclip")
CLIP_NORMS_KEY = "clip_norms"  # a job's side upload with scope global: its steps' gradient norms
CLIP_SCOPES = ("client", "job", "global")


@dataclass(frozen=True)
class Clipping:
    """Gradient clipping of every local step (config section ``training.clip``).

    ``fixed`` clips each step's gradient to ``max_norm`` exactly as
    ``torch.nn.utils.clip_grad_norm_`` does. ``autoclip`` (Seetharaman et al. 2020) clips
    it to the ``percentile``-th percentile (NumPy's linear interpolation) of the history of
    gradient norms, the current step's included; ``percentile`` 100 is no clipping at all.
    ``scope`` is whose history that is: the client's, kept across its jobs as its client
    state (``client``), the job's own, empty at its start (``job``), or one history of all
    clients kept by the server (``global``: engine/core/clip_history.py). ``window`` > 0
    keeps only the last ``window`` norms (10000 in the reference's TensorFlow version); 0
    keeps them all (its PyTorch version). engine/worker/training.py ``GradClip`` applies it.
    """

    mode: str = "none"
    max_norm: float = 0.0  # mode fixed
    percentile: float = 10.0  # mode autoclip: 0 clips to the smallest norm seen, 100 is off
    scope: str = "client"  # mode autoclip: client | job | global (engine/core/clip_history.py)
    window: int = 0  # mode autoclip: norms kept; 0 keeps all

    def __post_init__(self) -> None:
        if self.mode not in CLIP_MODES:
            raise ValueError(f"mode must be one of {', '.join(CLIP_MODES)} (got {self.mode!r})")
        if self.scope not in CLIP_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(CLIP_SCOPES)} (got {self.scope!r})")
        if self.mode == "fixed" and not (math.isfinite(self.max_norm) and self.max_norm > 0):
            raise ValueError(f"max_norm must be a finite number > 0 with mode fixed (got {self.max_norm})")
        if not 0 <= self.percentile <= 100:  # NaN fails too
            raise ValueError(f"percentile must be in [0, 100] (got {self.percentile})")
        if self.window < 0:
            raise ValueError(f"window must be >= 0, 0 keeping every norm (got {self.window})")

    @property
    def enabled(self) -> bool:
        """Whether any step can be clipped (AutoClip at the 100th percentile never clips)."""
        return self.mode == "fixed" or (self.mode == "autoclip" and self.percentile < 100)

    @property
    def shares_history(self) -> bool:
        """Whether the AutoClip history is the server's, shared by all clients."""
        return self.enabled and self.mode == "autoclip" and self.scope == "global"

    @property
    def keeps_client_history(self) -> bool:
        """Whether the AutoClip history is the client's state, kept across its jobs."""
        return self.enabled and self.mode == "autoclip" and self.scope == "client"


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
    clip: Clipping = field(default_factory=Clipping)  # gradient clipping of each local step

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
    clip: Clipping = field(default_factory=Clipping)  # gradient clipping (LocalTraining.clip)
    # the server's AutoClip history at dispatch (scope global), not part of the task's identity
    clip_history: np.ndarray | None = field(default=None, compare=False, repr=False)

    def samples(self, shard_size: int) -> int:
        """Examples processed by the job: drives its virtual compute time. An epoch is
        ``ceil(n / batch)`` steps with a short last batch (``client.batch_indices``)."""
        if self.batch_size == 0 or self.batch_size >= shard_size:
            return self.steps * shard_size
        epochs, rest = divmod(self.steps, math.ceil(shard_size / self.batch_size))
        return epochs * shard_size + rest * self.batch_size


TaskT = TypeVar("TaskT", bound=Task)


def extend_task(task: Task, cls: type[TaskT], **extra: Any) -> TaskT:
    """``task`` as the subclass ``cls`` (a task that carries more to the client: SCAFFOLD's
    control variate, CMFL's signs, GWPF's down payload, HeteroFL's rate) with ``extra``."""
    return cls(**{f.name: getattr(task, f.name) for f in fields(Task)}, **extra)
