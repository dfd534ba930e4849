"""The Ray backend of the simulation loop (engine/core/backend.py): a pool of executor
actors. It creates them in one batch, packs jobs into calls, notices finished calls, and
re-runs the jobs of an executor that died on a replacement.

Jobs are queued and sent lazily: the server ``flush``es before it must wait for a
result, when an executor's queue runs low (fewer than ``LOW_WATER`` jobs), when enough
jobs are queued to fill a call for each executor with room, and, while jobs wait for
room, when a result comes back. Executors thus never starve, and in steady state several
jobs travel per Ray call, which keeps the engine's overhead per job below Ray's per-call
cost. Binding is late (engine/core/late_binding.py): an executor holds about
``executors.queue_seconds`` of work at its measured pace; the rest wait here for
whichever executor frees up first. Within a flush, jobs go out most urgent first
(earliest possible finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from engine.core.backend import CLIENT, JobOutput, JobSpec, LoadState
from engine.core.late_binding import LOW_WATER, Pace, call_size, has_room, plan_calls, window
from engine.runtime.executor import Executor
from engine.worker.worker import ExecutorSpec

log = logging.getLogger("fedray")

EXECUTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass(frozen=True)
class Placement:
    """Where a run's actors go inside a placement group (a Tune trial's): the server in
    bundle ``server_bundle``, executor i in bundle ``server_bundle + 1 + i``, each bundle
    sized for exactly one actor. Pinning by index matters: actors left to pick any bundle
    of a group with mixed bundle sizes can take each other's and pend forever."""

    group: PlacementGroup
    executors: int  # executor bundles after the server's
    server_bundle: int = 1  # bundle 0 is the Tune trial's own process

    def server(self) -> PlacementGroupSchedulingStrategy:
        return self._at(self.server_bundle)

    def executor(self, index: int) -> PlacementGroupSchedulingStrategy:
        return self._at(self.server_bundle + 1 + index)

    def _at(self, bundle: int) -> PlacementGroupSchedulingStrategy:
        # No capture: whatever else these actors start must say where it goes.
        return PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=bundle, placement_group_capture_child_tasks=False
        )


@dataclass
class _Slot:
    index: int
    actor: Any
    outstanding: int = 0  # jobs sent and not yet returned
    generation: int = 0  # bumped each time the executor is replaced
    borrowed: bool = False  # handed in set up for another run before: not ours to kill
    pace: Pace = field(default_factory=Pace)  # its measured seconds per job


def bare_executor(
    num_cpus: float, num_gpus: float, name: str = "", where: Any = None, run: tuple[Any, ...] = ()
) -> Any:
    """A new executor actor, set up for ``run`` (spec, the run's data),
    or with nothing set up yet if it is empty (``Executor.setup`` gives it one)."""
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    options["max_concurrency"] = 1000  # wall mode: many jobs may sleep out their padding at once
    if name:
        options["name"] = name
    if where is not None:
        options["scheduling_strategy"] = where
    # The run's parts go as top-level arguments: Ray resolves object refs only there.
    return Executor.options(**options).remote(num_cpus, num_gpus, *run)  # type: ignore[attr-defined]


@dataclass
class _Queued:
    urgency: float  # the job's earliest possible finish: what the server will need first
    spec: JobSpec
    params_ref: Any


@dataclass(eq=False)  # identity semantics: calls live in a set
class Call:
    """One Ray call carrying a batch of jobs to one executor."""

    slot: _Slot
    actor: Any  # the actor the call went to (the slot may have a replacement since)
    jobs: list[_Queued]
    future: asyncio.Future[Any] = field(init=False)  # the consumer task: a strong reference keeps it alive


class ExecutorPool:
    def __init__(
        self,
        run_id: str,
        num: int,
        spec: ExecutorSpec,
        data_ref: Any,
        max_batch: int,
        on_outputs: Callable[[list[JobOutput]], None],
        load_state: LoadState,
        placement: Placement | None = None,
        warm: list[Any] | None = None,
        queue_seconds: float = 0.0,
    ) -> None:
        self.run_id = run_id
        self.placement = placement
        self.spec = spec
        self._args = (data_ref,)  # the run's data (RunData), one object in the store
        self.max_batch = max_batch
        self.queue_seconds = queue_seconds  # 0: every job is sent at once (late_binding.py)
        self.held_back = False  # the last flush left jobs queued for want of room
        self.on_outputs = on_outputs
        self.load_state = load_state
        # warm: executors someone else started and stops (a sweep's, reused trial after trial;
        # or the driver's, started beside the server: engine/experiment.py)
        self.slots = [
            _Slot(i, warm[i], borrowed=True) if warm else _Slot(i, self._create(i, 0)) for i in range(num)
        ]
        self.queue: list[_Queued] = []
        self.calls: set[Call] = set()
        self.replaced = 0
        self.closing = False  # set by shutdown(): its kills are not executor failures
        self.stats = {"calls": 0, "jobs": 0, "waits": 0, "wait_seconds": 0.0}
        self.error: BaseException | None = None
        self._arrived = asyncio.Event()  # set whenever a result (or a failure) comes in

    def _create(self, index: int, generation: int) -> Any:
        name = f"fedray-{self.run_id}-executor-{index}" + (f".r{generation}" if generation else "")
        # A replacement goes to its predecessor's bundle: the dead actor's share is free again.
        where = None if self.placement is None else self.placement.executor(index)
        return bare_executor(self.spec.num_cpus, self.spec.num_gpus, name, where, (self.spec, *self._args))

    async def start(self) -> Any:
        """Wait until every executor has imported torch and built its model; return the
        seeded initial model."""

        async def one(slot: _Slot) -> None:
            if not slot.borrowed:
                await slot.actor.ready.remote()
                return
            try:
                await slot.actor.setup.remote(self.spec, *self._args)
            except EXECUTOR_LOST:  # a warm one that died between runs: start a new one
                slot.actor, slot.borrowed = self._create(slot.index, 0), False
                await slot.actor.ready.remote()

        await asyncio.gather(*(one(s) for s in self.slots))
        return await self.slots[0].actor.initial_params.remote()

    def put(self, params: Any) -> Any:
        return ray.put(params)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    # ---- jobs ----------------------------------------------------------------------
    def enqueue(self, spec: JobSpec, params_ref: Any, urgency: float) -> None:
        self.queue.append(_Queued(urgency, spec, params_ref))
        group = spec.group
        if group is not None and sum(q.spec.group == group for q in self.queue) < group.size:
            return  # a sum group goes out whole, to one executor (the loop enqueues it at once)
        if self.running_low() or self._fills_calls():
            self.flush()

    def cancel(self, uid: int) -> None:
        """Forget a job that is still queued here (one already sent runs, unused)."""
        self.queue = [q for q in self.queue if q.spec.uid != uid]

    def running_low(self) -> bool:
        return any(s.outstanding < LOW_WATER for s in self.slots)

    def _limit(self, slot: _Slot) -> int | None:
        return window(slot.pace, self.queue_seconds)

    def _has_room(self, slot: _Slot) -> bool:
        return has_room(slot.outstanding, self._limit(slot), self.max_batch)

    def _fills_calls(self) -> bool:
        """Enough is queued for a full call to every executor with room (and one has room)."""
        fill = sum(call_size(self._limit(s), self.max_batch) for s in self.slots if self._has_room(s))
        return fill > 0 and len(self.queue) >= fill

    def flush(self) -> None:
        """Send queued jobs, most urgent first, as ``plan_calls`` says; what finds no room
        stays queued until a result comes back."""
        if not self.queue:
            return
        queued = sorted(self.queue, key=lambda q: (q.urgency, q.spec.uid))
        units: dict[int, list[_Queued]] = {}  # by stack or sum group; any other job on its own
        for q in queued:
            key = q.spec.unit
            units.setdefault(key if key is not None else -1 - q.spec.uid, []).append(q)
        pending = list(units.values())
        outstanding, limits = [s.outstanding for s in self.slots], [self._limit(s) for s in self.slots]
        calls, sent = plan_calls(pending, outstanding, limits, self.max_batch)
        for i, items in calls:
            self._send(self.slots[i], items)
        self.queue = [q for unit in pending[sent:] for q in unit]
        self.held_back = bool(self.queue)

    def _send(self, slot: _Slot, items: list[_Queued]) -> None:
        refs: list[Any] = []
        specs = []
        for q in items:
            if q.params_ref not in refs:
                refs.append(q.params_ref)
            state = self.load_state(q.spec.client) if q.spec.kind == CLIENT else q.spec.client_state
            specs.append(replace(q.spec, param_slot=refs.index(q.params_ref), client_state=state))
        slot.pace = slot.pace.sent(time.perf_counter())
        call = Call(slot, slot.actor, items)
        stream = slot.actor.run.options(num_returns="streaming").remote(specs, *refs)
        call.future = asyncio.ensure_future(self._consume(call, stream))
        slot.outstanding += len(items)
        self.calls.add(call)
        self.stats["calls"] += 1
        self.stats["jobs"] += len(items)

    async def _consume(self, call: Call, stream: Any) -> None:
        """Deliver outputs as the executor streams them back; on a lost executor,
        queue the jobs that did not come back for a replacement."""
        returned: set[int] = set()
        try:
            async for ref in stream:
                outs = await ref
                returned.update(o.uid for o in outs)
                slot = call.slot
                slot.outstanding -= len(outs)
                slot.pace = slot.pace.finished(time.perf_counter(), len(outs), slot.outstanding)
                self.on_outputs(outs)
                if self.held_back and self._has_room(slot):
                    self.flush()  # late binding: the executor that freed up takes the next jobs
                self._arrived.set()
        except EXECUTOR_LOST:
            if self.closing:
                return  # shutdown() killed it: the run is over, nothing to re-run
            lost = [q for q in call.jobs if q.spec.uid not in returned]
            call.slot.outstanding -= len(lost)
            self._replace(call.slot, call.actor)
            # The lost jobs run again elsewhere; keyed RNGs make them give the same update.
            self.queue[:0] = lost
            self.flush()
        except Exception as e:  # a bug in a job: the run fails with it
            self.error = e
        finally:
            self.calls.discard(call)
            self._arrived.set()

    def _replace(self, slot: _Slot, dead: Any) -> None:
        if slot.actor is not dead:
            return  # another failed call of the same executor already replaced it
        log.warning("executor %d died; its jobs are re-dispatched and a replacement starts", slot.index)
        slot.generation += 1
        slot.actor, slot.borrowed = self._create(slot.index, slot.generation), False
        self.replaced += 1

    async def wait_any(self, timeout: float | None = None) -> None:
        """Wait until some job's result arrives, or a call fails (or ``timeout`` passes)."""
        self.flush()
        self.stats["waits"] += 1
        t0 = time.perf_counter()
        if self.calls:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        elif timeout:
            await asyncio.sleep(timeout)
        self.stats["wait_seconds"] += time.perf_counter() - t0
        if self.error is not None:
            raise self.error

    # ---- evaluation ------------------------------------------------------------------
    async def evaluate(self, params_ref: Any) -> dict[str, float]:
        """Evaluate on the least-loaded executor; retried on another if it dies."""
        while True:
            slot = min(self.slots, key=lambda s: (s.outstanding, s.index))
            actor = slot.actor
            slot.outstanding += 1
            try:
                return dict(await actor.evaluate.remote(params_ref))
            except EXECUTOR_LOST:
                self._replace(slot, actor)
            finally:
                slot.outstanding -= 1

    def shutdown(self) -> None:
        self.closing = True
        for s in self.slots:
            if not s.borrowed:  # warm executors stay up for their owner's next run
                ray.kill(s.actor)
