"""What an algorithm measures from the model once, on the server, before a run starts.

HeteroFL sizes each job from its sub-model (bytes and compute per width) and picks a
client's width from its speed tier: it needs the model's structure and the clients'
speed factors, which the server-side algorithm otherwise never sees (it holds only the
flat parameter vector). An algorithm that needs them defines ``bind(model_factory,
input_shape, speed_factor)``; building the model imports torch, so only those do.

Split learning cuts the model at the workload's cut layer (``workload.cut``): an algorithm
that defines ``bind_cut(model_factory, input_shape, cut, seed)`` measures the cut there, on the
server and on every executor (whose copy of the algorithm trains and serves the parts).
"""

from __future__ import annotations

from typing import Any

from engine.core.delays import DelayModel


def bind_model(algorithm: Any, cfg: Any, meta: Any, delays: DelayModel) -> None:
    """Call ``algorithm.bind`` or ``bind_cut`` if it has one; a model it cannot use is the
    config's fault."""
    bind = getattr(algorithm, "bind", None)
    if meta is None or (bind is None and not hasattr(algorithm, "bind_cut")):
        return
    from engine.config import ConfigError
    from workloads import WORKLOADS

    workload = WORKLOADS[cfg.workload.name](cfg.workload.params)
    try:
        if bind is not None:
            bind(lambda: workload.model(meta), meta.input_shape, delays.speed_factor)
        bind_cut(algorithm, workload, meta, cfg.seed)
    except (TypeError, ValueError) as e:  # e.g. a model without widths, or no such cut
        raise ConfigError(f"algorithm {cfg.algorithm.name}: {e}") from None


def bind_cut(algorithm: Any, workload: Any, meta: Any, seed: int) -> None:
    """Call ``algorithm.bind_cut`` at the workload's cut, if the algorithm splits the model."""
    bind = getattr(algorithm, "bind_cut", None)
    if bind is None:
        return
    cut = getattr(workload, "cut_name", None)
    if cut is None:
        raise ValueError(
            f"it splits the model at a cut layer, and workload {workload.name}'s model has none: use "
            "shapes or an image workload (mnist, fashion_mnist, emnist, cifar10, cifar100)"
        )
    bind(lambda: workload.model(meta), meta.input_shape, cut(), seed)
