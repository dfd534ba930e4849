"""SCAFFOLD: Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020 (arXiv 1910.06378), with the option II control
variates; and the machinery it shares with the momentum variants (algorithms/fedavg_m.py).

Synchronous rounds with partial participation. The server keeps the model ``x`` and its
control variate ``c``; each client ``i`` keeps its own ``c_i`` as its client state (a float32
array of the model's size; ``None`` until its first job, standing for zeros). In a round
of ``S`` sampled clients (``clients_per_round``) out of ``N``, each client, from
``y = x`` and for ``K`` local steps (``training.local_steps``) at local rate ``eta_l``
(``training.lr``):

    y <- y - eta_l * (g_i(y) - c_i + c)                         (corrected local step)
    c_i+ = c_i - c + (x - y) / (K * eta_l)                      (option II)
    upload (Delta y_i, Delta c_i) = (y - x, c_i+ - c_i);  keep c_i <- c_i+

and the server, over the ``|S|`` clients that returned (uniformly, as in the paper):

    x <- x + eta_g * mean_i Delta y_i                            (eta_g: ``server_lr``)
    c <- c + (1/N) * sum_i Delta c_i  =  c + (|S|/N) * mean_i Delta c_i

``g_i`` is the minibatch gradient of the client's loss (plus ``training.weight_decay * y``,
as torch's SGD adds it). fedray's update is ``delta = x - y`` (start minus end), so the
server step is written ``x <- x - eta_g * mean_i delta_i``.

How it crosses the contract (algorithms/base.py):

* **Down.** The server's ``c`` travels with the job, inside its task: ``ControlTask`` is a
  ``Task`` with one more field, ``control``, the vector the client needs from the server
  (here ``c``; FedAvg-M's momentum buffer, SCAFFOLD-M's mix of both). The job states the
  doubled download: ``JobCost(bytes_down=2 * model bytes)``.
* **Up.** ``client_update`` (its own local loop, algorithms/control_sgd.py ``corrected_sgd``: minibatches from
  ``batch_indices`` and the job's generator, so runs stay deterministic) returns the new
  ``c_i`` and ``Delta c_i`` together; ``encode`` uploads ``{"delta": x - y, "control":
  Delta c_i}`` (twice the model's bytes, charged as the payload's real size) and keeps the
  new ``c_i`` (a plain float32 array, so ``server.client_state=disk`` can hold it). The
  engine commits a client's state only when its update is applied: a dropped or rejected
  job leaves ``c_i`` as it was, and the server never saw its ``Delta c_i`` either.
* Entries of the flat model that are not trainable parameters (buffers) get no correction
  and a zero control variate.

With ``c = c_i = 0`` (the first round) the local steps are plain SGD and the round is
exactly FedAvg with uniform weights (tested). Not supported (refused or absent): local
heavy-ball momentum (``training.momentum`` must be 0: the momentum of the paper in
fedavg_m.py is the server's, broadcast), codecs, robust aggregators, deadlines,
over-selection, the server's own time and stacked training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from algorithms.aggregation import descend, release, weighted_average
from algorithms.base import (
    Algorithm,
    ClientResult,
    Job,
    JobCost,
    LocalTraining,
    Payload,
    Task,
    Update,
    sample_clients,
)
from algorithms.idle import IdleClients
from algorithms.task import extend_task

if TYPE_CHECKING:
    import torch

    from engine.worker.training import ClientData


@dataclass(frozen=True)
class ControlTask(Task):
    """A task that also carries a server-side vector to the client (the server's control
    variate, or momentum buffer): float32, the model's size, read-only. It is not part of
    the task's identity (equality, hashing), only of what travels."""

    control: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class ControlState:
    """The state of SCAFFOLD, FedAvg-M and SCAFFOLD-M: whichever of ``control`` (the
    server's control variate ``c``) and ``direction`` (the momentum buffer ``g``) the
    algorithm keeps, float32 arrays of the model's size (None for the one it does not)."""

    model: np.ndarray
    version: int = 0
    control: np.ndarray | None = None  # c
    direction: np.ndarray | None = None  # g^r
    pending: tuple[int, ...] = ()  # clients of the open round still training; () = no round
    received: tuple[Update, ...] = ()  # the round's updates, in arrival order
    dropped: int = 0  # jobs over the whole run that ended without an update


@dataclass(frozen=True, eq=False)
class ControlUpload:
    """What ``client_update`` hands ``encode`` (on the executor, never stored): the client's
    new control variate and its change, which is uploaded."""

    control: np.ndarray  # c_i+, the client's next state
    delta_control: np.ndarray  # c_i+ - c_i, uploaded


@dataclass(frozen=True)
class ScaffoldParams:
    clients_per_round: int = 10
    server_lr: float = 1.0  # eta_g: x <- x + eta_g * mean(Delta y)

    def __post_init__(self) -> None:
        check_round_params(self.clients_per_round, self.server_lr)


def check_round_params(clients_per_round: int, server_lr: float) -> None:
    if clients_per_round < 1:
        raise ValueError(f"clients_per_round must be >= 1 (got {clients_per_round})")
    if not (server_lr > 0 and math.isfinite(server_lr)):
        raise ValueError(f"server_lr must be a finite number > 0 (got {server_lr})")


class ControlRounds(Algorithm[ControlState]):
    """Synchronous rounds whose jobs carry a server vector down (``ControlTask``) and whose
    clients run ``corrected_sgd``; subclasses say what travels and how the server updates.

    Client side, for one job: ``y <- y - eta * (beta * g_i(y) + offset)`` for ``K`` steps,
    with ``offset`` from ``local_offset`` (the task's vector and the client's own state)."""

    models_server_time: ClassVar[bool] = False
    keeps_client_control: ClassVar[bool] = True  # clients hold c_i (SCAFFOLD, SCAFFOLD-M)

    def __init__(
        self, params: Any, training: LocalTraining, client_sizes: np.ndarray, server_cost: Any = None
    ) -> None:
        super().__init__(params, training, client_sizes, server_cost)
        if training.momentum != 0:
            raise ValueError(
                f"{self.name} runs its own local steps without local heavy-ball momentum: set "
                f"training.momentum=0 (got {training.momentum})"
            )

    # ---- what subclasses define -------------------------------------------------------
    @property
    def beta(self) -> float:
        """The weight of the fresh gradient in a local step (1: no momentum)."""
        return 1.0

    def init_state(self, model: np.ndarray) -> ControlState:
        zeros = np.zeros_like(model)
        return ControlState(model=model, control=zeros)

    def broadcast(self, state: ControlState) -> np.ndarray:
        """The server vector that travels with every job of a round (float32)."""
        assert state.control is not None
        return state.control

    def local_offset(self, sent: np.ndarray, client_control: np.ndarray | None) -> np.ndarray | None:
        """The constant part of the local step (None: zero). SCAFFOLD: ``c - c_i``."""
        if client_control is None:
            return sent
        return np.subtract(sent, client_control, dtype=np.float32)

    def new_client_control(
        self,
        client_control: np.ndarray | None,
        sent: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        task: Task,
        mean_grad: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(c_i+, c_i+ - c_i)``. SCAFFOLD's option II: ``c_i+ = c_i - c + (x - y) / (K eta)``."""
        progress = (np.asarray(start, np.float64) - np.asarray(end, np.float64)) / (task.steps * task.lr)
        delta_control = progress - np.asarray(sent, np.float64)  # c_i+ - c_i
        return add_float32(client_control, delta_control), delta_control.astype(np.float32)

    def aggregate(self, state: ControlState, updates: tuple[Update, ...]) -> ControlState:
        """SCAFFOLD's server step (one or more updates)."""
        direction = weighted_average([u.delta for u in updates], [1.0] * len(updates))
        assert state.control is not None
        control = add_mean_controls(state.control, updates, self.num_clients)
        return replace(state, model=descend(state.model, direction, self.params.server_lr), control=control)

    @property
    def tracks_mean_grad(self) -> bool:
        """Whether ``new_client_control`` needs the mean of the local gradients."""
        return False

    # ---- server side ------------------------------------------------------------------
    def init(self, model: np.ndarray) -> ControlState:
        self.model_size = int(np.size(model))
        return self.init_state(np.array(model, dtype=np.float32))

    def jobs(
        self, state: ControlState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[ControlState, list[Job]]:
        if state.pending:
            return state, []  # synchronous: the next round starts when this one is done
        chosen = [int(c) for c in sample_clients(rng, idle, self.params.clients_per_round)]
        if not chosen:
            return state, []
        sent = self.broadcast(state)
        cost = JobCost(bytes_down=2 * int(state.model.nbytes))  # the model and the server's vector
        jobs = [Job(c, with_control(self.task_for(c), sent), cost=cost) for c in chosen]
        return replace(state, pending=tuple(sorted(chosen))), jobs

    def on_update(self, state: ControlState, update: Update, now: float) -> ControlState:
        state = replace(
            state, pending=release(state.pending, update.client), received=(*state.received, update)
        )
        return self._close(state) if not state.pending else state

    def on_drop(self, state: ControlState, client: int, now: float) -> ControlState:
        state = replace(state, pending=release(state.pending, client), dropped=state.dropped + 1)
        return self._close(state) if not state.pending else state

    def _close(self, state: ControlState) -> ControlState:
        if not state.received:  # everyone dropped: no version, nothing learnt
            return state
        state = self.aggregate(state, state.received)
        return replace(state, received=(), version=state.version + 1)

    def stats(self, state: ControlState) -> dict[str, float]:
        out = {"dropped": float(state.dropped)}
        if state.control is not None:
            out["control_norm"] = float(np.linalg.norm(state.control.astype(np.float64)))
        if state.direction is not None:
            out["momentum_norm"] = float(np.linalg.norm(state.direction.astype(np.float64)))
        return out

    # ---- client side (on an executor) -------------------------------------------------
    def client_update(
        self,
        model: torch.nn.Module,
        data: ClientData,
        task: Task,
        client_state: Any,
        generator: torch.Generator,
    ) -> ClientResult:
        from algorithms.control_sgd import corrected_sgd, trainable_mask
        from workloads.base import ParamLayout

        if not isinstance(task, ControlTask) or task.control is None:
            raise TypeError(f"{self.name} needs the server's vector with the job (a ControlTask)")
        sent = task.control
        own = client_state if self.keeps_client_control else None
        if own is not None and np.shape(own) != np.shape(sent):
            raise ValueError(f"client state of shape {np.shape(own)} for a model of {np.shape(sent)}")
        layout = ParamLayout.of(model)
        start = layout.flatten(model)
        offset = self.local_offset(sent, own)
        loss, grad_sum = corrected_sgd(
            model, data, task, generator, beta=self.beta, offset=offset, track=self.tracks_mean_grad
        )
        metrics = {"train_loss": loss}
        if not self.keeps_client_control:
            return ClientResult(client_state=client_state, metrics=metrics)
        if task.steps <= 0 or len(data) == 0:  # nothing ran: nothing learnt about the client
            kept = np.zeros_like(sent) if own is None else np.asarray(own, dtype=np.float32)
            return ClientResult(ControlUpload(kept, np.zeros_like(sent)), metrics)
        mean_grad = None if grad_sum is None else grad_sum / task.steps
        new, delta_control = self.new_client_control(own, sent, start, layout.flatten(model), task, mean_grad)
        mask = trainable_mask(model, layout)
        if not mask.all():  # buffers: no gradient, no control variate
            new = np.where(mask, new, np.float32(0))
            base = np.zeros_like(sent) if own is None else np.asarray(own, np.float32)
            delta_control = np.where(mask, delta_control, -base).astype(np.float32)
        return ClientResult(ControlUpload(new, delta_control), metrics)

    def encode(self, delta: np.ndarray, client_state: Any, rng: np.random.Generator) -> tuple[Payload, Any]:
        if isinstance(client_state, ControlUpload):
            return {"delta": delta, "control": client_state.delta_control}, client_state.control
        return {"delta": delta}, client_state

    def decode(self, payload: Payload, client: int) -> np.ndarray:
        return payload["delta"]


class Scaffold(ControlRounds):
    description: ClassVar[str] = (
        "SCAFFOLD (Karimireddy et al. 2020), option II control variates; uniform mean over the round"
    )
    name: ClassVar[str] = "scaffold"
    Params: ClassVar[type] = ScaffoldParams
    params: ScaffoldParams


# ---- helpers shared with algorithms/fedavg_m.py ----------------------------------------


def with_control(task: Task, control: np.ndarray) -> ControlTask:
    """``task`` carrying ``control`` to the client."""
    return extend_task(task, ControlTask, control=control)


def add_float32(base: np.ndarray | None, change: np.ndarray) -> np.ndarray:
    """``base + change`` rounded once to float32 (``base`` None: zeros)."""
    if base is None:
        return np.asarray(change, dtype=np.float64).astype(np.float32)
    return (np.asarray(base, np.float64) + np.asarray(change, np.float64)).astype(np.float32)


def add_mean_controls(control: np.ndarray, updates: tuple[Update, ...], num_clients: int) -> np.ndarray:
    """``c + (1/N) sum_i Delta c_i`` over ``updates`` (in arrival order), as float32."""
    total = np.zeros(np.shape(control), dtype=np.float64)
    for u in updates:
        total += np.asarray(u.payload["control"], dtype=np.float64)
    return (np.asarray(control, np.float64) + total / num_clients).astype(np.float32)
