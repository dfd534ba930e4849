"""The executor actor: long-lived, imports torch once, caches the dataset and one model.

It runs client jobs (several per call, to amortise Ray's per-call overhead) and
evaluations. Any executor can run any client: a job carries everything that is
client-specific (its task, its persistent client state, its keyed RNG seed), so the
result of a job does not depend on which executor ran it.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from algorithms import ALGORITHMS
from algorithms.base import LocalTraining, Task
from engine.rng import int_seed
from workloads import WORKLOADS, Dataset, DatasetMeta, ParamLayout

if TYPE_CHECKING:
    from algorithms.client import ClientData
    from engine.config import Config


@dataclass(frozen=True)
class ShardIndex:
    """Every client's training indices, flattened: client i owns
    ``indices[offsets[i]:offsets[i + 1]]``. One array pair instead of 10,000 small
    arrays keeps the object store and pickling cheap."""

    indices: np.ndarray
    offsets: np.ndarray

    @staticmethod
    def of(shards: list[np.ndarray]) -> ShardIndex:
        sizes = np.array([len(s) for s in shards], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = np.concatenate(shards).astype(np.int64) if shards else np.empty(0, np.int64)
        return ShardIndex(flat, offsets)

    def shard(self, client: int) -> np.ndarray:
        return self.indices[self.offsets[client] : self.offsets[client + 1]]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class ExecutorSpec:
    """What every executor of a run is built from."""

    algorithm: str
    algorithm_params: Any
    workload: str
    workload_params: Any
    training: LocalTraining
    seed: int
    num_cpus: float
    num_gpus: float
    eval_batch_size: int
    stack: int = 1

    @staticmethod
    def of(cfg: Config) -> ExecutorSpec:
        return ExecutorSpec(
            cfg.algorithm.name,
            cfg.algorithm.params,
            cfg.workload.name,
            cfg.workload.params,
            cfg.training,
            cfg.seed,
            cfg.executors.num_cpus,
            cfg.executors.num_gpus,
            cfg.eval.batch_size,
            cfg.executors.stack,
        )


@dataclass(frozen=True)
class JobSpec:
    uid: int
    client: int
    job_index: int  # the client's k-th job: keys its training randomness
    task: Task
    param_slot: int  # which of the call's parameter vectors this job starts from
    client_state: Any = None
    urgency: float = 0.0  # the job's earliest possible finish: executors run the most urgent first
    pad_until: float = 0.0  # wall mode: return no earlier than this wall time (minus upload)
    up_bytes_per_s: float = 0.0  # wall mode: to pad the upload of the real payload size
    stack: Stack | None = None  # trained together with the other jobs of this stack


@dataclass(frozen=True)
class Stack:
    """A job's place in a stack (engine/jobs.py ``assign_stacks``; algorithms/stacked.py)."""

    key: int  # the stack's id: its first job's uid, which also keys its dropout draws
    slot: int
    size: int  # slots in the stack (its jobs at dispatch; the same when some run again alone)
    width: int  # every minibatch of the stack is padded to this many examples


@dataclass(frozen=True)
class JobOutput:
    uid: int
    delta: np.ndarray
    num_samples: int
    bytes_up: int
    client_state: Any
    metrics: dict[str, float]


@ray.remote
class Executor:
    """Imports torch and picks its device; set up for a run at creation (``run``) or
    later with ``setup``. It can be set up again for another run: a sweep's next trial
    reuses the process, its torch import and its CUDA context (engine/tune.py)."""

    def __init__(self, num_cpus: float, num_gpus: float, *run: Any) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if num_gpus > 0 else "cpu")
        if self.device.type == "cuda":
            # A fractional GPU in Ray is only a scheduling label; cap memory for real.
            torch.cuda.set_per_process_memory_fraction(min(1.0, num_gpus), self.device)
        self._queue: list[
            tuple[float, int, JobSpec, np.ndarray, asyncio.Future[tuple[JobSpec, JobOutput]]]
        ] = []
        self._worker: asyncio.Future[None] | None = None
        if run:  # in the constructor, so that no call can come before it (unlike a method)
            self._setup(*run)

    async def setup(
        self, spec: ExecutorSpec, dataset: Dataset, shards: ShardIndex, local_test: ShardIndex | None = None
    ) -> dict[str, Any]:
        """Take on another run (see ``_setup``); the caller awaits it before any other call."""
        self._setup(spec, dataset, shards, local_test)
        return await self.ready()

    def _setup(
        self, spec: ExecutorSpec, dataset: Dataset, shards: ShardIndex, local_test: ShardIndex | None
    ) -> None:
        """A run's data, workload, algorithm and seeded model. Jobs a previous run left
        queued are dropped (that run is over)."""
        torch = self.torch
        for *_, fut in self._queue:
            fut.cancel()
        self._queue = []
        torch.set_num_threads(max(1, int(spec.num_cpus)))
        self.spec = spec
        self.dataset = dataset
        self.shards = shards
        self.workload = WORKLOADS[spec.workload](spec.workload_params)
        self.algorithm = ALGORITHMS[spec.algorithm](spec.algorithm_params, spec.training, shards.sizes)
        self.meta = DatasetMeta.of(dataset)
        torch.manual_seed(int_seed(spec.seed, "init"))
        self.model = self.workload.model(self.meta).to(self.device)
        self.layout = ParamLayout.of(self.model)
        self.local_test = local_test
        self._test: dict[str, tuple[Any, Any]] = {}  # evaluation sets as tensors, made on first use
        self._train_x = self._cache_on_device()

    async def ready(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": str(self.device),
        }

    async def initial_params(self) -> np.ndarray:
        """The seeded initial model (built in ``setup``, identical on every executor)."""
        return self.layout.flatten(self.model)

    async def run(self, jobs: list[JobSpec], *params: np.ndarray) -> AsyncIterator[list[JobOutput]]:
        """Queue ``jobs``; stream back the call's first finished job at once, the rest together.

        Jobs are computed most urgent first across all calls, so the job the server needs
        next does not wait behind jobs due much later; and it does not wait for the rest
        of its batch either. Two messages per call, not one per job, keeps Ray's cost per
        job low when many jobs travel together.
        """
        loop = asyncio.get_running_loop()
        futures = []
        for job in jobs:
            fut: asyncio.Future[tuple[JobSpec, JobOutput]] = loop.create_future()
            heapq.heappush(self._queue, (job.urgency, job.uid, job, params[job.param_slot], fut))
            futures.append(fut)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._work())
        pending = [asyncio.ensure_future(self._padded(f)) for f in futures]
        done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        yield [d.result() for d in done]
        if rest:
            yield list(await asyncio.gather(*rest))

    async def _padded(self, fut: asyncio.Future[tuple[JobSpec, JobOutput]]) -> JobOutput:
        job, out = await fut
        if job.pad_until > 0:
            # Wall-clock mode: the job lasts its (scaled) virtual duration for real.
            upload = out.bytes_up / job.up_bytes_per_s if job.up_bytes_per_s > 0 else 0.0
            delay = job.pad_until + upload - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        return out

    async def _work(self) -> None:
        while self._queue:
            entry = heapq.heappop(self._queue)
            batch = [entry]
            key = entry[2].stack.key if entry[2].stack is not None else None
            if key is not None:  # its stack mates queued here train with it
                batch += [e for e in self._queue if e[2].stack is not None and e[2].stack.key == key]
                taken = {id(e) for e in batch}
                self._queue = [e for e in self._queue if id(e) not in taken]
                heapq.heapify(self._queue)
            try:
                outs = self._run_stack(batch) if key is not None else [self._run_one(entry[2], entry[3])]
                for (*_, job, _start, fut), out in zip(batch, outs, strict=True):
                    fut.set_result((job, out))
            except Exception as e:  # surfaces in the run() calls that brought the jobs
                for *_, fut in batch:
                    fut.set_exception(e)
            await asyncio.sleep(0)  # let calls that arrived meanwhile queue their jobs

    def _cache_on_device(self) -> Any:
        """The training features as one tensor on the GPU, if they fit in half of this
        executor's memory share: a job then slices its shard on the device instead of
        copying it from host memory. On the CPU the uint8 arrays stay as they are (as
        floats they would take 4x the memory, in every executor)."""
        torch = self.torch
        if self.device.type != "cuda":
            return None
        x = self.dataset.x_train
        share = torch.cuda.get_device_properties(self.device).total_memory * min(1.0, self.spec.num_gpus)
        if 4 * x.size > share / 2:  # float32 features
            return None
        return self.workload.to_tensor(x).to(self.device)

    def _client_x(self, idx: np.ndarray) -> Any:
        if self._train_x is not None:
            return self._train_x[self.torch.from_numpy(idx).to(self.device)]
        return self.workload.to_tensor(self.dataset.x_train[idx]).to(self.device)

    def _client_data(self, job: JobSpec) -> tuple[ClientData, Any]:
        """The job's shard as tensors and its keyed training generator."""
        from algorithms.client import ClientData

        torch = self.torch
        idx = self.shards.shard(job.client)
        data = ClientData(
            x=self._client_x(idx),
            y=torch.from_numpy(np.asarray(self.dataset.y_train[idx], dtype=np.int64)).to(self.device),
            loss_fn=self.workload.loss,
            augment=self.workload.augment,
            losses_fn=self.workload.losses,
        )
        key = int_seed(self.spec.seed, "train", job.client, job.job_index)
        return data, torch.Generator().manual_seed(key)

    def _run_stack(self, batch: list[Any]) -> list[JobOutput]:
        """Jobs of one stack (all of it, or the part that is here), trained together in
        their slots (algorithms/stacked.py)."""
        from algorithms.stacked import stacked_rows, stacked_sgd

        first: JobSpec = batch[0][2]
        assert first.stack is not None
        slots: list[Any] = [None] * first.stack.size
        for *_, job, _start, _fut in batch:
            slots[job.stack.slot] = self._client_data(job)
        self.layout.load(self.model, batch[0][3])  # one start model: the stack shares its task
        self.torch.manual_seed(int_seed(self.spec.seed, "stack_global", first.stack.key))
        params, losses = stacked_sgd(self.model, slots, first.task, first.stack.width)
        rows = stacked_rows(self.model, self.layout.names, params).cpu().numpy()
        outs = []
        for *_, job, start, _fut in batch:
            delta = np.subtract(start, rows[job.stack.slot], dtype=np.float32)
            n = len(slots[job.stack.slot][0])  # the shard's size (ShardIndex.sizes diffs them all)
            metrics = {"train_loss": losses[job.stack.slot]}
            outs.append(JobOutput(job.uid, delta, n, int(delta.nbytes), job.client_state, metrics))
        return outs

    def _run_one(self, job: JobSpec, start: np.ndarray) -> JobOutput:
        torch = self.torch
        data, generator = self._client_data(job)
        self.layout.load(self.model, start)
        # Dropout draws from torch's global generator: key it per job too, so a result does
        # not depend on the jobs this executor happened to run before.
        torch.manual_seed(int_seed(self.spec.seed, "train_global", job.client, job.job_index))
        result = self.algorithm.client_update(self.model, data, job.task, job.client_state, generator)
        end = self.layout.flatten(self.model)
        delta = np.subtract(start, end, dtype=np.float32)
        return JobOutput(job.uid, delta, len(data), int(delta.nbytes), result.client_state, result.metrics)

    async def evaluate(self, params: np.ndarray) -> dict[str, float]:
        """Metrics of ``params`` on the global test set (accuracy, loss) and, with local
        test splits, on each client's (engine/evaluation.py)."""
        from engine.evaluation import global_metrics, local_metrics

        self.layout.load(self.model, params)
        self.model.eval()
        out = global_metrics(*self._scores("global"))
        if self.local_test is not None:
            out.update(local_metrics(*self._scores("local"), self.local_test.sizes))
        return out

    def _scores(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(correct, loss) of every example of one evaluation set, in order."""
        torch = self.torch
        if which not in self._test:
            ds = self.dataset
            x, y = (ds.x_test, ds.y_test) if which == "global" else self._local_test_arrays()
            y_t = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)
            self._test[which] = (self.workload.to_tensor(x).to(self.device), y_t)
        x, y = self._test[which]
        correct, losses, bs = [], [], self.spec.eval_batch_size
        with torch.no_grad():
            for i in range(0, len(y), bs):
                logits = self.model(x[i : i + bs])
                losses.append(self.workload.losses(logits, y[i : i + bs]).cpu())
                correct.append((logits.argmax(dim=1) == y[i : i + bs]).cpu())
        if not correct:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float32)
        return torch.cat(correct).numpy(), torch.cat(losses).numpy()

    def _local_test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.local_test is not None
        idx = self.local_test.indices
        return self.dataset.x_train[idx], self.dataset.y_train[idx]
