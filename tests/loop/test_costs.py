"""Whole in-process runs (executors.backend=local, no Ray) of algorithms defined here, whose
jobs state their own cost, whose uploads are encoded, whose aggregations queue on the
server, or who keep a state per client: events against durations and bytes computed by
hand from constant speeds and a fixed network."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from algorithms import ALGORITHMS
from algorithms.base import Algorithm, ClientResult, Job, JobCost, Payload, ServerJob, Task, Update
from algorithms.fedbuff import FedBuff, FedBuffState
from algorithms.idle import IdleClients
from engine.config import Config
from engine.core.recorder import EVENTS_COLUMNS
from engine.experiment import run_experiment
from engine.worker.data import load_data
from tests import conftest

LATENCY = 0.05
UP = 1e6  # bytes/s: up_mbps 8
DOWN = 2e6  # bytes/s: down_mbps 16
SPS = 0.001  # seconds per sample
FIXED = (
    "clients.speed.family=constant",
    f"clients.speed.seconds_per_sample={SPS}",
    "clients.speed.jitter=0",
    f"clients.network.latency={LATENCY}",
    "clients.network.up_mbps=8",
    "clients.network.down_mbps=16",
    "clients.network.sigma=0",
)


def tiny(*overrides: str) -> Config:
    return conftest.tiny("executors.backend=local", *FIXED, *overrides)


def run(cfg: Config) -> dict[str, Any]:
    return run_experiment(cfg, write=False)[0]


def register(monkeypatch: pytest.MonkeyPatch, cls: type[Algorithm]) -> None:
    monkeypatch.setitem(ALGORITHMS, cls.name, cls)


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(EVENTS_COLUMNS, e, strict=True)) for e in result["events"]]


def curve(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The metrics but their wall times."""
    return [(m["version"], m["sim_time"], m["accuracy"], m["loss"], m["bytes_up"]) for m in result["metrics"]]


def samples(cfg: Config) -> np.ndarray:
    """Examples one job of each client processes (every task here is the default one)."""
    sizes = load_data(cfg).shards.sizes
    task = Task(cfg.training.local_steps, cfg.training.batch_size, cfg.training.lr)
    return np.array([task.samples(int(n)) for n in sizes])


# ---- a job's own cost ------------------------------------------------------------------------

COST = JobCost(
    bytes_down=1000,
    bytes_up=1500,
    compute_fraction=0.5,
    round_trips=2,
    round_trip_bytes_up=300,
    round_trip_bytes_down=400,
    server_seconds=0.125,
)


class CostlyFedBuff(FedBuff):
    """FedBuff whose every job states ``COST`` (a split-learning-like exchange)."""

    name: ClassVar[str] = "test_costly"

    def jobs(
        self, state: FedBuffState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedBuffState, list[Job]]:
        state, jobs = super().jobs(state, now, idle, rng)
        return state, [replace(j, cost=COST) for j in jobs]


def test_a_stated_job_cost_is_charged_in_bytes_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, CostlyFedBuff)
    cfg = tiny("algorithm.name=test_costly", "stop.max_versions=6")
    result = run(cfg)
    events, n = rows(result), samples(cfg)
    assert result["summary"]["versions"] == 6 and len(events) >= 30
    # Up: the fixed upload plus each exchange's share; down: likewise (not the model).
    assert {(e["bytes_up"], e["bytes_down"]) for e in events} == {(1500 + 2 * 300, 1000 + 2 * 400)}
    assert result["summary"]["bytes_up"] == 2100 * len(events)
    download = LATENCY + 1000 / DOWN  # 0.0505
    exchange = 0.125 + 2 * (2 * LATENCY + 300 / UP + 400 / DOWN)  # 0.125 + 2 * 0.1005
    upload = LATENCY + 1500 / UP  # 0.0515
    for e in events:
        compute = n[e["client"]] * SPS * 0.5
        took = download + compute + exchange + upload
        assert e["finish_time"] - e["dispatch_time"] == pytest.approx(took, abs=1e-12)
        assert took == pytest.approx(0.428 + compute, abs=1e-12)


# ---- an encoded upload -------------------------------------------------------------------------


class HalfFedBuff(FedBuff):
    """FedBuff that uploads its delta in half precision."""

    name: ClassVar[str] = "test_half"

    def encode(self, delta: np.ndarray, client_state: Any, rng: np.random.Generator) -> tuple[Payload, Any]:
        return {"delta16": delta.astype(np.float16)}, client_state

    def decode(self, payload: Payload, client: int) -> np.ndarray:
        return payload["delta16"].astype(np.float32)


def test_a_half_precision_upload_is_half_the_bytes_and_still_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, HalfFedBuff)
    cfg = tiny("algorithm.name=test_half")
    result = run(cfg)
    events, n = rows(result), samples(cfg)
    model_bytes = result["model"].nbytes
    assert model_bytes == 4 * result["model"].size and result["model"].dtype == np.float32
    assert {(e["bytes_up"], e["bytes_down"]) for e in events} == {(model_bytes // 2, model_bytes)}
    for e in events:  # the upload takes the time of the bytes really sent
        took = (LATENCY + model_bytes / DOWN) + n[e["client"]] * SPS + (LATENCY + model_bytes / 2 / UP)
        assert e["finish_time"] - e["dispatch_time"] == pytest.approx(took, abs=1e-12)
    losses = [m["loss"] for m in result["metrics"]]
    assert result["summary"]["versions"] == 12 and losses[-1] < 0.7 * losses[0]
    again = run(cfg)
    assert again["events"] == result["events"]
    np.testing.assert_array_equal(again["model"], result["model"])
    assert curve(again) == curve(result)


# ---- the server queue ------------------------------------------------------------------------


def test_fedavg_aggregations_never_overlap_so_capacity_does_not_matter() -> None:
    common = ("algorithm.name=fedavg", "algorithm.clients_per_round=4", "server.seconds_per_aggregation=0.5")
    common += ("stop.max_versions=5", "eval.every=1")
    one, unbounded = run(tiny(*common, "server.capacity=1")), run(tiny(*common, "server.capacity=0"))
    assert one["events"] == unbounded["events"]
    np.testing.assert_array_equal(one["model"], unbounded["model"])
    times = [(m["version"], m["sim_time"]) for m in one["metrics"]]
    assert times == [(m["version"], m["sim_time"]) for m in unbounded["metrics"]]
    # Each round's version appears 0.5 s after its last arrival; the next round starts then.
    events = rows(one)
    for version, at in times[1:]:
        last = max(e["finish_time"] for e in events if e["version_start"] == version - 1)
        assert at == last + 0.5
        if version < 5:  # the stop comes with version 5: its round was never dispatched
            assert {e["dispatch_time"] for e in events if e["version_start"] == version} == {at}
    assert one["summary"]["algorithm_stats"]["server_queue_seconds"] == 5 * 0.5


SERVER_SECONDS = 0.05


@dataclass(frozen=True, eq=False)
class QueuedState(FedBuffState):
    outbox: tuple[ServerJob, ...] = ()


class QueuedFedBuff(FedBuff):
    """FedBuff whose every flush is published by a server job of ``SERVER_SECONDS``: with
    ``buffer_size`` 1 and clients arriving faster than that, the server jobs overlap."""

    name: ClassVar[str] = "test_queued"
    models_server_time: ClassVar[bool] = True

    def init(self, model: np.ndarray) -> QueuedState:
        return QueuedState(model=np.array(model, dtype=np.float32))

    def on_update(self, state: FedBuffState, update: Update, now: float) -> FedBuffState:
        assert isinstance(state, QueuedState)
        new = super().on_update(state, update, now)
        if new.version == state.version:
            return new
        job = ServerJob(new.applied, SERVER_SECONDS, new.model)  # published when it ends
        return replace(new, model=state.model, version=state.version, outbox=(*state.outbox, job))

    def server_jobs(self, state: FedBuffState) -> tuple[FedBuffState, list[ServerJob]]:
        assert isinstance(state, QueuedState)
        return replace(state, outbox=()), list(state.outbox)

    def on_server_job(
        self, state: FedBuffState, job: ServerJob, model: np.ndarray, now: float
    ) -> FedBuffState:
        return replace(state, model=model, version=state.version + 1)


def test_overlapping_server_work_queues_at_capacity_one_and_not_at_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(monkeypatch, QueuedFedBuff)
    common = ("algorithm.name=test_queued", "algorithm.buffer_size=1", "stop.max_versions=8", "eval.every=1")
    published = {}
    for capacity in (1, 0):
        result = run(tiny(*common, f"server.capacity={capacity}"))
        # Every update is its own flush; its server job arrives when the update does.
        arrivals = [e["finish_time"] for e in rows(result) if not e["dropped"]][:8]
        expected, free = [], 0.0
        for t in arrivals:
            start = max(t, free) if capacity == 1 else t
            free = start + SERVER_SECONDS
            expected.append(free)
        times = [m["sim_time"] for m in result["metrics"]]
        assert [m["version"] for m in result["metrics"]] == list(range(9))
        assert times[1:] == pytest.approx(expected, abs=1e-12)
        published[capacity] = times[1:]
    # Clients arrive faster than the server works: one server falls behind, unbounded never.
    assert published[1][-1] > published[0][-1] + SERVER_SECONDS
    assert published[1][-1] >= 8 * SERVER_SECONDS


# ---- client state ------------------------------------------------------------------------------


class CountingFedBuff(FedBuff):
    """FedBuff whose clients count their jobs in a client state (an int64 array of one),
    and upload the count beside the delta (``decode`` ignores it)."""

    name: ClassVar[str] = "test_counting"

    def client_update(
        self, model: Any, data: Any, task: Task, client_state: Any, generator: Any
    ) -> ClientResult:
        trained = super().client_update(model, data, task, client_state, generator)
        done = np.zeros(1, dtype=np.int64) if client_state is None else client_state
        return ClientResult(done + 1, trained.metrics)  # a new array: the stored one is never changed

    def encode(self, delta: np.ndarray, client_state: Any, rng: np.random.Generator) -> tuple[Payload, Any]:
        return {"delta": delta, "jobs": client_state}, client_state


def test_client_states_on_disk_give_the_same_run_as_in_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    register(monkeypatch, CountingFedBuff)
    common = ("algorithm.name=test_counting", "stop.max_versions=6")
    folder = tmp_path / "states"
    memory = run(tiny(*common, "server.client_state=memory"))
    disk = run(tiny(*common, "server.client_state=disk", f"server.client_state_dir={folder}"))
    assert disk["events"] == memory["events"]
    np.testing.assert_array_equal(disk["model"], memory["model"])
    events = rows(memory)
    assert {e["bytes_up"] for e in events} == {memory["model"].nbytes + 8}  # the delta and the count
    # The folder was given, so it is kept: each client's file holds the jobs it finished.
    finished = np.bincount([e["client"] for e in events if not e["dropped"]], minlength=12)
    assert finished.sum() == len(events) and (finished > 0).all()
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{c}.npy" for c in range(12))
    for c in range(12):
        state = np.load(folder / f"{c}.npy", allow_pickle=False)
        assert state.dtype == np.int64 and state.tolist() == [finished[c]]
    # No job was lost, so a client's finished jobs are its first ones: 0, 1, ...
    for c in range(12):
        assert sorted(e["job"] for e in events if e["client"] == c) == list(range(finished[c]))
