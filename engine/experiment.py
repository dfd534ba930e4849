"""One experiment, on either backend: ``run_experiment(cfg)``.

``executors.backend=ray`` (the default) runs the loop in a server actor with executor
actors on the local Ray or a cluster; ``executors.backend=local`` runs the same loop and
the same jobs in this process, with no Ray at all. Both give identical results.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from engine.config import Config, ConfigError
from engine.report.results import default_out_dir, save_checkpoint, write_results
from engine.report.tracking import Trackers

if TYPE_CHECKING:
    from engine.core.checkpoint import Checkpoint
    from engine.runtime.pool import Placement

ProgressHook = Callable[[dict[str, Any]], None]
T = TypeVar("T")


class RunFailedError(RuntimeError):
    """A job or the loop raised: the run cannot go on (the message names the cause)."""


class Interrupt:
    """SIGINT (Ctrl-C) and SIGTERM as a request to stop: the run ends after its current step
    and writes its results so far, with stop reason ``interrupted``; a second signal aborts
    at once. Ray sets its own SIGTERM handler when it starts, so ``run_experiment`` installs
    these again once Ray is up; leaving the ``with`` block restores the previous handlers."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum = 0
        self._before: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self._before.setdefault(sig, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt  # the second signal: stop now
        self.signum = signum
        self.event.set()
        print(
            "\nfedray: interrupted: the run stops after its current step and writes its results "
            "(again to abort at once)",
            file=sys.stderr,
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Watcher:
    """The progress bar and the caller's hooks, fed by either backend; it also writes each
    checkpoint to ``out_dir/checkpoints/`` as it arrives (``checkpoint_dir``), and feeds the
    experiment trackers that ``cfg.track`` asks for (engine/report/tracking.py: the config
    now, each evaluation row as it arrives, the summary at ``finish``), writing under
    ``track_dir`` (the run's out_dir; None: no tracking)."""

    def __init__(
        self,
        cfg: Config,
        show: bool,
        on_progress: ProgressHook | None,
        on_evaluation: ProgressHook | None,
        checkpoint_dir: str | None = None,
        track_dir: str | None = None,
    ) -> None:
        from tqdm.auto import tqdm  # a widget in notebooks, text in a terminal

        self.trackers = Trackers(cfg, track_dir) if track_dir is not None and cfg.track.enabled else None
        self.bar = tqdm(
            total=cfg.stop.max_versions or None, unit="version", disable=not show, file=sys.stderr
        )
        self.on_progress = on_progress
        self.on_evaluation = on_evaluation
        self.checkpoint_dir = checkpoint_dir
        self.seen = 0  # evaluation rows handed out

    def progress(self, info: dict[str, Any]) -> None:
        if self.on_progress is not None:
            self.on_progress(info)
        self.bar.set_description(info.get("phase", ""), refresh=False)
        if "version" in info:
            self.bar.update(max(0, info["version"] - self.bar.n))
            post = {"sim_t": f"{info['sim_time']:.4g}", "acc": f"{info.get('accuracy', float('nan')):.3f}"}
            self.bar.set_postfix(post, refresh=False)

    def evaluations(self, rows: list[dict[str, Any]]) -> None:
        self.seen += len(rows)
        for row in rows:
            if self.checkpoint_dir is not None and row.get("checkpoint") is not None:
                save_checkpoint(self.checkpoint_dir, row["version"], row["checkpoint"])
            if self.trackers is not None:
                self.trackers.evaluation(row)
            if self.on_evaluation is not None:
                self.on_evaluation(row)

    def finish(self, summary: dict[str, Any]) -> None:
        """The run ended (completed, stopped or interrupted): its summary to the trackers."""
        if self.trackers is not None:
            self.trackers.finish(summary)

    def close(self) -> None:
        self.bar.close()
        if self.trackers is not None:  # a run that never finished is marked failed
            self.trackers.close()


def run_experiment(
    cfg: Config,
    *,
    show_progress: bool = False,
    on_progress: ProgressHook | None = None,
    on_evaluation: ProgressHook | None = None,
    write: bool = True,
    placement: Placement | None = None,
    resume: bytes | None = None,
    executors: list[Any] | None = None,
    interrupt: Interrupt | None = None,
    resume_same_config: bool = False,
    checkpoint_files: bool = True,
) -> tuple[dict[str, Any], Path | None]:
    """Run ``cfg``; write its results; return (result, out_dir).

    ``on_progress`` gets the loop's progress dict about four times a second;
    ``on_evaluation`` gets every evaluation row exactly once, in version order
    (``version, accuracy, loss, sim_time, wall_time, updates, bytes_up, ...``).
    ``resume`` continues from a checkpoint (engine/core/checkpoint.py): with ``checkpoint.every``
    set, evaluation rows carry one under ``"checkpoint"`` (bytes) every that many versions.
    Ray backend only: ``placement`` pins the server and each executor to its own bundle of
    a placement group (a Tune trial's; the group reserved them, so the cluster is not
    checked); ``executors``: executor actors (``engine.runtime.pool.bare_executor``) this run
    sets up and uses instead of starting its own, and leaves running for the caller's next run.
    A Ray that is not running is started for the run and shut down after it.
    ``interrupt``: once its signal arrives the run stops after its current step (stop reason
    ``interrupted``) and writes its results. With ``write`` and ``checkpoint.every``, every
    checkpoint is also written to ``out_dir/checkpoints/`` as it is taken (``--resume``).
    ``resume_same_config``: refuse a checkpoint taken under any other configuration.
    ``checkpoint_files``: False keeps checkpoints off the disk (a Tune trial: Tune stores them).
    """
    from engine.core import checkpoint

    loaded = None
    if resume is not None:
        try:  # fail here, in one line, rather than inside the loop
            loaded = checkpoint.load(resume, cfg, same_config=resume_same_config)
        except ValueError as e:
            raise ConfigError(f"cannot resume: {e}") from None
    run_id = uuid.uuid4().hex[:8]
    out_dir = default_out_dir(cfg, f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:4]}")
    checkpoints = out_dir if write and checkpoint_files and cfg.checkpoint.every else None
    if cfg.executors.backend == "local":
        if placement is not None or executors is not None:
            raise ValueError("placement and executors are for executors.backend=ray")
        watcher = Watcher(cfg, show_progress, on_progress, on_evaluation, checkpoints, out_dir)
        try:
            result = _run_local(cfg, watcher, loaded, interrupt)
            watcher.finish(result["summary"])
        finally:
            watcher.close()
    else:
        import ray

        from engine.runtime.connect import connect_ray, resolve_executors

        started = connect_ray(cfg)
        writing = None  # the result files, written while Ray shuts down
        if interrupt is not None:
            interrupt.install()  # again: Ray has just set its own SIGTERM handler
        try:  # the cluster is checked before anything starts or prints
            num = resolve_executors(cfg) if placement is None else placement.executors
            if executors is not None and len(executors) != num:
                raise ValueError(f"{len(executors)} executors handed in for a run of {num}")
            watcher = Watcher(cfg, show_progress, on_progress, on_evaluation, checkpoints, out_dir)
            try:
                result = _run_ray(cfg, run_id, num, watcher, placement, resume, executors, interrupt)
                watcher.finish(result["summary"])
            finally:
                watcher.close()
            if write and started:
                # Off the critical path: the files (the plots take about 1 s) are written
                # while Ray shuts down (about 1.5 s), not after it.
                writing = ThreadPoolExecutor(1, thread_name_prefix="fedray-write")
                written = writing.submit(write_results, out_dir, cfg, result)
        finally:
            if started:
                ray.shutdown()
            if writing is not None:
                writing.shutdown(wait=True)
        if writing is not None:
            return result, written.result()
    path = write_results(out_dir, cfg, result) if write else None
    return result, path


def _run_local(
    cfg: Config, watcher: Watcher, resume: Checkpoint | None, interrupt: Interrupt | None
) -> dict[str, Any]:
    from engine.core.loop import Simulation
    from engine.worker.data import load_data
    from engine.worker.local import LocalBackend
    from engine.worker.worker import ExecutorSpec
    from workloads import DatasetMeta

    started = time.time()
    data = load_data(cfg)
    spec = ExecutorSpec.of(cfg)
    progress: dict[str, Any] = {"phase": "loading data"}
    meta = DatasetMeta.of(data.dataset)
    sim = Simulation(cfg, partial(LocalBackend, spec, data), data.shards.sizes, progress, started, meta)
    last = [0.0, -1]  # wall time of the last report, evaluations seen then

    def report() -> None:
        if interrupt is not None and interrupt.event.is_set():
            sim.request_stop("interrupted")
        now, rec = time.time(), sim.s.recorder
        if len(rec.evaluated) != last[1]:  # rows (and their snapshots) as they settle
            last[1] = len(rec.evaluated)
            rows = rec.settled_evaluations()[watcher.seen :]
            for row in rows:
                row["checkpoint"] = sim.snapshots.pop(row["version"])
            watcher.evaluations(rows)
        if now - last[0] > 0.25:
            last[0] = now
            watcher.progress(dict(progress))

    sim.on_step = report
    result = _run_coroutine(sim.run(resume))
    result["data_meta"] = meta  # to rebuild the model (engine/api.py)
    last[0] = 0.0
    report()
    return result


def _run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end, also from inside a running event loop (a notebook's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _run_ray(
    cfg: Config,
    run_id: str,
    num: int,
    watcher: Watcher,
    placement: Placement | None,
    resume: bytes | None,
    executors: list[Any] | None,
    interrupt: Interrupt | None,
) -> dict[str, Any]:
    import ray

    from engine.runtime.connect import near_driver
    from engine.runtime.host import Server
    from engine.runtime.pool import bare_executor

    server, own = None, []
    try:
        where = {"scheduling_strategy": placement.server() if placement else near_driver(cfg)}
        if executors is None:
            # Started beside the server, not by it once it has loaded the data: their
            # process start and torch import overlap the server's. The server sets them up
            # for the run, like a sweep's warm executors, and this driver stops them after.
            ex = cfg.executors
            own = [
                bare_executor(
                    ex.num_cpus,
                    ex.num_gpus,
                    f"fedray-{run_id}-executor-{i}",
                    placement.executor(i) if placement else None,
                )
                for i in range(num)
            ]
        args = (cfg, run_id, num, placement, resume, executors or own)
        server = Server.options(num_cpus=cfg.server.num_cpus, **where).remote(*args)  # type: ignore[attr-defined]
        ref = server.run.remote()
        asked = False
        while not ray.wait([ref], timeout=0.25)[0]:
            if interrupt is not None and interrupt.event.is_set() and not asked:
                server.request_stop.remote("interrupted")
                asked = True
            watcher.evaluations(ray.get(server.evaluations.remote(watcher.seen)))
            watcher.progress(ray.get(server.progress.remote()))
        try:
            result: dict[str, Any] = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            raise RunFailedError(repr(e.cause)) from e
        if "config_error" in result:
            raise ConfigError(result["config_error"])
        watcher.evaluations(ray.get(server.evaluations.remote(watcher.seen)))
        watcher.progress({"version": result["summary"]["versions"], **result["summary"]})
        return result
    finally:
        for actor in [server, *own]:
            if actor is not None:
                ray.kill(actor)
