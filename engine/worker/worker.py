"""What an executor computes, without Ray: a run's data, workload, algorithm and one cached
model; client jobs (one at a time, or a stack trained together), server fine-tuning, and
evaluations. The Ray executor actor (engine/runtime/executor.py) and the in-process
backend (engine/worker/local.py) both run their jobs through a ``Worker``, so a job's
result depends only on its spec and start model, never on where it ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from algorithms import ALGORITHMS
from algorithms.attacks import EXECUTOR_ATTACKS, ByzantineConfig, attack_update, attacked_set, flip_labels
from algorithms.base import payload_bytes, skipped_upload
from algorithms.partial_sums import partial_sum
from algorithms.task import LocalTraining
from engine.core.backend import FINETUNE, SERVER, JobOutput, JobSpec
from engine.core.binding import bind_cut
from engine.core.rng import int_seed, stream
from engine.worker.data import GeneratedShards, RunData
from workloads import WORKLOADS, DatasetMeta, ParamLayout

if TYPE_CHECKING:
    from engine.config import Config
    from engine.worker.training import ClientData


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
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)  # clients.byzantine

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
            cfg.clients.byzantine,
        )


class Worker:
    """Imports torch and picks its device; ``setup`` gives it a run (again for each run:
    a sweep's next trial reuses the process, its torch import and its CUDA context)."""

    def __init__(self, num_gpus: float) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if num_gpus > 0 else "cpu")
        if self.device.type == "cuda":
            # A fractional GPU in Ray is only a scheduling label; cap memory for real.
            torch.cuda.set_per_process_memory_fraction(min(1.0, num_gpus), self.device)

    def setup(self, spec: ExecutorSpec, data: RunData) -> None:
        """A run's data, workload, algorithm and seeded model."""
        torch = self.torch
        torch.set_num_threads(max(1, int(spec.num_cpus)))
        self.spec = spec
        self.data = data
        self.dataset = data.dataset
        self.shards = data.shards
        self.workload = WORKLOADS[spec.workload](spec.workload_params)
        self.algorithm = ALGORITHMS[spec.algorithm](spec.algorithm_params, spec.training, data.shards.sizes)
        self.meta = DatasetMeta.of(self.dataset)
        bind_cut(self.algorithm, self.workload, self.meta, spec.seed)  # split learning's cut
        from engine.worker.training import seed_global

        seed_global(int_seed(spec.seed, "init"), torch.device("cpu"))  # built on the CPU, then moved
        self.model = self.workload.model(self.meta).to(self.device)
        self.layout = ParamLayout.of(self.model)
        # The run's Byzantine clients: one keyed draw, the same on every executor and in the loop.
        self.byzantine = attacked_set(spec.byzantine, len(data.shards.sizes), spec.seed)
        self.attack = spec.byzantine.attack_config()
        self._test: dict[str, tuple[Any, Any]] = {}  # evaluation sets as tensors, made on first use
        self._train_x = self._cache_on_device()
        self._finetuner: Any = None

    def initial_params(self) -> np.ndarray:
        """The seeded initial model (built in ``setup``, identical on every executor)."""
        return self.layout.flatten(self.model)

    def compute(self, batch: list[tuple[JobSpec, np.ndarray]]) -> list[JobOutput]:
        """Outputs of one job, or of one stack's jobs (all of it, or the part given here)."""
        job, start = batch[0]
        if job.stack is not None:
            return self._run_stack(batch)
        if job.kind == FINETUNE:
            return [self._finetune(job, start)]
        if job.kind == SERVER:
            return [self._server_update(job, start)]
        if job.group is not None:
            return self._run_group(batch)
        return [self._run_one(job, start)]

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
        from engine.worker.training import ClientData

        torch = self.torch
        if isinstance(self.shards, GeneratedShards):
            x_made, y = self.shards.examples(job.client)
            x = self.workload.to_tensor(x_made).to(self.device)
        else:
            idx = self.shards.shard(job.client)
            x, y = self._client_x(idx), np.asarray(self.dataset.y_train[idx], dtype=np.int64)
        if self.attack.name == "label_flip" and job.client in self.byzantine:
            y = flip_labels(y, self.meta.num_classes)  # a data-side attack: it trains on lies
        data = ClientData(
            x=x,
            y=torch.from_numpy(y).to(self.device),
            loss_fn=self.workload.loss,
            augment=self.workload.augment,
            losses_fn=self.workload.losses,
        )
        key = int_seed(self.spec.seed, "train", job.client, job.job_index)
        return data, torch.Generator().manual_seed(key)

    def _output(
        self, job: JobSpec, delta: np.ndarray, n: int, state: Any, metrics: dict[str, float]
    ) -> JobOutput:
        """The job's upload: its delta encoded by the algorithm (a keyed stream per job); a
        Byzantine client's delta is manipulated first (sign flip, scaling, Gaussian noise)."""
        if self.attack.name in EXECUTOR_ATTACKS and job.client in self.byzantine:
            noise = stream(self.spec.seed, "byzantine_noise", job.client, job.job_index)
            delta = attack_update(self.attack, delta, noise)
        rng = stream(self.spec.seed, "encode", job.client, job.job_index)
        payload, state = self.algorithm.encode(delta, state, rng)
        return JobOutput(job.uid, payload, n, payload_bytes(payload), state, metrics)

    def _receive(self, start: np.ndarray, purpose: str, *key: int) -> np.ndarray:
        """The start model as the client receives it (the algorithm's ``receive``: itself,
        or a compressed broadcast decoded, with a stream keyed by ``key``); the job's delta
        is taken against it."""
        return self.algorithm.receive(start, stream(self.spec.seed, purpose, *key))

    def _run_stack(self, batch: list[tuple[JobSpec, np.ndarray]]) -> list[JobOutput]:
        """Jobs of one stack trained together in their slots (engine/worker/stacked.py)."""
        from engine.worker.stacked import stacked_rows, stacked_sgd
        from engine.worker.training import seed_global

        first = batch[0][0]
        assert first.stack is not None
        slots: list[Any] = [None] * first.stack.size
        for job, _start in batch:
            assert job.stack is not None
            slots[job.stack.slot] = self._client_data(job)
        # One start model: the stack shares its task (and version), so it receives it once.
        received = self._receive(batch[0][1], "receive_stack", first.stack.key)
        self.layout.load(self.model, received)
        seed_global(int_seed(self.spec.seed, "stack_global", first.stack.key), self.device)
        params, losses = stacked_sgd(self.model, slots, first.task, first.stack.width)
        rows = stacked_rows(self.model, self.layout.names, params).cpu().numpy()
        outs = []
        for job, _start in batch:
            assert job.stack is not None
            delta = np.subtract(received, rows[job.stack.slot], dtype=np.float32)
            n = len(slots[job.stack.slot][0])  # the shard's size (ShardIndex.sizes diffs them all)
            outs.append(self._output(job, delta, n, job.client_state, {"train_loss": losses[job.stack.slot]}))
        return outs

    def _run_one(self, job: JobSpec, start: np.ndarray) -> JobOutput:
        from engine.worker.training import seed_global

        data, generator = self._client_data(job)
        start = self._receive(start, "receive", job.client, job.job_index)
        self.layout.load(self.model, start)
        # Dropout draws from torch's global generator: key it per job too, so a result does
        # not depend on the jobs this executor happened to run before.
        seed_global(int_seed(self.spec.seed, "train_global", job.client, job.job_index), self.device)
        result = self.algorithm.client_update(self.model, data, job.task, job.client_state, generator)
        end = self.layout.flatten(self.model)
        if not result.upload:  # the client keeps its update to itself (algorithms/cmfl.py)
            return JobOutput(job.uid, skipped_upload(), len(data), 0, result.client_state, result.metrics)
        delta = np.subtract(start, end, dtype=np.float32)
        out = self._output(job, delta, len(data), result.client_state, result.metrics)
        if not result.extra:
            return out
        return replace(out, bytes_up=out.bytes_up + payload_bytes(result.extra), extra=result.extra)

    def _run_group(self, batch: list[tuple[JobSpec, np.ndarray]]) -> list[JobOutput]:
        """Jobs of one sum group (all of it, or the part given here), each trained alone,
        their finite updates returned as one partial sum added in job-sequence order
        (algorithms/partial_sums.py). A non-finite update keeps its payload: the server
        rejects it as it would without partial sums."""
        group = batch[0][0].group
        assert group is not None
        outs: list[JobOutput] = []

        def summands() -> Iterator[tuple[int, np.ndarray, float]]:
            for job, start in sorted(batch, key=lambda b: b[0].uid):
                out = self._run_one(job, start)
                delta = self.algorithm.decode(out.payload, job.client)
                if not np.isfinite(delta).all():
                    outs.append(out)
                    continue
                outs.append(replace(out, payload={}))  # its delta lives on only in the sum
                yield job.client, delta, self.algorithm.summand_weight(out.num_samples)

        partial = partial_sum(group.key, summands())
        by_uid = {o.uid: o if o.payload else replace(o, partial=partial) for o in outs}
        return [by_uid[job.uid] for job, _start in batch]

    def _finetune(self, job: JobSpec, start: np.ndarray) -> JobOutput:
        """Server fine-tuning of an aggregate; ``job.job_index`` is the version it becomes."""
        from engine.worker.finetune import FineTuner

        if self._finetuner is None:
            idx = self.data.server_idx
            if idx is None:
                raise RuntimeError("a fine-tuning job reached a run without server examples")
            x, y = self.dataset.x_train[idx], self.dataset.y_train[idx]
            self._finetuner = FineTuner(self.workload, self.meta, x, y, self.spec.seed)
        model = self._finetuner(start, job.task, job.job_index)
        return JobOutput(job.uid, {"model": model}, 0, int(model.nbytes), None, {})

    def _server_update(self, job: JobSpec, start: np.ndarray) -> JobOutput:
        """The algorithm's own server work (``Algorithm.server_update``) from the job's model and
        inputs, keyed by the job's key so its result depends on nothing else."""
        from engine.worker.training import seed_global

        self.layout.load(self.model, start)
        seed_global(int_seed(self.spec.seed, "server_update_global", job.job_index), self.device)
        key = int_seed(self.spec.seed, "server_update", job.job_index)
        generator = self.torch.Generator().manual_seed(key)
        result = self.algorithm.server_update(self.model, job.client_state, job.job_index, generator)
        return JobOutput(job.uid, {"model": result}, 0, int(result.nbytes), None, {})

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        """Metrics of ``params`` on the global test set (accuracy, loss) and, with local
        test splits, on each client's (engine/core/evaluation.py)."""
        from engine.core.evaluation import global_metrics, local_metrics

        self.layout.load(self.model, params)
        self.model.eval()
        out = global_metrics(*self._scores("global"))
        if self.data.local_test is not None:
            out.update(local_metrics(*self._scores("local"), self.data.local_test.sizes))
        return out

    def _scores(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(correct, loss) of every example of one evaluation set, in order."""
        torch = self.torch
        if which not in self._test:
            ds = self.dataset
            if which == "global":
                x, y = ds.x_test, ds.y_test
            else:
                assert self.data.local_test is not None
                idx = self.data.local_test.indices
                x, y = ds.x_train[idx], ds.y_train[idx]
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
