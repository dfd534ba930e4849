"""Hyperparameter sweeps on Ray Tune: ``python -m engine.tune --space NAME [key=value ...]``.

Each trial runs one whole experiment. Its Tune process, its server and each of its
executors get one bundle of the trial's placement group and are pinned to it by index
(``engine.runtime.pool.Placement``), so trials never take each other's resources. Every
evaluation is reported to Tune (``ray.tune.report``) as it settles, so ASHA can stop a
poor trial early, in virtual time or in model versions. A failed trial is retried
(``max_failures``) from its latest checkpoint (with ``checkpoint.every``) or from the start;
runs are deterministic, so either way it ends as if it had never failed. PBT moves trials
between the same checkpoints.

The results folder (``out_dir``) gets ``trials.csv`` (one row per trial), ``best.yaml`` (the
best trial's experiment, ready for ``python -m engine.run --config``), ``sweep.png`` and
``summary.json``; Tune's own folder, with each trial's run results under
``<trial>/run/``, is ``<out_dir>/trials`` or ``<tune.storage_path>/<out_dir name>``.
Tracking (``track.*``) goes through Tune's own callbacks (engine/report/tracking.py).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.config import Config, ConfigError
from engine.config.sweep_space import Dimension, Sweep, list_spaces, load_sweep, probe_configs
from engine.core.evaluation import LOCAL_METRICS
from engine.report.sweep_report import write_sweep
from engine.report.tracking import tracking_callbacks, untracked
from engine.runtime.connect import connect_ray

DEFAULT_OUT = "runs/tune-{name}-" + time.strftime("%Y%m%d-%H%M%S")
# Ray refuses bundles that ask for nothing: the Tune process and the server, which mostly
# wait, reserve a little memory instead of a share of a CPU that an executor could use.
DRIVER_MEMORY = 64 * 2**20
SERVER_MEMORY = 128 * 2**20
CHECKPOINT_FILE = "server.ckpt"  # engine/core/checkpoint.py's snapshot, inside a Tune checkpoint

EXAMPLES = """\
examples:
  python -m engine.tune --list
  python -m engine.tune --space fedbuff                       # tune_spaces/fedbuff.yaml
  python -m engine.tune --space tune_spaces/fedavg.yaml tune.num_samples=16 stop.max_versions=50
  python -m engine.tune --space stragglers ray.address=auto tune.storage_path=s3://bucket/sweeps

a space file (more in engine/config/sweep_space.py):
  base: configs/fedbuff.yaml        # optional; `experiment: {key: value}` adds engine.run keys
  metric: accuracy                  # accuracy | best_accuracy | loss | time_to_target
  mode: max                         # default: max for accuracies, min for loss and time
  num_samples: 8
  search: random                    # random | grid | optuna | hyperopt (pip install 'fedray[optuna]')
  scheduler: asha                   # fifo | asha | pbt; time_attr: version | sim_time
  space:
    training.lr: {loguniform: [0.01, 1]}           # also uniform, randint [low, high]
    algorithm.buffer_size: {choice: [5, 10, 20]}
    seed: {grid: [0, 1, 2]}                        # every value, each num_samples times

key=value pairs set the base experiment (any engine.run key, out_dir included: the
results folder); tune.<setting>=value sets a sweep setting: metric, mode, num_samples,
search, scheduler, time_attr, max_t, grace_period, reduction_factor,
perturbation_interval, synch, max_concurrent, max_failures, storage_path, seed.
"""


def bundles(cfg: Config) -> list[dict[str, float]]:
    """One bundle per actor of a trial: its Tune process, the server, each executor."""
    ex = cfg.executors
    server = {"CPU": cfg.server.num_cpus, "memory": float(SERVER_MEMORY)}
    executor = {"CPU": ex.num_cpus, "GPU": ex.num_gpus}
    return [{"memory": float(DRIVER_MEMORY)}, server, *([executor] * ex.num)]


class Reporter:
    """Turns a run's evaluation rows into Tune reports (one per evaluation, in order),
    each with the run's checkpoint when the row carries one (``checkpoint.every``)."""

    def __init__(self, cfg: Config, resumed_at: int = -1, every_report: bool = False) -> None:
        self.target = cfg.stop.target_accuracy
        self.resumed_at = resumed_at  # rows up to this version were reported before a resume
        # PBT clones whatever checkpoint a trial's latest report carries, and the engine
        # hands out only the newest snapshot at each poll: under PBT every report carries
        # the latest snapshot, fresh or not.
        self.every_report = every_report
        self.snapshot: tuple[bytes, int] | None = None
        self.best = -math.inf
        self.time_to_target = math.inf  # never reached: ranks last under mode=min
        self.last: dict[str, Any] = {}

    def evaluation(self, row: dict[str, Any]) -> None:
        from ray import tune

        acc, version = float(row["accuracy"]), int(row["version"])
        self.best = max(self.best, acc)
        if self.target and acc >= self.target and self.time_to_target == math.inf:
            self.time_to_target = float(row["sim_time"])
        self.last = {
            "version": version,
            "sim_time": float(row["sim_time"]),
            "wall_time": float(row["wall_time"]),
            "accuracy": acc,
            "loss": float(row["loss"]),
            "best_accuracy": self.best,
            "time_to_target": self.time_to_target,
            "run_done": 0,
            **{k: float(row[k]) for k in LOCAL_METRICS if k in row},
        }
        fresh = row.get("checkpoint")
        if fresh is not None:
            self.snapshot = (fresh, version)
        if version <= self.resumed_at:
            return  # a resumed run hands out its history again: it only updates best and target
        if self.snapshot is None or (fresh is None and not self.every_report):
            tune.report(dict(self.last))
            return
        data, at = self.snapshot
        with tempfile.TemporaryDirectory() as tmp:  # report() copies it into Tune's storage
            (Path(tmp) / CHECKPOINT_FILE).write_bytes(data)
            (Path(tmp) / "version").write_text(str(at))
            tune.report(dict(self.last), checkpoint=tune.Checkpoint.from_directory(tmp))

    def final(self, summary: dict[str, Any]) -> None:
        """The run ended: its summary's figures, marked done (an early-stopped trial has none)."""
        from ray import tune

        tune.report({**self.last, "wall_time": float(summary["wall_time"]), "run_done": 1})


def resume_point() -> tuple[bytes | None, int]:
    """The checkpoint Tune hands this trial (a retry after a failure, or PBT continuing
    it from a better trial's), as (server snapshot, its version); (None, -1) for a fresh start."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None, -1
    with ckpt.as_directory() as d:
        return (Path(d) / CHECKPOINT_FILE).read_bytes(), int((Path(d) / "version").read_text())


def trial(config: dict[str, Any], sweep: Sweep) -> None:
    """One Tune trial: run the experiment inside the trial's placement group."""
    import ray

    from engine.experiment import run_experiment
    from engine.runtime.pool import Placement

    cfg = sweep.trial_config(config, out_dir="run")  # in the trial's folder, which Tune syncs
    group = ray.util.get_current_placement_group()
    placement = None if group is None else Placement(group, cfg.executors.num)
    resume, version = resume_point()
    reporter = Reporter(cfg, resumed_at=version, every_report=sweep.settings.scheduler == "pbt")
    warm = warm_executors(cfg, placement)
    result, _ = run_experiment(
        cfg,
        on_evaluation=reporter.evaluation,
        placement=placement,
        resume=resume,
        executors=warm,
        checkpoint_files=False,  # Tune keeps the trial's checkpoints (a retry reuses run/)
    )
    reporter.final(result["summary"])


# This trial process's executors, by placement group. Tune reuses the process and its group
# for the next trial (reuse_actors), and so does the engine with the executors: set up for
# each run, they keep their process, torch import and CUDA context. They die with the process.
_WARM: dict[tuple[str, int], list[Any]] = {}


def warm_executors(cfg: Config, placement: Any) -> list[Any] | None:
    from engine.runtime.pool import bare_executor

    if placement is None:
        return None
    key = (placement.group.id.hex(), placement.executors)
    if key not in _WARM:
        _WARM.clear()  # another group: the old one's bundles are gone, and its executors with them
        ex = cfg.executors
        where = [placement.executor(i) for i in range(placement.executors)]
        _WARM[key] = [bare_executor(ex.num_cpus, ex.num_gpus, where=w) for w in where]
    return _WARM[key]


def check_fits(sweep: Sweep) -> None:
    """Fail now, not pend forever: every trial must fit the cluster on its own."""
    import ray

    res = ray.cluster_resources()
    for cfg in probe_configs(sweep):
        need_cpu = cfg.server.num_cpus + cfg.executors.num * cfg.executors.num_cpus
        need_gpu = cfg.executors.num * cfg.executors.num_gpus
        if need_cpu > res.get("CPU", 0) + 1e-9 or need_gpu > res.get("GPU", 0) + 1e-9:
            raise ConfigError(
                f"a trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs (executors.num={cfg.executors.num}) "
                f"but the cluster has {res.get('CPU', 0):g} and {res.get('GPU', 0):g}; lower executors.*"
            )


def searcher(sweep: Sweep) -> Any:
    # Tune ignores (with a warning) max_concurrent_trials beside a search algorithm passed
    # in, so the limit goes into the algorithm itself.
    s = sweep.settings  # load_sweep checked that an optional search's package is installed
    if s.search in ("optuna", "hyperopt"):
        from ray.tune.search import ConcurrencyLimiter

        if s.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            found: Any = OptunaSearch(seed=s.seed)
        else:
            from ray.tune.search.hyperopt import HyperOptSearch

            found = HyperOptSearch(random_state_seed=s.seed)
        return ConcurrencyLimiter(found, s.max_concurrent) if s.max_concurrent else found
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent)


def scheduler(sweep: Sweep) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s, stop = sweep.settings, sweep.base.stop
    limit = s.max_t or (stop.max_versions if s.time_attr == "version" else stop.max_sim_time)
    if s.scheduler == "pbt":
        # A trial in the bottom quantile continues from a top trial's latest checkpoint
        # with perturbed hyperparameters (trial() resumes it; load_sweep aligned the
        # interval and checkpoint.every).
        return PopulationBasedTraining(
            time_attr=s.time_attr,
            perturbation_interval=s.perturbation_interval or limit / 4,
            hyperparam_mutations={d.key: mutation(d) for d in sweep.dimensions},
            synch=s.synch,
        )
    if s.scheduler == "asha":
        grace = s.grace_period or limit / s.reduction_factor**2
        # Versions count in whole steps; virtual time does not (ASHA takes either).
        whole = s.time_attr == "version"
        bounds: dict[str, Any] = {
            "max_t": int(limit) if whole else limit,
            "grace_period": max(1, round(grace)) if whole else grace,
        }
        # stop_last_trials=False: a trial that reaches max_t finishes its run and its files.
        return ASHAScheduler(
            time_attr=s.time_attr, reduction_factor=s.reduction_factor, stop_last_trials=False, **bounds
        )
    return FIFOScheduler()


def mutation(d: Dimension) -> Any:
    """A dimension as Tune samples it (choice and grid dimensions: the list of labels)."""
    from ray import tune

    if d.finite:
        return list(d.values)
    if d.kind == "uniform":
        return tune.uniform(*d.values)
    if d.kind == "loguniform":
        return tune.loguniform(*d.values)
    return tune.randint(int(d.values[0]), int(d.values[1]) + 1)  # Tune's upper end is excluded


def param_space(sweep: Sweep) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for d in sweep.dimensions:
        if d.kind == "grid" or (d.kind == "choice" and sweep.settings.search == "grid"):
            space[d.key] = tune.grid_search(list(d.values))
        elif d.kind == "choice":
            space[d.key] = tune.choice(list(d.values))
        else:
            space[d.key] = mutation(d)
    return space


def run_sweep(sweep: Sweep, quiet: bool = False) -> Any:
    """Run the sweep on the connected Ray; return Tune's ResultGrid."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    s = sweep.settings
    out = Path(sweep.out_dir).resolve()
    storage, name = (s.storage_path, out.name) if s.storage_path else (str(out), "trials")
    sched, search = scheduler(sweep), searcher(sweep)

    def resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        return tune.PlacementGroupFactory(bundles(sweep.trial_config(config)))

    # Quiet by default: the legacy reporter at verbose=0 prints nothing (the new one still
    # prints a banner), and without TensorBoard's logger no warning about inf values
    # (time_to_target of a trial that never reaches it). Tune reads both at fit().
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    loggers: list[Any] = [CSVLoggerCallback(), JsonLoggerCallback()]  # what ResultGrid reads back
    loggers += tracking_callbacks(sweep)  # track.*: Tune's callbacks log; the trials' runs do not
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial, sweep=untracked(sweep)), resources),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.direction,
            num_samples=s.num_samples,
            search_alg=search,
            scheduler=sched,
            trial_dirname_creator=lambda t: t.trial_id,
            reuse_actors=True,  # one Tune process per concurrent trial, not per trial
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0,  # Tune's tables stay quiet; one line per finished trial instead
            callbacks=loggers if quiet else [*loggers, _lines(s.metric)],
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            # A retry resumes from the latest checkpoint; PBT may clone an older one of another trial.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if s.scheduler == "pbt" else 2),
            sync_config=tune.SyncConfig(sync_artifacts=True),  # each trial's run/ folder
        ),
    )
    return tuner.fit()


def _lines(metric: str) -> Any:
    """A Tune callback printing one stderr line per finished trial."""
    from ray.tune import Callback

    class Lines(Callback):
        done = 0

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.done += 1
            r = trial.last_result or {}
            params = ", ".join(f"{k}={v}" for k, v in (trial.config or {}).items())
            state = "done" if r.get("run_done") else "stopped early"
            value = float(r.get(metric, math.nan))
            print(
                f"[{self.done}] {trial.trial_id} {params}: {metric} {value:.4g} "
                f"at version {r.get('version', 0)} ({state})",
                file=sys.stderr,
            )

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.done += 1
            print(f"[{self.done}] {trial.trial_id} failed: see {trial.error_file}", file=sys.stderr)

    return Lines()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.tune",
        description="Sweep hyperparameters with Ray Tune: every trial runs one experiment in its own "
        "placement group; writes trials.csv, best.yaml, sweep.png and summary.json under out_dir.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", metavar="FILE_OR_NAME", help="search space YAML, or a name from --list")
    p.add_argument("--list", action="store_true", help="list the shipped search spaces")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="experiment keys, or tune.<setting>")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.list:
        print("\n".join(f"  {name:<16} {text}" for name, text in list_spaces()))
        return 0
    try:
        sweep = load_sweep(args.space, args.overrides, DEFAULT_OUT)
        scheduler(sweep)  # an unavailable scheduler or search fails before Ray starts
        searcher(sweep)
    except ConfigError as e:
        print(f"fedray: error: {e}", file=sys.stderr)
        return 2
    import ray

    started = connect_ray(sweep.base)
    try:
        check_fits(sweep)
        grid = run_sweep(sweep, quiet=args.quiet)
        path, summary = write_sweep(sweep, grid)
    except ConfigError as e:
        print(f"fedray: error: {e}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()
    print((path / "trials.md").read_text() if (path / "trials.md").exists() else "")
    print(f"best: {summary['best']}\nresults: {path}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
