"""Late binding against binding by count, with equal executors and with one slowed down.

FedAvg rounds of pfl-research's CIFAR-10 shape (benchmarks/pfl_cifar.py: cohort 50, 5
steps of batch 10 per job, cifar_cnn) on 2 executors x 1 CPU, with
``executors.queue_seconds=0`` (every job sent when dispatched: each executor gets its
half of a round) and with the default 0.5 (each executor holds about 0.5 s of work; the
rest go to whichever frees up first: engine/core/late_binding.py). Two machines:

- as is: both executors on a free core each, one of them sharing its core with the server
  and Ray's processes;
- one executor slowed down: one executor has core 1 to itself; the other shares core 0
  with a busy loop, the server, Ray's processes and the driver, so it runs at under half
  speed (a cluster with an older node, or a node busy with something else).

Samples/s are taken in steady state (pfl_cifar's window), the idle share of both cores
in that window too. Results are identical either way (keyed streams; the Ray tier tests
it); only the wall time changes.

    python -m benchmarks.late_binding [--quick] [--repeats N] [--no-write]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from benchmarks._common import local_ray, parse_args, table, write_json
from benchmarks.pfl_cifar import engine_throughput

RAY_WORKER_NICENESS = 15  # Ray starts its worker processes at nice 15 (raylet and GCS at 0)
SETTINGS = {"bound by count": "executors.queue_seconds=0", "late binding": "executors.queue_seconds=0.5"}


def _ray_processes() -> dict[int, str]:
    """pid -> process title of this machine's Ray processes (workers, raylet, GCS)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                title = f.read().split("\0")[0]
        except OSError:
            continue
        if title.startswith("ray::") or title.endswith(("raylet", "gcs_server")):
            found[int(pid)] = title
    return found


def _pin(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` (sched_setaffinity takes one thread; threads started later
    inherit their creator's)."""
    with contextlib.suppress(OSError):  # the process (or a thread) may have exited meanwhile
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cores)


@contextmanager
def one_executor_slowed() -> Iterator[None]:
    """The first executor that starts gets core 1 to itself; everything else (the other
    executor, the server, Ray's processes, this driver and a busy loop as nice as a Ray
    worker) shares core 0, where that executor runs at under half speed."""

    def core_0_at_ray_workers_niceness() -> None:
        os.sched_setaffinity(0, {0})
        os.nice(RAY_WORKER_NICENESS)  # as busy as one more Ray worker, not more

    hog = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], preexec_fn=core_0_at_ray_workers_niceness
    )
    stop = threading.Event()

    def pin() -> None:
        fast: int | None = None  # the executor with core 1 to itself
        seen: set[int] = set()
        while not stop.wait(0.05):
            procs = _ray_processes()
            if fast not in procs:
                fast = None
            for pid, title in sorted(procs.items()):
                if fast is None and title.startswith("ray::Executor"):
                    fast = pid
                    _pin(pid, {1})
                elif pid != fast and pid not in seen:
                    _pin(pid, {0})
                seen.add(pid)
            _pin(os.getpid(), {0})

    thread = threading.Thread(target=pin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        hog.kill()
        hog.wait()
        for pid in [os.getpid(), *_ray_processes()]:
            _pin(pid, {0, 1})


def main() -> None:
    args = parse_args(str(__doc__).splitlines()[0])
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        sys.exit("late_binding: error: needs Linux with 2 cores or more (it pins processes to cores)")
    size = (
        {"clients": 100, "cohort": 10, "eval_every": 2, "rounds": 6, "test": 200}
        if args.quick
        else {"clients": 1000, "cohort": 50, "eval_every": 3, "rounds": 13, "test": 500}
    )
    machines: dict[str, Callable[[], AbstractContextManager[None]]] = {
        "as is": contextlib.nullcontext,
        "one executor slowed": one_executor_slowed,
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {s: [] for s in SETTINGS} for m in machines}
    with local_ray(2):
        for _ in range(args.repeats):  # interleaved: drifts in machine load hit every setup alike
            for m, machine in machines.items():
                for s, override in SETTINGS.items():
                    with machine():
                        runs[m][s].append(engine_throughput(size, [override]))
    rows = []
    for m, by_setting in runs.items():
        base = statistics.median(r["samples_per_s"] for r in by_setting["bound by count"])
        for s, rs in by_setting.items():
            values = [r["samples_per_s"] for r in rs]
            sps = statistics.median(values)
            idle = statistics.median(r["machine_shares"]["idle"] for r in rs)
            calls = statistics.median(r["engine"]["jobs_per_call"] for r in rs)
            spread = f"{min(values):.0f}-{max(values):.0f}"
            rows.append([m, s, sps, spread, sps / base, idle, calls])
    print(
        f"\nFedAvg, pfl-research's CIFAR-10 shape: cohort {size['cohort']}, 5 steps of batch 10 a job, "
        f"2 executors x 1 CPU, rounds {size['eval_every']}-{size['rounds']} (median of {args.repeats})\n"
    )
    print(table(["machine", "binding", "samples/s", "range", "vs by count", "idle share", "jobs/call"], rows))
    write_json("late_binding", {"size": size, "settings": SETTINGS, "runs": runs}, skip=args.no_write)


if __name__ == "__main__":
    main()
