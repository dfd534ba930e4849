"""The algorithm contract: server-side state machine plus the client-side update.

An algorithm never sees Ray, wall clocks or scheduled finish times. The engine calls
it in virtual-time order with what has happened so far (no clairvoyance):

* ``init(model)`` -> state
* ``jobs(state, now, idle, rng)`` -> (state, jobs to dispatch now)
* ``on_update(state, update, now)`` -> state (a new global version when it aggregates)
* ``on_drop(state, client, now)`` -> state (a job produced no update: client unavailable)
* ``discard(state)`` -> (state, clients whose in-flight jobs the algorithm no longer wants)
* ``next_timer(state)`` / ``on_timer(state, now)`` for algorithms with deadlines or windows

State is an explicit frozen dataclass holding at least ``model`` (the flat float32
parameter vector) and ``version`` (bumped by one at every server update), so that
checkpointing is serialising it. Arrays in a state are never modified in place.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from algorithms.client import ClientData


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


@dataclass(frozen=True)
class Job:
    client: int
    task: Task
    # > 0: of the jobs returned with this quorum by one ``jobs`` call, only the first
    # ``quorum`` arrivals will be used (over-selection). The engine may then hold back
    # the rest and never compute them if ``discard`` drops them first.
    quorum: int = 0


@dataclass(frozen=True)
class ServerCost:
    """The server's own compute time per aggregation (config section ``server``), so that
    a synchronous round costs slowest client + aggregation, and algorithms that overlap
    aggregation with client work (PFL) can show it."""

    seconds_per_aggregation: float = 0.0
    seconds_per_update: float = 0.0  # per update aggregated
    seconds_per_mb: float = 0.0  # per MB of updates aggregated
    step_seconds: float = 0.0  # the optional server step after each aggregation (ServerStep)

    def __post_init__(self) -> None:
        for name in ("seconds_per_aggregation", "seconds_per_update", "seconds_per_mb", "step_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")

    @property
    def is_zero(self) -> bool:
        return not any(dataclasses.astuple(self))

    def aggregation_time(self, num_updates: int, update_bytes: int) -> float:
        return (
            self.seconds_per_aggregation
            + self.seconds_per_update * num_updates
            + self.seconds_per_mb * num_updates * update_bytes / 1e6
            + self.step_seconds
        )


class ServerStep(Protocol):
    """An optional server-side step on every new aggregate before it is published (e.g.
    fine-tuning on a server dataset): ``(aggregate, version it becomes) -> model``. Its
    virtual duration is ``ServerCost.step_seconds``; the engine provides it."""

    def __call__(self, model: np.ndarray, version: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Update:
    """A finished client job, handed to the algorithm in virtual-time order."""

    client: int
    delta: np.ndarray  # pseudo-gradient x^tau - y, float32, read-only
    num_samples: int  # size of the client's training shard
    version_start: int  # tau: the global version the job started from
    base: np.ndarray  # x^tau itself (read-only), for rules that mix with the stale base


@dataclass(frozen=True)
class ClientResult:
    """What the client-side update returns (on the executor)."""

    client_state: Any
    metrics: dict[str, float]


class AlgorithmState(Protocol):
    @property
    def model(self) -> np.ndarray: ...

    @property
    def version(self) -> int: ...


StateT = TypeVar("StateT", bound=AlgorithmState)


def sample_clients(rng: np.random.Generator, idle: np.ndarray, k: int) -> np.ndarray:
    """Uniformly sample ``min(k, len(idle))`` distinct clients, in draw order.

    Every algorithm samples through this one function so that two algorithms that
    should coincide (FedBuff with K = concurrency and FedAvg) draw the same clients.
    """
    k = min(k, len(idle))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    return np.asarray(rng.choice(idle, size=k, replace=False), dtype=np.int64)


class Algorithm(ABC, Generic[StateT]):
    """Base class. Subclasses set ``name`` and ``Params`` (a frozen dataclass)."""

    name: ClassVar[str]
    Params: ClassVar[type]
    description: ClassVar[str] = ""  # one line for --list
    # Whether the algorithm models the server's own time (ServerCost) and runs the
    # server step; the engine refuses a server cost for the others instead of ignoring it.
    models_server_time: ClassVar[bool] = False

    def __init__(
        self,
        params: Any,
        training: LocalTraining,
        client_sizes: np.ndarray,
        server_cost: ServerCost | None = None,
        server_step: ServerStep | None = None,
    ) -> None:
        self.params = params
        self.training = training
        self.client_sizes = np.asarray(client_sizes, dtype=np.int64)
        self.server_cost = server_cost or ServerCost()
        self.server_step = server_step

    def refine(self, model: np.ndarray, version: int) -> np.ndarray:
        """``model`` after the server step, if one is configured (see ServerStep)."""
        return model if self.server_step is None else self.server_step(model, version)

    @property
    def num_clients(self) -> int:
        return len(self.client_sizes)

    def task_for(self, client: int) -> Task:
        """The default task: the configured local training on this client's shard."""
        t = self.training
        batch = t.batch_size_of(client)
        return Task(
            steps=t.steps_for(int(self.client_sizes[client]), batch),
            batch_size=batch,
            lr=t.lr,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
        )

    # ---- server side -------------------------------------------------------------
    @abstractmethod
    def init(self, model: np.ndarray) -> StateT: ...

    @abstractmethod
    def jobs(
        self, state: StateT, now: float, idle: np.ndarray, rng: np.random.Generator
    ) -> tuple[StateT, list[Job]]:
        """Jobs to start at ``now``. ``idle``: sorted ids of available clients with no
        job in flight. ``rng``: a stream keyed by this dispatch decision."""

    @abstractmethod
    def on_update(self, state: StateT, update: Update, now: float) -> StateT: ...

    @abstractmethod
    def on_drop(self, state: StateT, client: int, now: float) -> StateT:
        """A job of ``client`` ended without an update (the client became unavailable)."""

    def discard(self, state: StateT) -> tuple[StateT, list[int]]:
        """Clients whose in-flight jobs are no longer wanted (a round deadline passed, the
        over-selection quorum is full). Called after each instant's events; the engine
        drops those jobs (computing them not at all if it still can) and then reports
        nothing more about them."""
        return state, []

    def next_timer(self, state: StateT) -> float | None:
        """Virtual time of the algorithm's next timer event, if any."""
        return None

    def on_timer(self, state: StateT, now: float) -> StateT:
        return state

    def stats(self, state: StateT) -> dict[str, float]:
        """Algorithm-specific numbers for the progress bar and summary."""
        return {}

    # ---- client side (runs on an executor) ---------------------------------------
    def client_update(
        self,
        model: torch.nn.Module,
        data: ClientData,
        task: Task,
        client_state: Any,
        generator: torch.Generator,
    ) -> ClientResult:
        """Train ``model`` in place from the global version it was loaded with."""
        from algorithms.client import local_sgd

        loss = local_sgd(model, data, task, generator)
        return ClientResult(client_state=client_state, metrics={"train_loss": loss})
