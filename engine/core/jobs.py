"""Bookkeeping of in-flight client jobs (who is busy, what each job can finish by at the
earliest, which jobs are held back) and of the model versions they start from."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.base import JobCost, ServerJob, Task
from engine.core.backend import JobOutput, JobSpec, Stack, SumGroup


@dataclass(eq=False)
class InFlight:
    seq: int  # dispatch sequence: breaks ties between equal finish times deterministically
    client: int
    job_index: int
    task: Task
    version: int
    dispatch_time: float
    download: float
    compute: float
    bytes_down: int  # everything the job receives: the download plus its exchanges' share
    lower_bound: float  # dispatch + download + compute + exchanges + upload latency: no earlier
    exchange: float = 0.0  # blocking round trips and server seconds the job waits for
    cost: JobCost = field(default_factory=JobCost)
    dropped: bool = False  # lost to dropout: known at dispatch, never computed
    discarded: bool = False  # the algorithm no longer wants it
    output: JobOutput | None = None  # its client state, if any, is staged in the store instead
    staged: bool = False  # a new client state waits in the store for this job to be applied
    held: tuple[JobSpec, Any] | None = None  # (spec, params ref) while held back from the pool
    stack: Stack | None = None  # its place in a stack of jobs trained together
    group: SumGroup | None = None  # the jobs whose updates its executor sums with its own


@dataclass(eq=False)
class ServerWork:
    """A server job on the server queue: it ends at ``finish`` with ``model`` (the job's
    own model, or once computed on the pool, the fine-tuned one)."""

    seq: int  # server work is numbered apart from client jobs (their numbers key randomness)
    job: ServerJob
    arrival: float
    start: float
    finish: float
    model: np.ndarray | None = None

    @property
    def uid(self) -> int:
        return -1 - self.seq  # never a client job's uid (those are >= 0)


def assign_stacks(jobs: list[InFlight], size: int, shard_sizes: np.ndarray) -> None:
    """Stack the jobs of one dispatch that share their task (so their start model and
    number of steps), ``size`` at a time in dispatch order. A function of the dispatch
    alone, never of executors or timing, so runs stay identical across executor counts.
    The stack's width is its largest minibatch (the batch size, or a whole shard)."""
    if size <= 1:
        return
    by_task: dict[Task, list[InFlight]] = {}
    for f in jobs:
        by_task.setdefault(f.task, []).append(f)
    for task, group in by_task.items():
        for start in range(0, len(group), size):
            chunk = group[start : start + size]
            if len(chunk) < 2:
                continue  # a stack of one is just a job
            shards = [int(shard_sizes[f.client]) for f in chunk]
            width = max(n if task.batch_size == 0 else min(task.batch_size, n) for n in shards)
            for slot, f in enumerate(chunk):
                f.stack = Stack(chunk[0].seq, slot, len(chunk), width)


def assign_sum_groups(jobs: list[InFlight], size: int) -> None:
    """Group the jobs of one dispatch ``size`` at a time in dispatch order, each group to
    be summed on one executor (``executors.partial_sums``). Like stacks, a function of
    the dispatch alone, so which updates are added together never depends on executors."""
    if size < 1:
        return
    for start in range(0, len(jobs), size):
        chunk = jobs[start : start + size]
        for f in chunk:
            f.group = SumGroup(chunk[0].seq, len(chunk))


class JobTable:
    def __init__(self, num_clients: int) -> None:
        self.by_seq: dict[int, InFlight] = {}
        self.by_client: dict[int, int] = {}
        self.busy = np.zeros(num_clients, dtype=bool)
        self._bounds: list[tuple[float, int]] = []  # (lower bound, seq) of jobs not yet returned

    def __len__(self) -> int:
        return len(self.by_seq)

    def __bool__(self) -> bool:
        return bool(self.by_seq)

    def add(self, f: InFlight, computed: bool) -> None:
        """Register a dispatched job; ``computed`` jobs await a result from the pool."""
        if self.busy[f.client]:
            raise RuntimeError(f"client {f.client} was dispatched while its previous job is in flight")
        self.by_seq[f.seq] = f
        self.by_client[f.client] = f.seq
        self.busy[f.client] = True
        if computed:
            heapq.heappush(self._bounds, (f.lower_bound, f.seq))

    def remove(self, seq: int) -> InFlight:
        f = self.by_seq.pop(seq)
        del self.by_client[f.client]
        self.busy[f.client] = False
        return f

    def get(self, seq: int) -> InFlight | None:
        return self.by_seq.get(seq)

    def of_client(self, client: int) -> InFlight | None:
        seq = self.by_client.get(client)
        return None if seq is None else self.by_seq[seq]

    def earliest_unresolved(self) -> InFlight | None:
        """The job whose result could be the next event: the smallest lower bound among
        jobs that have not returned (finished, removed or dropped jobs are skipped)."""
        while self._bounds:
            f = self.by_seq.get(self._bounds[0][1])
            if f is not None and f.output is None:
                return f
            heapq.heappop(self._bounds)
        return None


class VersionStore:
    """Global model versions that in-flight jobs or evaluations still start from.

    Each version is ``ray.put`` at most once (executors read it zero-copy) and released
    when no job or evaluation uses it and it is no longer current: memory grows with
    in-flight work, not with the number of versions or clients.
    """

    def __init__(self, put: Callable[[np.ndarray], Any]) -> None:
        self._put = put
        self._entries: dict[int, list[Any]] = {}  # version -> [params, ref or None, users]
        self.current = -1

    def set_current(self, version: int, params: np.ndarray) -> None:
        self._entries.setdefault(version, [params, None, 0])
        self.current = version
        for old in [v for v, e in self._entries.items() if v != version and e[2] == 0]:
            del self._entries[old]

    def add(self, version: int, params: np.ndarray) -> None:
        """Make an older ``version`` available again (resume: jobs still start from it)."""
        self._entries.setdefault(version, [params, None, 0])

    def params(self, version: int) -> np.ndarray:
        return self._entries[version][0]

    def hold(self, version: int) -> Any:
        """Take a use of ``version``; return its object ref."""
        entry = self._entries[version]
        if entry[1] is None:
            entry[1] = self._put(entry[0])
        entry[2] += 1
        return entry[1]

    def release(self, version: int) -> None:
        entry = self._entries[version]
        entry[2] -= 1
        if entry[2] == 0 and version != self.current:
            del self._entries[version]

    def __len__(self) -> int:
        return len(self._entries)
