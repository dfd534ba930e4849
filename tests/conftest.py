"""Shared fixtures. Engine and smoke tests share one local Ray per module."""

from __future__ import annotations

from collections.abc import Iterator

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
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()
