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

    python -m benchmarks.memory [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from benchmarks._common import config, local_ray, parse_args, repeat, run, table, write_json

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


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], repeats=1)
    versions = 5 if args.quick else 30
    with local_ray(num_cpus=2):
        time.sleep(2.0)  # let Ray's own processes finish starting
        idle = idle_footprint()
        small, smalls = repeat(lambda: measure(100, versions), args.repeats, "peak_bytes")
        large, larges = repeat(lambda: measure(10_000, versions), args.repeats, "peak_bytes")
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
            "targets": {"above_idle_gb": 1.5, "ratio": 1.2},
        },
        skip=args.no_write,
    )


if __name__ == "__main__":
    main()
