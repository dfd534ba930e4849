"""FedAT: Chai et al., "FedAT: A High-Performance and Communication-Efficient Federated
Learning System with Asynchronous Tiers", SC '21 (arXiv 2010.05958).

Clients are grouped into M tiers by *measured* response latency; training is synchronous
inside a tier and asynchronous across tiers. Profiling: every client first runs one job
(the configured task, from the initial model); its duration, from dispatch to arrival,
is its latency (no clairvoyance: the engine's scheduled finish times are never read),
and its model is not aggregated. A client whose profiling job drops counts as infinitely
slow, so that an unavailable client cannot stall tiering. Sorted by latency (ties by
id), clients are split into ``min(M, N)`` tiers of near-equal size, the larger ones
first (``numpy.array_split``); with ``reprofile`` every later arrival updates its
client's latency and the tiers are recomputed after each tier round.

Tier m runs its own rounds: ``clients_per_tier_round`` of its idle members
(``sample_clients``) train from the current global model ``w`` with the proximal term
``(lam/2)||w_local - w||^2``, the round waits for every one of them (a dropped client
just leaves it), and their models are FedAvg'd (sample-weighted) into the tier model
``w_m``; the tier's update count ``T_m`` grows by one. Then the global model becomes
``w = sum_m (T_{M+1-m} / T) w_m`` over tiers ordered fastest first, ``T = sum_m T_m``:
the index swap gives the slow tiers, which update rarely, the large weights. Tiers that
have not yet completed a round have no ``w_m``; they are left out and the swap is taken
over the tiers that have one (while only one has, ``w`` is its model), which is the
paper's rule as soon as every tier has completed a round. A **version** is one tier
round with at least one update (an all-dropped round makes none).

Deviations: no polyline compression of uplink and downlink (byte counts are the dense
sizes). The spec records no value for the paper's lambda: the default 0.01 is this
repository's FedProx mu, so the two proximal methods start comparable; 0 is plain SGD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

import numpy as np

from algorithms.aggregation import release, weighted_average, weighted_sum
from algorithms.base import Algorithm, Job, Task, Update, sample_clients
from algorithms.idle import IdleClients

ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class FedATParams:
    num_tiers: int = 3  # M
    clients_per_tier_round: int = 5  # clients sampled for each round of a tier
    lam: float = 0.01  # lambda, the proximal coefficient of the local objective
    reprofile: bool = False  # update latencies from every arrival and re-tier after rounds

    def __post_init__(self) -> None:
        if self.num_tiers < 1:
            raise ValueError(f"num_tiers must be >= 1 (got {self.num_tiers})")
        if self.clients_per_tier_round < 1:
            raise ValueError(f"clients_per_tier_round must be >= 1 (got {self.clients_per_tier_round})")
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0 (got {self.lam})")


def split_tiers(latency: Sequence[float], num_tiers: int) -> tuple[tuple[int, ...], ...]:
    """Client ids sorted by latency (stable: ties by id), in ``min(M, N)`` near-equal
    tiers, fastest first."""
    order = np.argsort(np.asarray(latency, dtype=np.float64), kind="stable")
    parts = np.array_split(order, min(num_tiers, len(order)))
    return tuple(tuple(int(c) for c in part) for part in parts)


def cross_tier_weights(tier_rounds: Sequence[int]) -> list[float]:
    """FedAT's ``T_{M+1-m} / T`` for tiers ordered fastest first, taken over the tiers
    with ``T_m > 0`` (the others get 0). Example: T = (3, 2, 1) -> (1/6, 2/6, 3/6)."""
    active = [m for m, t in enumerate(tier_rounds) if t > 0]
    total = float(sum(tier_rounds))
    weights = [0.0] * len(tier_rounds)
    for m, mirror in zip(active, reversed(active), strict=True):
        weights[m] = tier_rounds[mirror] / total
    return weights


@dataclass(frozen=True, eq=False)
class FedATState:
    model: np.ndarray
    version: int = 0  # = tier rounds aggregated, all tiers together
    latency: tuple[float, ...] = ()  # measured seconds: nan not yet, inf dropped while profiling
    started: tuple[float, ...] = ()  # dispatch time of each client's job in flight (nan: none)
    profiling: tuple[int, ...] = ()  # profiling jobs in flight
    tiers: tuple[tuple[int, ...], ...] = ()  # fastest first; () while profiling
    pending: tuple[tuple[int, ...], ...] = ()  # per tier: its open round's clients still training
    received: tuple[tuple[tuple[np.ndarray, float], ...], ...] = ()  # per tier: (y_i, n_i)
    tier_models: tuple[np.ndarray | None, ...] = ()  # w_m; None before tier m's first round
    tier_rounds: tuple[int, ...] = ()  # T_m
    dropped: int = 0  # jobs that ended without an update


class FedAT(Algorithm[FedATState]):
    description: ClassVar[str] = (
        "FedAT (Chai et al. SC'21): latency tiers, synchronous inside a tier, asynchronous across tiers"
    )
    name: ClassVar[str] = "fedat"
    Params: ClassVar[type] = FedATParams
    params: FedATParams

    def init(self, model: np.ndarray) -> FedATState:
        n = self.num_clients
        return FedATState(
            model=np.array(model, dtype=np.float32), latency=(np.nan,) * n, started=(np.nan,) * n
        )

    def task_for(self, client: int) -> Task:
        return replace(super().task_for(client), prox_mu=self.params.lam)

    def jobs(
        self, state: FedATState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedATState, list[Job]]:
        if not state.tiers:  # profiling: every client not yet measured runs one job
            chosen = [int(c) for c in idle if np.isnan(state.latency[c])]
            profiling = tuple(sorted(state.profiling + tuple(chosen)))
            state = replace(state, profiling=profiling)
        else:
            chosen, pending = [], list(state.pending)
            for m, members in enumerate(state.tiers):
                if pending[m]:
                    continue  # synchronous inside a tier: its round is still open
                candidates = np.intersect1d(idle, np.asarray(members, dtype=np.int64))
                drawn = [int(c) for c in sample_clients(rng, candidates, self.params.clients_per_tier_round)]
                pending[m] = tuple(sorted(drawn))
                chosen += drawn
            state = replace(state, pending=tuple(pending))
        started = list(state.started)
        for c in chosen:
            started[c] = now
        return replace(state, started=tuple(started)), [Job(c, self.task_for(c)) for c in chosen]

    def on_update(self, state: FedATState, update: Update, now: float) -> FedATState:
        c = update.client
        measured = now - state.started[c]
        state = self._end_job(state, c)
        if c in state.profiling:
            return self._profiled(state, c, measured)
        if self.params.reprofile:
            state = replace(state, latency=_set(state.latency, c, measured))
        m = self._tier_of(state, c)
        y = np.asarray(update.base, dtype=np.float64) - np.asarray(update.delta, dtype=np.float64)
        received = _set(state.received, m, (*state.received[m], (y.astype(np.float32), update.num_samples)))
        pending = _set(state.pending, m, release(state.pending[m], c))
        return self._close_if_done(replace(state, pending=pending, received=received), m)

    def on_drop(self, state: FedATState, client: int, now: float) -> FedATState:
        state = replace(self._end_job(state, client), dropped=state.dropped + 1)
        if client in state.profiling:
            return self._profiled(state, client, np.inf)
        m = self._tier_of(state, client)
        pending = _set(state.pending, m, release(state.pending[m], client))
        return self._close_if_done(replace(state, pending=pending), m)

    def stats(self, state: FedATState) -> dict[str, float]:
        out = {f"tier{m}_rounds": float(t) for m, t in enumerate(state.tier_rounds)}
        return {**out, "profiling": float(not state.tiers), "dropped": float(state.dropped)}

    # ---- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _end_job(state: FedATState, client: int) -> FedATState:
        if np.isnan(state.started[client]):
            raise ValueError(f"client {client} has no job in flight")
        return replace(state, started=_set(state.started, client, np.nan))

    @staticmethod
    def _tier_of(state: FedATState, client: int) -> int:
        for m, pending in enumerate(state.pending):
            if client in pending:
                return m
        raise ValueError(f"client {client} has no job in flight")

    def _profiled(self, state: FedATState, client: int, measured: float) -> FedATState:
        """Record a profiling job's latency; tier everyone once all are measured."""
        state = replace(
            state,
            profiling=release(state.profiling, client),
            latency=_set(state.latency, client, measured),
        )
        if any(np.isnan(t) for t in state.latency):
            return state
        m = min(self.params.num_tiers, self.num_clients)
        return replace(
            state,
            tiers=split_tiers(state.latency, m),
            pending=((),) * m,
            received=((),) * m,
            tier_models=(None,) * m,
            tier_rounds=(0,) * m,
        )

    def _close_if_done(self, state: FedATState, m: int) -> FedATState:
        if state.pending[m]:
            return state
        received = state.received[m]
        state = replace(state, received=_set(state.received, m, ()))
        if self.params.reprofile:
            state = replace(state, tiers=split_tiers(state.latency, len(state.tiers)))
        if not received:  # every client of the round dropped: no tier update, no version
            return state
        # FedAvg inside the tier: the sample-weighted mean of the round's client models.
        w_m = weighted_average([y for y, _ in received], [n for _, n in received])
        tier_models = _set(state.tier_models, m, w_m)
        tier_rounds = _set(state.tier_rounds, m, state.tier_rounds[m] + 1)
        weights = cross_tier_weights(tier_rounds)
        done = [i for i, w in enumerate(tier_models) if w is not None]
        models = [w for w in tier_models if w is not None]
        model = weighted_sum(models, [weights[i] for i in done])
        return replace(
            state,
            model=model,
            version=state.version + 1,
            tier_models=tier_models,
            tier_rounds=tier_rounds,
        )


def _set(items: tuple[ItemT, ...], index: int, value: ItemT) -> tuple[ItemT, ...]:
    """``items`` with ``items[index]`` replaced by ``value``."""
    return (*items[:index], value, *items[index + 1 :])
