"""The event queue of virtual time.

Events are totally ordered by ``(time, priority, sequence)``: the sequence number is a
counter assigned at scheduling, so equal-time events of equal priority come out in the
order they were scheduled. Priorities follow the rule completion < timer < dispatch at
equal times: an arrival exactly at a deadline counts as on time, and every result of an
instant is applied before anyone is dispatched at that instant.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class Priority(IntEnum):
    COMPLETION = 0
    TIMER = 1
    DISPATCH = 2


@dataclass(order=True, frozen=True)
class Event(Generic[T]):
    time: float
    priority: int
    seq: int
    payload: T = field(compare=False)


class EventQueue(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[Event[T]] = []
        self._seq = 0

    def next_seq(self) -> int:
        """Reserve a sequence number now, for an event whose time is known only later
        (a job is sequenced at dispatch, queued once its result gives its finish time)."""
        self._seq += 1
        return self._seq - 1

    @property
    def seq(self) -> int:
        """The next sequence number (what a checkpoint saves)."""
        return self._seq

    def restore_seq(self, seq: int) -> None:
        self._seq = seq

    def push(self, time: float, priority: Priority, payload: T, seq: int | None = None) -> Event[T]:
        ev = Event(float(time), int(priority), self.next_seq() if seq is None else seq, payload)
        heapq.heappush(self._heap, ev)
        return ev

    def peek(self) -> Event[T] | None:
        return self._heap[0] if self._heap else None

    def pop(self) -> Event[T]:
        return heapq.heappop(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)
