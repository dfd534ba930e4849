"""The server actor: hosts one run's simulation loop (engine/core/loop.py) on Ray, with
the executor pool (engine/runtime/pool.py) as its backend, and answers the driver's
progress and evaluation polls while the loop runs."""

from __future__ import annotations

import time
from typing import Any

import ray

from engine.config import Config, ConfigError
from engine.core import checkpoint
from engine.core.backend import LoadState, OnOutputs
from engine.core.loop import Simulation
from engine.core.wall import WallSimulation
from engine.runtime.pool import ExecutorPool, Placement
from engine.worker.data import load_data
from engine.worker.worker import ExecutorSpec
from workloads import DatasetMeta


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
        self.warm = warm  # executors set up afresh for this run, not started (a sweep's; the driver's)
        self.run_id = run_id
        self.num_executors = num_executors
        self.resume = checkpoint.load(resume, cfg) if resume is not None else None
        self.progress_info: dict[str, Any] = {"phase": "starting", "run_id": run_id}
        self.sim: Simulation | None = None
        self.stop_reason = ""  # asked for before the loop existed

    async def request_stop(self, reason: str) -> None:
        """Stop the run after its current step (the driver was interrupted)."""
        self.stop_reason = reason
        if self.sim is not None:
            self.sim.request_stop(reason)

    async def progress(self) -> dict[str, Any]:
        return dict(self.progress_info)

    async def evaluations(self, start: int) -> list[dict[str, Any]]:
        """Evaluation rows from the ``start``-th on, in version order (see RunRecorder),
        each with the snapshot taken at its version, if any (engine/core/checkpoint.py)."""
        sim = self.sim
        if sim is None or not hasattr(sim, "s"):
            return []
        rows = sim.s.recorder.settled_evaluations()[start:]
        for row in rows:
            row["checkpoint"] = sim.snapshots.pop(row["version"])
        return rows

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.time()
        self.progress_info["phase"] = "loading data"
        try:
            data = load_data(cfg)
        except ConfigError as e:  # found once the data is there: back as data, for one clean line
            return {"config_error": str(e)}
        spec = ExecutorSpec.of(cfg)
        data_ref = ray.put(data)
        batch = 1 if cfg.clock.mode == "wall" else cfg.executors.max_batch

        def pool(on_outputs: OnOutputs, load_state: LoadState) -> ExecutorPool:
            num, where, warm = self.num_executors, self.placement, self.warm
            return ExecutorPool(
                self.run_id,
                num,
                spec,
                data_ref,
                batch,
                on_outputs,
                load_state,
                placement=where,
                warm=warm,
                # Wall mode: every job on the executors at once, sleeping out its padding.
                queue_seconds=0.0 if cfg.clock.mode == "wall" else cfg.executors.queue_seconds,
            )

        kind = WallSimulation if cfg.clock.mode == "wall" else Simulation
        meta = DatasetMeta.of(data.dataset)
        try:  # an algorithm measuring the model may find the config at fault (loop.py)
            self.sim = kind(cfg, pool, data.shards.sizes, self.progress_info, wall_start=started, meta=meta)
        except ConfigError as e:
            return {"config_error": str(e)}
        if self.stop_reason:
            self.sim.request_stop(self.stop_reason)
        result = await self.sim.run(self.resume)
        result["data_meta"] = meta  # to rebuild the model (engine/api.py)
        return result
