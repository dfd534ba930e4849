"""The server actor: the one event loop of a run.

Virtual mode: results are applied strictly in virtual-time order ``(time, priority,
dispatch sequence)``, whatever order executors return them in. A job's exact finish
time is known only once its upload size is (after it computed), but a lower bound --
dispatch + download + compute + latency -- is known at dispatch. The loop therefore
awaits a result only when that job's lower bound is the earliest thing that can happen;
every other in-flight job keeps computing on the pool meanwhile.

Wall mode shares everything but the clock: executors pad jobs to their scaled durations
with real sleeps and results are applied in arrival order.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import ray

from algorithms import ALGORITHMS
from algorithms.base import Update
from engine import checkpoint
from engine.clock import EventQueue, Priority
from engine.config import Config, ConfigError
from engine.data import load_data
from engine.delays import DelayModel
from engine.executor import ExecutorSpec, JobOutput, JobSpec
from engine.jobs import InFlight, JobTable, VersionStore, assign_stacks
from engine.pool import ExecutorPool, Placement
from engine.results import RunRecorder
from engine.rng import stream

STALL_JOBS = 2000  # jobs ending with no new global version before the run is called stalled


@ray.remote
class Server:
    def __init__(
        self,
        cfg: Config,
        run_id: str,
        num_executors: int,
        placement: Placement | None = None,
        resume: bytes | None = None,
        warm: list[Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.placement = placement  # a Tune trial's placement group: executors go to its bundles
        self.warm = warm  # executors set up afresh for this run instead of started (a sweep's)
        self.run_id = run_id
        self.num_executors = num_executors
        self.resume = checkpoint.load(resume, cfg) if resume is not None else None
        self.snapshots = checkpoint.Snapshots(cfg.checkpoint.every)
        self.progress_info: dict[str, Any] = {"phase": "starting", "run_id": run_id}

    async def progress(self) -> dict[str, Any]:
        return dict(self.progress_info)

    async def evaluations(self, start: int) -> list[dict[str, Any]]:
        """Evaluation rows from the ``start``-th on, in version order (see RunRecorder)."""
        rec = getattr(self, "rec", None)
        rows = rec.settled_evaluations()[start:] if rec is not None else []
        for row in rows:  # the snapshot taken at that version, if any (engine/checkpoint.py)
            row["checkpoint"] = self.snapshots.pop(row["version"])
        return rows

    # ---- set-up ----------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.wall_start = time.time()
        self.progress_info["phase"] = "loading data"
        try:
            dataset, shards, local_test, step = load_data(cfg)
        except ConfigError as e:  # found once the data is there: back as data, for one clean line
            return {"config_error": str(e)}
        self.sizes = shards.sizes
        self.algorithm = ALGORITHMS[cfg.algorithm.name](
            cfg.algorithm.params, cfg.training, self.sizes, cfg.server.cost, step
        )
        self.delays = DelayModel(cfg.clients, cfg.seed)
        spec = ExecutorSpec.of(cfg)
        wall = cfg.clock.mode == "wall"
        self.pool = ExecutorPool(
            self.run_id,
            self.num_executors,
            spec,
            (ray.put(dataset), ray.put(shards), ray.put(local_test)),
            1 if wall else cfg.executors.max_batch,
            self._on_outputs,
            placement=self.placement,
            warm=self.warm,
        )
        self.progress_info["phase"] = "starting executors"
        await self.pool.start()
        self.setup_seconds = time.time() - self.wall_start
        try:
            return await self._loop(await self.pool.initial_params(), wall)
        finally:
            self.pool.shutdown()

    async def _loop(self, initial: np.ndarray, wall: bool) -> dict[str, Any]:
        cfg = self.cfg
        n = cfg.clients.num
        self.state = self.algorithm.init(np.asarray(initial, dtype=np.float32))
        self.model_bytes = int(self.state.model.nbytes)
        self.in_flight = JobTable(n)
        self.job_counter = np.zeros(n, dtype=np.int64)
        self.ready: EventQueue[InFlight] = EventQueue()
        self.versions = VersionStore(ray.put)
        self.evals: set[asyncio.Future[None]] = set()
        self.target_models: dict[int, np.ndarray] = {}
        self.client_states: dict[int, Any] = {}  # state that persists between a client's jobs
        self.rec = RunRecorder(cfg, self.delays.describe())
        self.dispatch_calls = 0
        self.now = 0.0
        self.stop_reason = ""
        if self.resume is None:
            self._new_version(0.0)
            self._dispatch()
        else:
            checkpoint.restore(self, self.resume)
            self.resume = None
        self.progress_info["phase"] = "running"
        steps = 0
        while not self._should_stop():
            advanced = await (self._step_wall() if wall else self._step_virtual())
            if not advanced:
                self.stop_reason = self.stop_reason or "nothing left to run"
                break
            steps += 1
            if steps % 64 == 0:
                await asyncio.sleep(0)  # let progress() calls in
        if self.state.version not in self.rec.evaluated and self.stop_reason != "target_accuracy":
            self._evaluate(self.state.version)  # a target stop ends at an evaluated version already
        if self.evals:
            await asyncio.gather(*self.evals)
        result = self.rec.result(
            self.stop_reason,
            self.now,
            time.time() - self.wall_start,
            self.setup_seconds,
            self.algorithm.stats(self.state),
            self.pool.replaced,
        )
        cut = result["summary"]["versions"] if self.rec.truncated else self.state.version
        result["model"] = self.target_models.get(cut, self.state.model)
        result["summary"]["model_version"] = cut
        result["summary"]["engine"] = dict(self.pool.stats)
        return result

    # ---- one step of each clock --------------------------------------------------------
    async def _step_virtual(self) -> bool:
        t_timer = self.algorithm.next_timer(self.state)
        t_timer = math.inf if t_timer is None else t_timer
        head = self.ready.peek()
        t_next = min(head.time if head else math.inf, t_timer)
        pending = self.in_flight.earliest_unresolved()
        if pending is not None and pending.lower_bound <= t_next:
            # The earliest possible event is a job still computing: wait for results.
            if pending.held is not None:  # a held-back job turns out to be needed
                self._send(pending)
            await self.pool.wait_any()
            return True
        if t_next == math.inf:
            return await self._idle_until_available()
        limit = self.cfg.stop.max_sim_time
        if limit and t_next > limit:
            self.now, self.stop_reason = limit, "max_sim_time"
            return True
        self.now = t_next
        while (head := self.ready.peek()) is not None and head.time <= t_next and not self._should_stop():
            self._complete(self.ready.pop().payload)
        if t_timer == t_next and not self._should_stop():
            self.state = self.algorithm.on_timer(self.state, t_next)
            self._maybe_new_version()
        self._end_of_instant()
        if not self._should_stop():
            self.snapshots.take_if_due(self)  # at the instant boundary: every event applied
        return True

    def _end_of_instant(self) -> None:
        """After every event of an instant: drop unwanted jobs, then dispatch."""
        if self._should_stop():
            return
        self.state, unwanted = self.algorithm.discard(self.state)
        for client in unwanted:
            f = self.in_flight.of_client(client)
            if f is not None:
                self._drop_job(f)
        self._dispatch()

    async def _step_wall(self) -> bool:
        if not self.in_flight and self.algorithm.next_timer(self.state) is None:
            return await self._idle_until_available()
        t_timer = self.algorithm.next_timer(self.state)
        timeout = None if t_timer is None else max(0.0, t_timer - self._wall_now())
        await self.pool.wait_any(timeout)
        self.now = self._wall_now()
        while self.ready and not self._should_stop():  # arrival order: the wall clock decides
            self._complete(self.ready.pop().payload)
        if t_timer is not None and self.now >= t_timer and not self._should_stop():
            self.state = self.algorithm.on_timer(self.state, self.now)
            self._maybe_new_version()
        self._end_of_instant()
        return True

    def _wall_now(self) -> float:
        return (time.time() - self.loop_wall_start) / self.cfg.clock.wall_scale

    async def _idle_until_available(self) -> bool:
        """Nothing is running: move on to the next availability change, if any (in wall
        mode by sleeping until then)."""
        t = self.delays.next_change(self.now)
        if self.in_flight or t == math.inf:
            return False
        if self.cfg.clock.mode == "wall":
            await asyncio.sleep((t - self.now) * self.cfg.clock.wall_scale)
        self.now = t
        self._dispatch()
        return True

    # ---- dispatch ----------------------------------------------------------------------
    def _dispatch(self) -> None:
        if self.dispatch_calls == 0:
            self.loop_wall_start = time.time()
        idle = np.flatnonzero(~self.in_flight.busy & self.delays.available(self.now))
        rng = stream(self.cfg.seed, "select", self.dispatch_calls)
        self.dispatch_calls += 1
        self.state, jobs = self.algorithm.jobs(self.state, self.now, idle, rng)
        quorum: dict[int, list[InFlight]] = {}
        direct: list[InFlight] = []
        for job in jobs:
            c = job.client
            k = int(self.job_counter[c])
            self.job_counter[c] += 1
            down = self.delays.download_time(c, self.model_bytes)
            compute = self.delays.compute_time(c, k, job.task.samples(int(self.sizes[c])))
            bound = self.now + down + compute + float(self.delays.latency[c])
            seq, version = self.ready.next_seq(), self.state.version
            f = InFlight(seq, c, k, job.task, version, self.now, down, compute, self.model_bytes, bound)
            self.rec.bytes_down += self.model_bytes
            if self.delays.dropped(c, k):
                # Rule: skip provably discarded work. The event still happens.
                f.dropped = True
                self.in_flight.add(f, computed=False)
                self.ready.push(bound, Priority.COMPLETION, f, seq=f.seq)
                continue
            self.in_flight.add(f, computed=True)
            (quorum.setdefault(job.quorum, []) if job.quorum > 0 else direct).append(f)
        assign_stacks(
            direct + [f for group in quorum.values() for f in group], self.cfg.executors.stack, self.sizes
        )
        for f in direct:
            self._send(f)
        for k, group in quorum.items():
            # Over-selection: the engine (not the algorithm: no clairvoyance) knows which
            # jobs would finish first; the others are held back, computed only if needed.
            by_finish = sorted(group, key=lambda f: (self._expected_finish(f), f.seq))
            for i, f in enumerate(by_finish):
                self._send(f, hold=i >= k)

    def _expected_finish(self, f: InFlight) -> float:
        return (
            f.lower_bound
            - float(self.delays.latency[f.client])
            + self.delays.upload_time(f.client, self.model_bytes)
        )

    def _send(self, f: InFlight, hold: bool = False) -> None:
        """Hand a job to the pool (or hold it back); sending a held job releases it."""
        if f.held is not None:
            spec, ref = f.held
            f.held = None
        else:
            ref = self.versions.hold(f.version)
            wall = self.cfg.clock.mode == "wall"
            scale = self.cfg.clock.wall_scale
            pad = self.loop_wall_start + (f.dispatch_time + f.download + f.compute) * scale if wall else 0.0
            up = self.delays.up_bytes_per_s[f.client] / scale if wall else 0.0
            spec = JobSpec(
                f.seq,
                f.client,
                f.job_index,
                f.task,
                0,
                self.client_states.get(f.client),
                urgency=f.lower_bound,
                pad_until=pad,
                up_bytes_per_s=float(up),
                stack=f.stack,
            )
            if hold:
                f.held = (spec, ref)
                return
        self.pool.enqueue(spec, f.version, ref, f.lower_bound)

    def _drop_job(self, f: InFlight) -> None:
        """The algorithm discarded an in-flight job: forget it, compute it not at all if
        it is still held or queued, and record it as dropped now."""
        self.in_flight.remove(f.seq)
        f.discarded = True
        self.pool.cancel(f.seq)
        if not f.dropped:
            self.versions.release(f.version)
        self.rec.discarded += 1
        self.rec.job(f, self.now, self.state.version - f.version, 0, dropped=True)

    def _on_outputs(self, outputs: list[JobOutput]) -> None:
        for out in outputs:
            f = self.in_flight.get(out.uid)
            if f is None or f.output is not None:
                continue  # discarded, or a re-run of a job whose first run also returned
            f.output = out
            if self.cfg.clock.mode == "wall":
                finish = self._wall_now()
            else:
                finish = (
                    f.dispatch_time + f.download + f.compute + self.delays.upload_time(f.client, out.bytes_up)
                )
            self.ready.push(finish, Priority.COMPLETION, f, seq=f.seq)

    # ---- completion ----------------------------------------------------------------------
    def _complete(self, f: InFlight) -> None:
        if f.discarded:
            return  # its result arrived before the algorithm discarded it
        self.in_flight.remove(f.seq)
        now = self.now
        lost = f.dropped or not self.delays.is_available(f.client, now)
        staleness = self.state.version - f.version
        if lost or f.output is None:
            self.state = self.algorithm.on_drop(self.state, f.client, now)
            self.rec.job(f, now, staleness, 0, dropped=True)
        else:
            out = f.output
            if out.client_state is not None:
                self.client_states[f.client] = out.client_state
            update = Update(f.client, out.delta, out.num_samples, f.version, self.versions.params(f.version))
            self.state = self.algorithm.on_update(self.state, update, now)
            self.rec.bytes_up += out.bytes_up
            self.rec.job(
                f, now, staleness, out.bytes_up, dropped=False, train_loss=out.metrics.get("train_loss")
            )
        if not f.dropped:
            self.versions.release(f.version)
        self._maybe_new_version()

    def _maybe_new_version(self) -> None:
        if self.state.version != self.rec.last_version:
            self._new_version(self.now)

    def _new_version(self, now: float) -> None:
        v = self.state.version
        self.versions.set_current(v, self.state.model)
        self.rec.version(v, now, time.time() - self.wall_start)
        if v % self.cfg.eval.every == 0:
            self._evaluate(v)
        self.snapshots.on_version(v)
        self.progress_info.update(self.rec.progress(self.now, len(self.in_flight)))

    def _evaluate(self, version: int) -> None:
        ref = self.versions.hold(version)
        params = self.versions.params(version)
        self.rec.pending_evals.add(version)

        async def go() -> None:
            scores = await self.pool.evaluate(ref)
            acc = scores["accuracy"]
            if self.cfg.stop.target_accuracy and acc >= self.cfg.stop.target_accuracy:
                self.target_models[version] = params  # the run may end here: keep its model
            self.versions.release(version)
            self.rec.evaluation(version, scores)
            self.progress_info["accuracy"] = acc

        task = asyncio.ensure_future(go())
        self.evals.add(task)
        task.add_done_callback(self.evals.discard)

    def _should_stop(self) -> bool:
        if self.stop_reason:
            return True
        stop = self.cfg.stop
        if self.pool.error is not None:
            raise self.pool.error
        if stop.max_versions and self.state.version >= stop.max_versions:
            self.stop_reason = "max_versions"
        elif stop.max_bytes and self.rec.bytes_up + self.rec.bytes_down >= stop.max_bytes:
            self.stop_reason = "max_bytes"
        elif stop.target_accuracy and self.rec.target_version() is not None:
            self.stop_reason = "target_accuracy"
        elif self.rec.jobs_since_version > max(STALL_JOBS, 20 * self.cfg.clients.num):
            # E.g. a round deadline shorter than every client's job: without this guard a
            # run bounded only by max_versions would go on forever.
            self.stop_reason = "stalled: many jobs ended without a new global version"
        return bool(self.stop_reason)
