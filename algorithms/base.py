"""The algorithm contract: server-side state machine plus the client-side update.

An algorithm never sees Ray, wall clocks or scheduled finish times. The engine calls
it in virtual-time order with what has happened so far (no clairvoyance):

* ``init(model)`` -> state
* ``jobs(state, now, idle, rng)`` -> (state, jobs to dispatch now); a job may state its
  own cost (``JobCost``: bytes, share of the compute, blocking round trips)
* ``on_update(state, update, now)`` -> state (a new global version when it aggregates)
* ``on_drop(state, client, now)`` -> state (a job produced no update: client unavailable)
* ``discard(state)`` -> (state, clients whose in-flight jobs the algorithm no longer wants)
* ``next_timer(state)`` / ``on_timer(state, now)`` for algorithms with deadlines or windows
* ``server_jobs(state)`` -> (state, server work to run) / ``on_server_job(state, job,
  model, now)``: the server's own work (aggregation time, fine-tuning) as jobs with a
  virtual duration on the engine's server queue

Client side (on an executor): ``client_update`` trains the model; ``encode`` turns the
update into the payload that is uploaded (a dense delta by default; codecs send less), and
``decode`` (server side) turns it back into the delta the algorithm aggregates.

State is an explicit frozen dataclass holding at least ``model`` (the flat float32
parameter vector) and ``version`` (bumped by one at every server update), so that
checkpointing is serialising it. Arrays in a state are never modified in place.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

import algorithms.codecs as codecs
from algorithms.idle import IdleClients
from algorithms.job import Job, JobCost, Payload, ServerCost, ServerJob, payload_bytes
from algorithms.partial_sums import PartialSum
from algorithms.task import CLIP_NORMS_KEY, LocalTraining, Task

if TYPE_CHECKING:
    import torch

    from algorithms.privacy import Spending
    from engine.worker.training import ClientData

__all__ = [
    "Algorithm",
    "ClientResult",
    "Job",
    "JobCost",
    "LocalTraining",
    "Payload",
    "ServerCost",
    "ServerJob",
    "Task",
    "Update",
    "payload_bytes",
]


@dataclass(frozen=True)
class Update:
    """A finished client job, handed to the algorithm in virtual-time order."""

    client: int
    delta: np.ndarray  # pseudo-gradient x^tau - y, float32, read-only (the decoded payload)
    num_samples: int  # size of the client's training shard
    version_start: int  # tau: the global version the job started from
    base: np.ndarray  # x^tau itself (read-only), for rules that mix with the stale base
    payload: Payload = field(default_factory=dict)  # what was uploaded, as encoded
    extra: Payload = field(default_factory=dict)  # uploaded beside it (ClientResult.extra)
    # Summed on its executor with other jobs of its aggregate (executors.partial_sums):
    # ``delta`` is then empty and the sum holds it (algorithms/partial_sums.py).
    partial: PartialSum | None = None


@dataclass(frozen=True)
class ClientResult:
    """What the client-side update returns (on the executor)."""

    client_state: Any
    metrics: dict[str, float]
    # False: the client declines to upload (CMFL's irrelevant update); the job then sends
    # ``SKIPPED_UPLOAD``, no bytes, and the algorithm's ``decode``/``on_update`` see it.
    upload: bool = True
    # Arrays uploaded beside the update (``Update.extra``): AutoClip's norms with scope global
    # for the engine (engine/core/clip_history.py), split learning's activations for the
    # algorithm. Charged on the upload, unless the job's cost states its bytes itself.
    extra: Payload = field(default_factory=dict)


SKIPPED_UPLOAD_KEY = "skipped"


def skipped_upload() -> Payload:
    """The upload of a job whose client declined to send its update: no bytes."""
    return {SKIPPED_UPLOAD_KEY: np.zeros(0, dtype=np.uint8)}


def is_skipped(payload: Payload) -> bool:
    return SKIPPED_UPLOAD_KEY in payload


class AlgorithmState(Protocol):
    @property
    def model(self) -> np.ndarray: ...

    @property
    def version(self) -> int: ...


StateT = TypeVar("StateT", bound=AlgorithmState)


def sample_clients(rng: np.random.Generator, idle: IdleClients | np.ndarray, k: int) -> np.ndarray:
    """Uniformly sample ``min(k, len(idle))`` distinct clients, in draw order.

    Every algorithm samples through this one function so that two algorithms that
    should coincide (FedBuff with K = concurrency and FedAvg) draw the same clients. An
    array draws as ``rng.choice(idle, k, replace=False)``; the engine's ``IdleClients``
    draws the same clients without listing the population (algorithms/idle.py).
    """
    view = idle if isinstance(idle, IdleClients) else IdleClients.of(idle)
    return view.sample(rng, k)


class Algorithm(ABC, Generic[StateT]):
    """Base class. Subclasses set ``name`` and ``Params`` (a frozen dataclass)."""

    name: ClassVar[str]
    Params: ClassVar[type]
    description: ClassVar[str] = ""  # one line for --list
    # Whether the algorithm models the server's own time (ServerCost) and runs the
    # server fine-tuning; the engine refuses a server cost for the others instead of ignoring it.
    models_server_time: ClassVar[bool] = False
    # Whether an overridden ``client_update`` still trains through this class's (local SGD
    # with the task's momentum, weight decay and clipping), so every training option holds.
    default_local_training: ClassVar[bool] = False
    # The workload a config that names none gets (None: the engine's default, synthetic).
    default_workload: ClassVar[str | None] = None

    def __init__(
        self,
        params: Any,
        training: LocalTraining,
        client_sizes: np.ndarray,
        server_cost: ServerCost | None = None,
    ) -> None:
        self.params = params
        self.training = training
        self.client_sizes = np.asarray(client_sizes, dtype=np.int64)
        self.server_cost = server_cost or ServerCost()

    @classmethod
    def partial_sums_refusal(cls, params: Any) -> str:
        """Why executors may not sum this algorithm's updates (``executors.partial_sums``),
        or "" when its aggregate is a weighted mean of them that ``summand_weight`` weighs."""
        return f"{cls.name} handles each update on its own"

    def summand_weight(self, num_samples: int) -> float:
        """An update's weight in a partial sum (on the executor; only where it may be summed)."""
        raise TypeError(f"{self.name} aggregates no partial sums")

    def aggregation_job(
        self, key: int, model: np.ndarray, num_updates: int, update_bytes: int
    ) -> ServerJob | None:
        """The server work that turns an aggregate into version ``key``: its aggregation
        time and, if configured, fine-tuning; None when it costs nothing (publish at once)."""
        cost = self.server_cost
        seconds = cost.aggregation_time(num_updates, update_bytes)
        if seconds <= 0 and not cost.finetune:
            return None
        return ServerJob(key, seconds, model, finetune=cost.finetune)

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
            clip=t.clip,
        )

    # ---- server side -------------------------------------------------------------
    @abstractmethod
    def init(self, model: np.ndarray) -> StateT: ...

    @abstractmethod
    def jobs(
        self, state: StateT, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[StateT, list[Job]]:
        """Jobs to start at ``now``. ``idle``: the available clients with no job in
        flight, sorted (algorithms/idle.py: sample with ``sample_clients``, which does not
        list a large population; iterating lists it). ``rng``: a stream keyed by this
        dispatch decision."""

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

    def server_jobs(self, state: StateT) -> tuple[StateT, list[ServerJob]]:
        """Server work to start now (called after each instant's dispatch); each comes
        back through ``on_server_job`` when it ends."""
        return state, []

    def on_server_job(self, state: StateT, job: ServerJob, model: np.ndarray, now: float) -> StateT:
        """``job`` ended at ``now``; ``model`` is its model, fine-tuned if it asked."""
        raise TypeError(f"{self.name} asked for no server work")

    def server_update(
        self, model: torch.nn.Module, inputs: Payload, key: int, generator: torch.Generator
    ) -> np.ndarray:
        """The result of a ``ServerJob`` with ``compute`` (on the executor pool): ``model`` is
        loaded with the job's model; return the array ``on_server_job`` receives."""
        raise TypeError(f"{self.name} computes no server work")

    def stats(self, state: StateT) -> dict[str, float]:
        """Algorithm-specific numbers for the progress bar and summary."""
        return {}

    def privacy_spent(self, state: StateT) -> Spending | None:
        """The privacy spent so far and after the next release at worst (algorithms/privacy.py),
        for ``epsilon`` in the results and ``stop.max_epsilon``; None without DP."""
        return None

    # ---- client side (runs on an executor) ---------------------------------------
    def client_update(
        self,
        model: torch.nn.Module,
        data: ClientData,
        task: Task,
        client_state: Any,
        generator: torch.Generator,
    ) -> ClientResult:
        """Train ``model`` in place from the global version it was loaded with.

        With AutoClip of scope client (``task.clip``) the client state *is* the client's
        history of gradient norms (a 1-D float64 array, None before its first job): the
        job continues it and returns it longer. A codec's error-feedback residual is the
        client state too (``encode``), so the two are refused together."""
        from engine.worker.training import GradClip, local_sgd

        if task.clip.shares_history:  # the server's history, sent with the task
            clip = GradClip(task.clip, task.clip_history)
            loss = local_sgd(model, data, task, generator, clip)
            norms = {CLIP_NORMS_KEY: np.asarray(clip.fresh, dtype=np.float64)}
            return ClientResult(client_state=client_state, metrics={"train_loss": loss}, extra=norms)
        if not task.clip.keeps_client_history:
            loss = local_sgd(model, data, task, generator)
            return ClientResult(client_state=client_state, metrics={"train_loss": loss})
        codec = codecs.configured(self.params)
        if codec is not None:
            raise ValueError(
                f"training.clip.scope=client keeps the AutoClip history as the client state, which "
                f"{self.name}'s codec {codec.name} uses for its upload: set training.clip.scope=job"
            )
        clip = GradClip(task.clip, client_state)
        loss = local_sgd(model, data, task, generator, clip)
        return ClientResult(client_state=clip.state(), metrics={"train_loss": loss})

    # ---- what crosses the network -----------------------------------------------------
    # An algorithm whose Params have a ``codec`` (algorithms/codecs.py; FedAvg and its
    # presets, FedProx, FedBuff, FedAsync) compresses through the methods below: uploads
    # with error feedback (the residual is the client state), and with direction both the
    # broadcast as well. With codec none (the default) they are the plain dense exchange.
    model_size: int | None = None  # entries of the flat model; ``init`` sets it for decoding

    def receive(self, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The start model a client trains from when the server broadcasts ``params`` (on
        the executor, before training; the job's delta is taken against it). ``params``
        itself unless the codec compresses the broadcast (direction both: fp16 or bf16)."""
        codec = codecs.configured(self.params)
        if not codecs.compresses_broadcast(codec):
            return params
        assert codec is not None
        return codecs.broadcast(codec, params, rng)

    def with_download_cost(self, jobs: list[Job], model: np.ndarray) -> list[Job]:
        """``jobs`` charged the encoded broadcast as their download when the codec compresses
        it (direction both); otherwise ``jobs`` themselves (the whole model down)."""
        codec = codecs.configured(self.params)
        if not codecs.compresses_broadcast(codec):
            return jobs
        assert codec is not None
        down = codecs.encoded_bytes(codec, int(np.size(model)))
        return [dataclasses.replace(j, cost=dataclasses.replace(j.cost, bytes_down=down)) for j in jobs]

    def encode(self, delta: np.ndarray, client_state: Any, rng: np.random.Generator) -> tuple[Payload, Any]:
        """The upload for ``delta`` (on the executor), and the client state after it
        (e.g. an error-feedback residual). ``rng`` is the job's keyed stream.

        With a codec: ``compress_with_feedback``, whose residual (a float32 array, or None
        without error feedback) is the client's state; ``client_state`` is its last one."""
        from algorithms.privacy import local_upload  # imports torch-free numpy only; lazily, as it is rare

        delta = local_upload(self.params, delta, rng)  # under local DP, clipped and noised first
        codec = codecs.configured(self.params)
        if codec is None:
            return {"delta": delta}, client_state
        return codecs.compress_with_feedback(codec, delta, client_state, rng)

    def decode(self, payload: Payload, client: int) -> np.ndarray:
        """The delta an upload stands for (on the server)."""
        codec = codecs.configured(self.params)
        if codec is None:
            return payload["delta"]
        if self.model_size is None:
            raise RuntimeError(f"{self.name}: decode needs the model's size for {codec.name}; init() first")
        return codecs.decode(codec, payload, self.model_size)
