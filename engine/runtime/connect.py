"""Starting or attaching to Ray, and fitting a run's actors into the cluster."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from engine.config import ConfigError

if TYPE_CHECKING:
    from engine.config import Config


def token_auth() -> None:
    """Ray 2.5x token auth: keep it on and say so explicitly (Ray warns when it is left
    implicit). A cluster that runs with auth disabled on a private network exports
    RAY_AUTH_MODE itself. Ray caches the mode when it is imported, so the cache is
    refreshed here, as Ray itself does when it turns token auth on: this works whatever
    was imported before."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config as RayletConfig  # type: ignore[attr-defined]

    RayletConfig.initialize("")


def connect_ray(cfg: Config) -> bool:
    """Start a local Ray or attach to a cluster. Returns True if this call started it
    (and so must shut it down); a Ray that was already running is left alone."""
    import ray

    env = cfg.ray.runtime_env  # plug-ins travel to every node with it (Ray takes it at init)
    if ray.is_initialized():
        if env:
            raise ConfigError(
                "ray.working_dir and ray.py_modules apply when fedray starts or attaches to Ray, but "
                "this process is connected already: pass them to ray.init(runtime_env=...) instead"
            )
        return False
    token_auth()
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, logging_level=logging.WARNING, runtime_env=env)
    else:
        ray.init(
            address="local",
            num_cpus=cfg.ray.num_cpus or None,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env=env,
        )
    return True


def resolve_executors(cfg: Config) -> int:
    """Check the cluster can host the executors; fail fast instead of pending forever."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    ex = cfg.executors
    if ex.num_gpus > 0 and gpus == 0:
        raise ConfigError(
            f"executors.num_gpus={ex.num_gpus} but the Ray cluster has no GPU; set executors.num_gpus=0 "
            "or attach to a cluster with GPUs (ray.address=auto)"
        )
    usable = cpus - cfg.server.num_cpus
    num = ex.num or max(1, int(usable // ex.num_cpus))
    if ex.num_gpus > 0 and not ex.num:
        num = min(num, max(1, int(gpus // ex.num_gpus)))
    if num * ex.num_cpus > usable + 1e-9:
        raise ConfigError(
            f"executors.num={num} x executors.num_cpus={ex.num_cpus} needs {num * ex.num_cpus:g} CPUs "
            f"but the cluster has {usable:g} free for executors; lower executors.num or executors.num_cpus"
        )
    if num * ex.num_gpus > gpus + 1e-9:
        raise ConfigError(
            f"executors.num={num} x executors.num_gpus={ex.num_gpus} needs {num * ex.num_gpus:g} GPUs "
            f"but the cluster has {gpus:g}; lower executors.num or executors.num_gpus"
        )
    return num


def near_driver(cfg: Config) -> Any:
    """The server on the driver's node (on a cluster, the head): worker nodes may come and
    go (autoscaling, spot) and a run survives losing executors, not its server. A server
    that asks for no CPU always fits there (Ray's soft affinity still moved it away);
    one that asks for CPUs may go elsewhere if that node has none free."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return NodeAffinitySchedulingStrategy(node, soft=cfg.server.num_cpus > 0)
