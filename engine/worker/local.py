"""The in-process backend (``executors.backend=local``): the loop's jobs run in the calling
process, one at a time, through the same ``Worker`` as the Ray executors, so a run gives
identical results on either backend. No Ray is started: small experiments run in a
notebook, a debugger or a test with nothing but the Python process.

Jobs run most urgent first (the job the loop needs next), exactly one per ``wait_any``, so
the loop's virtual-time order decides everything; evaluations run at once.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
from typing import Any

import numpy as np

from engine.core.backend import CLIENT, JobSpec, LoadState, OnOutputs
from engine.worker.data import RunData
from engine.worker.worker import ExecutorSpec, Worker


class LocalBackend:
    def __init__(
        self, spec: ExecutorSpec, data: RunData, on_outputs: OnOutputs, load_state: LoadState
    ) -> None:
        self.spec = spec
        self.data = data
        self.on_outputs = on_outputs
        self.load_state = load_state
        self.queue: list[tuple[float, int, JobSpec, np.ndarray]] = []
        self.replaced = 0
        self.stats: dict[str, float] = {"jobs": 0}
        self._threads: int | None = None

    async def start(self) -> np.ndarray:
        import torch

        self._threads = torch.get_num_threads()  # the caller's setting, given back at shutdown
        self.worker = Worker(self.spec.num_gpus)
        self.worker.setup(self.spec, self.data)  # sets torch threads as an executor would
        return self.worker.initial_params()

    def put(self, params: np.ndarray) -> np.ndarray:
        return params

    def enqueue(self, spec: JobSpec, params: Any, urgency: float) -> None:
        heapq.heappush(self.queue, (urgency, spec.uid, spec, params))

    def cancel(self, uid: int) -> None:
        self.queue = [q for q in self.queue if q[2].uid != uid]
        heapq.heapify(self.queue)

    async def wait_any(self, timeout: float | None = None) -> None:
        """Compute the most urgent job (with its stack or sum group mates) and hand its outputs over."""
        if not self.queue:
            return
        first = heapq.heappop(self.queue)
        batch = [first]
        unit = first[2].unit
        if unit is not None:  # its stack or sum group mates run with it
            batch += [q for q in self.queue if q[2].unit == unit]
            taken = {q[1] for q in batch}
            self.queue = [q for q in self.queue if q[1] not in taken]
            heapq.heapify(self.queue)
        jobs = [(self._with_state(q[2]), q[3]) for q in batch]
        outs = self.worker.compute(jobs)
        self.stats["jobs"] += len(outs)
        self.on_outputs(outs)

    def _with_state(self, spec: JobSpec) -> JobSpec:
        if spec.kind != CLIENT:
            return spec
        return replace(spec, client_state=self.load_state(spec.client))

    async def evaluate(self, params: Any) -> dict[str, float]:
        return self.worker.evaluate(params)

    def check(self) -> None:
        """A job's error is raised where it happens (``wait_any``): nothing is pending."""

    def shutdown(self) -> None:
        self.queue = []
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
