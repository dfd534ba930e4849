"""The plain PyTorch baseline of the throughput benchmarks (efficiency.py, pfl_cifar.py):
the same model class and images as the engine's run, SGD at the same batch size, no Ray,
no federation; in one process, or as two 1-thread processes side by side."""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Any

from workloads.base import Workload


@dataclass(frozen=True)
class PlainLoop:
    """``steps`` SGD steps on ``workload``'s data for ``num_clients`` (as the engine loads
    it: same generator, same seed), at ``batch``, after 10 warm-up steps."""

    workload: Workload
    num_clients: int
    batch: int
    lr: float
    seed: int = 0

    def seconds(self, steps: int, threads: int, barrier: Any = None) -> float:
        import torch

        from workloads import DatasetMeta

        torch.set_num_threads(threads)
        ds = self.workload.load(self.num_clients, self.seed)
        torch.manual_seed(self.seed)
        model = self.workload.model(DatasetMeta.of(ds))
        x, y = self.workload.to_tensor(ds.x_train), torch.from_numpy(ds.y_train)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        model.train()

        def train(n: int) -> None:
            batches: list[Any] = []
            for _ in range(n):
                if not batches:
                    batches = list(torch.randperm(len(y), generator=gen).split(self.batch))[::-1]
                idx = batches.pop()
                opt.zero_grad(set_to_none=True)
                self.workload.loss(model(x[idx]), y[idx]).backward()
                opt.step()

        train(10)
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        train(steps)
        return time.perf_counter() - t0

    def samples_per_s(self, steps: int, threads: int) -> float:
        return steps * self.batch / self.seconds(steps, threads)

    def two_processes_samples_per_s(self, steps: int) -> float:
        """Two 1-thread loops side by side, each doing half the steps, started together."""
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(self, steps // 2, barrier, out)) for _ in range(2)]
        for p in procs:
            p.start()
        seconds = max(out.get() for _ in procs)
        for p in procs:
            p.join()
        return 2 * (steps // 2) * self.batch / seconds


def _worker(loop: PlainLoop, steps: int, barrier: Any, out: Any) -> None:
    out.put(loop.seconds(steps, 1, barrier))
