"""What a job costs and what server work is: the engine charges exactly what an algorithm
states here (engine/core/dispatch.py), so the algorithms and the delay model share one
account of bytes, compute and waiting."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from algorithms.task import Task

# What a client uploads: named arrays, exactly what crosses the network (a dense delta, or
# e.g. indices and values of a sparsified one). Its size is the sum of the arrays' bytes.
Payload = Mapping[str, np.ndarray]


def payload_bytes(payload: Payload) -> int:
    return int(sum(a.nbytes for a in payload.values()))


@dataclass(frozen=True)
class JobCost:
    """What one job costs beyond its compute, as the job states it; the delay model
    charges exactly this. The defaults are a plain FL job: the whole model down, the real
    encoded payload up, the full model's compute, no exchange while it runs."""

    bytes_down: int | None = None  # None: the whole global model
    bytes_up: int | None = None  # None: the payload's real size, reported by the executor
    compute_fraction: float = 1.0  # share of the full model's compute (sub-models, partial training)
    round_trips: int = 0  # blocking exchanges during the job (e.g. per-step activations)
    round_trip_bytes_up: int = 0  # per exchange
    round_trip_bytes_down: int = 0  # per exchange
    server_seconds: float = 0.0  # server-side compute the job waits for (per job, in total)
    # Uploads streamed while the job computes, without waiting for an answer (CSE-FSL's and
    # FSL-SAGE's activations): evenly spaced from its compute's start, one after another on
    # its uplink; the job ends once both its compute and these uploads are done.
    stream_uploads: int = 0
    stream_bytes_up: int = 0  # per streamed upload

    def __post_init__(self) -> None:
        names = (
            "bytes_down",
            "bytes_up",
            "round_trips",
            "round_trip_bytes_up",
            "round_trip_bytes_down",
            "stream_uploads",
            "stream_bytes_up",
        )
        for name in (*names, "server_seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):  # NaN fails too
                raise ValueError(f"JobCost.{name} must be a finite number >= 0 (got {value})")
        if not 0 < self.compute_fraction <= 1:
            raise ValueError(f"JobCost.compute_fraction must be in (0, 1] (got {self.compute_fraction})")


@dataclass(frozen=True)
class Job:
    client: int
    task: Task
    # > 0: of the jobs returned with this quorum by one ``jobs`` call, only the first
    # ``quorum`` arrivals will be used (over-selection). The engine may then hold back
    # the rest and never compute them if ``discard`` drops them first.
    quorum: int = 0
    cost: JobCost = field(default_factory=JobCost)


@dataclass(frozen=True)
class ServerCost:
    """The server's own compute time per aggregation (config section ``server``), so that
    a synchronous round costs slowest client + aggregation, and algorithms that overlap
    aggregation with client work (PFL) can show it. ``finetune`` says the engine fine-tunes
    every aggregate on server data (engine/worker/finetune.py) for ``finetune_seconds``."""

    seconds_per_aggregation: float = 0.0
    seconds_per_update: float = 0.0  # per update aggregated
    seconds_per_mb: float = 0.0  # per MB of updates aggregated
    finetune_seconds: float = 0.0  # the server fine-tuning after each aggregation
    finetune: bool = False
    # Split learning: the server's seconds per example through the whole model, forward and
    # backward; its part of a split model costs its share of the FLOPs (algorithms/split_rules.py).
    seconds_per_sample: float = 0.0

    def __post_init__(self) -> None:
        names = ("seconds_per_aggregation", "seconds_per_update", "seconds_per_mb", "finetune_seconds")
        for name in (*names, "seconds_per_sample"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")

    @property
    def is_zero(self) -> bool:
        return not any(dataclasses.astuple(self))

    def aggregation_time(self, num_updates: int, update_bytes: int) -> float:
        return (
            self.seconds_per_aggregation
            + self.seconds_per_update * num_updates
            + self.seconds_per_mb * num_updates * update_bytes / 1e6
            + self.finetune_seconds
        )


@dataclass(frozen=True, eq=False)
class ServerJob:
    """Server-side work an algorithm asks for: it occupies the server for ``seconds`` of
    virtual time (queued behind other server work). Its result comes back through
    ``on_server_job`` at the job's finish time: ``model`` itself, or computed on the executor
    pool from it: fine-tuned on the server's data (``finetune``), or the algorithm's own
    ``server_update`` of ``model`` with ``inputs`` (``compute``: split learning's server steps
    on uploaded activations, FSL-SAGE's alignment of an auxiliary model)."""

    key: int  # the algorithm's name for it (e.g. the version the aggregate becomes)
    seconds: float
    model: np.ndarray
    finetune: bool = False
    compute: bool = False
    inputs: Payload = field(default_factory=dict)  # with compute: what server_update works on

    @property
    def on_pool(self) -> bool:
        """Whether its result is computed on the executor pool (and again after a resume)."""
        return self.finetune or self.compute
