"""Client-side local training (runs on executors and in the in-process backend): the
minibatch order and local SGD that algorithms' client updates build on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from algorithms.task import Clipping, Task

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


def seed_global(seed: int, device: torch.device) -> None:
    """Seed torch's global generators that ``device`` draws from (dropout, initialisation).

    Not ``torch.manual_seed``: with a CUDA build of torch and CUDA not initialised (any
    CPU executor), every call also queues a lazy CUDA seeding together with a formatted
    stack trace, about 4 ms a call, which was most of an in-process no-op job's cost
    (benchmarks/overhead.py). CPU draws are the same as ``torch.manual_seed``'s."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the executor's device: CUDA is initialised there


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


class GradClip:
    """Clips a step's gradient (``Clipping``), keeping the AutoClip history of norms.

    A step's gradient norm is the L2 norm of all its trainable parameters' gradients taken
    together, ``sqrt(sum_p ||g_p||^2)`` (torch's ``get_total_norm``: the norm of the
    per-tensor norms). Its threshold is ``max_norm`` (fixed) or, for AutoClip, the
    ``percentile``-th percentile of the history *with this step's norm appended*
    (``np.percentile``, linear interpolation). The gradient is then scaled exactly as
    ``torch.nn.utils.clip_grad_norm_`` scales it::

        g <- g * min(1, threshold / (norm + 1e-6))

    so a step whose norm is within 1e-6 of the threshold, or is itself the threshold
    (AutoClip's first step of an empty history), is scaled by ``norm / (norm + 1e-6)``,
    as in the reference implementation, which calls ``clip_grad_norm_``. AutoClip at the
    100th percentile is off: no history, no scaling at all (``Clipping.enabled``).

    The history is float64 (each norm a float32 value, so saving it loses nothing) and
    ``state()`` returns it as the 1-D array that a client keeps between jobs.
    """

    def __init__(self, clip: Clipping, history: Any = None) -> None:
        self.clip = clip
        self.history: list[float] = [] if history is None else _history_of(history)
        self.fresh: list[float] = []  # this job's own norms, in step order (scope global)

    def threshold(self, norm: float) -> float:
        """The step's threshold, after recording its gradient norm ``norm`` (AutoClip)."""
        clip = self.clip
        if clip.mode == "fixed":
            return clip.max_norm
        self.history.append(norm)
        self.fresh.append(norm)
        if clip.window and len(self.history) > clip.window:
            del self.history[: len(self.history) - clip.window]
        return float(np.percentile(self.history, clip.percentile))

    def __call__(self, params: Sequence[torch.Tensor]) -> None:
        """Clip the gradients of ``params`` in place."""
        if not self.clip.enabled:
            return
        if self.clip.mode == "fixed":  # no norm on the host: no device synchronisation
            torch.nn.utils.clip_grad_norm_(params, self.clip.max_norm)
            return
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        torch.nn.utils.clip_grads_with_norm_(params, self.threshold(float(norm)), norm)

    def state(self) -> np.ndarray:
        """The history as a client state: a 1-D float64 array, oldest norm first."""
        return np.asarray(self.history, dtype=np.float64)


def _history_of(state: Any) -> list[float]:
    """A client state as an AutoClip history, refusing anything else (another state)."""
    if not isinstance(state, np.ndarray) or state.ndim != 1 or state.dtype != np.float64:
        what = type(state).__name__ if not isinstance(state, np.ndarray) else f"{state.dtype} {state.shape}"
        raise TypeError(f"an AutoClip history must be a 1-D float64 array (got a {what} client state)")
    return [float(v) for v in state]


def local_sgd(
    model: torch.nn.Module,
    data: ClientData,
    task: Task,
    generator: torch.Generator,
    clip: GradClip | None = None,
) -> float:
    """Run ``task.steps`` SGD steps on ``model`` in place; return the mean training loss.

    With ``task.prox_mu > 0`` this is FedProx's local objective
    ``f_i(w) + mu/2 * ||w - w_start||^2`` (the gradient gains ``mu * (w - w_start)``).
    Each step's gradient is clipped by ``clip`` (a history carried over from the client's
    earlier jobs), by default by ``task.clip`` with a history of this job only.
    """
    if task.steps <= 0 or len(data) == 0:
        return float("nan")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params] if task.prox_mu > 0 else []
    if clip is None and task.clip.enabled:
        clip = GradClip(task.clip)
    velocity: list[torch.Tensor | None] = [None] * len(params)
    total = torch.zeros((), device=data.x.device)
    for idx in batch_indices(len(data), task.steps, task.batch_size, generator):
        for p in params:
            p.grad = None
        x = data.x[idx] if data.augment is None else data.augment(data.x[idx], generator)
        loss = data.loss_fn(model(x), data.y[idx])
        loss.backward()
        if task.prox_mu > 0:
            with torch.no_grad():
                for p, p0 in zip(params, start, strict=True):
                    if p.grad is not None:
                        p.grad.add_(p.detach() - p0, alpha=task.prox_mu)
        if clip is not None:
            # The clipped gradient is the whole step's: the loss's gradient plus FedProx's
            # pull, before the optimizer adds weight decay and momentum.
            clip(params)
        sgd_step(params, velocity, task)
        total += loss.detach()
    for p in params:
        p.grad = None  # the executor's cached model keeps no gradient memory
    return float(total) / task.steps


@torch.no_grad()
def sgd_step(params: Sequence[torch.Tensor], velocity: list[torch.Tensor | None], task: Task) -> None:
    """One step of ``torch.optim.SGD`` (no dampening, no Nesterov) in place, bit for bit
    its single-tensor path: ``d = g + wd * p``; ``v = d`` at first, then ``v = m * v + d``;
    ``p -= lr * v``. Written out because constructing ``torch.optim.SGD`` imports
    ``torch._dynamo`` on first use, about 2 s of every process's start-up (an executor's,
    or an in-process run's) for a loop this small. ``velocity`` holds the momentum buffers
    between steps (None before a parameter's first)."""
    for i, p in enumerate(params):
        d = p.grad
        if d is None:
            continue
        if task.weight_decay:
            d = d.add(p, alpha=task.weight_decay)
        if task.momentum:
            v = velocity[i]
            if v is None:
                v = velocity[i] = torch.clone(d).detach()
            else:
                v.mul_(task.momentum).add_(d)
            d = v
        p.add_(d, alpha=-task.lr)
