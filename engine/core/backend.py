"""What the simulation loop says to whatever computes its jobs, and what comes back.

The loop (engine/core/loop.py) never sees Ray: it hands jobs to a ``Backend`` and receives
their outputs, in any order, through a callback. Two backends implement it: the Ray pool of
executor actors (engine/runtime/pool.py) and the in-process backend (engine/worker/local.py),
which runs the same worker code in the calling process. A job's output depends only on its
spec and start model, never on which backend or executor ran it, so both give identical runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from algorithms.base import Payload, Task
from algorithms.partial_sums import PartialSum

CLIENT = "client"  # a client's local training
FINETUNE = "finetune"  # server-side fine-tuning of an aggregate (a server job)
SERVER = "server"  # an algorithm's own server computation (``Algorithm.server_update``)


@dataclass(frozen=True)
class Stack:
    """A job's place in a stack (engine/core/jobs.py ``assign_stacks``; engine/worker/stacked.py)."""

    key: int  # the stack's id: its first job's uid, which also keys its dropout draws
    slot: int
    size: int  # slots in the stack (its jobs at dispatch; the same when some run again alone)
    width: int  # every minibatch of the stack is padded to this many examples


@dataclass(frozen=True)
class SumGroup:
    """Jobs whose updates one executor returns as one partial sum (engine/core/jobs.py
    ``assign_sum_groups``; algorithms/partial_sums.py)."""

    key: int  # the group's id: its first job's uid (dispatch sequence)
    size: int  # jobs in the group at dispatch (fewer come back together after a resume)


@dataclass(frozen=True)
class JobSpec:
    uid: int
    client: int  # -1 for server work
    job_index: int  # the client's k-th job (keys its training randomness); a server job's key
    task: Task
    param_slot: int  # which of the call's parameter vectors this job starts from
    client_state: Any = None
    urgency: float = 0.0  # the job's earliest possible finish: executors run the most urgent first
    pad_until: float = 0.0  # wall mode: return no earlier than this wall time (minus upload)
    up_bytes_per_s: float = 0.0  # wall mode: to pad the upload of the real payload size
    stack: Stack | None = None  # trained together with the other jobs of this stack
    kind: str = CLIENT
    group: SumGroup | None = None  # summed on its executor with the other jobs of this group

    @property
    def unit(self) -> int | None:
        """The key of the stack or sum group whose jobs must run together on one executor."""
        if self.stack is not None:
            return self.stack.key
        return None if self.group is None else self.group.key


@dataclass(frozen=True)
class JobOutput:
    uid: int
    payload: Payload  # the encoded upload (a server job: {"model": ...})
    num_samples: int
    bytes_up: int  # the payload's real size
    client_state: Any
    metrics: dict[str, float]
    extra: Payload = field(default_factory=dict)  # uploaded beside the update (ClientResult.extra)
    # Its sum group's partial sum, which holds its delta (its payload is then empty); the
    # same object on every member's output, so it crosses to the server once.
    partial: PartialSum | None = None


OnOutputs = Callable[[list[JobOutput]], None]
LoadState = Callable[[int], Any]  # a client's state, read when its job goes to an executor


class Backend(Protocol):
    """Runs jobs and evaluations for the loop. Outputs are handed to the ``on_outputs``
    callback given at construction, as they finish; ``wait_any`` returns once at least one
    has been handed over (or ``timeout`` passed). A client job's spec comes without its
    client state: the backend reads it with the ``load_state`` callback given at
    construction when it hands the job to an executor, so states wait on disk, not in
    memory, while jobs queue."""

    replaced: int  # executors replaced after failures
    stats: dict[str, float]

    async def start(self) -> np.ndarray:
        """Get ready; return the seeded initial model."""

    def put(self, params: np.ndarray) -> Any:
        """A handle to ``params`` that jobs and evaluations can share (read-only)."""

    def enqueue(self, spec: JobSpec, params: Any, urgency: float) -> None: ...

    def cancel(self, uid: int) -> None:
        """Forget a job that has not started (one already running finishes unused)."""

    async def wait_any(self, timeout: float | None = None) -> None: ...

    async def evaluate(self, params: Any) -> dict[str, float]: ...

    def check(self) -> None:
        """Raise the error of a job that failed, if any."""

    def shutdown(self) -> None: ...
