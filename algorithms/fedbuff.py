"""FedBuff: Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022 (arXiv 2106.06639).

``concurrency`` clients train at all times; each arrival adds ``s(u_i) Delta_i`` to a
buffer, and the ``buffer_size``-th one flushes it: ``x <- x - server_lr * sum / K``
("mean", the paper's Algorithm 1) or ``x <- x - server_lr * sum`` ("sum", FLSim's, whose
server lr absorbs the 1/K; spec async-algorithms.md §2 pitfall 1). A **version** is one
buffer flush. The paper's weight ``1/sqrt(1+u)`` is ``staleness`` poly with ``a`` 0.5.
A flush is one step of the server optimizer (``server_opt``, server_opt.py) on the
buffer's direction; the default ``sgd`` is the step above, and "momentum 0.9" in FLSim's
configs is ``avgm``. With ``buffer_size == concurrency``, equal delays and "mean", this is
FedAvg with uniform weights and the same ``server_opt``, draw for draw and bit for bit.
Updates can be compressed with ``codec`` (algorithms/codecs.py), as in FedAvg.

Byzantine robustness: with ``aggregator`` other than ``mean`` (algorithms/robust.py), a
flush combines the buffer's staleness-weighted updates ``s(u_i) Delta_i`` by the robust
rule in place of their mean (times K for ``buffer_reduce=sum``); the server optimizer
steps on the result. ``mean`` is the plain flush above, bit for bit. ALIE colluders'
updates (``attacks.ColludingUpdate``) are replaced by mean - z * std of the buffer's
honest deltas before the staleness weights and the rule apply.

Differential privacy: ``privacy`` (algorithms/privacy.py). Central: a flush clips the
buffer's deltas, sums them with their staleness weights (each <= 1), adds the noise once
and divides by K ("mean"); arrivals are no random sample, so the accounting takes no
amplification and counts, per client, the flushes it joined. Local: each client noises its
own upload, and every upload counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

import algorithms.privacy as dp
from algorithms.aggregation import (
    check_choice,
    check_staleness,
    dispatch,
    release,
    staleness_weight,
    weighted_sum,
)
from algorithms.attacks import ColludingUpdate, collude
from algorithms.base import Algorithm, Job, Update
from algorithms.codecs import CodecConfig
from algorithms.idle import IdleClients
from algorithms.privacy import Ledger, PrivacyConfig
from algorithms.robust import AggregatorConfig, aggregate
from algorithms.server_opt import ServerOptParams, ServerOptState

BUFFER_REDUCES = ("mean", "sum")


@dataclass(frozen=True)
class FedBuffParams(ServerOptParams):
    concurrency: int = 10  # clients training at all times (C)
    buffer_size: int = 5  # updates per server step (K)
    server_lr: float = 1.0  # eta_g
    staleness: str = "poly"  # const | poly | hinge
    a: float = 0.5  # poly exponent / hinge slope
    b: float = 4.0  # hinge: staleness up to b is not discounted
    buffer_reduce: str = "mean"  # mean: divide the weighted sum by K (paper); sum: FLSim
    max_staleness: int = -1  # staler updates are discarded; -1 = no limit
    codec: CodecConfig = field(default_factory=CodecConfig)  # update compression (algorithms/codecs.py)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)  # robust rule (robust.py)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # differential privacy (privacy.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        dp.check_params(self.privacy, self.aggregator.name)
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 (got {self.concurrency})")
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1 (got {self.buffer_size})")
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0 (got {self.server_lr})")
        check_staleness(self.staleness, self.a, self.b)
        check_choice("buffer_reduce", self.buffer_reduce, BUFFER_REDUCES)
        if self.max_staleness < -1:
            raise ValueError(f"max_staleness must be >= 0, or -1 for no limit (got {self.max_staleness})")


@dataclass(frozen=True, eq=False)
class FedBuffState:
    model: np.ndarray
    version: int = 0  # = buffer flushes
    in_flight: tuple[int, ...] = ()  # clients training now (sorted)
    # (Delta_i, coefficient) in arrival order; the coefficient already holds s(u_i) and,
    # for "mean", the 1/K, so a flush is one ordered weighted sum.
    buffer: tuple[tuple[np.ndarray, float], ...] = ()
    weights: tuple[float, ...] = ()  # s(u_i) of each buffered update (for a robust aggregator)
    colluders: tuple[tuple[int, float | None], ...] = ()  # ALIE: (position in buffer, its z or None)
    applied: int = 0  # updates that went into a flush
    discarded_stale: int = 0  # updates dropped for exceeding max_staleness
    staleness_sum: int = 0  # sum of u over buffered updates, for the mean in stats()
    dropped: int = 0  # jobs that ended without an update
    opt: ServerOptState = field(default_factory=ServerOptState)
    ledger: Ledger = field(default_factory=Ledger)  # the privacy accountant's inputs


class FedBuff(Algorithm[FedBuffState]):
    description: ClassVar[str] = (
        "FedBuff (Nguyen et al. AISTATS'22): asynchronous clients, the server steps every K buffered updates"
    )
    name: ClassVar[str] = "fedbuff"
    Params: ClassVar[type] = FedBuffParams
    # Its aggregation replaces ALIE colluders' updates (attacks.ColludingUpdate).
    colludes: ClassVar[bool] = True
    params: FedBuffParams

    def init(self, model: np.ndarray) -> FedBuffState:
        self.model_size = int(np.size(model))  # decoding a codec's payload needs it
        ledger = dp.fresh(self.params.privacy, self.num_clients)
        return FedBuffState(model=np.array(model, dtype=np.float32), ledger=ledger)

    def jobs(
        self, state: FedBuffState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedBuffState, list[Job]]:
        in_flight, jobs = dispatch(self.task_for, state.in_flight, self.params.concurrency, idle, rng)
        ledger = dp.dispatched(self.params.privacy, state.ledger, rng)  # the noise key, at the first
        return replace(state, in_flight=in_flight, ledger=ledger), self.with_download_cost(jobs, state.model)

    def on_update(self, state: FedBuffState, update: Update, now: float) -> FedBuffState:
        p = self.params
        ledger = dp.uploaded(p.privacy, state.ledger, update.client)  # local DP: every upload counts
        state = replace(state, in_flight=release(state.in_flight, update.client), ledger=ledger)
        u = state.version - update.version_start
        if 0 <= p.max_staleness < u:
            return replace(state, discarded_stale=state.discarded_stale + 1)
        s = staleness_weight(p.staleness, u, p.a, p.b)
        coeff = s / p.buffer_size if p.buffer_reduce == "mean" else s
        colluders = state.colluders
        if isinstance(update, ColludingUpdate):
            colluders = (*colluders, (len(state.buffer), update.alie_z))
        buffer = (*state.buffer, (update.delta, coeff))
        state = replace(
            state,
            buffer=buffer,
            weights=(*state.weights, s),
            colluders=colluders,
            staleness_sum=state.staleness_sum + u,
            ledger=dp.buffered(p.privacy, state.ledger, update.client),
        )
        if len(buffer) < p.buffer_size:
            return state
        model, opt = p.server_update(state.model, self._direction(state), state.opt, p.server_lr)
        return replace(
            state,
            model=model,
            opt=opt,
            version=state.version + 1,
            buffer=(),
            weights=(),
            colluders=(),
            applied=state.applied + len(buffer),
            ledger=dp.flushed(p.privacy, state.ledger),
        )

    def _direction(self, state: FedBuffState) -> np.ndarray:
        """The full buffer's aggregate: the ordered weighted sum, the robust rule's, or the noised one."""
        p = self.params
        deltas = [d for d, _ in state.buffer]
        if state.colluders:
            deltas = collude(deltas, {i for i, _ in state.colluders}, state.colluders[0][1])
        if p.privacy.mode == "central":  # the noised clipped sum, over K for "mean"
            k = p.buffer_size if p.buffer_reduce == "mean" else 1
            return dp.noised_sum(p.privacy, state.ledger, deltas, k, state.version + 1, state.weights)
        if p.aggregator.name == "mean":
            return weighted_sum(deltas, [c for _, c in state.buffer])
        weighted = [w * np.asarray(d, dtype=np.float64) for d, w in zip(deltas, state.weights, strict=True)]
        direction = aggregate(p.aggregator, weighted)
        if p.buffer_reduce == "sum":
            return (len(deltas) * direction.astype(np.float64)).astype(np.float32)
        return direction

    def on_drop(self, state: FedBuffState, client: int, now: float) -> FedBuffState:
        return replace(state, in_flight=release(state.in_flight, client), dropped=state.dropped + 1)

    def privacy_spent(self, state: FedBuffState) -> dp.Spending | None:
        flush_next = len(state.buffer) == self.params.buffer_size - 1  # the next arrival flushes
        return dp.buffer_spending(self.params.privacy, state.ledger, state.in_flight, flush_next)

    def stats(self, state: FedBuffState) -> dict[str, float]:
        accepted = state.applied + len(state.buffer)
        return {
            "applied": float(state.applied),
            "buffered": float(len(state.buffer)),
            "discarded_stale": float(state.discarded_stale),
            "mean_staleness": state.staleness_sum / accepted if accepted else 0.0,
            "dropped": float(state.dropped),
        }
