"""FSL-SAGE: Nair et al., "FSL-SAGE: Accelerating Federated Split Learning via Smashed
Activation Gradient Estimation", ICML 2025 (arXiv 2505.23182; repository ``fsl_sage``).

As CSE-FSL (algorithms/cse_fsl.py), but the client's auxiliary model estimates the *server's*
gradient at the cut rather than the client's own loss: the client steps its part with
``d loss(aux(z), y) / dz`` and never trains the head itself. Each client has its own head,
never averaged. The server keeps, per client, a first-in first-out buffer of the last
``buffer`` (1000) examples' uploaded activations and labels, and every ``align_every`` (l)
rounds, before a client's first step, it *aligns* that client's head: it takes the true
gradients at the cut over the buffer with its current server part, and trains the head for
``align_epochs`` epochs (Adam at ``align_lr``, minibatches of ``align_batch``) so that the
head's gradient matches them (algorithms/split_client.py ``align_head``). The aligned head
goes down to the client with its part; otherwise only the client part travels down, and
only the client part goes up (plus the streamed activations).

In virtual time an alignment is server work before the client's job (the true gradients
once, then the head's epochs with double backpropagation: split_rules.alignment_seconds);
it queues on the one server with the server's steps on activations, and the client starts
once its head is aligned. Round 0 aligns nothing (the buffers are empty); the first head
is the same seeded model on every client, built there, so it is never sent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np

import algorithms.split_rules as rules
from algorithms.base import Job, Payload, ServerJob, Update
from algorithms.cse_fsl import CseFsl, CseFslParams
from algorithms.idle import IdleClients
from algorithms.split_learning import SplitState

if TYPE_CHECKING:
    import torch

ALIGN = "align"  # marks an alignment's inputs (the head to align)


@dataclass(frozen=True)
class FslSageParams(CseFslParams):
    align_every: int = 10  # l: rounds between alignments of every head
    align_epochs: int = 100
    align_lr: float = 1e-3  # Adam's rate for the head
    align_batch: int = 1000
    buffer: int = 1000  # examples of activations kept per client for alignment

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("align_every", "align_epochs", "align_batch", "buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not self.align_lr > 0:
            raise ValueError(f"align_lr must be > 0 (got {self.align_lr})")


class FslSage(CseFsl):
    description: ClassVar[str] = (
        "FSL-SAGE (Nair et al. 2025): split learning with per-client heads aligned to the server's gradient"
    )
    name: ClassVar[str] = "fsl_sage"
    Params: ClassVar[type] = FslSageParams
    params: FslSageParams

    def head(self, state: SplitState, client: int) -> np.ndarray:
        head = state.heads.get(client, self.aux_init)
        assert head is not None
        return head

    def open_round(self, state: SplitState) -> SplitState:
        """Every l-th round, each of its clients with a buffer has its head aligned first."""
        if state.version % self.params.align_every != 0:
            return state
        p, cut, seconds_per_sample = self.params, self.sizes(), self.server_cost.seconds_per_sample
        for client in state.queue:
            kept = state.buffers.get(client)
            if kept is None:
                continue
            z, y = kept
            seconds = rules.alignment_seconds(cut, len(y), p.align_epochs, seconds_per_sample)
            key = state.keys
            state = self.ask_server(state, seconds, {ALIGN: self.head(state, client), "z": z, "y": y})
            state = replace(state, aligning={**state.aligning, key: client})
        return state

    def ready(self, state: SplitState, idle: IdleClients) -> list[int]:
        waiting = set(state.aligning.values())
        return [c for c in state.queue if c in idle and c not in waiting]

    def job_for(self, state: SplitState, client: int) -> Job:
        q = self.params.upload_every
        task, rows = self.base_task(client, aux=self.head(state, client), train_aux=False, upload_every=q)
        aux_down = client in state.aligned
        return Job(client, task, cost=rules.local_loss_cost(self.sizes(), rows, q, aux_down, aux_up=False))

    def absorb(self, state: SplitState, update: Update) -> SplitState:
        kept = rules.fifo_append(
            state.buffers.get(update.client), update.extra["z"], update.extra["y"], self.params.buffer
        )
        return super().absorb(replace(state, buffers={**state.buffers, update.client: kept}), update)

    def on_server_job(self, state: SplitState, job: ServerJob, model: np.ndarray, now: float) -> SplitState:
        client = state.aligning.get(job.key)
        if client is None:
            return super().on_server_job(state, job, model, now)
        aligning = {k: c for k, c in state.aligning.items() if k != job.key}
        return replace(
            state, aligning=aligning, heads={**state.heads, client: model}, aligned=(*state.aligned, client)
        )

    def new_aux(self, state: SplitState) -> np.ndarray | None:
        return state.aux  # heads are the clients' own, never averaged

    def stats(self, state: SplitState) -> dict[str, float]:
        return {**super().stats(state), "aligned_heads": float(len(state.heads))}

    def server_update(
        self, model: torch.nn.Module, inputs: Payload, key: int, generator: torch.Generator
    ) -> np.ndarray:
        if ALIGN not in inputs:
            return super().server_update(model, inputs, key, generator)
        from algorithms.split_client import align_head
        from workloads.base import ParamLayout

        p = self.params
        _, server, head = self.parts(model)
        layout = ParamLayout.of(head)
        layout.load(head, inputs[ALIGN])
        align_head(server, head, inputs, p.align_epochs, p.align_batch, p.align_lr, generator)
        return layout.flatten(head)
