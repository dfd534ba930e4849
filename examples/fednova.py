"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020) as a fedray plug-in, in one file.

Clients of a round run different numbers of local steps tau_i (here drawn uniformly from
1 to ``training.local_steps``, as with devices of uneven speed). Plain FedAvg then drifts
towards the clients that ran longest. FedNova normalises each update by its own steps
before averaging, d_i = Delta_i / tau_i, and takes one step of the average's size:
x <- x - tau_eff * sum_i p_i d_i, with tau_eff = sum_i p_i tau_i and p_i = n_i / sum n.

    python -m engine.run algorithm.name=./examples/fednova.py:FedNova algorithm.clients_per_round=10
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from algorithms.aggregation import descend, release, weighted_sum
from algorithms.base import Algorithm, Job, Update, sample_clients
from algorithms.idle import IdleClients


@dataclass(frozen=True)
class FedNovaParams:
    clients_per_round: int = 10
    server_lr: float = 1.0


@dataclass(frozen=True, eq=False)
class FedNovaState:
    model: np.ndarray
    version: int = 0
    pending: tuple[int, ...] = ()  # the round's clients still training
    steps: tuple[tuple[int, int], ...] = ()  # (client, tau_i) of the round
    received: tuple[Update, ...] = ()


class FedNova(Algorithm[FedNovaState]):
    name: ClassVar[str] = "fednova"
    Params: ClassVar[type] = FedNovaParams
    description: ClassVar[str] = "FedNova (Wang et al. 2020): updates normalised by their local steps"
    params: FedNovaParams

    def init(self, model: np.ndarray) -> FedNovaState:
        return FedNovaState(model=np.array(model, dtype=np.float32))

    def jobs(
        self, state: FedNovaState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedNovaState, list[Job]]:
        if state.pending:
            return state, []  # synchronous rounds
        chosen = [int(c) for c in sample_clients(rng, idle, self.params.clients_per_round)]
        taus = [int(rng.integers(1, self.training.local_steps + 1)) for _ in chosen]
        jobs = [Job(c, replace(self.task_for(c), steps=t)) for c, t in zip(chosen, taus, strict=True)]
        return replace(
            state, pending=tuple(sorted(chosen)), steps=tuple(zip(chosen, taus, strict=True))
        ), jobs

    def on_update(self, state: FedNovaState, update: Update, now: float) -> FedNovaState:
        state = replace(
            state, pending=release(state.pending, update.client), received=(*state.received, update)
        )
        return self._close(state) if not state.pending else state

    def on_drop(self, state: FedNovaState, client: int, now: float) -> FedNovaState:
        state = replace(state, pending=release(state.pending, client))
        return self._close(state) if not state.pending else state

    def _close(self, state: FedNovaState) -> FedNovaState:
        if not state.received:
            return replace(state, steps=())
        tau = dict(state.steps)
        n = np.array([float(u.num_samples) for u in state.received])
        p = n / n.sum()
        taus = np.array([float(tau[u.client]) for u in state.received])
        normalised = weighted_sum([u.delta for u in state.received], (p / taus).tolist())  # sum p_i d_i
        tau_eff = float(p @ taus)
        model = descend(state.model, normalised, self.params.server_lr * tau_eff)
        return replace(state, model=model, version=state.version + 1, steps=(), received=())
