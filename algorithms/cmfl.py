"""CMFL: Wang, Wang and Li, "CMFL: Mitigating Communication Overhead for Federated
Learning", ICDCS 2019.

FedAvg whose clients upload only *relevant* updates. After local training a client
compares its update ``u`` with the last global update ``g`` (the change the previous
aggregation made to the model) entry by entry::

    relevance e(u, g) = (1/N) * sum_j 1[sign(u_j) == sign(g_j)]

over the N trainable entries, and uploads ``u`` only if ``e >= threshold``. A client
below it sends a one-bit "skip" (charged 0 bytes: it rides on the job's completion
message) and its update is thrown away; the round aggregates the relevant updates only
(FedAvg's weighted mean over them) and closes when every sampled client has returned,
skipped or dropped. A round in which every client skipped makes no version, and the next
round compares against the same ``g``.

What travels down: the model, plus ``g``'s signs, two bits per entry (positive, negative:
a zero has its own sign, as ``np.sign`` has) packed with ``np.packbits``, so 1/16 of a
float32 model. The paper has every client hold the previous model and form ``g`` itself;
under partial participation a client sampled now did not see the last version, so the
signs are sent and charged. The first round has no ``g``: everyone uploads.

Deltas here are ``start - end`` (algorithms/base.py), and ``g`` is formed the same way
(previous version minus current), so agreeing signs mean the client moves the model the
way the server last did.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from algorithms.aggregation import release
from algorithms.base import ClientResult, Job, Payload, Task, Update, is_skipped
from algorithms.fedavg import FedAvg, FedAvgParams, FedAvgState
from algorithms.idle import IdleClients
from algorithms.task import extend_task

if TYPE_CHECKING:
    import torch

    from engine.worker.training import ClientData


def pack_signs(g: np.ndarray) -> np.ndarray:
    """``sign(g)`` as two packed bit planes, positive then negative: 2 bits per entry."""
    g = np.asarray(g)
    return np.concatenate([np.packbits(g > 0), np.packbits(g < 0)])


def unpack_signs(packed: np.ndarray, size: int) -> np.ndarray:
    """The int8 signs (-1, 0, +1) of ``size`` entries from ``pack_signs``."""
    half = len(packed) // 2
    pos = np.unpackbits(packed[:half], count=size).astype(np.int8)
    neg = np.unpackbits(packed[half:], count=size).astype(np.int8)
    return pos - neg


def relevance(update: np.ndarray, signs: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The fraction of (masked) entries whose sign in ``update`` equals ``signs``."""
    same = np.sign(update).astype(np.int8) == signs
    if mask is not None:
        same = same[mask]
    return float(same.mean()) if same.size else 1.0


@dataclass(frozen=True)
class CMFLParams(FedAvgParams):
    threshold: float = 0.7  # relevance below which a client skips its upload; 0 uploads all

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1] (got {self.threshold})")


@dataclass(frozen=True)
class RelevanceTask(Task):
    """A task carrying the last global update's packed signs (None: upload regardless)."""

    signs: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class CMFLState(FedAvgState):
    signs: np.ndarray | None = None  # pack_signs of the last global update; None before one
    seen_version: int = 0  # the version whose model ``seen`` is
    seen: np.ndarray | None = None  # the model at the last dispatch (None before the first)
    skipped: int = 0  # uploads skipped as irrelevant, over the run


class CMFL(FedAvg):
    description: ClassVar[str] = (
        "CMFL (Wang et al. 2019): FedAvg whose clients skip uploads that disagree in sign with "
        "the last global update"
    )
    name: ClassVar[str] = "cmfl"
    Params: ClassVar[type] = CMFLParams
    colludes: ClassVar[bool] = False
    default_local_training: ClassVar[bool] = True  # it tests the update super() trained
    params: CMFLParams

    def init(self, model: np.ndarray) -> CMFLState:
        base = super().init(model)
        return CMFLState(**{f.name: getattr(base, f.name) for f in dataclasses.fields(FedAvgState)})

    def jobs(
        self, state: FedAvgState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedAvgState, list[Job]]:
        assert isinstance(state, CMFLState)
        if state.pending or state.aggregating is not None:
            return state, []
        if state.seen is not None and state.version != state.seen_version:
            # g = previous version's model - this one (the delta convention: start - end)
            g = np.subtract(state.seen, state.model, dtype=np.float32)
            state = replace(state, signs=pack_signs(g))
        state = replace(state, seen=state.model, seen_version=state.version)
        state, jobs = super().jobs(state, now, idle, rng)
        signs = state.signs if isinstance(state, CMFLState) else None
        if signs is None or self.params.threshold <= 0:  # nothing to test against
            return state, jobs
        out = []
        for j in jobs:
            task = extend_task(j.task, RelevanceTask, signs=signs)
            model_down = int(state.model.nbytes) if j.cost.bytes_down is None else j.cost.bytes_down
            out.append(replace(j, task=task, cost=replace(j.cost, bytes_down=model_down + signs.nbytes)))
        return state, out

    def client_update(
        self,
        model: torch.nn.Module,
        data: ClientData,
        task: Task,
        client_state: Any,
        generator: torch.Generator,
    ) -> ClientResult:
        from algorithms.control_sgd import trainable_mask
        from workloads.base import ParamLayout

        layout = ParamLayout.of(model)
        start = layout.flatten(model)
        result = super().client_update(model, data, task, client_state, generator)
        signs = getattr(task, "signs", None)
        if signs is None or self.params.threshold <= 0:
            return result
        update = np.subtract(start, layout.flatten(model), dtype=np.float32)
        e = relevance(update, unpack_signs(signs, update.size), trainable_mask(model, layout))
        metrics = {**result.metrics, "relevance": e}
        return replace(result, metrics=metrics, upload=e >= self.params.threshold)

    def decode(self, payload: Payload, client: int) -> np.ndarray:
        if is_skipped(payload):  # a skipped upload: nothing to decode, and nothing is aggregated
            assert self.model_size is not None
            return np.zeros(self.model_size, dtype=np.float32)
        return super().decode(payload, client)

    def on_update(self, state: FedAvgState, update: Update, now: float) -> FedAvgState:
        assert isinstance(state, CMFLState)
        if not is_skipped(update.payload):
            return super().on_update(state, update, now)
        if update.client in state.unwanted:  # cut off in the instant it skipped: as FedAvg
            return super().on_update(state, update, now)
        # A skip completes the client's job, neither an update nor a drop.
        state = replace(state, pending=release(state.pending, update.client), skipped=state.skipped + 1)
        return self._close_if_done(state, now)

    def stats(self, state: FedAvgState) -> dict[str, float]:
        assert isinstance(state, CMFLState)
        return {**super().stats(state), "skipped": float(state.skipped)}
