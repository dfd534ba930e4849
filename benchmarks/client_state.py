"""Client state off the server's heap: 10,000 clients each keeping 1,000,000 float32 of
state (40 GB in all, more than this machine's 24 GB of memory) with
``server.client_state=disk``, on the in-process backend (so the driver is the server
process whose memory is measured).

The algorithm is FedAvg whose clients also keep a state as large as a 4 MB residual
(each job adds one to it: the state must be read back, changed and stored), with rounds
that walk through the clients in order, 100 at a time, so that every client holds a
state after the first pass. A second, shorter pass reads states back. Reported: the
server process's peak resident memory (``ru_maxrss``), the bytes of state on disk, and
the wall time per job against the same run with no client state.

    python -m benchmarks.client_state            # 10,000 clients x 4 MB (about 5 minutes)
    python -m benchmarks.client_state --quick    # 300 clients x 4 MB
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from algorithms import ALGORITHMS
from algorithms.base import ClientResult, Job
from algorithms.fedavg import FedAvg, FedAvgState
from algorithms.idle import IdleClients
from benchmarks._common import config, parse_args, table, write_json

STATE_FLOATS = 1_000_000


class FedAvgWithState(FedAvg):
    """FedAvg whose rounds take the clients in id order, and whose clients keep a
    ``STATE_FLOATS`` state between their jobs (or none, with ``state=False``)."""

    name: ClassVar[str] = "fedavg_state"
    keep_state: ClassVar[bool] = True

    def jobs(
        self, state: FedAvgState, now: float, idle: IdleClients, rng: Any
    ) -> tuple[FedAvgState, list[Job]]:
        if state.pending or state.aggregating is not None:
            return state, []
        k = self.params.clients_per_round
        start = (state.version * k) % self.num_clients
        chosen = [c for c in range(start, start + k) if c in idle]
        jobs = [Job(c, self.task_for(c)) for c in chosen]
        return replace(state, pending=tuple(sorted(chosen)), quorum=len(chosen), round_start=now), jobs

    def client_update(
        self, model: Any, data: Any, task: Any, client_state: Any, generator: Any
    ) -> ClientResult:
        result = super().client_update(model, data, task, client_state, generator)
        if not self.keep_state:
            return result
        held = np.zeros(STATE_FLOATS, dtype=np.float32) if client_state is None else client_state
        return ClientResult(client_state=held + np.float32(1), metrics=result.metrics)


class FedAvgNoState(FedAvgWithState):
    name: ClassVar[str] = "fedavg_nostate"
    keep_state: ClassVar[bool] = False


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def one_run(name: str, clients: int, rounds: int, folder: str) -> dict[str, float]:
    from engine.experiment import run_experiment

    cfg = config(
        f"algorithm.name={name}",
        "algorithm.clients_per_round=100",
        f"clients.num={clients}",
        "workload.name=synthetic",
        "workload.max_samples=100",  # small shards: what is measured is the clients' state
        "training.local_steps=1",
        "training.batch_size=10",
        f"stop.max_versions={rounds}",
        f"eval.every={rounds}",
        "executors.backend=local",
        "server.client_state=disk",
        f"server.client_state_dir={folder}",
    )
    t0 = time.perf_counter()
    result, _ = run_experiment(cfg, write=False)
    wall = time.perf_counter() - t0
    jobs = result["summary"]["updates_applied"]
    files = list(Path(folder).glob("*.npy"))
    return {
        "jobs": jobs,
        "wall_seconds": wall,
        "ms_per_job": 1000 * wall / jobs,
        "state_files": len(files),
        "state_gb": sum(f.stat().st_size for f in files) / 1e9,
    }


def main() -> None:
    args = parse_args(__doc__ or "", repeats=1)
    clients = 300 if args.quick else 10_000
    rounds = clients // 100 + clients // 1000  # one pass, then a tenth of a second pass
    ALGORITHMS[FedAvgWithState.name] = FedAvgWithState
    ALGORITHMS[FedAvgNoState.name] = FedAvgNoState
    base = tempfile.mkdtemp(prefix="fedray-bench-state-", dir="/var/tmp")
    try:
        one_run(FedAvgNoState.name, 200, 2, f"{base}/warm")  # first use of torch and the data
        plain = one_run(FedAvgNoState.name, clients, rounds, f"{base}/none")
        before = peak_rss_gb()
        held = one_run(FedAvgWithState.name, clients, rounds, f"{base}/state")
        peak = peak_rss_gb()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    per_job = held["ms_per_job"] - plain["ms_per_job"]
    print(
        table(
            ["run", "jobs", "wall s", "ms/job", "state files", "state GB"],
            [
                ["no client state", plain["jobs"], plain["wall_seconds"], plain["ms_per_job"], 0, 0.0],
                [
                    "4 MB state per client, on disk",
                    held["jobs"],
                    held["wall_seconds"],
                    held["ms_per_job"],
                    held["state_files"],
                    held["state_gb"],
                ],
            ],
        )
    )
    print(f"\nserver (driver) peak resident memory: {peak:.2f} GB; state cost per job: {per_job:.1f} ms")
    write_json(
        "client_state_quick" if args.quick else "client_state",
        {
            "clients": clients,
            "state_floats": STATE_FLOATS,
            "rounds": rounds,
            "no_state": plain,
            "disk_state": held,
            "peak_rss_gb": peak,
            "peak_rss_gb_without_state": before,
            "state_ms_per_job": per_job,
        },
        skip=args.no_write,
    )


if __name__ == "__main__":
    main()
