"""Stragglers cost virtual time, not wall time.

The same FedBuff run on the shapes CNN (iid shards of equal size, so every job costs the
same compute) twice: with equal client speeds (clients.speed.family=constant) and with a
100x spread (tiers: half the clients at factor 1, half at 100). Both stop at the same
number of versions. In virtual time the spread run takes far longer; on the wall clock
it should not, because a slow client's job costs an executor no more than a fast one's.
Reported: loop wall time (wall_time - setup_seconds), ratio spread / equal (target <= 1.1),
the same ratio after warm-up (first evaluated version after 0 to the end), both virtual
times, and the ratio a zero-overhead engine would get given which jobs must wait for
which (a slow client's long job does not hold anything up, but with a spread, more fast
jobs must wait for the update just before them, so fewer can run side by side).

    python -m benchmarks.stragglers [--quick] [--repeats N]
"""

from __future__ import annotations

import heapq
import statistics
from typing import Any

from benchmarks._common import (
    config,
    engine_stats,
    local_ray,
    loop_seconds,
    parse_args,
    run,
    table,
    write_json,
)
from engine.report.results import EVENTS_COLUMNS

TARGET = 1.1
SPEEDS = {
    "equal": ["clients.speed.family=constant"],
    "100x spread": [
        "clients.speed.family=tiers",
        "clients.speed.tier_fractions=[0.5,0.5]",
        "clients.speed.tier_factors=[1,100]",
    ],
}


def ideal_makespan(events: list[tuple[Any, ...]], executors: int = 2) -> float:
    """Wall time, in job durations, of a zero-overhead engine on this run's applied jobs.

    A job can only start once every job finishing at a virtual time up to its dispatch
    has been computed (the server applies those before it decides to dispatch it). Jobs
    go to the first free executor in dispatch order, each taking one unit.
    """
    dispatch, finish = EVENTS_COLUMNS.index("dispatch_time"), EVENTS_COLUMNS.index("finish_time")
    jobs = sorted((e[dispatch], e[finish]) for e in events)
    done: list[tuple[float, float]] = []  # (virtual finish, wall done) of placed jobs, a heap
    free, ready, end = [0.0] * executors, 0.0, 0.0
    for d, f in jobs:
        while done and done[0][0] <= d:  # dispatch times only grow: popped jobs stay counted
            ready = max(ready, heapq.heappop(done)[1])
        i = min(range(executors), key=free.__getitem__)
        free[i] = max(ready, free[i]) + 1.0
        heapq.heappush(done, (f, free[i]))
        end = max(end, free[i])
    return end


def measure(size: dict[str, int], speed: list[str]) -> dict[str, Any]:
    cfg = config(
        "workload.name=shapes",
        f"workload.train_samples={size['clients'] * 192}",  # 6 full batches of 32 per client
        "workload.test_samples=500",
        "partition.name=iid",
        f"clients.num={size['clients']}",
        "algorithm.name=fedbuff",
        f"algorithm.concurrency={size['concurrency']}",
        f"algorithm.buffer_size={size['buffer']}",
        f"training.local_steps={size['steps']}",
        "training.batch_size=32",
        f"stop.max_versions={size['versions']}",
        # Evaluated versions (the same in both runs) time the window after warm-up.
        f"eval.every={size['versions'] // 3}",
        "executors.num=2",
        *speed,
    )
    result = run(cfg)
    s = result["summary"]
    wall = {m["version"]: m["wall_time"] for m in result["metrics"]}
    return {
        "loop_seconds": loop_seconds(s),
        # From the first evaluated version after 0 to the end: without the executors'
        # first-job warm-up (torch imports its optimiser machinery on first use).
        "steady_seconds": wall[max(wall)] - wall[size["versions"] // 3],
        "setup_seconds": s["setup_seconds"],
        "sim_time": s["sim_time"],
        "updates": s["updates_applied"],
        "mean_staleness": s["mean_staleness"],
        "slowest_to_fastest": s["delays"]["slowest_to_fastest"],
        "ideal_makespan_jobs": ideal_makespan(result["events"]),
        # Compute actually done: equal in both runs unless the spread wastes work.
        "executor_cpu_seconds": result["cpu"].get("Executor", float("nan")),
        "engine": engine_stats(s),
    }


def main() -> None:
    args = parse_args(str(__doc__).splitlines()[0])
    size = (
        {"clients": 20, "concurrency": 6, "buffer": 3, "steps": 5, "versions": 10}
        if args.quick
        else {"clients": 100, "concurrency": 16, "buffer": 8, "steps": 10, "versions": 30}
    )
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in SPEEDS}
    with local_ray(2):
        for _ in range(args.repeats):  # alternate, so slow drifts in machine load hit both alike
            for name, speed in SPEEDS.items():
                runs[name].append(measure(size, speed))
    loop = {k: statistics.median(r["loop_seconds"] for r in v) for k, v in runs.items()}
    ratio = loop["100x spread"] / loop["equal"]
    steady = {k: statistics.median(r["steady_seconds"] for r in v) for k, v in runs.items()}
    steady_ratio = steady["100x spread"] / steady["equal"]
    cpu = {k: statistics.median(r["executor_cpu_seconds"] for r in v) for k, v in runs.items()}
    rows = []
    for name, rs in runs.items():
        r, e = rs[0], rs[0]["engine"]
        spread = f"{min(x['loop_seconds'] for x in rs):.2f}-{max(x['loop_seconds'] for x in rs):.2f}"
        row = [name, loop[name], spread, steady[name], cpu[name], r["sim_time"], r["updates"], e["jobs"]]
        rows.append([*row, r["mean_staleness"], e["jobs_per_call"], e["wait_fraction"]])
    print(
        f"\nFedBuff on shapes, {size['clients']} clients, concurrency {size['concurrency']}, "
        f"buffer {size['buffer']}, {size['steps']} local steps, {size['versions']} versions, "
        f"2 executors (median of {args.repeats})\n"
    )
    heads = ["speeds", "loop wall s", "range", "steady s", "executor CPU s", "virtual s", "updates", "jobs"]
    print(table([*heads, "staleness", "jobs/call", "wait frac"], rows))
    virtual = runs["100x spread"][0]["sim_time"] / runs["equal"][0]["sim_time"]
    ideal = runs["100x spread"][0]["ideal_makespan_jobs"] / runs["equal"][0]["ideal_makespan_jobs"]
    print(f"\nloop wall ratio spread / equal: {ratio:.3f} (target <= {TARGET})")
    print(f"steady-state wall ratio (after warm-up): {steady_ratio:.3f}; virtual time ratio: {virtual:.1f}")
    print(f"ratio a zero-overhead engine would get (job dependencies, 2 executors): {ideal:.3f}")
    write_json(
        "stragglers",
        {
            "size": size,
            "repeats": args.repeats,
            "target": TARGET,
            "runs": runs,
            "loop_seconds_median": loop,
            "wall_ratio": ratio,
            "steady_seconds_median": steady,
            "steady_wall_ratio": steady_ratio,
            "executor_cpu_seconds_median": cpu,
            "virtual_ratio": virtual,
            "ideal_ratio": ideal,
        },
        skip=args.no_write,
    )


if __name__ == "__main__":
    main()
