"""Straggler / heterogeneity studies: ``python -m engine.study --config FILE [key=value ...]``.

A study runs a grid -- algorithms x delay profiles x seeds -- of one base experiment,
each through ``run_experiment`` (the same checks and backends as ``engine.run``), several
at a time on the local Ray or the cluster (one at a time with executors.backend=local),
and writes one folder:

  <out_dir>/runs/<algorithm>__<profile>__s<seed>/   each experiment's usual results
  <out_dir>/comparison.csv                          one row per experiment
  <out_dir>/comparison.md                           means over seeds, per algorithm x profile
  <out_dir>/accuracy.png                            accuracy vs virtual time, a panel per profile

The YAML holds the base experiment (any ``engine.run`` keys) plus a ``study`` section:

  study:
    algorithms: {fedavg: {name: fedavg}, fedbuff: {name: fedbuff, buffer_size: 5}}
    profiles: {equal: {speed: {family: constant}}, pareto: {speed: {family: pareto, shape: 1.2}}}
    seeds: [0, 1]
    target_accuracy: 0.7   # reported as time-to-target; runs still stop by the base stop rule
    parallel: 0            # experiments at once; 0 = as many as the CPUs allow

An entry of ``algorithms`` may also set other config sections for its own runs, laid over
the base's: each method at its own tuned rates (``fedbuff: {name: fedbuff, server_lr: 0.5,
training: {lr: 0.2}}``, best against best), or a synchronous baseline given the virtual
time it needs (``stop: {max_sim_time: 100}``); engine/config/study.py.

Overrides ``key=value`` apply to the base experiment, ``study.<key>=value`` to the study.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.config import ConfigError
from engine.config.study import Cell, StudySpec, load_study
from engine.experiment import run_experiment
from engine.report.study_report import write_study


def run_study(spec: StudySpec, cells: list[Cell], out_dir: str, quiet: bool = False) -> Path:
    """Run every cell, ``parallel`` at a time, and write the study folder."""
    per_exp = cells[0].cfg.executors
    if per_exp.backend == "local":
        parallel = 1  # in-process runs share this process (and its torch threads)
    else:
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1))
        parallel = spec.parallel or max(1, int(cpus // per_exp.num_cpus) // max(1, per_exp.num or 1))
        parallel = min(parallel, len(cells))
        if not per_exp.num:  # auto: share the CPUs between the experiments that run at once
            share = max(1, int(cpus // (parallel * per_exp.num_cpus)))
            ex = replace(per_exp, num=share)
            cells = [replace(c, cfg=replace(c.cfg, executors=ex)) for c in cells]
    results: dict[str, dict[str, Any]] = {}
    started = time.time()
    # Threads only wait: each experiment runs in its own server actor (or, in-process,
    # one at a time), and Ray's driver calls are thread-safe.
    with ThreadPoolExecutor(parallel) as pool:
        running: dict[Future[tuple[dict[str, Any], Path | None]], Cell] = {}
        queue = list(cells)
        while queue or running:
            while queue and len(running) < parallel:
                cell = queue.pop(0)
                running[pool.submit(run_experiment, cell.cfg, write=False)] = cell
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                cell = running.pop(fut)
                results[cell.label] = fut.result()[0]
                if not quiet:
                    s = results[cell.label]["summary"]
                    print(
                        f"[{len(results)}/{len(cells)}] {cell.label}: "
                        f"accuracy {s['final_accuracy']:.4f}, virtual time {s['sim_time']:.4g} s, "
                        f"wall {s['wall_time']:.1f} s",
                        file=sys.stderr,
                    )
    return write_study(out_dir, spec, cells, results, time.time() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.study",
        description="Run algorithms x delay profiles x seeds on one workload and compare them "
        "(time to target accuracy, final accuracy, staleness, bytes, client idle time).",
        epilog="example: python -m engine.study --config configs/studies/stragglers.yaml study.seeds=[0,1]",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="study YAML: a base experiment plus a 'study' section"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-experiment lines")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        spec, cells, out_dir = load_study(args.config, args.overrides)
    except ConfigError as e:
        print(f"fedray: error: {e}", file=sys.stderr)
        return 2
    started = False
    if cells[0].cfg.executors.backend == "ray":
        from engine.runtime.connect import connect_ray

        started = connect_ray(cells[0].cfg)  # one Ray for the whole study
    try:
        path = run_study(spec, cells, out_dir, quiet=args.quiet)
    except ConfigError as e:
        print(f"fedray: error: {e}", file=sys.stderr)
        return 2
    finally:
        if started:
            import ray

            ray.shutdown()
    print((path / "comparison.md").read_text())
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
