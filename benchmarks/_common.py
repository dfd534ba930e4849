"""Helpers shared by the benchmark scripts: Ray start, runs, timing, tables, JSON."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.config import Config, load_config

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_LOAD_AT_START = os.getloadavg()


def parse_args(
    description: str, repeats: int = 3, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """--quick, --repeats (default ``repeats``, 1 with --quick) and --no-write; ``extra``
    adds a script's own arguments."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes (< 1 min), to smoke-check the script")
    p.add_argument("--repeats", type=int, help=f"runs per measurement (default {repeats}, 1 with --quick)")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS_DIR.name}/<name>.json")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else repeats
    return args


@contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """One local Ray for the whole script (each experiment starts its own actors)."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


def config(*overrides: str) -> Config:
    return load_config(None, list(overrides))


def run(cfg: Config) -> dict[str, Any]:
    """Run one experiment without writing files; return its result dict, plus under
    ``"cpu"`` the CPU seconds its Ray actors used during the loop, by actor class."""
    from engine.experiment import run_experiment

    sampler = CpuSampler()
    base: dict[int, tuple[str, float]] = {}

    def on_progress(info: dict[str, Any]) -> None:
        if not base and "version" in info:  # the loop has started
            base.update(sampler.latest)

    with sampler:
        result, _ = run_experiment(cfg, write=False, on_progress=on_progress)
    cpu: dict[str, float] = {}
    for pid, (role, seconds) in sampler.latest.items():
        cpu[role] = cpu.get(role, 0.0) + seconds - base.get(pid, (role, 0.0))[1]
    result["cpu"] = cpu
    return result


class CpuSampler:
    """Polls /proc for the CPU time of this Ray session's worker processes (Linux only;
    empty elsewhere). ``latest``: pid -> (actor class, CPU seconds), as last seen, at most
    ``period`` old: actors are killed at the end of a run, so the last poll is what counts."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.latest: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        try:
            import ray

            node: Any = ray._private.worker._global_node  # Ray internals: degrade to nothing
            self._raylet = int(node.all_processes["raylet"][0].process.pid)
        except Exception:
            self._raylet = -1

    def __enter__(self) -> CpuSampler:
        if self._raylet > 0 and os.path.isdir("/proc"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _poll(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(self.period):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) != self._raylet:
                        continue
                    with open(f"/proc/{pid}/cmdline") as f:
                        title = f.read().split("\0")[0]  # "ray::Executor.run" -> Executor
                except (OSError, IndexError, ValueError):
                    continue
                role = title.removeprefix("ray::").split(".")[0].split(" ")[0]
                if not role:  # exiting: its cmdline is gone; keep the last good reading
                    continue
                self.latest[int(pid)] = (role, (int(fields[11]) + int(fields[12])) / tick)


def loop_seconds(summary: dict[str, Any]) -> float:
    """Wall time of the event loop: the whole run less executor start-up and data loading."""
    return float(summary["wall_time"] - summary["setup_seconds"])


def engine_stats(summary: dict[str, Any]) -> dict[str, float]:
    """The backend's counters plus derived ratios (jobs per Ray call, mean wait). The
    in-process backend makes no calls and never waits: its jobs count as one call each."""
    e = {"calls": 0, "waits": 0, "wait_seconds": 0.0, **summary["engine"]}
    e["jobs_per_call"] = e["jobs"] / max(1, e["calls"] or e["jobs"])
    e["wait_fraction"] = e["wait_seconds"] / max(1e-9, loop_seconds(summary))
    return e


def repeat(fn: Callable[[], dict[str, Any]], n: int, key: str) -> tuple[dict[str, Any], list[float]]:
    """Call ``fn`` ``n`` times; return the run with the median ``key`` and every ``key``."""
    runs = [fn() for _ in range(max(1, n))]
    values = [float(r[key]) for r in runs]
    med = statistics.median_low(values)
    return runs[values.index(med)], values


def machine() -> dict[str, Any]:
    """Where and under what load the figures were taken."""
    import ray
    import torch

    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15_at_start": [round(x, 2) for x in _LOAD_AT_START],
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "platform": platform.platform(),
    }


def fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (numbers to 4 significant digits)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def write_json(name: str, data: dict[str, Any], skip: bool = False) -> Path | None:
    """Write ``data`` (plus machine info) to benchmarks/results/<name>.json."""
    start, end = _LOAD_AT_START[0], os.getloadavg()[0]
    print(f"\nload average (1 min) on {os.cpu_count()} CPUs: {start:.2f} at start, {end:.2f} at end")
    if skip:
        return None
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2, default=_default) + "\n")
    print(f"wrote {path}")
    return path


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__}")
