"""Split learning's training on the executors (imports torch: import this module lazily).

* ``load_server_part``: SplitFed v2's job trains from the shared server part as it is now.
* ``local_loss_sgd``: CSE-FSL's and FSL-SAGE's client step: the client part (and with CSE-FSL
  the head) descends the loss of the auxiliary head on the client's activations, so no
  gradient comes back from the server; every Q-th step's activations are logged for it.
* ``server_sgd``: the server part's steps on uploaded activations, one per logged batch, in
  upload order.
* ``align_head``: FSL-SAGE's alignment: the head is trained so that its gradient at the cut
  matches the server part's true gradient there, over a client's buffer of activations.

Losses are cross-entropy on logits, the loss of every workload a model can be cut in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from algorithms.task import Task
from engine.worker.training import ClientData, batch_indices, sgd_step
from workloads.base import ParamLayout


def load_server_part(model: nn.Module, server_part: np.ndarray, client_entries: int) -> None:
    """Set the server part of ``model`` (the entries after the first ``client_entries``)."""
    layout = ParamLayout.of(model)
    flat = layout.flatten(model)
    flat[client_entries:] = server_part
    layout.load(model, flat)


def local_loss_sgd(
    client: nn.Module,
    head: nn.Module,
    data: ClientData,
    task: Task,
    generator: torch.Generator,
    every: int,
    train_head: bool,
) -> tuple[float, dict[str, np.ndarray]]:
    """``task.steps`` SGD steps of the client part on the head's loss (the head too with
    ``train_head``); returns the mean loss and the logged activations ``z`` (float32), their
    labels ``y`` and the examples of each logged step ``rows``."""
    client.train()
    head.train()
    params = [p for p in client.parameters() if p.requires_grad]
    if train_head:
        params += [p for p in head.parameters() if p.requires_grad]
    for p in head.parameters():
        p.requires_grad_(train_head)
    velocity: list[torch.Tensor | None] = [None] * len(params)
    total = torch.zeros((), device=data.x.device)
    zs, ys, rows = [], [], []
    for step, idx in enumerate(batch_indices(len(data), task.steps, task.batch_size, generator)):
        for p in params:
            p.grad = None
        x = data.x[idx] if data.augment is None else data.augment(data.x[idx], generator)
        z = client(x)
        loss = data.loss_fn(head(z), data.y[idx])
        loss.backward()
        sgd_step(params, velocity, task)
        total += loss.detach()
        if step % every == 0:  # what the server receives: the activations as computed this step
            zs.append(z.detach().cpu().numpy().astype(np.float32))
            ys.append(data.y[idx].cpu().numpy().astype(np.int64))
            rows.append(len(idx))
    for p in head.parameters():
        p.requires_grad_(True)
    for p in params:
        p.grad = None
    logged = {"z": np.concatenate(zs), "y": np.concatenate(ys), "rows": np.asarray(rows, dtype=np.int64)}
    return float(total) / max(1, task.steps), logged


def server_sgd(server: nn.Module, inputs: Any, lr: float, device: torch.device) -> None:
    """One SGD step of the server part per logged batch of ``inputs`` (z, y, rows), in order."""
    server.train()
    params = [p for p in server.parameters() if p.requires_grad]
    z_all = torch.from_numpy(np.asarray(inputs["z"])).to(device)
    y_all = torch.from_numpy(np.asarray(inputs["y"])).to(device)
    start = 0
    for n in np.asarray(inputs["rows"]).tolist():
        for p in params:
            p.grad = None
        loss = nn.functional.cross_entropy(server(z_all[start : start + n]), y_all[start : start + n])
        loss.backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
        start += n
    for p in params:
        p.grad = None


def align_head(
    server: nn.Module,
    head: nn.Module,
    inputs: Any,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    """Train ``head`` for ``epochs`` passes (Adam, ``lr``, minibatches of ``batch_size``) over
    the buffer ``inputs`` (z, y) on the squared distance between its gradient at the cut and
    the server part's, the latter computed once with the server's current weights. Both are
    per-example gradients (of the summed loss), so a batch's size scales neither; a client's
    step takes them over its mean loss, as the server's gradient would come in SplitFed."""
    device = next(head.parameters()).device
    z = torch.from_numpy(np.asarray(inputs["z"])).to(device)
    y = torch.from_numpy(np.asarray(inputs["y"])).to(device)
    server.eval()
    head.train()
    for p in server.parameters():
        p.requires_grad_(False)
    try:
        zs = z.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(server(zs), y, reduction="sum")
        (target,) = torch.autograd.grad(loss, zs)
    finally:
        for p in server.parameters():
            p.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=generator).split(batch_size):
            zb = z[idx].clone().requires_grad_(True)
            head_loss = nn.functional.cross_entropy(head(zb), y[idx], reduction="sum")
            (estimate,) = torch.autograd.grad(head_loss, zb, create_graph=True)
            opt.zero_grad()
            ((estimate - target[idx]) ** 2).sum().backward()
            opt.step()
    opt.zero_grad()
