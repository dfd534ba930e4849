"""CSE-FSL: Mu and Shen, "Communication and Storage Efficient Federated Split Learning"
(arXiv 2507.15816), as the FSL-SAGE repository runs it (``cse_fsl``).

The client trains its part together with a small auxiliary head on its own loss
(workloads/split.py ``aux_model``), so no gradient ever comes back from the server: it never
waits. Every ``upload_every`` (Q) steps it streams that step's activations and labels to the
server, which trains its one shared server part on them, one SGD step per upload, at
``server_lr`` (0: the clients' ``training.lr``). At the end of the round the client parts and
the heads are averaged, and each client sent both up and received both down (the
reference's 2x per client for each).

The server as a resource: its steps on a client's activations are server work in virtual
time (``server.seconds_per_sample`` times its part's share of the FLOPs), on one server
part, so they run one client after another, in the order the clients' jobs end. Shortcut:
the server starts on a client's activations when its job has ended (the reference, whose
clients run one after another, also trains the server on one client's uploads at a time),
not as each one arrives; the round can therefore close later by up to one client's server
work than with per-upload scheduling. The uploads themselves are streamed while the client
computes (``JobCost.stream_uploads``), and a job ends when both are done.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

import algorithms.split_rules as rules
from algorithms.aggregation import descend, weighted_average
from algorithms.base import ClientResult, Job, Payload, ServerJob, Update
from algorithms.split_learning import SplitParams, SplitRounds, SplitState

if TYPE_CHECKING:
    import torch

    from engine.worker.training import ClientData

AUX_DELTA = "aux_delta"  # the head's change, uploaded beside the client part's


@dataclass(frozen=True)
class CseFslParams(SplitParams):
    upload_every: int = 5  # Q: the server gets every Q-th step's activations
    aux_hidden: int = 128  # the head's hidden units on flat activations (0: one linear layer)
    server_lr: float = 0.0  # the server part's SGD rate on uploaded activations; 0: training.lr

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.upload_every < 1:
            raise ValueError(f"upload_every must be >= 1 (got {self.upload_every})")
        if self.aux_hidden < 0:
            raise ValueError(f"aux_hidden must be >= 0, 0 meaning a linear head (got {self.aux_hidden})")
        if not self.server_lr >= 0:
            raise ValueError(f"server_lr must be >= 0, 0 meaning training.lr (got {self.server_lr})")


class CseFsl(SplitRounds):
    description: ClassVar[str] = (
        "CSE-FSL (Mu & Shen): split learning with a local auxiliary loss, activations every Q steps"
    )
    name: ClassVar[str] = "cse_fsl"
    Params: ClassVar[type] = CseFslParams
    params: CseFslParams
    uses_aux: ClassVar[bool] = True

    @property
    def server_lr(self) -> float:
        return self.params.server_lr or self.training.lr

    def job_for(self, state: SplitState, client: int) -> Job:
        q = self.params.upload_every
        task, rows = self.base_task(client, aux=state.aux, train_aux=True, upload_every=q)
        cost = rules.local_loss_cost(self.sizes(), rows, q, aux_down=True, aux_up=True)
        return Job(client, task, cost=cost)

    def absorb(self, state: SplitState, update: Update) -> SplitState:
        """The job's activations wait for the server, which takes them in arrival order."""
        state = replace(state, backlog=(*state.backlog, update))
        return state if state.serving else self.serve_next(state)

    def serve_next(self, state: SplitState) -> SplitState:
        first, rest = state.backlog[0], state.backlog[1:]
        logged = {k: first.extra[k] for k in ("z", "y", "rows")}
        per_sample = self.server_cost.seconds_per_sample
        seconds = rules.server_step_seconds(self.sizes(), len(logged["y"]), per_sample)
        steps = state.server_steps + len(logged["rows"])
        state = replace(state, backlog=rest, serving=True, server_steps=steps)
        return self.ask_server(state, seconds, logged)

    def on_server_job(self, state: SplitState, job: ServerJob, model: np.ndarray, now: float) -> SplitState:
        state = replace(state, server_part=model, serving=False)
        return self.close_if_done(self.serve_next(state) if state.backlog else state)

    def new_aux(self, state: SplitState) -> np.ndarray | None:
        assert state.aux is not None
        deltas = [u.extra[AUX_DELTA] for u in state.received]
        return descend(state.aux, weighted_average(deltas, self.weights(state.received)), 1.0)

    # ---- executor side ----------------------------------------------------------------------
    def client_update(
        self,
        model: torch.nn.Module,
        data: ClientData,
        task: Any,
        client_state: Any,
        generator: torch.Generator,
    ) -> ClientResult:
        from algorithms.split_client import local_loss_sgd
        from workloads.base import ParamLayout

        client, _, head = self.parts(model)
        layout = ParamLayout.of(head)
        layout.load(head, task.aux)
        loss, logged = local_loss_sgd(client, head, data, task, generator, task.upload_every, task.train_aux)
        extra: dict[str, np.ndarray] = dict(logged)
        if task.train_aux:
            extra[AUX_DELTA] = np.subtract(task.aux, layout.flatten(head), dtype=np.float32)
        return ClientResult(client_state=client_state, metrics={"train_loss": loss}, extra=extra)

    def server_update(
        self, model: torch.nn.Module, inputs: Payload, key: int, generator: torch.Generator
    ) -> np.ndarray:
        """The server part after one step per logged batch of ``inputs``."""
        from algorithms.split_client import server_sgd
        from workloads.base import ParamLayout

        _, server, _ = self.parts(model)
        server_sgd(server, inputs, self.server_lr, next(model.parameters()).device)
        return ParamLayout.of(model).flatten(model)[self.sizes().client_entries :]
