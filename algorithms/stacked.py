"""Local SGD for several clients at once: their parameters stacked along a new leading
dimension and trained with ``torch.func.vmap`` over ``functional_call``.

For small models most of a local step is per-operation overhead (Python, dispatch,
small kernels), so S clients that start from the same model with the same task cost
little more than one when their steps run as one batched computation. The engine forms
the stacks (engine/jobs.py ``assign_stacks``: jobs of one dispatch with the same task,
in dispatch order) and gives every job a fixed *slot* and the stack a fixed minibatch
*width*; a stack always has all its slots, those without a job filled with zero-weight
padding, and every minibatch is padded to the width and masked out of the loss. Each
slot's arithmetic then has the same shapes whoever else is in the stack, so a job's
result depends only on the job, its slot and the stack's key: the same with 1 executor
or 16, and when a lost job is computed again alone. That needs kernels that treat the
slots independently, which holds for linear layers and pointwise functions but not for
convolutions (measured: a conv stack's slot changed in the last bits when its
neighbours did; on CPU conv stacks were also slower than one job at a time), hence
``STACKABLE``. It is not bitwise ``client.local_sgd`` (batched kernels sum in another
order); which of the two a job uses is decided at dispatch (a job with no stack mate
trains alone), so that too is the same whatever the executors.

Each client draws its minibatches and augmentation from its own job generator exactly
as ``local_sgd`` does. Dropout masks come from torch's global generator, which the
caller seeds per stack; they too depend only on the slot and the (fixed) shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.func import functional_call, grad, vmap

from algorithms.base import Task
from algorithms.client import ClientData, batch_indices

STACKABLE = (
    torch.nn.Linear,
    torch.nn.Flatten,
    torch.nn.Identity,
    torch.nn.Dropout,
    torch.nn.ReLU,
    torch.nn.LeakyReLU,
    torch.nn.ELU,
    torch.nn.GELU,
    torch.nn.SiLU,
    torch.nn.Tanh,
    torch.nn.Sigmoid,
    torch.nn.Softplus,
)


def unstackable_layers(model: torch.nn.Module) -> list[str]:
    """Names of the layer types in ``model`` that stacked training does not support."""
    leaves = [m for m in model.modules() if not list(m.children())]
    return sorted({type(m).__name__ for m in leaves if not isinstance(m, STACKABLE)})


def stacked_sgd(
    model: torch.nn.Module,
    slots: Sequence[tuple[ClientData, torch.Generator] | None],
    task: Task,
    width: int,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Run ``task`` for every occupied slot from the parameters ``model`` holds now, with
    every minibatch padded to ``width`` examples (at least the largest minibatch).

    Returns each trainable parameter stacked over the slots (``(len(slots), *shape)``)
    after training, and each slot's mean training loss (nan for an empty slot). The
    SGD step is ``torch.optim.SGD``'s: weight decay and FedProx's pull added to the
    gradient, then momentum, then ``p -= lr * d``.
    """
    size = len(slots)
    occupied = [s for s in slots if s is not None]
    if not occupied:
        raise ValueError("a stack needs at least one occupied slot")
    ref = occupied[0][0]
    device = ref.x.device
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed = {**frozen, **dict(model.named_buffers())}
    params = {n: p.unsqueeze(0).repeat(size, *([1] * p.dim())) for n, p in trainable.items()}
    anchor = dict(params) if task.prox_mu > 0 else {}
    velocity: dict[str, torch.Tensor] = {}
    losses_fn = ref.losses_fn or _cross_entropy_per_example

    def objective(
        p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per_example = losses_fn(functional_call(model, (p, fixed), (x,)), y)
        loss = (per_example * w).sum() / w.sum().clamp(min=1.0)
        return loss, loss.detach()

    # randomness="different": dropout masks differ per slot, from the global generator.
    step = vmap(grad(objective, has_aux=True), randomness="different")
    # Every slot's minibatches, drawn from its own generator first, as local_sgd does.
    plans = [
        None if s is None else batch_indices(len(s[0]), task.steps, task.batch_size, s[1]) for s in slots
    ]
    totals = torch.zeros(size, device=device)
    model.train()
    for k in range(task.steps):
        xs, ys, ws = [], [], []
        for slot, plan in zip(slots, plans, strict=True):
            if slot is None or plan is None:  # padding: zero weight, its gradient is zero
                xs.append(ref.x.new_zeros((width, *ref.x.shape[1:])))
                ys.append(ref.y.new_zeros(width))
                ws.append(torch.zeros(width, device=device))
                continue
            data, generator = slot
            idx = plan[k]
            if len(idx) > width:
                raise ValueError(f"a minibatch of {len(idx)} examples exceeds the stack's width {width}")
            x = data.x[idx] if data.augment is None else data.augment(data.x[idx], generator)
            pad = width - len(idx)
            xs.append(torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x)
            ys.append(torch.cat([data.y[idx], data.y.new_zeros(pad)]) if pad else data.y[idx])
            ws.append(torch.cat([torch.ones(len(idx), device=device), torch.zeros(pad, device=device)]))
        grads, losses = step(params, torch.stack(xs), torch.stack(ys), torch.stack(ws))
        with torch.no_grad():
            totals += losses
            for n, g in grads.items():
                d = g
                if task.weight_decay:
                    d = d + task.weight_decay * params[n]
                if task.prox_mu > 0:
                    d = d + task.prox_mu * (params[n] - anchor[n])
                if task.momentum:
                    velocity[n] = d if n not in velocity else task.momentum * velocity[n] + d
                    d = velocity[n]
                params[n] = params[n] - task.lr * d
    return params, [
        float("nan") if s is None or task.steps <= 0 else float(totals[i]) / task.steps
        for i, s in enumerate(slots)
    ]


def _cross_entropy_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")


def stacked_rows(
    model: torch.nn.Module, names: Sequence[str], params: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The (slots, size) matrix of flat model vectors in ``ParamLayout`` order (``names``):
    the stacked trained parameters, and the model's own buffers for every slot."""
    size = len(next(iter(params.values())))
    state = model.state_dict()
    return torch.cat(
        [
            (params[n] if n in params else state[n].unsqueeze(0).expand(size, *state[n].shape))
            .reshape(size, -1)
            .to(torch.float32)
            for n in names
        ],
        dim=1,
    )
