"""Peak memory of a whole run at 10,000 clients against 100 clients and Ray's idle footprint.

The same data (the shapes workload, 20,000 training images, i.i.d. partition) is split
across 100 or 10,000 clients and FedBuff runs on 2 executors, so the difference between
the two runs is what the engine keeps per client (delay model, job table, shard index,
algorithm state), not a bigger dataset. Memory is the proportional set size (PSS) summed
over the driver and every process it started (GCS, raylet, dashboard agents, workers:
server and executors), sampled every 0.1 s; PSS splits shared pages (the object store,
shared libraries) between the processes that map them, so the sum counts them once.

Targets (issue 4): the 10,000-client run peaks at most 1.5 GB above Ray's idle footprint,
and at most 1.2x the 100-client run.

Populations (issue 15): 10,000, 100,000 and 1,000,000 registered clients, each with a
lognormal speed and a periodic availability window drawn from its keyed streams, the
synthetic workload's shards made on demand from the client id (``workload.on_demand``),
FedBuff with a concurrency of 100 and one SGD step per job (so the engine's own cost
shows), on 2 Ray executors and on the in-process backend.
Targets: the million-client run peaks at most 1.3x the 10,000-client run, and the time
per version (so the dispatch cost per job) does not grow with the population.

    python -m benchmarks.memory [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import threading
import time
from functools import partial
from typing import Any

from benchmarks._common import (
    config,
    engine_stats,
    local_ray,
    loop_seconds,
    parse_args,
    repeat,
    run,
    table,
    write_json,
)

GB = 1024**3


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def total_pss() -> int:
    """PSS of this process and everything it started, in bytes."""
    return sum(_pss_bytes(p) for p in _descendants(os.getpid()))


class PeakSampler:
    def __init__(self, period: float = 0.1) -> None:
        self.period, self.peak = period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, total_pss())
            self._stop.wait(self.period)


def idle_footprint(seconds: float = 3.0) -> int:
    """Ray's own footprint once started, before any actor: the peak over a few seconds."""
    with PeakSampler() as s:
        time.sleep(seconds)
    return s.peak


def measure(clients: int, versions: int) -> dict[str, Any]:
    cfg = config(
        "algorithm.name=fedbuff",
        "algorithm.concurrency=20",
        "algorithm.buffer_size=10",
        "workload.name=shapes",
        "partition.name=iid",
        f"clients.num={clients}",
        "clients.speed.family=lognormal",
        "training.local_steps=2",
        "training.batch_size=2",
        f"stop.max_versions={versions}",
        f"eval.every={versions}",
        "executors.num=2",
    )
    with PeakSampler() as s:
        result = run(cfg)
    return {"clients": clients, "peak_bytes": s.peak, "wall_time": result["summary"]["wall_time"]}


POPULATIONS = (10_000, 100_000, 1_000_000)


def population(clients: int, backend: str, versions: int) -> dict[str, Any]:
    """One FedBuff run over ``clients`` registered clients: peak PSS and time per version."""
    cfg = config(
        "algorithm.name=fedbuff",
        "algorithm.concurrency=100",
        "algorithm.buffer_size=10",
        "workload.name=synthetic",
        "workload.on_demand=true",
        "workload.samples_per_client=50",
        "workload.test_clients=1000",
        f"clients.num={clients}",
        "clients.speed.family=lognormal",
        "clients.availability.mode=periodic",
        "clients.availability.period=3600",
        "clients.availability.on_fraction=0.5",
        "training.local_steps=1",  # a job is one real step: the engine's cost shows
        "training.batch_size=10",
        f"stop.max_versions={versions}",
        f"eval.every={versions}",
        f"executors.backend={backend}",
        "executors.num=2",
    )
    with PeakSampler() as s:
        result = run(cfg)
    summary = result["summary"]
    loop = loop_seconds(summary)
    jobs = engine_stats(summary)["jobs"]
    return {
        "clients": clients,
        "backend": backend,
        "peak_bytes": s.peak,
        "setup_seconds": summary["setup_seconds"],
        "seconds_per_version": loop / versions,
        "ms_per_job": 1000 * loop / max(1, jobs),
        "jobs": jobs,
        "wall_time": summary["wall_time"],
    }


def populations(versions: int, repeats: int) -> tuple[list[list[Any]], dict[str, Any]]:
    rows, out = [], {}
    for backend in ("ray", "local"):
        runs = {}
        for n in POPULATIONS:
            runs[n], _ = repeat(partial(population, n, backend, versions), repeats, "peak_bytes")
        base = runs[POPULATIONS[0]]
        for n, r in runs.items():
            ratio = r["peak_bytes"] / base["peak_bytes"]
            rows.append(
                [
                    backend,
                    f"{n:,}",
                    r["peak_bytes"] / GB,
                    ratio,
                    r["setup_seconds"],
                    r["seconds_per_version"],
                    r["ms_per_job"],
                ]
            )
        out[backend] = {str(n): r for n, r in runs.items()}
        out[backend]["ratio_1m_vs_10k"] = runs[POPULATIONS[-1]]["peak_bytes"] / base["peak_bytes"]
    return rows, out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=1)
    versions = 5 if args.quick else 30
    with local_ray(num_cpus=2):
        time.sleep(2.0)  # let Ray's own processes finish starting
        idle = idle_footprint()
        small, smalls = repeat(lambda: measure(100, versions), args.repeats, "peak_bytes")
        large, larges = repeat(lambda: measure(10_000, versions), args.repeats, "peak_bytes")
        pop_rows, pops = populations(20 if args.quick else 100, args.repeats)
    above_idle = (large["peak_bytes"] - idle) / GB
    ratio = large["peak_bytes"] / small["peak_bytes"]
    rows = [
        ["Ray idle (driver + Ray processes)", idle / GB, "", ""],
        ["100 clients", small["peak_bytes"] / GB, (small["peak_bytes"] - idle) / GB, small["wall_time"]],
        ["10,000 clients", large["peak_bytes"] / GB, above_idle, large["wall_time"]],
    ]
    print(table(["run", "peak PSS (GB)", "above idle (GB)", "wall s"], rows))
    print(
        f"\n10,000 clients: {above_idle:.3f} GB above idle (target <= 1.5), "
        f"{ratio:.3f}x the 100-client run (target <= 1.2)"
    )
    headers = ["backend", "clients", "peak PSS (GB)", "x 10k", "setup s", "s / version", "ms / job"]
    print("\n" + table(headers, pop_rows))
    for backend in ("ray", "local"):
        print(
            f"{backend}: 1,000,000 clients peak at {pops[backend]['ratio_1m_vs_10k']:.3f}x "
            "the 10,000-client run (target <= 1.3)"
        )
    write_json(
        "memory",
        {
            "versions": versions,
            "idle_bytes": idle,
            "runs": {"100": small, "10000": large},
            "peaks_100": smalls,
            "peaks_10000": larges,
            "above_idle_gb": above_idle,
            "ratio_10000_vs_100": ratio,
            "targets": {"above_idle_gb": 1.5, "ratio": 1.2, "population_ratio": 1.3},
            "populations": pops,
        },
        skip=args.no_write,
    )


if __name__ == "__main__":
    main()
