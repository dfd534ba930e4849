"""PFL, "No One Idles": Zhang, Liu et al., ICML 2023 (PMLR v202, zhang23aa); reference
code Hypervoyager/PFL (``PFL.py``, ``VPFL.py``, ``Node.py``).

Vanilla FL aggregates, then broadcasts: a round costs slowest client + aggregation, and
nodes idle while the server aggregates. PFL swaps the order. The server keeps one slot
per node with its latest upload ``y_k = x^tau - Delta_k``; on upload, node k is at once
sent the global model that *already exists* (it excludes k's own upload) and trains on,
while the server computes the next aggregate (the mean of all N slots, 1/N each as in
``Global_Node.processing``, or ``n_k / sum n`` with ``weighting`` "samples"). That
aggregate becomes the global model ``server_cost.aggregation_time(N, model bytes)``
later, when its server job ends: the aggregation time hides behind client compute.

Time-driven scheduler (spec seed-methods.md §1, engine note): every node trains all the
time (concurrency = all clients), gated by the token bound of ``Select_Node``: an idle
node k is dispatched only while ``n_k - min_j n_j < max_lost`` (n = upload counts), so
``max n - min n <= max_lost`` always holds; nodes that are ahead wait idle (also behind
a node that is unavailable). ``max_lost`` defaults to 1 as in ``Args.py``; the reference
run uses 3. A drop uploads nothing: n_k is unchanged and the node restarts from the
current global model. The server holds N models (the paper's N is 10).

The server is one busy resource. An aggregation starts in ``jobs``, right after the
uploaders received their forks (so even with zero cost a node never gets an aggregate
that contains its own upload), from the slots as they are then. Uploads that arrive
while it runs mark the slots dirty, and one aggregation over all of them starts when
the running one publishes: aggregations queue and coalesce, never overlap.

A **version** is one published aggregation. Deviations: all slots and the global model
start from the shared initial model (the reference code has no common initialisation);
there is no clock in the reference, where speed differences are a random arrival order.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from algorithms.aggregation import check_choice, release, weighted_average
from algorithms.base import Algorithm, Job, ServerJob, Update
from algorithms.idle import IdleClients

WEIGHTINGS = ("uniform", "samples")
Slots = tuple[tuple[np.ndarray, ...], ...]


@dataclass(frozen=True)
class VPFLParams:
    weighting: str = "uniform"  # uniform: 1/N per slot (the reference); samples: n_k / sum n

    def __post_init__(self) -> None:
        check_choice("weighting", self.weighting, WEIGHTINGS)


@dataclass(frozen=True)
class PFLParams(VPFLParams):
    max_lost: int = 1  # bound on max_k n_k - min_k n_k; 1: every N uploads are a permutation

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_lost < 1:
            raise ValueError(f"max_lost must be >= 1 (got {self.max_lost})")


@dataclass(frozen=True, eq=False)
class PFLState:
    model: np.ndarray
    version: int = 0  # = published aggregations
    # Per node, the uploads the server holds: PFL its latest model (initially the initial
    # model); VPFL its models of rounds whose aggregation has not started, oldest first.
    slots: Slots = ()
    uploads: tuple[int, ...] = ()  # n_k
    in_flight: tuple[int, ...] = ()  # nodes training now (sorted)
    dirty: bool = False  # PFL: a slot changed since the last aggregation started
    aggregating: ServerJob | None = None  # the running aggregation (from the slots at its start)
    outbox: tuple[ServerJob, ...] = ()  # server work not yet handed to the engine
    server_busy: float = 0.0  # seconds the server spent aggregating
    dropped: int = 0  # jobs that ended without an update


class _PipelinedFL(Algorithm[PFLState]):
    """What PFL and VPFL share: slots, forks from the existing model, the busy server."""

    models_server_time: ClassVar[bool] = True
    params: VPFLParams

    def init(self, model: np.ndarray) -> PFLState:
        x = np.array(model, dtype=np.float32)
        n = self.num_clients
        return PFLState(model=x, slots=self._initial_slots(x), uploads=(0,) * n)

    def jobs(
        self, state: PFLState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[PFLState, list[Job]]:
        # Forks take the model that exists now. The aggregation starts here, not in
        # on_update, and always as a server job (ending no earlier than now): even a
        # zero-cost aggregation published on upload would hand the uploader its own upload.
        forks = self._forks(state, [int(k) for k in idle])
        state = replace(state, in_flight=tuple(sorted(state.in_flight + tuple(forks))))
        if state.aggregating is None:
            state = self._start_aggregation(state, now)
        return state, [Job(k, self.task_for(k)) for k in forks]

    def on_update(self, state: PFLState, update: Update, now: float) -> PFLState:
        k = update.client
        in_flight = release(state.in_flight, k)
        y = np.asarray(update.base, dtype=np.float64) - np.asarray(update.delta, dtype=np.float64)
        slots = list(state.slots)
        slots[k] = self._store(slots[k], y.astype(np.float32))
        uploads = list(state.uploads)
        uploads[k] += 1
        return replace(state, in_flight=in_flight, slots=tuple(slots), uploads=tuple(uploads), dirty=True)

    def on_drop(self, state: PFLState, client: int, now: float) -> PFLState:
        return replace(state, in_flight=release(state.in_flight, client), dropped=state.dropped + 1)

    def server_jobs(self, state: PFLState) -> tuple[PFLState, list[ServerJob]]:
        return (replace(state, outbox=()), list(state.outbox)) if state.outbox else (state, [])

    def on_server_job(self, state: PFLState, job: ServerJob, model: np.ndarray, now: float) -> PFLState:
        # The aggregate is published; the next one (if any is due) starts in ``jobs``.
        return replace(state, model=model, version=state.version + 1, aggregating=None)

    def stats(self, state: PFLState) -> dict[str, float]:
        return {
            "min_uploads": float(min(state.uploads)),
            "max_uploads": float(max(state.uploads)),
            "server_busy": state.server_busy,
            "dropped": float(state.dropped),
        }

    # ---- what PFL and VPFL do differently ------------------------------------------------
    @abstractmethod
    def _initial_slots(self, x: np.ndarray) -> Slots: ...

    @abstractmethod
    def _store(self, held: tuple[np.ndarray, ...], y: np.ndarray) -> tuple[np.ndarray, ...]: ...

    @abstractmethod
    def _forks(self, state: PFLState, idle: list[int]) -> list[int]:
        """The idle nodes that start a job from the current global model now."""

    @abstractmethod
    def _take(self, state: PFLState) -> tuple[list[np.ndarray], Slots] | None:
        """The models of the next aggregation and the slots left after it, or None."""

    # ---- the server as one busy resource ---------------------------------------------------
    def _start_aggregation(self, state: PFLState, now: float) -> PFLState:
        taken = self._take(state)
        if taken is None:
            return state
        models, slots = taken
        if self.params.weighting == "samples":
            weights = [float(n) for n in self.client_sizes]
        else:
            weights = [1.0] * len(models)
        seconds = self.server_cost.aggregation_time(len(models), int(state.model.nbytes))
        job = ServerJob(
            state.version + 1, seconds, weighted_average(models, weights), self.server_cost.finetune
        )
        return replace(
            state,
            slots=slots,
            dirty=False,
            aggregating=job,
            outbox=(job,),
            server_busy=state.server_busy + seconds,
        )


class PFL(_PipelinedFL):
    description: ClassVar[str] = (
        "PFL 'No One Idles' (Zhang et al. ICML'23): "
        "clients fork the existing model while the server aggregates"
    )
    name: ClassVar[str] = "pfl"
    Params: ClassVar[type] = PFLParams
    params: PFLParams

    def _initial_slots(self, x: np.ndarray) -> Slots:
        return ((x,),) * self.num_clients

    def _store(self, held: tuple[np.ndarray, ...], y: np.ndarray) -> tuple[np.ndarray, ...]:
        return (y,)  # a slot keeps only the node's latest upload, however old

    def _forks(self, state: PFLState, idle: list[int]) -> list[int]:
        lowest = min(state.uploads)  # the token bound: nodes max_lost ahead wait
        return [k for k in idle if state.uploads[k] - lowest < self.params.max_lost]

    def _take(self, state: PFLState) -> tuple[list[np.ndarray], Slots] | None:
        if not state.dirty:  # nothing uploaded since the last aggregation started
            return None
        return [held[0] for held in state.slots], state.slots


class VPFL(_PipelinedFL):
    """Synchronous PFL (``VPFL.py``): rounds over all N nodes, one aggregation per round.

    Vanilla FedAvg with a server cost runs round r+1 from ``w^r`` once round r's last
    upload is in *and* its aggregation is done: round time = slowest client + aggregation.
    VPFL changes only where that aggregation time goes: on uploading its round-r model a
    node forks the previous global ``w^{r-1}`` at once (``w^0`` for rounds 1 and 2) and
    trains round r+1 while the server aggregates round r, so the aggregation overlaps the
    next round's compute. The price is one round of model lag. A node that has uploaded
    ``n_k`` rounds waits until ``w^{n_k - 1}`` is published (the synchronous barrier, one
    round late); one that was away meanwhile forks the newest global instead. Round r's
    aggregate is the mean of every node's round-r model, so a fast node's round-(r+1)
    upload waits in its slot for the round to close. A drop is retried: the round waits
    for all N uploads, as in the reference's full participation. A **version** is one
    aggregated round; ``max n - min n <= 2``.
    """

    description: ClassVar[str] = (
        "VPFL: synchronous PFL; each round's aggregation overlaps the next round's training"
    )

    name: ClassVar[str] = "vpfl"
    Params: ClassVar[type] = VPFLParams
    params: VPFLParams

    def _initial_slots(self, x: np.ndarray) -> Slots:
        return ((),) * self.num_clients

    def _store(self, held: tuple[np.ndarray, ...], y: np.ndarray) -> tuple[np.ndarray, ...]:
        return (*held, y)

    def _forks(self, state: PFLState, idle: list[int]) -> list[int]:
        return [k for k in idle if state.version >= state.uploads[k] - 1]  # w^{n_k - 1} exists

    def _take(self, state: PFLState) -> tuple[list[np.ndarray], Slots] | None:
        if any(not held for held in state.slots):
            return None  # some node has not uploaded the round yet
        return [held[0] for held in state.slots], tuple(held[1:] for held in state.slots)
