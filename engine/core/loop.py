"""The simulation loop of one run: a plain class, no Ray, no torch.

Virtual mode: results are applied strictly in virtual-time order ``(time, priority,
dispatch sequence)``, whatever order the backend returns them in. A job's exact finish
time is known only once its upload size is (after it computed), but a lower bound --
dispatch + download + compute + exchanges + latency -- is known at dispatch. The loop
therefore awaits a result only when that job's lower bound is the earliest thing that can
happen; every other in-flight job keeps computing on the backend meanwhile. (Wall-clock
mode: engine/core/wall.py.) Everything the loop knows between two events is ``LoopState``;
a checkpoint is that state at an instant boundary (engine/core/checkpoint.py). The loop
reaches executors only through a ``Backend`` (engine/core/backend.py): the Ray pool, or
the in-process backend.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

import algorithms.attacks as attacks
from algorithms import ALGORITHMS
from algorithms.base import Algorithm, Update
from engine.core import binding, checkpoint, clip_history, dispatch
from engine.core.backend import Backend, JobOutput, LoadState, OnOutputs
from engine.core.clock import Priority
from engine.core.delays import DelayModel
from engine.core.jobs import InFlight, ServerWork, assign_stacks, assign_sum_groups
from engine.core.rng import stream
from engine.core.state import LoopState

SUMMED = np.zeros(0, dtype=np.float32)  # the delta of an update summed on its executor


class Simulation:
    def __init__(
        self,
        cfg: Any,
        backend_factory: Callable[[OnOutputs, LoadState], Backend],
        sizes: np.ndarray,
        progress: dict[str, Any] | None = None,
        wall_start: float | None = None,
        meta: Any = None,
    ) -> None:
        """``backend_factory(on_outputs, load_state)`` builds the backend that runs the jobs;
        ``sizes``: each client's shard size; ``progress`` is updated as it runs; ``wall_start``:
        when the run started; ``meta``: the ``DatasetMeta`` (engine/core/binding.py)."""
        self.cfg = cfg
        self.sizes = sizes
        self.progress = {} if progress is None else progress
        self.algorithm: Algorithm[Any] = ALGORITHMS[cfg.algorithm.name](
            cfg.algorithm.params, cfg.training, sizes, cfg.server.cost
        )
        self.delays = DelayModel(cfg.clients, cfg.seed)
        binding.bind_model(self.algorithm, cfg, meta, self.delays)  # HeteroFL's sub-model sizes
        self.backend: Backend = backend_factory(self._on_outputs, lambda c: self.s.client_states.get(c))
        self.wall = False  # WallSimulation (engine/core/wall.py) runs on the wall clock
        self.evals: set[asyncio.Future[None]] = set()
        self.loop_wall_start = 0.0
        self.wall_start = time.time() if wall_start is None else wall_start
        self.snapshots = checkpoint.Snapshots(cfg.checkpoint.every)
        self.on_step: Callable[[], None] | None = None  # called after every step of the loop
        self.diverging = False  # some evaluation's loss was not finite
        self.requested = ""  # a stop asked for from outside (request_stop)

    # ---- the run -------------------------------------------------------------------------
    async def run(self, resume: checkpoint.Checkpoint | None = None) -> dict[str, Any]:
        """Run to a stop rule; ``resume``: a loaded checkpoint to continue from."""
        self.progress["phase"] = "starting executors"
        initial = await self.backend.start()
        self.setup_seconds = time.time() - self.wall_start
        self.s = LoopState.fresh(
            self.cfg,
            self.algorithm.init(np.asarray(initial, dtype=np.float32)),
            self.backend.put,
            self.delays.describe(),
        )
        self.model_bytes = int(self.s.algorithm.model.nbytes)
        try:
            if resume is None:
                self._new_version(0.0)
                self._dispatch()
            else:
                checkpoint.restore(self, resume)
            self.progress["phase"] = "running"
            return await self._run()
        finally:
            self.backend.shutdown()
            self.s.client_states.close()

    async def _run(self) -> dict[str, Any]:
        s = self.s
        while not self._should_stop():
            advanced = await self._step()
            if not advanced:
                s.stop_reason = s.stop_reason or "nothing left to run"
                break
            if not self.wall and not self._should_stop():
                self.snapshots.take_if_due(self)  # at the instant boundary: every event applied
            if self.on_step is not None:
                self.on_step()
            # Let evaluations and progress() calls in: without a real wait (the in-process
            # backend) nothing else would run until the loop ends.
            await asyncio.sleep(0)
        version = s.algorithm.version
        if version not in s.recorder.evaluated and s.stop_reason not in ("target_accuracy", "diverged"):
            self.evaluate(version)  # those stops end at an evaluated version already
        if self.evals:
            await asyncio.gather(*self.evals)
        result = s.recorder.result(
            s.stop_reason,
            s.now,
            time.time() - self.wall_start,
            self.setup_seconds,
            {**self.algorithm.stats(s.algorithm), **s.server.stats()},
            self.backend.replaced,
            self.algorithm.privacy_spent(s.algorithm),
        )
        cut = result["summary"]["versions"] if s.recorder.truncated else version
        result["model"] = s.target_models.get(cut, s.algorithm.model)
        result["summary"]["model_version"] = cut
        result["summary"]["engine"] = dict(self.backend.stats)
        return result

    # ---- one step of each clock ------------------------------------------------------------
    def _earliest_unresolved(self) -> tuple[float, Any]:
        """The earliest lower bound among jobs and server work still computing."""
        f = self.s.jobs.earliest_unresolved()
        best: tuple[float, Any] = (f.lower_bound, f) if f is not None else (math.inf, None)
        for w in self.s.server_work.values():
            if w.model is None and w.finish < best[0]:
                best = (w.finish, w)
        return best

    async def _step(self) -> bool:
        """One instant of virtual time: every event due then, in order, then dispatch."""
        s = self.s
        t_timer = self.algorithm.next_timer(s.algorithm)
        t_timer = math.inf if t_timer is None else t_timer
        head = s.ready.peek()
        t_next = min(head.time if head else math.inf, t_timer)
        bound, pending = self._earliest_unresolved()
        if pending is not None and bound <= t_next:
            # The earliest possible event is still computing: wait for results.
            if isinstance(pending, InFlight) and pending.held is not None:
                self.send(pending)  # a held-back job turns out to be needed
            await self.backend.wait_any()
            return True
        if t_next == math.inf:
            return await self._idle_until_available()
        limit = self.cfg.stop.max_sim_time
        if limit and t_next > limit:
            s.now, s.stop_reason = limit, "max_sim_time"
            return True
        s.now = t_next
        while (head := s.ready.peek()) is not None and head.time <= t_next and not self._should_stop():
            self._apply(s.ready.pop().payload)
        if t_timer == t_next and not self._should_stop():
            s.algorithm = self.algorithm.on_timer(s.algorithm, t_next)
            self._maybe_new_version()
        self._end_of_instant()
        return True

    async def _idle_until_available(self) -> bool:
        """Nothing runs: go on to the next availability change, if any (wall mode sleeps)."""
        s = self.s
        t = self.delays.next_change(s.now)
        if s.jobs or s.server_work or t == math.inf:
            return False
        await self._sleep_until(t)
        s.now = t
        self._dispatch()
        return True

    def _end_of_instant(self) -> None:
        """After every event of an instant: drop unwanted jobs, dispatch, start server work."""
        s = self.s
        if self._should_stop():
            return
        s.algorithm, unwanted = self.algorithm.discard(s.algorithm)
        for client in unwanted:
            f = s.jobs.of_client(client)
            if f is not None:
                self._drop_job(f)
        self._dispatch()

    # ---- dispatch --------------------------------------------------------------------------
    def _dispatch(self) -> None:
        s = self.s
        if s.dispatch_calls == 0:
            self.loop_wall_start = time.time()
        idle = self.delays.idle(s.now, s.jobs.by_client.keys())
        rng = stream(self.cfg.seed, "select", s.dispatch_calls)
        s.dispatch_calls += 1
        s.algorithm, jobs = self.algorithm.jobs(s.algorithm, s.now, idle, rng)
        flights = [
            dispatch.in_flight(s, self.delays, int(self.sizes[j.client]), self.model_bytes, j) for j in jobs
        ]
        quorum: dict[int, list[InFlight]] = {}
        direct: list[InFlight] = []
        for job, f in zip(jobs, flights, strict=True):
            s.recorder.bytes_down += f.bytes_down
            if self.delays.dropped(f.client, f.job_index):
                # Rule: skip provably discarded work. The event still happens.
                f.dropped = True
                s.jobs.add(f, computed=False)
                s.ready.push(f.lower_bound, Priority.COMPLETION, f, seq=f.seq)
                continue
            s.jobs.add(f, computed=True)
            (quorum.setdefault(job.quorum, []) if job.quorum > 0 else direct).append(f)
        assign_stacks(
            direct + [f for group in quorum.values() for f in group], self.cfg.executors.stack, self.sizes
        )
        assign_sum_groups(direct, self.cfg.executors.partial_sums)  # a quorum's extra jobs may never run
        for f in direct:
            self.send(f)
        for k, group in quorum.items():
            # Over-selection: the engine (not the algorithm: no clairvoyance) knows which
            # jobs would finish first; the others are held back, computed only if needed.
            by_finish = sorted(
                group, key=lambda f: (dispatch.expected_finish(self.delays, self.model_bytes, f), f.seq)
            )
            for i, f in enumerate(by_finish):
                self.send(f, hold=i >= k)
        s.algorithm, work = self.algorithm.server_jobs(s.algorithm)
        for server_job in work:
            w = dispatch.server_work(s, server_job)
            if w.model is None:
                self.send_server_work(w)
            else:
                self._server_result(w)

    def send(self, f: InFlight, hold: bool = False) -> None:
        """Hand a job to the backend (or hold it back); sending a held job releases it."""
        if f.held is not None:
            spec, ref = f.held
            f.held = None
        else:
            ref = self.s.versions.hold(f.version)
            spec = dispatch.job_spec(self.cfg, self.s, self.delays, self.loop_wall_start, f)
            if hold:
                f.held = (spec, ref)
                return
        self.backend.enqueue(spec, ref, f.lower_bound)

    def send_server_work(self, w: ServerWork) -> None:
        """Compute ``w`` on the backend; its result is due at ``w.finish``."""
        self.backend.enqueue(dispatch.server_spec(self.cfg, w), self.backend.put(w.job.model), w.finish)

    def _drop_job(self, f: InFlight) -> None:
        """The algorithm discarded an in-flight job: forget it, compute it not at all if
        it is still held or queued, and record it as dropped now."""
        s = self.s
        s.jobs.remove(f.seq)
        f.discarded = True
        if f.staged:
            s.client_states.discard(f.seq)
        self.backend.cancel(f.seq)
        if not f.dropped:
            s.versions.release(f.version)
        s.recorder.discarded += 1
        s.recorder.job(f, s.now, s.algorithm.version - f.version, 0, dropped=True)

    def _on_outputs(self, outputs: list[JobOutput]) -> None:
        s = self.s
        for out in outputs:
            if out.uid < 0:
                w = s.server_work.get(out.uid)
                if w is not None and w.model is None:
                    w.model = out.payload["model"]
                    self._server_result(w)
                continue
            f = s.jobs.get(out.uid)
            if f is None or f.output is not None:
                continue  # discarded, or a re-run of a job whose first run also returned
            if out.client_state is not None:  # off the heap until the update is applied
                s.client_states.stage(f.seq, out.client_state)
                f.staged, out = True, replace(out, client_state=None)
            f.output = out
            s.ready.push(dispatch.finish_time(self.delays, f, out), Priority.COMPLETION, f, seq=f.seq)

    def _server_result(self, w: ServerWork) -> None:
        """Server work's result is in: it is an event at the work's finish."""
        self.s.ready.push(w.finish, Priority.TIMER, w, seq=w.seq)

    async def _sleep_until(self, t: float) -> None:
        """Nothing runs until virtual time ``t`` (the wall clock sleeps for real)."""

    # ---- applying events -------------------------------------------------------------------
    def _apply(self, event: InFlight | ServerWork) -> None:
        if isinstance(event, ServerWork):
            s = self.s
            del s.server_work[event.uid]
            assert event.model is not None
            s.algorithm = self.algorithm.on_server_job(s.algorithm, event.job, event.model, s.now)
            self._maybe_new_version()
        else:
            self._complete(event)

    def _complete(self, f: InFlight) -> None:
        s = self.s
        if f.discarded:
            return  # its result arrived before the algorithm discarded it
        s.jobs.remove(f.seq)
        now = s.now
        lost = f.dropped or not self.delays.is_available(f.client, now)
        staleness = s.algorithm.version - f.version
        if lost or f.output is None:
            if f.staged:
                s.client_states.discard(f.seq)
            s.algorithm = self.algorithm.on_drop(s.algorithm, f.client, now)
            s.recorder.job(f, now, staleness, 0, dropped=True)
        else:
            out = f.output
            # A summed job's delta is in its partial sum, which its executor found finite.
            delta = SUMMED if out.partial is not None else self.algorithm.decode(out.payload, f.client)
            up = dispatch.bytes_uploaded(f, out)
            s.recorder.bytes_up += up  # it crossed the network, whatever the server makes of it
            loss = out.metrics.get("train_loss")
            if not np.isfinite(delta).all():
                # Rule: a NaN or Inf update never touches the model; the job counts as dropped.
                if f.staged:
                    s.client_states.discard(f.seq)
                s.algorithm = self.algorithm.on_drop(s.algorithm, f.client, now)
                s.recorder.job(f, now, staleness, up, dropped=True, train_loss=loss, rejected=True)
            else:
                if f.staged:
                    s.client_states.commit(f.seq, f.client)
                s.clip_history = clip_history.merge(s.clip_history, out.extra, self.cfg.training.clip)
                base = s.versions.params(f.version)
                upload = (out.payload, out.extra, out.partial)
                update = Update(f.client, delta, out.num_samples, f.version, base, *upload)
                byz, seed = self.cfg.clients.byzantine, self.cfg.seed
                if byz.attack == "alie" and f.client in attacks.attacked_set(byz, len(self.sizes), seed):
                    # ALIE needs the honest updates of the aggregate, which no executor sees:
                    # the algorithm's aggregation replaces a colluder's update (attacks.collude).
                    update = attacks.colluding(update, byz.alie_z)
                s.algorithm = self.algorithm.on_update(s.algorithm, update, now)
                s.recorder.job(f, now, staleness, up, dropped=False, train_loss=loss)
        if not f.dropped:
            s.versions.release(f.version)
        self._maybe_new_version()

    def _maybe_new_version(self) -> None:
        if self.s.algorithm.version != self.s.recorder.last_version:
            self._new_version(self.s.now)

    def _new_version(self, now: float) -> None:
        s = self.s
        v = s.algorithm.version
        s.versions.set_current(v, s.algorithm.model)
        s.recorder.version(v, now, time.time() - self.wall_start, self.algorithm.privacy_spent(s.algorithm))
        if v % self.cfg.eval.every == 0:
            self.evaluate(v)
        self.snapshots.on_version(v)
        self.progress.update(s.recorder.progress(s.now, len(s.jobs)))

    def evaluate(self, version: int) -> None:
        s = self.s
        ref = s.versions.hold(version)
        params = s.versions.params(version)
        s.recorder.pending_evals.add(version)

        async def go() -> None:
            scores = await self.backend.evaluate(ref)
            acc = scores["accuracy"]
            if self.cfg.stop.target_accuracy and acc >= self.cfg.stop.target_accuracy:
                s.target_models[version] = params  # the run may end here: keep its model
            if not math.isfinite(scores["loss"]):
                s.target_models[version] = params  # diverged: the run ends here
                self.diverging = True
            s.versions.release(version)
            s.recorder.evaluation(version, scores)
            self.progress["accuracy"] = acc

        task = asyncio.ensure_future(go())
        self.evals.add(task)
        task.add_done_callback(self.evals.discard)

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (e.g. ``interrupted``): the results so far stand."""
        self.requested = reason

    def _should_stop(self) -> bool:
        s = self.s
        if not s.stop_reason:
            self.backend.check()
            spent = self.algorithm.privacy_spent(s.algorithm)  # DP: stops before the budget is passed
            reason = s.recorder.stop_reason(s.algorithm.version, self.diverging, spent)
            s.stop_reason = self.requested or reason
        return bool(s.stop_reason)
