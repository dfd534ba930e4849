"""A Tune sweep of 8 small trials, 2 at a time, against the same 8 experiments run one
after another through ``run_experiment`` on the same local Ray (2 CPUs).

Each trial is one FedBuff experiment with one executor of one CPU, so two trials fill the
two cores. Both sides write their run results (the sweep's trials through Tune's storage),
so they do the same work; the sweep adds Tune's driver, one placement group and one trial
process per trial. Target: sweep wall time <= 0.6 x sequential wall time.

    python -m benchmarks.sweep [--quick] [--no-write]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import local_ray, parse_args, table, write_json
from engine.config.sweep_space import load_sweep
from engine.experiment import run_experiment
from engine.report.sweep_report import write_sweep
from engine.tune import run_sweep

TARGET = 0.6


def space(quick: bool) -> str:
    versions, steps = (10, 5) if quick else (40, 20)
    return f"""
experiment:
  workload.name: synthetic
  clients.num: 50
  training: {{local_steps: {steps}, batch_size: 10}}
  stop.max_versions: {versions}
  eval.every: 5
  executors.num: 1
max_concurrent: 2
space:
  training.lr: {{grid: [0.01, 0.03, 0.1, 0.3]}}
  seed: {{grid: [0, 1]}}
"""


def main() -> None:
    args = parse_args(__doc__ or "", repeats=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(space(args.quick))
        sweep = load_sweep(str(path), [f"out_dir={tmp}/sweep"], "")
        params = [{"training.lr": lr, "seed": s} for s in (0, 1) for lr in (0.01, 0.03, 0.1, 0.3)]
        with local_ray(2):
            t0 = time.perf_counter()
            sequential: list[dict[str, Any]] = []
            for i, p in enumerate(params):
                result, _ = run_experiment(sweep.trial_config(p, out_dir=f"{tmp}/seq/{i}"))
                sequential.append({**p, "wall_time": result["summary"]["wall_time"]})
            seq_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            grid = run_sweep(sweep, quiet=True)
            sweep_seconds = time.perf_counter() - t0
            _, summary = write_sweep(sweep, grid)
            trials = [
                {"training.lr": r.config["training.lr"], "seed": r.config["seed"], **_last(r.metrics)}
                for r in grid
            ]
    ratio = sweep_seconds / seq_seconds
    print(
        table(
            ["what", "wall seconds", "per experiment"],
            [
                ["8 experiments one after another", seq_seconds, seq_seconds / 8],
                ["Tune sweep, 2 trials at a time", sweep_seconds, sweep_seconds / 8],
            ],
        )
    )
    print(f"\nsweep / sequential = {ratio:.3f} (target <= {TARGET}); completed: {summary['completed']}")
    write_json(
        "sweep",
        {
            "target": TARGET,
            "quick": args.quick,
            "sequential_seconds": seq_seconds,
            "sweep_seconds": sweep_seconds,
            "ratio": ratio,
            "completed": summary["completed"],
            "sequential_runs": sequential,
            "trials": trials,
        },
        skip=args.no_write,
    )


def _last(metrics: dict[str, Any] | None) -> dict[str, Any]:
    m = metrics or {}
    return {k: m.get(k) for k in ("accuracy", "version", "wall_time", "run_done")}


if __name__ == "__main__":
    main()
