"""SplitFed: Thapa et al., "SplitFed: When Federated Learning Meets Split Learning", AAAI 2022
(arXiv 2004.12088), as the FSL-SAGE repository runs it (``sl_multi_server``, ``sl_single_server``).

Every minibatch is a blocking round trip: the client computes its part up to the cut, sends
the activations (and labels) up, the server runs its part forward and backward, and the
activations' gradient comes back for the client's backward pass. Nothing else crosses the
network but the client part, down and up once per round (algorithms/split_rules.py
``relay_cost``: every step's bytes, latency both ways, and the server's share of the compute).

* **v1** (``splitfed``): the server keeps a copy of its part per client, trained only on that
  client's activations, and averages the copies with the client parts at the end of the
  round (at the server: not charged). Its math is FedAvg on the whole model; so is fedray's
  shortcut: a job computes the server copy's steps itself, which changes nothing (tested:
  equal to FedAvg). The copies never wait for each other (one server slot per client).
* **v2** (``splitfed_v2``): one server part that the round's clients train one after another
  (in client-id order, as the reference's sequential loop): a client's job starts when the
  one before it has ended, from the server part as that one left it; the client parts are
  averaged at the end of the round and the server part is kept as trained. A client that is
  unavailable when its turn comes is skipped until it is back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

import algorithms.split_rules as rules
from algorithms.aggregation import descend, weighted_average
from algorithms.base import ClientResult, Job, Update
from algorithms.idle import IdleClients
from algorithms.split_learning import SplitParams, SplitRounds, SplitState, SplitTask

if TYPE_CHECKING:
    import torch

    from engine.worker.training import ClientData

SERVER_PART = "server_part"  # SplitFed v2: the shared server part after a client's turn


class SplitFed(SplitRounds):
    description: ClassVar[str] = (
        "SplitFed v1 (Thapa et al. 2022): split learning with a server copy per client, averaged"
    )
    name: ClassVar[str] = "splitfed"
    Params: ClassVar[type] = SplitParams
    # The whole model trains by the configured local SGD (momentum, clipping and all).
    default_local_training: ClassVar[bool] = True

    def job_for(self, state: SplitState, client: int) -> Job:
        task, rows = self.base_task(client, server_part=self.server_part_for(state))
        return Job(
            client, task, cost=rules.relay_cost(self.sizes(), rows, self.server_cost.seconds_per_sample)
        )

    def server_part_for(self, state: SplitState) -> np.ndarray | None:
        return None  # v1: every copy starts from the version's server part

    def aggregate(self, state: SplitState) -> np.ndarray:
        """FedAvg's average of whole-model changes: client parts and server copies alike."""
        mean = weighted_average([u.delta for u in state.received], self.weights(state.received))
        return descend(state.model, mean, 1.0)

    def client_update(
        self,
        model: torch.nn.Module,
        data: ClientData,
        task: Any,
        client_state: Any,
        generator: torch.Generator,
    ) -> ClientResult:
        """Local SGD through both parts; from the shared server part when the task carries it
        (v2), which the job then hands back as its turn left it (it stays at the server, so
        it is not charged)."""
        if not isinstance(task, SplitTask) or task.server_part is None:
            return super().client_update(model, data, task, client_state, generator)
        from algorithms.split_client import load_server_part
        from workloads.base import ParamLayout

        e = self.sizes().client_entries
        load_server_part(model, task.server_part, e)
        result = super().client_update(model, data, task, client_state, generator)
        trained = ParamLayout.of(model).flatten(model)[e:]
        return replace(result, extra={**result.extra, SERVER_PART: trained})


class SplitFedV2(SplitFed):
    description: ClassVar[str] = (
        "SplitFed v2 (Thapa et al. 2022): split learning with one server part, clients in turn"
    )
    name: ClassVar[str] = "splitfed_v2"

    def open_round(self, state: SplitState) -> SplitState:
        return replace(state, queue=tuple(sorted(state.queue)))

    def ready(self, state: SplitState, idle: IdleClients) -> list[int]:
        if state.pending:
            return []  # one client at a time: the server part is shared
        return next(([c] for c in state.queue if c in idle), [])

    def server_part_for(self, state: SplitState) -> np.ndarray | None:
        return state.server_part

    def absorb(self, state: SplitState, update: Update) -> SplitState:
        """The server part as this client's turn left it."""
        return replace(state, server_part=update.extra[SERVER_PART])

    def aggregate(self, state: SplitState) -> np.ndarray:
        return SplitRounds.aggregate(self, state)
