"""Local SGD for several clients at once: their parameters stacked along a new leading
dimension and trained with ``torch.func.vmap`` over ``functional_call``.

For small models most of a local step is per-operation overhead (Python, dispatch,
small kernels), so S clients that start from the same model with the same task cost
little more than one when their steps run as one batched computation. The engine forms
the stacks (engine/core/jobs.py ``assign_stacks``: jobs of one dispatch with the same task,
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

import math
from collections.abc import Sequence

import torch
from torch.func import functional_call, vmap

from algorithms.task import Task
from engine.worker.training import ClientData, GradClip, batch_indices

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
    clips: Sequence[GradClip | None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Run ``task`` for every occupied slot from the parameters ``model`` holds now, with
    every minibatch padded to ``width`` examples (at least the largest minibatch).

    Returns each trainable parameter stacked over the slots (``(len(slots), *shape)``)
    after training, and each slot's mean training loss (nan for an empty slot). The
    SGD step is ``local_sgd``'s: FedProx's pull added to the gradient, the sum clipped
    (``task.clip``, each slot by its own norm), then ``torch.optim.SGD``'s weight decay,
    momentum and ``p -= lr * d``. ``clips`` (one per slot, None for an empty one) carry
    AutoClip histories from the clients' earlier jobs; by default each slot's starts
    empty (scope job), and scope client without them is refused.
    """
    size = len(slots)
    occupied = [s for s in slots if s is not None]
    if not occupied:
        raise ValueError("a stack needs at least one occupied slot")
    ref = occupied[0][0]
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed = {**frozen, **dict(model.named_buffers())}
    params = {n: p.unsqueeze(0).repeat(size, *([1] * p.dim())) for n, p in trainable.items()}
    anchor = {n: p.clone() for n, p in params.items()} if task.prox_mu > 0 else {}
    velocity: dict[str, torch.Tensor] = {}
    clipping = task.clip.enabled
    if clips is None:
        if task.clip.keeps_client_history:
            raise ValueError(
                "stacked training keeps no client state: AutoClip with scope client needs each "
                "slot's history (clips), or training.clip.scope=job"
            )
        clips = [None if s is None or not clipping else GradClip(task.clip) for s in slots]
    elif len(clips) != size:
        raise ValueError(f"clips must have one entry per slot ({size}, got {len(clips)})")
    losses_fn = ref.losses_fn or _cross_entropy_per_example
    # vmap over the forward pass only; autograd then gives each slot the gradient of its
    # own loss (the slots' losses are summed, and no slot's loss depends on another's
    # parameters). randomness="different": dropout masks differ per slot.
    forward = vmap(lambda p, x: functional_call(model, (p, fixed), (x,)), randomness="different")
    batches = _Batches(slots, task, width)
    totals = torch.zeros(size, device=ref.x.device)
    model.train()
    for k in range(task.steps):
        x, y, w = batches.step(k)
        leaves = {n: p.requires_grad_(True) for n, p in params.items()}
        per_example = losses_fn(forward(leaves, x).flatten(0, 1), y.flatten()).view(size, width)
        losses = (per_example * w).sum(1) / w.sum(1).clamp(min=1.0)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        with torch.no_grad():
            totals += losses
            steps = list(grads)
            if task.prox_mu > 0:
                pulls = (leaves[n] - anchor[n] for n in leaves)
                steps = [g + task.prox_mu * pull for g, pull in zip(steps, pulls, strict=True)]
            if clipping:
                # Each slot's own step (its loss's gradient plus FedProx's pull) clipped by
                # its own norm, before weight decay and momentum, as in ``local_sgd``.
                steps = _clip_slots(steps, clips)
            for (n, p), d in zip(leaves.items(), steps, strict=True):
                if task.weight_decay:
                    d = d + task.weight_decay * p
                if task.momentum:
                    velocity[n] = d if n not in velocity else task.momentum * velocity[n] + d
                    d = velocity[n]
                params[n] = p.detach() - task.lr * d
    return params, [
        float("nan") if s is None or task.steps <= 0 else float(totals[i]) / task.steps
        for i, s in enumerate(slots)
    ]


class _Batches:
    """Every slot's minibatches as (slots, width, ...) tensors with a (slots, width) weight
    mask, drawn from each slot's own generator exactly as ``local_sgd`` draws them."""

    def __init__(self, slots: Sequence[tuple[ClientData, torch.Generator] | None], task: Task, width: int):
        self.slots = slots
        self.plans = [
            None if s is None else batch_indices(len(s[0]), task.steps, task.batch_size, s[1]) for s in slots
        ]
        largest = max(len(i) for plan in self.plans if plan is not None for i in plan)
        if largest > width:
            raise ValueError(f"a minibatch of {largest} exceeds the stack's width {width}")
        self.width = width
        ref = next(s for s in slots if s is not None)[0]
        self.augmented = any(s is not None and s[0].augment is not None for s in slots)
        if not self.augmented:
            # All shards in one tensor plus a zero row for padding: one gather per step.
            parts = [s[0] for s in slots if s is not None]
            self.x = torch.cat([*(d.x for d in parts), ref.x.new_zeros((1, *ref.x.shape[1:]))])
            self.y = torch.cat([*(d.y for d in parts), ref.y.new_zeros(1)])
            starts, at = [], 0
            for s in slots:
                starts.append(at)
                at += 0 if s is None else len(s[0])
            self.starts, self.pad_row = starts, at

    def step(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.augmented:
            return self._step_augmented(k)
        rows, weights = [], []
        for plan, start in zip(self.plans, self.starts, strict=True):
            idx = [] if plan is None else (plan[k] + start).tolist()
            rows.append(idx + [self.pad_row] * (self.width - len(idx)))
            weights.append([1.0] * len(idx) + [0.0] * (self.width - len(idx)))
        index = torch.tensor(rows, device=self.x.device)
        w = torch.tensor(weights, device=self.x.device)
        return self.x[index], self.y[index], w

    def _step_augmented(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ref = next(s for s in self.slots if s is not None)[0]
        xs, ys, ws = [], [], []
        for slot, plan in zip(self.slots, self.plans, strict=True):
            idx = torch.zeros(0, dtype=torch.long) if slot is None or plan is None else plan[k]
            x = ref.x.new_zeros((0, *ref.x.shape[1:])) if slot is None else slot[0].x[idx]
            if slot is not None and slot[0].augment is not None:
                x = slot[0].augment(x, slot[1])
            y = ref.y.new_zeros(0) if slot is None else slot[0].y[idx]
            pad = self.width - len(idx)
            xs.append(torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]))
            ys.append(torch.cat([y, y.new_zeros(pad)]))
            ws.append(torch.cat([torch.ones(len(idx)), torch.zeros(pad)]).to(ref.x.device))
        return torch.stack(xs), torch.stack(ys), torch.stack(ws)


def _clip_slots(steps: list[torch.Tensor], clips: Sequence[GradClip | None]) -> list[torch.Tensor]:
    """``steps`` (each ``(slots, *shape)``) with every slot's rows scaled as
    ``clip_grad_norm_`` scales one job's gradients: by ``min(1, threshold / (norm + 1e-6))``,
    its norm the L2 norm over all of its rows (torch's: the norm of the per-tensor norms).
    An empty slot (``None``: zero gradients) is left as it is."""
    size = steps[0].shape[0]
    norms = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.reshape(size, -1), dim=1) for g in steps]), dim=0
    )
    host = norms.tolist() if any(c is not None and c.clip.mode == "autoclip" for c in clips) else None
    limits = [
        math.inf if c is None else c.threshold(host[i] if host is not None else 0.0)
        for i, c in enumerate(clips)
    ]
    # torch's coefficient: ``max_norm / (norm + 1e-6)``, i.e. the reciprocal times max_norm
    limit = torch.tensor(limits, dtype=norms.dtype, device=norms.device)
    coef = torch.clamp((norms + 1e-6).reciprocal() * limit, max=1.0)
    return [g * coef.view(size, *([1] * (g.dim() - 1))) for g in steps]


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
