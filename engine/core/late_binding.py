"""Which executor gets which queued jobs, and when (the Ray pool's late binding).

Sending every job at once binds a round's jobs to executors by count: each gets its
half, and the round ends when the slower one (the one sharing its core with the server,
or an older machine of the cluster) has done its half while the other idles. Instead an
executor holds about ``queue_seconds`` of work, ``window`` jobs at its own measured pace
(at least ``LOW_WATER``, so the round trip to it never starves it); the rest wait on the
server and go to whichever executor frees up first, each call at most half its window
and at most what evens out the executors' shares, so a round's last jobs go one or two
at a time. Cheap jobs have windows of hundreds: everything goes at once, as many per call
as ``max_batch``. Which executor runs a job never changes its result (keyed streams).
Pure, so the schedule is tested without Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

LOW_WATER = 2  # an executor with fewer jobs than this gets queued jobs at once


@dataclass(frozen=True)
class Pace:
    """An executor's measured pace: jobs finished and seconds spent with jobs outstanding
    (from sending it work until it has none left: compute plus Ray's round trips)."""

    jobs: int = 0
    busy_seconds: float = 0.0
    busy_since: float | None = None  # when it last went from no jobs outstanding to some

    def sent(self, now: float) -> Pace:
        return self if self.busy_since is not None else Pace(self.jobs, self.busy_seconds, now)

    def finished(self, now: float, jobs: int, outstanding_after: int) -> Pace:
        since = now if self.busy_since is None else self.busy_since
        busy = self.busy_seconds + (now - since)
        return Pace(self.jobs + jobs, busy, None if outstanding_after == 0 else now)

    @property
    def seconds_per_job(self) -> float | None:
        return self.busy_seconds / self.jobs if self.jobs else None


def window(pace: Pace, queue_seconds: float) -> int | None:
    """Jobs the executor may hold: ``queue_seconds`` of work at its pace, at least
    ``LOW_WATER``. None (no limit) while its pace is unknown or with ``queue_seconds`` 0."""
    per_job = pace.seconds_per_job
    if queue_seconds <= 0 or per_job is None:
        return None
    return max(LOW_WATER, math.ceil(queue_seconds / max(per_job, 1e-9)))


def call_size(limit: int | None, max_batch: int) -> int:
    """Most jobs in one call: ``max_batch``, and at most half the window, so the next call
    is on its way before the executor runs dry."""
    return max_batch if limit is None else max(1, min(max_batch, limit // 2))


def has_room(outstanding: int, limit: int | None, max_batch: int) -> bool:
    """Room for a full call within the window."""
    return limit is None or outstanding + call_size(limit, max_batch) <= limit


def plan_calls(
    units: list[list[T]], outstanding: list[int], limits: list[int | None], max_batch: int
) -> tuple[list[tuple[int, list[T]]], int]:
    """The calls to make now for ``units`` (most urgent first; a unit is a stack's or a sum
    group's jobs, which travel together, or one job): ``(executor index, jobs)`` each, to
    the least-loaded executor with room, and how many units they take. Each call is at
    most the executor's call size and what brings it up to an even share of all jobs held
    and queued (more only for a bigger unit)."""
    load = list(outstanding)
    left = sum(len(u) for u in units)
    calls: list[tuple[int, list[T]]] = []
    sent = 0
    while sent < len(units):
        room = [i for i, n in enumerate(load) if has_room(n, limits[i], max_batch)]
        if not room:
            break
        i = min(room, key=lambda k: (load[k], k))
        level = math.ceil((left + sum(load)) / len(load))  # every executor's jobs, evened out
        chunk = min(call_size(limits[i], max_batch), max(1, level - load[i]))
        items = list(units[sent])
        sent += 1
        while sent < len(units) and len(items) + len(units[sent]) <= chunk:
            items.extend(units[sent])
            sent += 1
        load[i] += len(items)
        left -= len(items)
        calls.append((i, items))
    return calls, sent
