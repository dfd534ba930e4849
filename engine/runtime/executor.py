"""The executor actor: long-lived, imports torch once, caches the dataset and one model
(all in its ``Worker``: engine/worker/worker.py).

It runs client jobs (several per call, to amortise Ray's per-call overhead), server
fine-tuning and evaluations. Any executor can run any client: a job carries everything
that is client-specific (its task, its persistent client state, its keyed RNG seed), so
the result of a job does not depend on which executor ran it.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import ray

from engine.core.backend import JobOutput, JobSpec
from engine.worker.data import RunData
from engine.worker.worker import ExecutorSpec, Worker

Queued = tuple[float, int, JobSpec, np.ndarray, "asyncio.Future[tuple[JobSpec, JobOutput]]"]


@ray.remote
class Executor:
    """Set up for a run at creation (``run``) or later with ``setup``; it can be set up
    again for another run (a sweep's next trial: engine/tune.py)."""

    def __init__(self, num_cpus: float, num_gpus: float, *run: Any) -> None:
        self.worker = Worker(num_gpus)
        self._queue: list[Queued] = []
        self._worker_task: asyncio.Future[None] | None = None
        if run:  # in the constructor, so that no call can come before it (unlike a method)
            self._setup(*run)

    async def setup(self, spec: ExecutorSpec, data: RunData) -> dict[str, Any]:
        """Take on another run; the caller awaits it before any other call."""
        self._setup(spec, data)
        return await self.ready()

    def _setup(self, spec: ExecutorSpec, data: RunData) -> None:
        for *_, fut in self._queue:  # jobs a previous run left queued: that run is over
            fut.cancel()
        self._queue = []
        self.worker.setup(spec, data)

    async def ready(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": str(self.worker.device),
        }

    async def initial_params(self) -> np.ndarray:
        return self.worker.initial_params()

    async def run(self, jobs: list[JobSpec], *params: np.ndarray) -> AsyncIterator[list[JobOutput]]:
        """Queue ``jobs``; stream back the call's first finished job at once, the rest together.

        Jobs are computed most urgent first across all calls, so the job the server needs
        next does not wait behind jobs due much later; and it does not wait for the rest
        of its batch either. Two messages per call, not one per job, keeps Ray's cost per
        job low when many jobs travel together.
        """
        loop = asyncio.get_running_loop()
        futures = []
        for job in jobs:
            fut: asyncio.Future[tuple[JobSpec, JobOutput]] = loop.create_future()
            heapq.heappush(self._queue, (job.urgency, job.uid, job, params[job.param_slot], fut))
            futures.append(fut)
        if self._worker_task is None or self._worker_task.done():
            self._worker_task = asyncio.ensure_future(self._work())
        # A sum group's outputs travel in one message: they share its partial sum, and if
        # this executor dies, none of them has arrived and the whole group runs again.
        units: dict[int, list[asyncio.Future[tuple[JobSpec, JobOutput]]]] = {}
        for job, fut in zip(jobs, futures, strict=True):
            units.setdefault(job.group.key if job.group is not None else -1 - job.uid, []).append(fut)
        pending = [asyncio.ensure_future(self._padded(*unit)) for unit in units.values()]
        done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        yield [out for d in done for out in d.result()]
        if rest:
            yield [out for outs in await asyncio.gather(*rest) for out in outs]

    async def _padded(self, *futures: asyncio.Future[tuple[JobSpec, JobOutput]]) -> list[JobOutput]:
        """The outputs of one job, or of one sum group (never in wall mode), once ready."""
        outs = []
        for fut in futures:
            job, out = await fut
            if job.pad_until > 0:
                # Wall-clock mode: the job lasts its (scaled) virtual duration for real.
                upload = out.bytes_up / job.up_bytes_per_s if job.up_bytes_per_s > 0 else 0.0
                delay = job.pad_until + upload - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            outs.append(out)
        return outs

    async def _work(self) -> None:
        while self._queue:
            entry = heapq.heappop(self._queue)
            batch = [entry]
            key = entry[2].unit
            if key is not None:  # its stack or sum group mates queued here run with it
                batch += [e for e in self._queue if e[2].unit == key]
                taken = {id(e) for e in batch}
                self._queue = [e for e in self._queue if id(e) not in taken]
                heapq.heapify(self._queue)
            try:
                outs = self.worker.compute([(e[2], e[3]) for e in batch])
                for (*_, job, _start, fut), out in zip(batch, outs, strict=True):
                    fut.set_result((job, out))
            except Exception as e:  # surfaces in the run() calls that brought the jobs
                for *_, fut in batch:
                    fut.set_exception(e)
            await asyncio.sleep(0)  # let calls that arrived meanwhile queue their jobs

    async def evaluate(self, params: np.ndarray) -> dict[str, float]:
        return self.worker.evaluate(params)
