"""What an algorithm measures from the model once, on the server, before a run starts.

HeteroFL sizes each job from its sub-model (bytes and compute per width) and picks a
client's width from its speed tier: it needs the model's structure and the clients'
speed factors, which the server-side algorithm otherwise never sees (it holds only the
flat parameter vector). An algorithm that needs them defines ``bind(model_factory,
input_shape, speed_factor)``; building the model imports torch, so only those do.
"""

from __future__ import annotations

from typing import Any

from engine.core.delays import DelayModel


def bind_model(algorithm: Any, cfg: Any, meta: Any, delays: DelayModel) -> None:
    """Call ``algorithm.bind`` if it has one; a model it cannot use is the config's fault."""
    bind = getattr(algorithm, "bind", None)
    if bind is None or meta is None:
        return
    from engine.config import ConfigError
    from workloads import WORKLOADS

    workload = WORKLOADS[cfg.workload.name](cfg.workload.params)
    try:
        bind(lambda: workload.model(meta), meta.input_shape, delays.speed_factor)
    except (TypeError, ValueError) as e:  # e.g. a model without widths
        raise ConfigError(f"algorithm {cfg.algorithm.name}: {e}") from None
