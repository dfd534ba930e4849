"""What stacked training (``executors.stack``) buys: samples/s of the same run with jobs
trained one at a time and S at a time under ``torch.func.vmap``.

FedAvg on the synthetic workload (logistic regression on 60 features, the model of the
FedProx/LEAF Synthetic benchmarks; stacking takes linear models only), 200 clients, 50
per round, 20 local steps at batch 10, 2 executors x 1 CPU on a 2-CPU Ray. Steady state:
between the first evaluated version after warm-up and the last, samples = sum of the
applied jobs' local_steps x batch (from the events), seconds = difference of the
metrics' wall_time (evaluation and aggregation included). Also reported: the executors'
CPU milliseconds per job over the whole loop, and how far the final model is from the
unstacked run's (stacked kernels round differently; nothing else differs).

    python -m benchmarks.stacking [--quick] [--repeats N] [--no-write]
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from benchmarks._common import config, local_ray, loop_seconds, parse_args, run, table, write_json
from engine.report.results import EVENTS_COLUMNS

BATCH = 10
STACKS = (1, 5, 25)


def measure(stack: int, rounds: int, every: int) -> dict[str, Any]:
    cfg = config(
        "workload.name=synthetic",
        "clients.num=200",
        "algorithm.name=fedavg",
        "algorithm.clients_per_round=50",
        "training.local_steps=20",
        f"training.batch_size={BATCH}",
        f"eval.every={every}",
        f"stop.max_versions={rounds}",
        "executors.num=2",
        f"executors.stack={stack}",
        "seed=0",
    )
    result = run(cfg)
    metrics = {m["version"]: m for m in result["metrics"]}
    first, last = metrics[every], metrics[max(metrics)]
    steps_col, dropped_col = EVENTS_COLUMNS.index("local_steps"), EVENTS_COLUMNS.index("dropped")
    applied = [e[steps_col] for e in result["events"] if not e[dropped_col]]
    steps = int(sum(applied[first["updates"] : last["updates"]]))
    seconds = last["wall_time"] - first["wall_time"]
    jobs = result["summary"]["engine"]["jobs"]
    return {
        "stack": stack,
        "samples_per_s": steps * BATCH / seconds,
        "window_seconds": seconds,
        "loop_seconds": loop_seconds(result["summary"]),
        "executor_cpu_ms_per_job": 1000 * result["cpu"].get("Executor", float("nan")) / max(1, jobs),
        "final_accuracy": result["summary"]["final_accuracy"],
        "model": result["model"],
    }


def main() -> None:
    args = parse_args(str(__doc__).splitlines()[0])
    rounds, every = (6, 2) if args.quick else (30, 5)
    runs: dict[int, list[dict[str, Any]]] = {s: [] for s in STACKS}
    with local_ray(2):
        for _ in range(args.repeats):
            for stack in STACKS:  # interleaved, so load drifts hit every setting alike
                runs[stack].append(measure(stack, rounds, every))
    base = statistics.median(r["samples_per_s"] for r in runs[1])
    rows, out = [], []
    for stack in STACKS:
        rs = runs[stack]
        sps = [r["samples_per_s"] for r in rs]
        gap = float(np.max(np.abs(rs[0]["model"] - runs[1][0]["model"])))
        cpu = statistics.median(r["executor_cpu_ms_per_job"] for r in rs)
        med = statistics.median(sps)
        rows.append([stack, med, f"{min(sps):.0f}-{max(sps):.0f}", med / base, cpu, gap])
        out.append(
            {
                "stack": stack,
                "samples_per_s": sps,
                "speedup": med / base,
                "executor_cpu_ms_per_job": cpu,
                "max_abs_model_difference_vs_stack_1": gap,
                "final_accuracy": [r["final_accuracy"] for r in rs],
            }
        )
    print(
        table(
            ["stack", "samples/s", "range", "vs stack 1", "executor CPU ms/job", "max |model - unstacked|"],
            rows,
        )
    )
    write_json("stacking", {"rounds": rounds, "repeats": args.repeats, "settings": out}, skip=args.no_write)


if __name__ == "__main__":
    main()
