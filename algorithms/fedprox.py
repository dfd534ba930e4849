"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020
(arXiv 1812.06127).

The server is FedAvg's (a **version** is one aggregated round); only the client's local
objective changes to ``F_k(w) + (mu/2) ||w - w^t||^2``, which ``local_sgd`` runs when the
task carries ``prox_mu > 0``. ``mu = 0`` is exactly FedAvg.

**Variable local work** (the paper's systems heterogeneity). With ``variable_work = p``
a fraction ``p`` of each round's clients are stragglers that run a number of local steps
drawn uniformly from ``[1, S]`` instead of their full ``S`` (``client.local_steps``, or
the steps of ``client.epochs`` on that client's shard), and their partial work is
aggregated like any other update. As in the reference code, the stragglers are drawn at
random each round (not by device speed) and number ``n - round(n (1 - p))``; a
straggler's shorter job also takes less virtual time. This lives here, not in FedAvg:
the paper's FedAvg baseline *drops* stragglers (use FedAvg's ``deadline`` for that), and
FedAvg that keeps partial work is FedProx with ``mu = 0``.

Everything on the server is FedAvg's, the robust ``aggregator`` (algorithms/robust.py) and
the ALIE colluders' replacement included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from algorithms.base import Task
from algorithms.fedavg import FedAvg, FedAvgParams


@dataclass(frozen=True)
class FedProxParams(FedAvgParams):
    mu: float = 0.01  # proximal coefficient: pulls local models towards the round's start
    variable_work: float = 0.0  # fraction of each round's clients doing partial local work

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.mu >= 0:
            raise ValueError(f"mu must be >= 0 (got {self.mu})")
        if not 0 <= self.variable_work <= 1:
            raise ValueError(f"variable_work must be in [0, 1] (got {self.variable_work})")


class FedProx(FedAvg):
    description: ClassVar[str] = (
        "FedProx (Li et al. 2020): FedAvg with a proximal local term mu; optional partial work"
    )
    name: ClassVar[str] = "fedprox"
    Params: ClassVar[type] = FedProxParams
    params: FedProxParams

    def task_for(self, client: int) -> Task:
        return replace(super().task_for(client), prox_mu=self.params.mu)

    def round_tasks(self, clients: list[int], rng: np.random.Generator) -> list[Task]:
        tasks = super().round_tasks(clients, rng)
        p = self.params.variable_work
        if p == 0:  # no draws at all, so sampling streams match FedAvg's
            return tasks
        n = len(tasks)
        # The reference code keeps round(n (1 - p)) clients at full work (Python's round).
        stragglers = n - round(n * (1 - p))
        for i in sorted(int(j) for j in rng.choice(n, size=stragglers, replace=False)):
            tasks[i] = replace(tasks[i], steps=int(rng.integers(1, tasks[i].steps + 1)))
        return tasks
