"""Client-side local training (runs on executors and in the in-process backend): the
minibatch order and local SGD that algorithms' client updates build on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from algorithms.task import Task

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class ClientData:
    """One client's training shard as tensors on the executor's device."""

    x: torch.Tensor
    y: torch.Tensor
    loss_fn: LossFn
    augment: AugmentFn | None = None  # per-minibatch augmentation, drawing from the job's generator
    losses_fn: LossFn | None = None  # per-example losses (stacked training masks padding with them)

    def __len__(self) -> int:
        return int(self.y.shape[0])


def batch_indices(n: int, steps: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Minibatch index lists for ``steps`` steps: epochs over fresh permutations.

    ``batch_size`` 0 (or >= n) means full batch. An epoch is ``ceil(n / batch_size)``
    steps, the last one short, so every example is seen exactly once per epoch (this is
    what ``LocalTraining.steps_for`` counts).
    """
    if batch_size == 0 or batch_size >= n:
        full = torch.arange(n)
        return [full] * steps
    out: list[torch.Tensor] = []
    while len(out) < steps:
        out.extend(torch.randperm(n, generator=generator).split(batch_size))
    return out[:steps]


def local_sgd(model: torch.nn.Module, data: ClientData, task: Task, generator: torch.Generator) -> float:
    """Run ``task.steps`` SGD steps on ``model`` in place; return the mean training loss.

    With ``task.prox_mu > 0`` this is FedProx's local objective
    ``f_i(w) + mu/2 * ||w - w_start||^2`` (the gradient gains ``mu * (w - w_start)``).
    """
    if task.steps <= 0 or len(data) == 0:
        return float("nan")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params] if task.prox_mu > 0 else []
    opt = torch.optim.SGD(params, lr=task.lr, momentum=task.momentum, weight_decay=task.weight_decay)
    total = torch.zeros((), device=data.x.device)
    for idx in batch_indices(len(data), task.steps, task.batch_size, generator):
        opt.zero_grad(set_to_none=True)
        x = data.x[idx] if data.augment is None else data.augment(data.x[idx], generator)
        loss = data.loss_fn(model(x), data.y[idx])
        loss.backward()
        if task.prox_mu > 0:
            with torch.no_grad():
                for p, p0 in zip(params, start, strict=True):
                    if p.grad is not None:
                        p.grad.add_(p.detach() - p0, alpha=task.prox_mu)
        opt.step()
        total += loss.detach()
    opt.zero_grad(set_to_none=True)  # the executor's cached model keeps no gradient memory
    return float(total) / task.steps
