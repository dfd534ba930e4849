"""FedAsync: Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", 2019
(arXiv 1903.03934).

``concurrency`` clients train at all times. Each arriving update is mixed into the global
model at once with ``alpha_t = alpha * s(t - tau)`` (spec async-algorithms.md §1), so a
**version** is one arrival. The mixing rate is ``alpha * s``, with no extra ``1/N`` or
``n_i / n`` factor (APPFL's, spec §1 pitfall 1). A finished client is replaced by one
sampled uniformly from the idle clients, as FedBuff does, so the two share a scheduler.
With ``rho > 0`` clients run the paper's regularised local objective
``f_i(y) + (rho/2) ||y - x^tau||^2`` (spec §1, client procedure), the proximal pull of
FedProx's ``Task.prox_mu`` towards the model the job started from; ``rho = 0`` (the default,
and APPFL's trainer) is plain local SGD.
Updates can be compressed with ``codec`` (algorithms/codecs.py), as in FedAvg; with
``codec.direction=both`` the client's delta is taken against the model it received, and
the server still mixes it against its own exact ``x^tau``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from algorithms.aggregation import (
    MIX_MODES,
    check_choice,
    check_staleness,
    dispatch,
    fedasync_mix,
    release,
    staleness_weight,
)
from algorithms.base import Algorithm, Job, Task, Update
from algorithms.codecs import CodecConfig
from algorithms.idle import IdleClients


@dataclass(frozen=True)
class FedAsyncParams:
    concurrency: int = 10  # clients training at all times
    alpha: float = 0.6  # base mixing weight, in (0, 1]
    staleness: str = "poly"  # const | poly | hinge
    a: float = 0.5  # poly exponent / hinge slope
    b: float = 4.0  # hinge: staleness up to b is not discounted
    mix_mode: str = "mix_current"  # the paper; delta_on_stale_base is APPFL's gradient_based
    rho: float = 0.0  # the paper's proximal term on the client; 0 = plain local SGD
    codec: CodecConfig = field(default_factory=CodecConfig)  # update compression (algorithms/codecs.py)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 (got {self.concurrency})")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1] (got {self.alpha})")
        check_staleness(self.staleness, self.a, self.b)
        check_choice("mix_mode", self.mix_mode, MIX_MODES)
        if not self.rho >= 0:  # NaN fails too
            raise ValueError(f"rho must be >= 0 (got {self.rho})")


@dataclass(frozen=True, eq=False)
class FedAsyncState:
    model: np.ndarray
    version: int = 0  # = updates applied: every arrival is one server update
    in_flight: tuple[int, ...] = ()  # clients training now (sorted)
    staleness_sum: int = 0  # sum of u over applied updates, for the mean in stats()
    dropped: int = 0  # jobs that ended without an update


class FedAsync(Algorithm[FedAsyncState]):
    description: ClassVar[str] = (
        "FedAsync (Xie et al. 2019): each arrival mixed in at once with weight alpha*s(staleness)"
    )
    name: ClassVar[str] = "fedasync"
    Params: ClassVar[type] = FedAsyncParams
    params: FedAsyncParams

    def init(self, model: np.ndarray) -> FedAsyncState:
        self.model_size = int(np.size(model))  # decoding a codec's payload needs it
        return FedAsyncState(model=np.array(model, dtype=np.float32))

    def task_for(self, client: int) -> Task:
        task = super().task_for(client)
        # rho 0 leaves the task untouched, so runs without the term stay bit for bit as before.
        return replace(task, prox_mu=self.params.rho) if self.params.rho > 0 else task

    def jobs(
        self, state: FedAsyncState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedAsyncState, list[Job]]:
        in_flight, jobs = dispatch(self.task_for, state.in_flight, self.params.concurrency, idle, rng)
        return replace(state, in_flight=in_flight), self.with_download_cost(jobs, state.model)

    def on_update(self, state: FedAsyncState, update: Update, now: float) -> FedAsyncState:
        p = self.params
        u = state.version - update.version_start
        alpha_t = p.alpha * staleness_weight(p.staleness, u, p.a, p.b)
        return replace(
            state,
            model=fedasync_mix(state.model, update.base, update.delta, alpha_t, p.mix_mode),
            version=state.version + 1,
            in_flight=release(state.in_flight, update.client),
            staleness_sum=state.staleness_sum + u,
        )

    def on_drop(self, state: FedAsyncState, client: int, now: float) -> FedAsyncState:
        return replace(state, in_flight=release(state.in_flight, client), dropped=state.dropped + 1)

    def stats(self, state: FedAsyncState) -> dict[str, float]:
        mean_u = state.staleness_sum / state.version if state.version else 0.0
        return {"mean_staleness": mean_u, "dropped": float(state.dropped)}
