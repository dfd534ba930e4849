"""Federated split learning's synchronous rounds, shared by SplitFed (v1, v2), CSE-FSL and
FSL-SAGE (algorithms/splitfed.py, cse_fsl.py, fsl_sage.py; Nair et al., ICML 2025, and the
FSL-SAGE repository's baselines).

The model is cut at the workload's cut layer (``workload.cut``; workloads/split.py): clients
hold the client part, the server the rest, and the engine keeps one flat vector
``[client part | server part]``, so evaluation, checkpoints and results are those of the
whole model. A round samples ``clients_per_round`` idle clients (the reference has them all),
runs their jobs, and closes when every job has returned or dropped and the server has no
work left for the round: the client parts are averaged (by examples, ``samples``, as the
reference's ``agg_factor: auto``, or ``uniform``) and the server part is the method's own.
A **version** is one round.

What each method moves and computes is priced by algorithms/split_rules.py from the cut as
measured on the model (``bind_cut``): activation bytes per example, the client's share of
the FLOPs, the auxiliary head's size. The server's compute is ``server.seconds_per_sample``
(seconds per example through the whole model), times its part's share.

Subclasses say which clients start now (``ready``), what a client's job is (``job_for``),
what an update does on arrival (``absorb``) and what the server's jobs return
(``on_server_job``); ``aggregate`` closes the round.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

import algorithms.split_rules as rules
from algorithms.aggregation import check_choice, descend, release, weighted_average
from algorithms.base import Algorithm, Job, ServerJob, Task, Update, sample_clients
from algorithms.idle import IdleClients
from algorithms.task import extend_task

if TYPE_CHECKING:
    import torch

WEIGHTINGS = ("samples", "uniform")


@dataclass(frozen=True)
class SplitParams:
    clients_per_round: int = 10
    weighting: str = "samples"  # the client parts' average: by examples, or uniform

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1 (got {self.clients_per_round})")
        check_choice("weighting", self.weighting, WEIGHTINGS)


@dataclass(frozen=True)
class SplitTask(Task):
    """A split-learning job. ``server_part``: SplitFed v2's shared server part to train from
    (None: the version's). ``aux``: the client's auxiliary head, trained with the client part
    when ``train_aux`` (CSE-FSL) or fixed (FSL-SAGE); with ``upload_every`` Q > 0 the client
    trains on the head's loss and logs every Q-th step's activations for the server."""

    server_part: np.ndarray | None = field(default=None, compare=False, repr=False)
    aux: np.ndarray | None = field(default=None, compare=False, repr=False)
    train_aux: bool = False
    upload_every: int = 0


@dataclass(frozen=True, eq=False)
class SplitState:
    model: np.ndarray
    version: int = 0
    open: bool = False  # a round is open
    queue: tuple[int, ...] = ()  # the open round's clients not yet dispatched, in order
    pending: tuple[int, ...] = ()  # dispatched, not yet returned
    received: tuple[Update, ...] = ()  # the round's updates, in arrival order
    server_part: np.ndarray | None = None  # the shared server part, as trained this round
    backlog: tuple[Update, ...] = ()  # updates whose activations the server has not trained on
    serving: bool = False  # a server job of the round is running
    outbox: tuple[ServerJob, ...] = ()  # server work not yet handed to the engine
    keys: int = 0  # server jobs asked for so far: each one's key (its randomness) is unique
    aux: np.ndarray | None = None  # CSE-FSL's shared auxiliary head
    heads: Mapping[int, np.ndarray] = field(default_factory=dict)  # FSL-SAGE's heads, per client
    buffers: Mapping[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # FSL-SAGE
    aligning: Mapping[int, int] = field(default_factory=dict)  # FSL-SAGE: job key -> client
    aligned: tuple[int, ...] = ()  # FSL-SAGE: clients of the round whose head goes down
    dropped: int = 0  # jobs over the whole run that ended without an update
    server_steps: int = 0  # server steps on uploaded activations so far


class SplitRounds(Algorithm[SplitState]):
    models_server_time: ClassVar[bool] = True
    params: SplitParams
    uses_aux: ClassVar[bool] = False  # CSE-FSL and FSL-SAGE train against an auxiliary head
    default_workload: ClassVar[str | None] = "shapes"  # synthetic's model has no layer to cut

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cut: rules.CutSizes | None = None  # bind_cut
        self.cut_name = ""
        self.aux_init: np.ndarray | None = None  # the head every client starts from
        self.seed = 0
        self._modules: dict[str, Any] = {}  # executor: the split parts and the head, built once

    # ---- what the engine tells the algorithm (engine/core/binding.py) ---------------------
    def bind_cut(
        self, model: Callable[[], torch.nn.Module], input_shape: tuple[int, ...], cut: str, seed: int
    ) -> None:
        """Measure the cut (and the head) on the workload's model, on the server and on every
        executor, before any job."""
        import torch

        from workloads.base import ParamLayout
        from workloads.models import forward_flops
        from workloads.split import aux_model, describe_cut

        with torch.random.fork_rng(devices=[]):  # its initial draws do not matter
            full = model()
        info = describe_cut(full, cut, input_shape)
        with torch.no_grad():
            num_classes = int(full.eval()(torch.zeros(1, *input_shape)).shape[1])
        aux_entries, aux_fraction = 0, 0.0
        if self.uses_aux:
            head = aux_model(info.activation_shape, num_classes, self.aux_hidden, seed=seed)
            self.aux_init = ParamLayout.of(head).flatten(head)
            aux_entries = int(self.aux_init.size)
            aux_fraction = forward_flops(head, info.activation_shape) / forward_flops(full, input_shape)
        self.cut = rules.CutSizes(
            info.client_entries,
            info.model_entries,
            tuple(info.activation_shape),
            info.client_flops_fraction,
            num_classes,
            aux_entries,
            aux_fraction,
        )
        self.cut_name, self.seed = info.cut, seed

    @property
    def aux_hidden(self) -> int:
        return int(getattr(self.params, "aux_hidden", 128))

    def sizes(self) -> rules.CutSizes:
        if self.cut is None:
            raise RuntimeError(
                f"{self.name} measures its cut on the model: the engine calls bind_cut() first"
            )
        return self.cut

    # ---- server side ------------------------------------------------------------------------
    def init(self, model: np.ndarray) -> SplitState:
        self.model_size = int(np.size(model))
        return SplitState(model=np.array(model, dtype=np.float32), aux=self.aux_init)

    def jobs(
        self, state: SplitState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[SplitState, list[Job]]:
        if not state.open:
            chosen = [int(c) for c in sample_clients(rng, idle, self.params.clients_per_round)]
            if not chosen:
                return state, []
            server_part = state.model[self.sizes().client_entries :]
            state = self.open_round(replace(state, open=True, queue=tuple(chosen), server_part=server_part))
        # A queued client that is unavailable when its turn comes waits until it is back.
        go = self.ready(state, idle)
        state = replace(
            state, queue=tuple(c for c in state.queue if c not in go), pending=(*state.pending, *go)
        )
        return state, [self.job_for(state, c) for c in go]

    def open_round(self, state: SplitState) -> SplitState:
        """A round's clients are chosen (``state.queue``): e.g. order them, start alignments."""
        return state

    def ready(self, state: SplitState, idle: IdleClients) -> list[int]:
        """The queued clients whose jobs start now (``idle``: those available): by default all."""
        return [c for c in state.queue if c in idle]

    def base_task(self, client: int, **extra: Any) -> tuple[SplitTask, np.ndarray]:
        """The client's split task and the examples of each of its steps."""
        task = self.task_for(client)
        rows = rules.step_rows(int(self.client_sizes[client]), task.steps, task.batch_size)
        return extend_task(task, SplitTask, **extra), rows

    @abstractmethod
    def job_for(self, state: SplitState, client: int) -> Job:
        """The client's job in the open round: its task and what it costs."""

    def on_update(self, state: SplitState, update: Update, now: float) -> SplitState:
        state = replace(
            state, pending=release(state.pending, update.client), received=(*state.received, update)
        )
        return self.close_if_done(self.absorb(state, update))

    def absorb(self, state: SplitState, update: Update) -> SplitState:
        return state

    def on_drop(self, state: SplitState, client: int, now: float) -> SplitState:
        state = replace(state, pending=release(state.pending, client), dropped=state.dropped + 1)
        return self.close_if_done(state)

    def server_jobs(self, state: SplitState) -> tuple[SplitState, list[ServerJob]]:
        return (replace(state, outbox=()), list(state.outbox)) if state.outbox else (state, [])

    def ask_server(self, state: SplitState, seconds: float, inputs: dict[str, np.ndarray]) -> SplitState:
        """Queue server work on the current model (the round's server part in place)."""
        assert state.server_part is not None
        model = np.concatenate([state.model[: self.sizes().client_entries], state.server_part])
        job = ServerJob(state.keys, seconds, model, compute=True, inputs=inputs)
        return replace(state, outbox=(*state.outbox, job), keys=state.keys + 1)

    def close_if_done(self, state: SplitState) -> SplitState:
        busy = state.queue or state.pending or state.backlog or state.serving or state.aligning
        if not state.open or busy or state.outbox:
            return state
        closed = replace(state, open=False, received=(), server_part=None, aligned=())
        if not state.received:  # every client dropped: no version
            return closed
        return replace(
            closed, model=self.aggregate(state), version=state.version + 1, aux=self.new_aux(state)
        )

    def weights(self, updates: tuple[Update, ...]) -> list[float]:
        return [float(u.num_samples) if self.params.weighting == "samples" else 1.0 for u in updates]

    def aggregate(self, state: SplitState) -> np.ndarray:
        """The round's model: the client parts averaged, the server part as trained."""
        e = self.sizes().client_entries
        assert state.server_part is not None
        mean = weighted_average([u.delta[:e] for u in state.received], self.weights(state.received))
        return np.concatenate([descend(state.model[:e], mean, 1.0), state.server_part])

    def new_aux(self, state: SplitState) -> np.ndarray | None:
        return state.aux

    def stats(self, state: SplitState) -> dict[str, float]:
        return {"dropped": float(state.dropped), "server_steps": float(state.server_steps)}

    # ---- executor side ----------------------------------------------------------------------
    def parts(self, model: torch.nn.Module) -> tuple[Any, Any, Any]:
        """(client part, server part, head) of the executor's model, split once."""
        if self._modules.get("model") is not model:
            from workloads.split import aux_model, split_model

            client, server = split_model(model, self.cut_name)
            head = None
            if self.uses_aux:
                cut = self.sizes()
                head = aux_model(cut.activation_shape, cut.num_classes, self.aux_hidden, seed=self.seed)
                head = head.to(next(model.parameters()).device)
            self._modules = {"model": model, "parts": (client, server, head)}
        parts: tuple[Any, Any, Any] = self._modules["parts"]
        return parts
