"""The server's compute as a resource in virtual time.

Server work (an aggregation's time, fine-tuning an aggregate, a split-learning server
step) occupies one of ``capacity`` server slots: capacity 1 is one server model that every
client shares, so work that arrives while it is busy waits its turn; capacity 0 means
unbounded (a server copy per client), so nothing ever waits. Work is served in the order
it is submitted, which the loop makes the virtual-time order ``(arrival, sequence)``, so the
schedule is deterministic.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class ServerQueue:
    capacity: int = 1  # 0: unbounded
    free_at: list[float] = field(default_factory=list)  # heap: when each busy slot frees up
    busy_seconds: float = 0.0  # total service time so far

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, 0 meaning unbounded (got {self.capacity})")

    def schedule(self, arrival: float, seconds: float) -> tuple[float, float]:
        """Serve ``seconds`` of work arriving at ``arrival``: (start, finish). Calls must
        come in arrival order (ties in the caller's sequence order)."""
        if seconds < 0:
            raise ValueError(f"server work must last >= 0 seconds (got {seconds})")
        self.busy_seconds += seconds
        if self.capacity == 0:
            return arrival, arrival + seconds
        # Slots that are free by now are all the same: forget them.
        while self.free_at and self.free_at[0] <= arrival:
            heapq.heappop(self.free_at)
        start = arrival if len(self.free_at) < self.capacity else heapq.heappop(self.free_at)
        finish = start + seconds
        heapq.heappush(self.free_at, finish)
        return start, finish

    def stats(self) -> dict[str, float]:
        return {"server_queue_seconds": self.busy_seconds} if self.busy_seconds else {}
