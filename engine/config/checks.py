"""The checks of a whole configuration, across sections: each raises one ``ConfigError``
line naming the conflict and the fix, before any data is made or Ray starts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from algorithms import ALGORITHMS
from algorithms.base import Algorithm
from algorithms.privacy import refusal as privacy_refusal
from engine.config.errors import ConfigError
from engine.core.delays import DelayModel
from workloads import WORKLOADS, DataError
from workloads.partition import PARTITIONS


def _training_checks(cfg: Any, algorithm: type[Algorithm]) -> None:
    """What local training an algorithm with its own client update cannot honour."""
    name, clip = cfg.algorithm.name, cfg.training.clip
    # An algorithm with its own client update that still trains through the default one
    # (CMFL tests the update afterwards) honours every training option.
    own_update = (
        algorithm.client_update is not Algorithm.client_update and not algorithm.default_local_training
    )
    if cfg.training.momentum and own_update:
        raise ConfigError(
            f"{name} runs its own local steps without heavy-ball momentum: set training.momentum=0"
        )
    if clip.enabled and own_update:
        raise ConfigError(f"{name} runs its own local steps, without clipping: set training.clip.mode=none")
    if (clip.keeps_client_history or clip.shares_history) and cfg.executors.stack > 1:
        raise ConfigError(
            f"training.clip.scope={clip.scope} carries an AutoClip history into each job, which stacked "
            "training does not: set training.clip.scope=job or executors.stack=1"
        )
    codec = getattr(cfg.algorithm.params, "codec", None)
    if clip.keeps_client_history and codec is not None and getattr(codec, "name", "none") != "none":
        raise ConfigError(
            "training.clip.scope=client keeps the AutoClip history as the client state, which "
            f"algorithm.codec={codec.name} holds there too (its residual): set training.clip.scope=job"
        )


def _width_checks(cfg: Any) -> None:
    """HeteroFL narrows hidden layers, and maps speed tiers to widths: refuse what it cannot
    do before any data is made (its own check, at bind, covers plug-in workloads)."""
    p = cfg.algorithm.params
    if cfg.algorithm.name != "heterofl":
        return
    wl = cfg.workload
    if wl.name == "shakespeare" or (wl.name == "synthetic" and not getattr(wl.params, "hidden", ())):
        raise ConfigError(
            f"algorithm heterofl narrows hidden layers, which {wl.name}'s model has none to: use an "
            "image workload, or workload.name=synthetic with workload.hidden=[64,64]"
        )
    family = cfg.clients.speed.family
    if p.rate_mode == "tier" and len(p.rates) > 1 and family not in ("tiers", "constant"):
        raise ConfigError(
            f"algorithm.rate_mode=tier gives each speed tier a width, but clients.speed.family={family} "
            "has no tiers: set clients.speed.family=tiers, or algorithm.rate_mode=random"
        )


def _on_demand_checks(cfg: Any) -> None:
    """Shards made per job from the client id exist only as each client's own data: what
    needs the whole training set up front is refused (engine/worker/data.py)."""
    if not getattr(cfg.workload.params, "on_demand", False):
        return
    name = cfg.workload.name
    if cfg.partition.name != "natural":
        raise ConfigError(
            f"workload.on_demand makes each client's own {name} data, which partition "
            f"{cfg.partition.name!r} would re-deal: set partition.name=natural or workload.on_demand=false"
        )
    for key, value in (
        ("server.steps", cfg.server.steps),
        ("eval.local_test_fraction", cfg.eval.local_test_fraction),
    ):
        if value:
            raise ConfigError(
                f"{key}={value} takes examples out of the clients' data before the run, which "
                "workload.on_demand never holds: set it to 0 or workload.on_demand=false"
            )


def _partial_sums_checks(cfg: Any, algorithm: type[Algorithm], delays: DelayModel) -> None:
    """Executors may sum a round's updates only where each summed job surely becomes an
    update of that round's weighted mean (algorithms/partial_sums.py)."""
    if not cfg.executors.partial_sums:
        return
    off = "or set executors.partial_sums=0"
    if why := algorithm.partial_sums_refusal(cfg.algorithm.params):
        raise ConfigError(f"executors.partial_sums: {why}, {off}")
    if cfg.executors.stack > 1:
        raise ConfigError(f"executors.partial_sums sums jobs trained one by one: set executors.stack=1 {off}")
    if cfg.clock.mode == "wall":
        raise ConfigError(f"executors.partial_sums: wall mode returns each job at its own time: {off}")
    if not delays.always_available:
        raise ConfigError(
            "executors.partial_sums would sum jobs whose clients go offline before they finish: "
            f"set clients.availability.mode=always {off}"
        )
    byz = cfg.clients.byzantine
    if byz.active and byz.attack == "alie":
        raise ConfigError(
            f"executors.partial_sums: clients.byzantine.attack=alie needs each update: another attack {off}"
        )


def cross_checks(cfg: Any) -> None:
    """Everything that is wrong only in combination (each section alone is valid)."""
    n = cfg.clients.num
    params = cfg.algorithm.params
    for key in ("clients_per_round", "concurrency"):
        k = getattr(params, key, None)
        if k is not None and k > n:
            raise ConfigError(f"algorithm.{key} ({k}) exceeds clients.num ({n}); lower it or add clients")
    algorithm = ALGORITHMS[cfg.algorithm.name]
    uses_server = cfg.server.steps > 0 or not cfg.server.cost.is_zero
    if uses_server and not algorithm.models_server_time:
        which = ", ".join(n for n, a in ALGORITHMS.items() if a.models_server_time)
        raise ConfigError(
            f"algorithm {cfg.algorithm.name!r} does not model the server's time or fine-tuning; "
            f"leave server.steps and server.seconds_per_* at 0, or use one of {which}"
        )
    if cfg.executors.stack > 1 and algorithm.client_update is not Algorithm.client_update:
        raise ConfigError(
            f"executors.stack trains plain local SGD together; {cfg.algorithm.name} has its own "
            "client update: set executors.stack=1"
        )
    _training_checks(cfg, algorithm)
    _width_checks(cfg)
    if cfg.server.seconds_per_sample and not hasattr(algorithm, "bind_cut"):
        raise ConfigError(
            f"server.seconds_per_sample prices the server's part of a split model, and algorithm "
            f"{cfg.algorithm.name} splits none: leave it at 0 (a study entry can set it for its own runs)"
        )
    if hasattr(algorithm, "bind_cut") and not hasattr(cfg.workload.params, "cut"):
        raise ConfigError(
            f"algorithm {cfg.algorithm.name} splits the model at workload.cut, and workload "
            f"{cfg.workload.name}'s model has no cut: use workload.name=shapes (the default for it) "
            "or an image workload (mnist, fashion_mnist, emnist, cifar10, cifar100)"
        )
    from algorithms.robust import AggregatorConfig, check_feasible

    aggregator = getattr(params, "aggregator", None)
    if isinstance(aggregator, AggregatorConfig):
        # Updates per aggregate: a full FedBuff buffer, or a FedAvg round's quorum.
        key = "buffer_size" if hasattr(params, "buffer_size") else "clients_per_round"
        per_aggregate = getattr(params, key, None)
        if isinstance(per_aggregate, int):
            try:
                check_feasible(aggregator, per_aggregate)
            except ValueError as e:
                raise ConfigError(f"algorithm.aggregator with algorithm.{key}={per_aggregate}: {e}") from None
    byz = cfg.clients.byzantine
    own = cfg.algorithm.name if algorithm.client_update is not Algorithm.client_update else ""
    if why := privacy_refusal(params, n, byz.attack if byz.active else "", cfg.stop.max_epsilon, own):
        raise ConfigError(why)  # DP whose accounting would not hold (algorithms/privacy.py)
    if byz.active and byz.attack == "alie" and not getattr(algorithm, "colludes", False):
        which = ", ".join(n for n, a in ALGORITHMS.items() if getattr(a, "colludes", False))
        raise ConfigError(
            "clients.byzantine.attack=alie replaces colluders' updates where many are aggregated, "
            f"which {cfg.algorithm.name!r} does not do: use one of {which}, or another attack"
        )
    every = cfg.checkpoint.every
    if every and every % cfg.eval.every:
        raise ConfigError(f"checkpoint.every ({every}) must be a multiple of eval.every ({cfg.eval.every})")
    if every and cfg.clock.mode == "wall":
        raise ConfigError("checkpoint.every needs clock.mode=virtual: a wall-clock run cannot be replayed")
    if every and cfg.server.client_state == "disk":
        raise ConfigError(
            "checkpoint.every needs server.client_state=memory: client states on disk are not checkpointed"
        )
    if cfg.clock.mode == "wall" and cfg.executors.backend == "local":
        raise ConfigError(
            "clock.mode=wall needs executors.backend=ray: the in-process backend runs one job at a time"
        )
    workload = WORKLOADS[cfg.workload.name]
    if cfg.partition.name == "natural" and workload.default_partition != "natural":
        raise ConfigError(
            f"partition.name 'natural' needs a naturally partitioned workload; {cfg.workload.name!r} "
            f"is not: choose one of {', '.join(p for p in PARTITIONS if p != 'natural')}"
        )
    _on_demand_checks(cfg)
    try:  # missing data files fail here, in one line, not inside a Ray actor
        workload(cfg.workload.params).check()
    except DataError as e:
        raise ConfigError(str(e)) from None
    if cfg.out_dir and Path(cfg.out_dir).exists() and any(Path(cfg.out_dir).iterdir()):
        raise ConfigError(f"out_dir {cfg.out_dir!r} exists and is not empty; choose a new out_dir")
    try:  # reads trace files now, so a bad one fails before Ray starts
        delays = DelayModel(cfg.clients, cfg.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _partial_sums_checks(cfg, algorithm, delays)
    if not math.isfinite(cfg.stop.max_sim_time):
        raise ConfigError("stop.max_sim_time must be finite; use 0 for no limit")
