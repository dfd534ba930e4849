"""Everything the simulation loop knows between two events (engine/core/loop.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.core.client_states import ClientStates, client_states
from engine.core.clock import EventQueue
from engine.core.jobs import InFlight, JobTable, ServerWork, VersionStore
from engine.core.recorder import RunRecorder
from engine.core.server_queue import ServerQueue


@dataclass
class LoopState:
    """The loop's whole state (a checkpoint saves it, results of in-flight jobs aside)."""

    algorithm: Any  # the algorithm's frozen state dataclass
    jobs: JobTable
    job_counter: np.ndarray  # jobs dispatched per client: keys each job's randomness
    ready: EventQueue[InFlight | ServerWork]  # results whose finish time is known
    versions: VersionStore
    recorder: RunRecorder
    client_states: ClientStates
    server: ServerQueue
    server_work: dict[int, ServerWork] = field(default_factory=dict)  # by uid, until applied
    server_seq: int = 0
    target_models: dict[int, np.ndarray] = field(default_factory=dict)
    now: float = 0.0
    dispatch_calls: int = 0
    stop_reason: str = ""
    clip_history: np.ndarray = field(default_factory=lambda: np.zeros(0))  # AutoClip, scope global

    @staticmethod
    def fresh(
        cfg: Any, algorithm: Any, put: Callable[[np.ndarray], Any], delays: dict[str, float]
    ) -> LoopState:
        """The state at the start of a run: the algorithm's initial state, nothing in flight."""
        n = cfg.clients.num
        return LoopState(
            algorithm=algorithm,
            jobs=JobTable(n),
            job_counter=np.zeros(n, dtype=np.int64),
            ready=EventQueue(),
            versions=VersionStore(put),
            recorder=RunRecorder(cfg, delays),
            client_states=client_states(cfg.server.client_state, cfg.server.client_state_dir),
            server=ServerQueue(cfg.server.capacity),
        )
