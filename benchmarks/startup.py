"""Whole-process time of a small experiment, as a user meets it: ``python -m engine.run``
from interpreter start to exit, results written, on each backend.

The probe is issue 15's: FedAvg, 10 clients of 512 examples (synthetic workload,
logistic regression), one epoch at batch 32, all 10 per round, 5 rounds. Flower's
simulation of the same shape took about 18 s on this machine; the target is 0.3x that
with the in-process backend. Each run is a fresh subprocess writing a fresh folder; the
run's own ``setup_seconds`` and ``wall_time`` split the time into start-up and loop.

    python -m benchmarks.startup [--quick] [--repeats N]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import parse_args, table, write_json

FLOWER_SECONDS = 18.0  # issue 15's figure for Flower's simulation of the probe
PROBE = (
    "workload.name=synthetic",
    "clients.num=10",
    "workload.samples_per_client=640",  # test_fraction 0.2: 512 training examples each
    "algorithm.name=fedavg",
    "algorithm.clients_per_round=10",
    "training.epochs=1",
    "training.batch_size=32",
    "stop.max_versions=5",
)


def whole_process(backend: str, folder: Path) -> dict[str, float]:
    out = folder / f"run-{backend}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "engine.run", *PROBE, f"executors.backend={backend}", f"out_dir={out}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {
        "total": total,
        "setup": float(summary["setup_seconds"]),
        "loop": float(summary["wall_time"]) - float(summary["setup_seconds"]),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="fedray-startup-") as tmp:
        for backend in ("local", "ray"):
            runs = [whole_process(backend, Path(tmp)) for _ in range(args.repeats)]
            totals = [r["total"] for r in runs]
            med = statistics.median(totals)
            figures[backend] = {"runs": runs, "median_total": med}
            rows.append(
                [
                    backend,
                    med,
                    f"{min(totals):.2f}-{max(totals):.2f}",
                    statistics.median(r["setup"] for r in runs),
                    statistics.median(r["loop"] for r in runs),
                    med / FLOWER_SECONDS,
                ]
            )
    headers = ["backend", "whole process (s)", "range", "start-up (s)", "loop (s)", "x Flower's 18 s"]
    print(table(headers, rows))
    write_json("startup", {"probe": list(PROBE), "flower_seconds": FLOWER_SECONDS, **figures}, args.no_write)


if __name__ == "__main__":
    main()
