"""Shared fixtures. Engine and smoke tests share one local Ray per module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from engine.config import Config, load_config

# A tiny experiment: seconds of wall time, still every moving part.
TINY = [
    "workload.name=synthetic",
    "clients.num=12",
    "training.local_steps=5",
    "training.batch_size=10",
    "training.lr=0.05",
    "stop.max_versions=12",
    "eval.every=3",
    "executors.num=2",
]


def tiny(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    from engine.runtime.connect import token_auth

    token_auth()  # as the engine does when it starts Ray
    with workers_at_normal_priority():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            yield
        finally:
            ray.shutdown()


@contextmanager
def workers_at_normal_priority() -> Iterator[None]:
    """Ray starts its worker processes (Tune trials, servers, executors) at niceness 15
    (its worker_niceness default). On a busy machine every process at normal priority then
    comes first, and a worker's start-up, which imports torch, took minutes instead of
    seconds: tests ran past their timeout only when the machine was loaded. Set while a
    test's Ray starts and runs, it leaves workers at normal priority, sharing the CPUs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_worker_niceness", "0")
        yield
