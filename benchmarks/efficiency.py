"""Steady-state training throughput of the engine against a plain PyTorch loop.

Workload shapes (its CNN), iid shards of exactly 192 images (6 full batches of 32), FedBuff
with lognormal client speeds, 50 local steps at batch 32, on a 2-CPU Ray: 2 executors x 1
CPU (and 1 executor x 2 CPUs). Engine samples/s is taken in steady state: between the
first evaluated version after warm-up and the last one, samples = sum of the applied
jobs' local_steps x batch (from the events), seconds = difference of the metrics'
wall_time. The plain loop trains the same model class (workloads.shapes) with SGD at
batch 32 on the same generated images, for the same number of steps, without Ray, in one
process with torch.set_num_threads(2); as a stricter baseline also two 1-thread processes
side by side. Plain and engine runs alternate. Efficiency = engine / plain. Target: >= 0.9.

    python -m benchmarks.efficiency [--quick] [--repeats N]
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks._common import (
    config,
    engine_stats,
    local_ray,
    loop_seconds,
    machine_shares,
    parse_args,
    run,
    shares_table,
    table,
    write_json,
)
from benchmarks._plain import PlainLoop
from engine.report.results import EVENTS_COLUMNS
from workloads.shapes import Shapes, ShapesParams

TARGET = 0.9
BATCH = 32
SEED = 0


def engine_throughput(size: dict[str, int], executors: int, cpus: int) -> dict[str, Any]:
    every = size["eval_every"]
    cfg = config(
        "workload.name=shapes",
        f"workload.train_samples={size['clients'] * 192}",
        "workload.test_samples=500",  # evaluation stays a small share of the window
        "partition.name=iid",
        f"clients.num={size['clients']}",
        "algorithm.name=fedbuff",
        f"algorithm.concurrency={size['concurrency']}",
        f"algorithm.buffer_size={size['buffer']}",
        f"training.local_steps={size['steps']}",
        f"training.batch_size={BATCH}",
        f"eval.every={every}",
        f"stop.max_versions={every * size['windows']}",
        f"executors.num={executors}",
        f"executors.num_cpus={cpus}",
        f"seed={SEED}",
    )
    result = run(cfg)
    metrics = {m["version"]: m for m in result["metrics"]}
    first, last = metrics[every], metrics[max(metrics)]  # version 0 .. every is warm-up
    steps_col, dropped_col = EVENTS_COLUMNS.index("local_steps"), EVENTS_COLUMNS.index("dropped")
    applied = [e[steps_col] for e in result["events"] if not e[dropped_col]]
    steps = int(sum(applied[first["updates"] : last["updates"]]))
    seconds = last["wall_time"] - first["wall_time"]
    return {
        "executors": executors,
        "cpus_each": cpus,
        "window_versions": [first["version"], last["version"]],
        "window_seconds": seconds,
        "steps": steps,
        "samples_per_s": steps * BATCH / seconds,
        # Executors' CPU seconds over the whole loop / the CPUs they were given: below 1,
        # they waited (for the server, or for a machine busy with other work).
        "executor_cpu_util": result["cpu"].get("Executor", float("nan"))
        / (loop_seconds(result["summary"]) * executors * cpus),
        # The server actor's CPU seconds per loop second: taken from the executors' 2 cores.
        "server_cpu_share": result["cpu"].get("Server", float("nan")) / loop_seconds(result["summary"]),
        "machine_shares": machine_shares(result["cpu_window"]),
        "engine": engine_stats(result["summary"]),
    }


def plain_baseline(size: dict[str, int]) -> PlainLoop:
    workload = Shapes(ShapesParams(train_samples=size["clients"] * 192, test_samples=500))
    return PlainLoop(workload, size["clients"], BATCH, lr=0.05, seed=SEED)


def _range(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


def main() -> None:
    args = parse_args(str(__doc__).splitlines()[0])
    size = (
        {"clients": 20, "concurrency": 4, "buffer": 2, "steps": 10, "eval_every": 2, "windows": 3}
        if args.quick
        else {"clients": 100, "concurrency": 8, "buffer": 4, "steps": 50, "eval_every": 5, "windows": 3}
    )
    # Every version is exactly `buffer` updates, so the window's step count is known upfront.
    steps = size["eval_every"] * (size["windows"] - 1) * size["buffer"] * size["steps"]
    setups = [(2, 1), (1, 2)]
    engine: dict[str, list[dict[str, Any]]] = {f"{n}x{c}": [] for n, c in setups}
    plain: dict[str, list[float]] = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    with local_ray(2):
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every setup alike
            plain["1 process x 2 threads"].append(plain_baseline(size).samples_per_s(steps, 2))
            plain["2 processes x 1 thread"].append(plain_baseline(size).two_processes_samples_per_s(steps))
            for n, c in setups:
                engine[f"{n}x{c}"].append(engine_throughput(size, n, c))
    med = {k: statistics.median(v) for k, v in plain.items()}
    base = med["1 process x 2 threads"]
    best = max(med.values())
    rows: list[list[Any]] = []
    for name, runs in engine.items():
        values = [r["samples_per_s"] for r in runs]
        sps = statistics.median(values)
        util = statistics.median(r["executor_cpu_util"] for r in runs)
        row = [f"engine {name} CPU", sps, _range(values), sps / base, sps / best]
        rows.append([*row, runs[0]["engine"]["jobs_per_call"], util])
    rows += [[f"plain {k}", v, _range(plain[k]), v / base, v / best, "-", "-"] for k, v in med.items()]
    print(
        f"\nshapes CNN, {size['steps']} local steps at batch {BATCH}, FedBuff concurrency "
        f"{size['concurrency']} buffer {size['buffer']}, {steps} steps in the window (median of "
        f"{args.repeats})\n"
    )
    heads = [
        "setup",
        "samples/s",
        "range",
        "vs plain 2 threads",
        "vs best plain",
        "jobs/call",
        "exec CPU util",
    ]
    print(table(heads, rows))
    for name, runs in engine.items():
        server = statistics.median(r["server_cpu_share"] for r in runs)
        print(f"\nserver actor CPU, engine {name}: {server:.3f} of one core over the loop")
    print("\n" + shares_table({f"engine {name}": runs for name, runs in engine.items()}))
    print(f"\ntarget: engine 2x1 >= {TARGET} x plain 1 process x 2 threads")
    write_json(
        "efficiency",
        {
            "size": size,
            "repeats": args.repeats,
            "target": TARGET,
            "engine": engine,
            "plain_samples_per_s": plain,
            "efficiency_2x1_vs_plain_2_threads": rows[0][3],
            "efficiency_2x1_vs_best_plain": rows[0][4],
        },
        skip=args.no_write,
    )


if __name__ == "__main__":
    main()
