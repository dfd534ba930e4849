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
    ``"cpu"`` the CPU seconds its Ray actors used during the loop, by actor class (to their
    last reading), and under ``"cpu_window"`` every role's CPU seconds (``machine``: all
    cores' busy seconds) from the first to the last version reported, with that window's
    wall ``seconds``: where the machine's time went while versions were made."""
    from engine.experiment import run_experiment

    sampler = CpuSampler()
    base: dict[int, tuple[str, float]] = {}
    end: dict[int, tuple[str, float]] = {}
    window = [0.0, 0.0]

    def on_progress(info: dict[str, Any]) -> None:
        if "version" not in info:
            return
        if not base:  # the loop has started
            base.update(sampler.latest)
            window[0] = time.perf_counter()
        end.clear()
        end.update(sampler.latest)
        window[1] = time.perf_counter()

    with sampler:
        result, _ = run_experiment(cfg, write=False, on_progress=on_progress)
    result["cpu"] = _cpu_by_role(base, sampler.latest)
    result["cpu_window"] = {**_cpu_by_role(base, end), "seconds": window[1] - window[0]}
    return result


def machine_shares(cpu_window: dict[str, float]) -> dict[str, float]:
    """Shares of all the machine's cores over a run's ``cpu_window``: the executors, the
    server actor, Ray's own processes (raylet, GCS), this driver, everything else (other
    Ray workers and agents, other programs) and idle; they add up to 1."""
    total = cpu_window["seconds"] * (os.cpu_count() or 1)
    roles = {
        "executors": cpu_window.get("Executor", 0.0),
        "server": cpu_window.get("Server", 0.0),
        "ray_system": cpu_window.get("raylet", 0.0) + cpu_window.get("gcs_server", 0.0),
        "driver": cpu_window.get("driver", 0.0),
    }
    busy = cpu_window.get("machine", float("nan"))
    shares = {k: v / total for k, v in roles.items()}
    shares["other"] = (busy - sum(roles.values())) / total
    shares["idle"] = 1.0 - busy / total
    return shares


SHARES = ("executors", "server", "ray_system", "driver", "other", "idle")  # machine_shares' keys


def shares_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Per setup, the median of its runs' ``machine_shares``, as a table with a heading."""
    rows = [
        [name, *(statistics.median(r["machine_shares"][k] for r in rs) for k in SHARES)]
        for name, rs in runs.items()
    ]
    return "where all cores went while versions were made (median shares, adding up to 1):\n" + table(
        ["setup", *SHARES], rows
    )


def _cpu_by_role(base: dict[int, tuple[str, float]], now: dict[int, tuple[str, float]]) -> dict[str, float]:
    cpu: dict[str, float] = {}
    for pid, (role, seconds) in now.items():
        cpu[role] = cpu.get(role, 0.0) + seconds - base.get(pid, (role, 0.0))[1]
    return cpu


MACHINE = -1  # CpuSampler's key for the whole machine's busy CPU seconds


class CpuSampler:
    """Polls /proc for the CPU time of this Ray session's worker processes (Linux only;
    empty elsewhere). ``latest``: pid -> (actor class, CPU seconds), as last seen, at most
    ``period`` old: actors are killed at the end of a run, so the last poll is what counts.
    Also Ray's own processes (roles ``raylet`` and ``gcs_server``), this driver (``driver``)
    and, under the key ``MACHINE``, every core's busy seconds (role ``machine``), so that a
    benchmark can say where the machine's time went besides the executors."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.latest: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._own: dict[int, str] = {os.getpid(): "driver"}
        try:
            import ray

            node: Any = ray._private.worker._global_node  # Ray internals: degrade to nothing
            self._raylet = int(node.all_processes["raylet"][0].process.pid)
            self._own[self._raylet] = "raylet"
            for info in node.all_processes.get("gcs_server", []):
                self._own[int(info.process.pid)] = "gcs_server"
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
                    role = self._own.get(int(pid), "")
                    if not role and int(fields[1]) == self._raylet:
                        with open(f"/proc/{pid}/cmdline") as f:
                            title = f.read().split("\0")[0]  # "ray::Executor.run" -> Executor
                        role = title.removeprefix("ray::").split(".")[0].split(" ")[0]
                except (OSError, IndexError, ValueError):
                    continue
                if not role:  # not ours, or exiting (its cmdline is gone): keep the last reading
                    continue
                self.latest[int(pid)] = (role, (int(fields[11]) + int(fields[12])) / tick)
            with open("/proc/stat") as f:  # cpu user nice system idle iowait irq softirq steal
                ticks = [int(x) for x in f.readline().split()[1:9]]
            self.latest[MACHINE] = ("machine", (sum(ticks) - ticks[3] - ticks[4]) / tick)


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
