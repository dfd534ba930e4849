"""Local SGD with a constant correction of every step (on the executors; imports torch
lazily): SCAFFOLD's control variates and the momentum variants' mixed-in server direction
(algorithms/scaffold.py, fedavg_m.py), and which flat entries are trainable (CMFL too)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from algorithms.task import Task

if TYPE_CHECKING:
    import torch

    from engine.worker.training import ClientData


def trainable_mask(model: torch.nn.Module, layout: Any) -> np.ndarray:
    """Which entries of the flat vector (``ParamLayout``) are trainable parameters."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    parts = [
        np.full(math.prod(shape), name in trainable, dtype=bool)
        for name, shape in zip(layout.names, layout.shapes, strict=True)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def corrected_sgd(
    model: torch.nn.Module,
    data: ClientData,
    task: Task,
    generator: torch.Generator,
    *,
    beta: float = 1.0,
    offset: np.ndarray | None = None,
    track: bool = False,
) -> tuple[float, np.ndarray | None]:
    """``task.steps`` local steps ``y <- y - lr * (beta * g(y) + offset)`` on ``model`` in
    place, ``g`` the minibatch gradient (plus ``weight_decay * y``), ``offset`` a constant
    flat vector in the ``ParamLayout`` order (None: zero). The minibatches are those of
    ``local_sgd`` (``batch_indices`` with the job's generator); with ``beta`` 1 and no
    offset the steps are torch's plain SGD, bit for bit. Returns the mean training loss and,
    with ``track``, the sum of the gradients ``g`` over the steps (flat float32)."""
    import torch

    from engine.worker.training import batch_indices
    from workloads.base import ParamLayout

    layout = ParamLayout.of(model)
    named = dict(model.named_parameters())
    pieces: list[tuple[torch.nn.Parameter, int, int]] = []  # (parameter, start, end) in the flat vector
    seen: set[int] = set()
    at = 0
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        n = math.prod(shape)
        p = named.get(name)
        if p is not None and p.requires_grad and id(p) not in seen:
            pieces.append((p, at, at + n))
            seen.add(id(p))
        at += n
    if task.steps <= 0 or len(data) == 0:
        return float("nan"), (np.zeros(at, dtype=np.float32) if track else None)
    device = data.x.device
    off = None if offset is None else torch.from_numpy(np.array(offset, dtype=np.float32)).to(device)
    grad_sum = torch.zeros(at, device=device) if track else None
    model.train()
    total = torch.zeros((), device=device)
    for idx in batch_indices(len(data), task.steps, task.batch_size, generator):
        model.zero_grad(set_to_none=True)
        x = data.x[idx] if data.augment is None else data.augment(data.x[idx], generator)
        loss = data.loss_fn(model(x), data.y[idx])
        loss.backward()
        with torch.no_grad():
            for p, lo, hi in pieces:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                if task.weight_decay != 0:
                    g = g.add(p, alpha=task.weight_decay)
                if grad_sum is not None:
                    grad_sum[lo:hi].add_(g.reshape(-1))
                if beta != 1.0:
                    g = g.mul(beta)
                if off is not None:
                    g = g.add(off[lo:hi].view_as(p))
                p.add_(g, alpha=-task.lr)
        total += loss.detach()
    model.zero_grad(set_to_none=True)  # the executor's cached model keeps no gradient memory
    sums = None if grad_sum is None else grad_sum.cpu().numpy()
    return float(total) / task.steps, sums
