"""Wall-clock mode (``clock.mode=wall``): the loop of engine/core/loop.py on the real clock.

It shares everything but the clock and the ordering: executors pad each job to its scaled
virtual duration with real sleeps, the loop applies results in the order they arrive, and
server work and timers end when the scaled wall clock reaches them. Not deterministic, by
nature; for system tests and demos.
"""

from __future__ import annotations

import asyncio
import time

from engine.core.backend import JobOutput
from engine.core.jobs import InFlight, ServerWork
from engine.core.loop import Simulation


class WallSimulation(Simulation):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.wall = True

    def _wall_now(self) -> float:
        return (time.time() - self.loop_wall_start) / self.cfg.clock.wall_scale

    def _finish_time(self, f: InFlight, out: JobOutput) -> float:
        return self._wall_now()  # it arrived now: the executor padded it to its duration

    def _server_result(self, w: ServerWork) -> None:
        """Applied by ``_step`` once the wall clock reaches its finish."""

    async def _sleep_until(self, t: float) -> None:
        await asyncio.sleep((t - self.s.now) * self.cfg.clock.wall_scale)

    async def _step(self) -> bool:
        s = self.s
        t_timer = self.algorithm.next_timer(s.algorithm)
        # Server work with its result in hand wakes the loop at its finish, like a timer;
        # fine-tuning still computing wakes it by arriving.
        due = [w.finish for w in s.server_work.values() if w.model is not None]
        t_wake = min([*due, *([t_timer] if t_timer is not None else [])], default=None)
        if not s.jobs and not s.server_work and t_timer is None:
            return await self._idle_until_available()
        timeout = None if t_wake is None else max(0.0, t_wake - self._wall_now())
        await self.backend.wait_any(timeout)
        s.now = self._wall_now()
        while s.ready and not self._should_stop():  # arrival order: the wall clock decides
            self._apply(s.ready.pop().payload)
        for w in sorted(s.server_work.values(), key=lambda w: (w.finish, w.seq)):
            if w.model is not None and w.finish <= s.now and not self._should_stop():
                self._apply(w)
        if t_timer is not None and s.now >= t_timer and not self._should_stop():
            s.algorithm = self.algorithm.on_timer(s.algorithm, s.now)
            self._maybe_new_version()
        self._end_of_instant()
        return True
