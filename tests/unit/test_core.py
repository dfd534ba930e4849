"""The loop's building blocks, against values computed by hand: the server queue, the
client-state stores, and what dispatching a job costs (``JobCost`` and the delay model)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from algorithms.base import Job, JobCost, Task, payload_bytes
from engine.config import load_config
from engine.core import dispatch
from engine.core.client_states import DiskStates, MemoryStates, client_states
from engine.core.clock import EventQueue
from engine.core.delays import ClientsConfig, DelayModel, NetworkConfig, SpeedConfig
from engine.core.jobs import JobTable, VersionStore
from engine.core.recorder import RunRecorder
from engine.core.server_queue import ServerQueue
from engine.core.state import LoopState

# ---- the server queue ------------------------------------------------------------------------


def test_capacity_one_serves_work_one_at_a_time_in_submission_order() -> None:
    q = ServerQueue(capacity=1)
    # 0.5 arrives while the first runs (until 2) and waits; 3 finds the server free again.
    assert [q.schedule(0.0, 2.0), q.schedule(0.5, 1.0), q.schedule(3.0, 1.0)] == [
        (0.0, 2.0),
        (2.0, 3.0),
        (3.0, 4.0),
    ]
    assert q.busy_seconds == 4.0


def test_capacity_one_queues_equal_arrivals_and_starts_on_the_dot() -> None:
    q = ServerQueue(capacity=1)
    assert q.schedule(1.0, 1.0) == (1.0, 2.0)
    assert q.schedule(1.0, 0.5) == (2.0, 2.5)  # same arrival: behind the first
    assert q.schedule(1.5, 0.0) == (2.5, 2.5)  # zero-second work still waits its turn
    assert q.schedule(2.5, 1.0) == (2.5, 3.5)  # arrives exactly as the server frees up


def test_capacity_two_runs_two_at_once_and_the_third_takes_the_first_free_slot() -> None:
    q = ServerQueue(capacity=2)
    assert q.schedule(0.0, 2.0) == (0.0, 2.0)  # slot A until 2
    assert q.schedule(0.0, 1.0) == (0.0, 1.0)  # slot B until 1
    assert q.schedule(0.5, 1.0) == (1.0, 2.0)  # both busy: B frees first, at 1
    assert q.schedule(1.0, 1.0) == (2.0, 3.0)  # both busy until 2
    assert q.schedule(5.0, 1.0) == (5.0, 6.0)  # idle again
    assert q.busy_seconds == 6.0


def test_capacity_zero_is_unbounded() -> None:
    q = ServerQueue(capacity=0)
    assert [q.schedule(0.0, 2.0) for _ in range(3)] == [(0.0, 2.0)] * 3
    assert q.schedule(1.0, 0.5) == (1.0, 1.5)  # never waits, however busy
    assert q.busy_seconds == 6.5
    assert q.free_at == []  # nothing to remember


def test_server_queue_rejects_negative_capacity_and_seconds() -> None:
    with pytest.raises(ValueError, match=r"^capacity must be >= 0, 0 meaning unbounded \(got -1\)$"):
        ServerQueue(capacity=-1)
    q = ServerQueue(capacity=1)
    with pytest.raises(ValueError, match=r"^server work must last >= 0 seconds \(got -0.5\)$"):
        q.schedule(0.0, -0.5)
    assert q.busy_seconds == 0.0 and q.schedule(0.0, 1.0) == (0.0, 1.0)  # the refusal left no trace


# ---- client states ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_client_states_round_trip_arrays_exactly(kind: str, tmp_path: Path) -> None:
    store = client_states(kind, str(tmp_path / "states") if kind == "disk" else "")
    assert isinstance(store, DiskStates if kind == "disk" else MemoryStates)
    residual = np.array([1.5, -0.0, np.nan, 3e-38], dtype=np.float32)
    counts = np.array([[1, 2], [3, 2**40]], dtype=np.int64)
    store.put(3, residual)
    store.put(0, counts)
    assert store.get(1) is None and store.get(7) is None  # never stored; beyond the last one
    for client, state in ((3, residual), (0, counts)):
        got = store.get(client)
        assert got.dtype == state.dtype and got.shape == state.shape
        assert np.array_equal(got, state, equal_nan=True)
    store.put(3, residual[:2] * 2)  # a later state replaces the earlier one
    np.testing.assert_array_equal(store.get(3), np.array([3.0, -0.0], dtype=np.float32))
    store.close()


def test_disk_states_are_plain_npy_files(tmp_path: Path) -> None:
    store = DiskStates(str(tmp_path))
    store.put(2, np.arange(3, dtype=np.int16))
    store.put(5, None)  # no state: no file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.npy"]
    loaded = np.load(tmp_path / "2.npy", allow_pickle=False)
    assert loaded.dtype == np.int16 and loaded.tolist() == [0, 1, 2]
    assert store.get(5) is None


def test_disk_states_remove_only_a_folder_they_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    own = DiskStates()
    assert own.folder.parent == tmp_path and own.folder.name.startswith("fedray-client-state-")
    own.put(0, np.zeros(2))
    own.close()
    assert not own.folder.exists()
    given = tmp_path / "kept"
    store = DiskStates(str(given))
    store.put(0, np.zeros(2))
    store.close()
    assert (given / "0.npy").is_file()


def test_disk_states_refuse_non_arrays_and_snapshots(tmp_path: Path) -> None:
    store = DiskStates(str(tmp_path))
    hint = (
        r"^server\.client_state=disk stores numeric arrays only; "
        r"client 4's state is {}: use server\.client_state=memory$"
    )
    with pytest.raises(TypeError, match=hint.format("dict")):
        store.put(4, {"residual": np.zeros(2)})
    with pytest.raises(TypeError, match=hint.format("ndarray")):
        store.put(4, np.array([None, 1], dtype=object))
    assert store.get(4) is None and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="client states are on disk are not supported"):
        store.snapshot()


def test_memory_states_snapshot_and_restore_are_copies() -> None:
    store = MemoryStates()
    store.put(1, np.ones(2))
    snap = store.snapshot()
    store.put(2, np.zeros(1))
    assert sorted(snap) == [1]
    fresh = MemoryStates()
    fresh.restore(snap)
    np.testing.assert_array_equal(fresh.get(1), np.ones(2))
    fresh.close()
    assert fresh.get(1) is None


# ---- dispatching: timing and bytes -------------------------------------------------------------

LATENCY = 0.05
UP = 1e6  # bytes/s: up_mbps 8
DOWN = 2e6  # bytes/s: down_mbps 16
SPS = 0.002  # seconds per sample
MODEL_BYTES = 4000
TASK = Task(steps=5, batch_size=10, lr=0.1)  # on a shard of 100: 5 batches of 10 = 50 samples
SHARD = 100


def fixed_delays(num: int = 3) -> DelayModel:
    """Constant speed and an equal, fixed network for every client."""
    speed = SpeedConfig(family="constant", seconds_per_sample=SPS, jitter=0.0)
    net = NetworkConfig(latency=LATENCY, up_mbps=8.0, down_mbps=16.0, sigma=0.0)
    return DelayModel(ClientsConfig(num=num, speed=speed, network=net), seed=0)


def loop_state(num: int, now: float) -> LoopState:
    s = LoopState(
        algorithm=SimpleNamespace(version=7),
        jobs=JobTable(num),
        job_counter=np.zeros(num, dtype=np.int64),
        ready=EventQueue(),
        versions=VersionStore(lambda params: params),
        recorder=RunRecorder(load_config(None, []), {}),
        client_states=MemoryStates(),
        server=ServerQueue(),
    )
    s.now = now
    return s


def test_fixed_delays_are_the_round_numbers_used_below() -> None:
    d = fixed_delays()
    assert d.up_bytes_per_s.tolist() == [UP] * 3 and d.down_bytes_per_s.tolist() == [DOWN] * 3
    assert d.seconds_per_sample.tolist() == [SPS] * 3 and d.latency.tolist() == [LATENCY] * 3
    assert TASK.samples(SHARD) == 50
    assert d.download_time(0, 1000) == pytest.approx(0.05 + 0.0005, abs=1e-15)
    assert d.upload_time(0, 1000) == pytest.approx(0.05 + 0.001, abs=1e-15)
    assert d.round_trip_time(0, 100, 200) == pytest.approx(0.1 + 0.0001 + 0.0001, abs=1e-15)
    assert d.compute_time(0, 0, 50) == pytest.approx(0.1, abs=1e-15)


def test_a_default_job_cost_reproduces_the_old_formula_bit_for_bit() -> None:
    """Without a cost the lower bound is ``now + download + compute + latency``, summed in
    that order, exactly as before JobCost existed (here with drawn speeds and jitter)."""
    clients = ClientsConfig(
        num=4,
        speed=SpeedConfig(family="pareto", shape=1.5, jitter=0.3),
        network=NetworkConfig(latency=0.037, up_mbps=3.3, down_mbps=17.0, sigma=0.7),
    )
    d = DelayModel(clients, seed=11)
    s = loop_state(4, now=1.3)
    for client, shard in ((2, 37), (0, 100), (2, 37)):
        k = int(s.job_counter[client])
        f = dispatch.in_flight(s, d, shard, MODEL_BYTES, Job(client, TASK))
        down = d.download_time(client, MODEL_BYTES)
        compute = d.compute_time(client, k, TASK.samples(shard))
        assert (f.download, f.compute, f.exchange) == (down, compute, 0.0)
        assert f.lower_bound == 1.3 + down + compute + float(d.latency[client])
        assert f.bytes_down == MODEL_BYTES and f.job_index == k and f.cost == JobCost()
        finish = f.lower_bound - float(d.latency[client]) + d.upload_time(client, MODEL_BYTES)
        assert dispatch.expected_finish(d, MODEL_BYTES, f) == finish
    assert s.job_counter.tolist() == [1, 0, 2, 0]


def test_job_cost_timing_and_bytes_by_hand() -> None:
    d = fixed_delays()
    s = loop_state(3, now=2.0)
    cost = JobCost(
        bytes_down=1000,
        compute_fraction=0.5,
        round_trips=3,
        round_trip_bytes_up=100,
        round_trip_bytes_down=200,
        server_seconds=0.25,
    )
    f = dispatch.in_flight(s, d, SHARD, MODEL_BYTES, Job(1, TASK, cost=cost))
    download = LATENCY + 1000 / DOWN  # 0.0505
    compute = 50 * SPS * 0.5  # 0.05
    trip = 2 * LATENCY + 100 / UP + 200 / DOWN  # 0.1002
    exchange = 0.25 + 3 * trip  # 0.5506
    assert f.download == pytest.approx(download, abs=1e-15) and f.download == pytest.approx(0.0505)
    assert f.compute == pytest.approx(compute, abs=1e-15) and f.compute == pytest.approx(0.05)
    assert f.exchange == pytest.approx(exchange, abs=1e-15) and f.exchange == pytest.approx(0.5506)
    assert f.lower_bound == pytest.approx(2.0 + 0.7011, abs=1e-12)  # ... + the upload's latency
    assert f.bytes_down == 1000 + 3 * 200
    assert (f.client, f.job_index, f.version, f.dispatch_time, f.cost) == (1, 0, 7, 2.0, cost)
    # The upload is the model's size until the job reports its payload...
    assert dispatch.expected_finish(d, MODEL_BYTES, f) == pytest.approx(2.7011 + 0.004, abs=1e-12)
    # ...or the size the job fixed.
    fixed = dispatch.in_flight(s, d, SHARD, MODEL_BYTES, Job(2, TASK, cost=JobCost(bytes_up=500)))
    assert fixed.lower_bound == pytest.approx(2.0 + (0.05 + 0.002) + 0.1 + 0.05, abs=1e-12)
    assert dispatch.expected_finish(d, MODEL_BYTES, fixed) == pytest.approx(2.202 + 0.0005, abs=1e-12)
    assert (f.seq, fixed.seq) == (0, 1)


def test_job_cost_defaults_and_validation() -> None:
    c = JobCost()
    assert (c.bytes_down, c.bytes_up, c.compute_fraction, c.round_trips) == (None, None, 1.0, 0)
    assert (c.round_trip_bytes_up, c.round_trip_bytes_down, c.server_seconds) == (0, 0, 0.0)
    assert Job(0, TASK).cost == c
    for name in ("round_trips", "round_trip_bytes_up", "round_trip_bytes_down", "server_seconds"):
        with pytest.raises(ValueError, match=rf"^JobCost\.{name} must be a finite number >= 0 \(got -1\)$"):
            JobCost(**{name: -1})
    for fraction in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"^JobCost\.compute_fraction must be in \(0, 1\]"):
            JobCost(compute_fraction=fraction)
    assert JobCost(compute_fraction=1e-9).compute_fraction == 1e-9


@pytest.mark.parametrize("name", ["bytes_down", "bytes_up"])
def test_job_cost_refuses_negative_byte_counts_and_nan(name: str) -> None:
    # a negative size would make a job finish before its dispatch
    with pytest.raises(ValueError, match=rf"JobCost\.{name}"):
        JobCost(**{name: -1})
    with pytest.raises(ValueError, match=r"JobCost\.server_seconds"):
        JobCost(server_seconds=math.nan)


def test_payload_bytes_is_the_sum_of_the_arrays() -> None:
    payload = {"delta": np.zeros(10, np.float32), "idx": np.zeros(3, np.int64), "h": np.zeros(4, np.float16)}
    assert payload_bytes(payload) == 40 + 24 + 8
    assert payload_bytes({}) == 0
