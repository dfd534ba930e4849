"""The fixed sections of the experiment configuration (engine/config.py assembles them):
one frozen dataclass per component, each validating its own fields in one line per error.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any

from algorithms.base import ServerCost, Task


def _check(ok: object, message: str) -> None:
    if not ok:
        raise ValueError(message)


BACKENDS = ("ray", "local")
CLIENT_STATE_STORES = ("memory", "disk")


@dataclass(frozen=True)
class ExecutorsConfig:
    # ray: executor actors on the local Ray or a cluster; local: the jobs run in this process
    # (no Ray started: notebooks, debuggers, small runs), with identical results.
    backend: str = "ray"
    num: int = 0  # 0: as many as the cluster's CPUs allow (cluster CPUs // num_cpus)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_batch: int = 16  # most jobs sent to one executor in one call (amortises Ray overhead)
    # > 1: jobs of one dispatch with the same task train together, this many at a time, as
    # one vmapped computation (engine/worker/stacked.py); models of linear layers only.
    stack: int = 1
    # > 0: jobs of one dispatch (a FedAvg round), this many at a time in dispatch order, are
    # summed on one executor, which returns one partial sum instead of each update
    # (algorithms/partial_sums.py); the server adds a few sums. 0: every update comes back.
    partial_sums: int = 0
    # Ray backend: about this many seconds of work (at its measured pace) wait on each
    # executor; the other jobs wait on the server for whichever executor frees up first, so
    # a slower executor does not set a round's length (engine/core/late_binding.py). 0:
    # every job is sent as soon as it is dispatched, bound to an executor by count.
    queue_seconds: float = 0.5

    def __post_init__(self) -> None:
        _check(
            self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})"
        )
        _check(self.num >= 0, f"num must be >= 0, 0 meaning one per CPU (got {self.num})")
        _check(self.num_cpus > 0, f"num_cpus must be > 0 (got {self.num_cpus})")
        _check(self.num_gpus >= 0, f"num_gpus must be >= 0 (got {self.num_gpus})")
        _check(self.max_batch >= 1, f"max_batch must be >= 1 (got {self.max_batch})")
        _check(self.stack >= 1, f"stack must be >= 1, 1 meaning one job at a time (got {self.stack})")
        _check(self.partial_sums >= 0, f"partial_sums must be >= 0, 0 meaning off (got {self.partial_sums})")
        _check(
            self.queue_seconds >= 0,
            f"queue_seconds must be >= 0, 0 meaning every job is sent at once (got {self.queue_seconds})",
        )


@dataclass(frozen=True)
class ServerConfig:
    # The server mostly awaits; its aggregation is vector math. 0 keeps every core for executors.
    num_cpus: float = 0.0
    # The simulated server's compute time per aggregation (virtual seconds; see ServerCost).
    seconds_per_aggregation: float = 0.0
    seconds_per_update: float = 0.0
    seconds_per_mb: float = 0.0
    # Split learning: seconds per example through the whole model, forward and backward, on
    # the server; the server's part of a split model costs its share of the FLOPs.
    seconds_per_sample: float = 0.0
    # Optional fine-tuning of every aggregate: `steps` SGD steps on a server dataset of
    # `data_samples` training examples held out from the clients (engine/worker/finetune.py).
    steps: int = 0
    data_samples: int = 500
    lr: float = 0.05
    batch_size: int = 32  # 0 means full batch
    seconds_per_step: float = 0.0  # fine-tuning's virtual time: steps * seconds_per_step
    # Server work (aggregation time, fine-tuning) runs on this many server slots at once:
    # 1 = one server that work queues for; 0 = unbounded (engine/core/server_queue.py).
    capacity: int = 1
    # Where per-client state lives between jobs: memory (a dict on the server) or disk
    # (one file per client under client_state_dir; "" = a temporary folder): see
    # engine/core/client_states.py.
    client_state: str = "memory"
    client_state_dir: str = ""

    def __post_init__(self) -> None:
        _check(self.num_cpus >= 0, f"num_cpus must be >= 0 (got {self.num_cpus})")
        _check(self.steps >= 0, f"steps must be >= 0 (got {self.steps})")
        _check(self.data_samples >= 1, f"data_samples must be >= 1 (got {self.data_samples})")
        _check(self.lr > 0, f"lr must be > 0 (got {self.lr})")
        _check(self.batch_size >= 0, f"batch_size must be >= 0 (got {self.batch_size})")
        _check(self.capacity >= 0, f"capacity must be >= 0, 0 meaning unbounded (got {self.capacity})")
        _check(
            self.client_state in CLIENT_STATE_STORES,
            f"client_state must be one of {', '.join(CLIENT_STATE_STORES)} (got {self.client_state!r})",
        )
        self.cost  # noqa: B018 -- validates the cost fields

    @property
    def cost(self) -> ServerCost:
        return ServerCost(
            self.seconds_per_aggregation,
            self.seconds_per_update,
            self.seconds_per_mb,
            self.steps * self.seconds_per_step,
            finetune=self.steps > 0,
            seconds_per_sample=self.seconds_per_sample,
        )

    @property
    def finetune_task(self) -> Task:
        """What fine-tuning an aggregate computes on the server's examples."""
        return Task(steps=self.steps, batch_size=self.batch_size, lr=self.lr)


@dataclass(frozen=True)
class ClockConfig:
    mode: str = "virtual"  # virtual: simulated time, deterministic; wall: real sleeps, for demos
    wall_scale: float = 0.01  # wall mode: real seconds slept per virtual second

    def __post_init__(self) -> None:
        _check(self.mode in ("virtual", "wall"), f"mode must be 'virtual' or 'wall' (got {self.mode!r})")
        _check(self.wall_scale > 0, f"wall_scale must be > 0 (got {self.wall_scale})")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 5  # evaluate every N-th global version (the first and last always)
    batch_size: int = 1024
    # > 0: every client keeps floor(fraction * shard) of its examples as a local test split
    # (not trained on), and evaluations also score the model on each client's split
    # (local_accuracy, local_accuracy_p10, local_loss: engine/core/evaluation.py).
    local_test_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check(self.every >= 1, f"every must be >= 1 (got {self.every})")
        _check(self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})")
        _check(
            0 <= self.local_test_fraction < 1,
            f"local_test_fraction must be in [0, 1), e.g. 0.2 (got {self.local_test_fraction})",
        )


@dataclass(frozen=True)
class StopConfig:
    max_versions: int = 100  # global model versions (server updates); 0 = no limit
    max_sim_time: float = 0.0  # virtual seconds; 0 = no limit
    target_accuracy: float = 0.0  # stop at the first evaluated version reaching it; 0 = off
    # Total bytes up + down; the run ends after the version (round) that crosses it; 0 = no limit.
    max_bytes: float = 0.0
    # Stop before a release would spend more than this epsilon (algorithm.privacy, at its
    # delta), so no model beyond the budget is published; 0 = no budget.
    max_epsilon: float = 0.0

    def __post_init__(self) -> None:
        _check(self.max_versions >= 0, f"max_versions must be >= 0 (got {self.max_versions})")
        _check(self.max_sim_time >= 0, f"max_sim_time must be >= 0 (got {self.max_sim_time})")
        _check(
            0 <= self.target_accuracy <= 1, f"target_accuracy must be in [0, 1] (got {self.target_accuracy})"
        )
        _check(self.max_bytes >= 0, f"max_bytes must be >= 0 (got {self.max_bytes})")
        _check(
            0 <= self.max_epsilon < math.inf,  # NaN fails too
            f"max_epsilon must be >= 0 and finite, 0 for no budget (got {self.max_epsilon})",
        )
        _check(
            self.max_versions or self.max_sim_time or self.max_bytes or self.max_epsilon,
            "max_versions, max_sim_time, max_bytes or max_epsilon: set at least one limit so the run ends",
        )


@dataclass(frozen=True)
class CheckpointConfig:
    # Snapshot the server every this many versions (0 = never), at an evaluated version:
    # a multiple of eval.every. Consumers (Tune) get it with that evaluation's row.
    every: int = 0

    def __post_init__(self) -> None:
        _check(self.every >= 0, f"every must be >= 0 (got {self.every})")


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "": start a local Ray; "auto": attach to a running cluster; or host:port
    num_cpus: int = 0  # local Ray only: CPUs to use (0 = all)
    # Ray's runtime environment, given when fedray starts or attaches to Ray: how plug-ins
    # (engine/core/registry.py) reach other nodes. working_dir ships a folder (the server
    # and executors run in a copy of it); py_modules ships packages by their local paths.
    working_dir: str = ""
    py_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.num_cpus >= 0, f"num_cpus must be >= 0 (got {self.num_cpus})")

    @property
    def runtime_env(self) -> dict[str, Any] | None:
        env: dict[str, Any] = {}
        if self.working_dir:
            env["working_dir"] = self.working_dir
        if self.py_modules:
            env["py_modules"] = list(self.py_modules)
        return env or None


# What each tracker writes with, and the extra that installs it (pyproject.toml).
TRACKERS = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
WANDB_MODES = ("offline", "online", "disabled")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module set to None in sys.modules
        return False


@dataclass(frozen=True)
class TrackConfig:
    """Optional experiment tracking (engine/report/tracking.py), each tool off unless asked
    for: the resolved config, every evaluation row at step = version, the final summary.
    A sweep logs through Ray Tune's own callbacks for the same tools instead (engine/tune.py)."""

    tensorboard: bool = False
    tensorboard_dir: str = ""  # "" = <out_dir>/tensorboard; else a log folder shared by runs: <dir>/<run>
    mlflow: bool = False
    mlflow_uri: str = ""  # "" = a local file store, file:<out_dir>/mlruns; or http://host:5000, sqlite:///...
    mlflow_experiment: str = "fedray"
    wandb: bool = False
    wandb_project: str = "fedray"
    wandb_mode: str = "offline"  # offline: nothing leaves the machine (`wandb sync` later); online; disabled

    def __post_init__(self) -> None:
        _check(
            self.wandb_mode in WANDB_MODES,
            f"wandb_mode must be one of {', '.join(WANDB_MODES)} (got {self.wandb_mode!r})",
        )
        _check(self.mlflow_experiment, "mlflow_experiment must name an experiment (got '')")
        _check(self.wandb_project, "wandb_project must name a project (got '')")
        for tool, module in TRACKERS.items():
            _check(
                not getattr(self, tool) or _installed(module),
                f'{tool}=true needs the {module} package: pip install -e ".[{tool}]"',
            )

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow or self.wandb
