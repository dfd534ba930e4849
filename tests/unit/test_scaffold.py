"""SCAFFOLD, FedAvg-M and SCAFFOLD-M against rounds computed by hand.

The hand-computed rounds use 1-D quadratic clients, f_i(y) = 0.5 * (y - a_i)^2, whose
gradient is y - a_i: with eta = 0.5 and K = 2 full-batch steps every number below is a
dyadic fraction, exact in float32, so the checks are equalities. The comparisons with
FedAvg use a small softmax regression on random shards, minibatched."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms import ALGORITHMS
from algorithms.base import Job, LocalTraining, Update, payload_bytes
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.fedavg_m import FedAvgMomentum, MomentumParams, ScaffoldMomentum
from algorithms.scaffold import ControlRounds, ControlState, ControlTask, Scaffold, ScaffoldParams
from engine.worker.training import ClientData, local_sgd
from workloads.base import ParamLayout

A = (2.0, 6.0, -2.0, 10.0)  # client i's optimum a_i; N = 4 clients
QUADRATIC = LocalTraining(local_steps=2, batch_size=0, lr=0.5)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def half_squared(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out[:, 0] - y) ** 2).mean()


def quadratic_clients() -> tuple[torch.nn.Module, list[ClientData]]:
    model = torch.nn.Linear(1, 1, bias=False)  # its one weight is y; the input is 1
    shards = [ClientData(torch.ones(1, 1), torch.tensor([a]), half_squared) for a in A]
    return model, shards


def run_job(
    alg: Any, job: Job, model: torch.nn.Module, data: ClientData, start: np.ndarray, state: Any, version: int
) -> tuple[Update, Any]:
    """What an executor does with one job (engine/worker/worker.py ``_run_one``), then the
    server's decoding: the update the algorithm receives and the client's next state."""
    layout = ParamLayout.of(model)
    layout.load(model, start)
    result = alg.client_update(model, data, job.task, state, torch.Generator().manual_seed(job.client))
    delta = np.subtract(start, layout.flatten(model), dtype=np.float32)
    payload, state = alg.encode(delta, result.client_state, np.random.default_rng(0))
    update = Update(job.client, alg.decode(payload, job.client), len(data), version, start, payload)
    return update, state


def run_round(
    alg: Any,
    state: ControlState,
    clients: list[int],
    model: torch.nn.Module,
    shards: list[ClientData],
    states: dict[int, Any],
) -> tuple[ControlState, list[Job]]:
    """One synchronous round with exactly ``clients`` idle; client states kept in ``states``."""
    state, jobs = alg.jobs(state, 0.0, np.array(sorted(clients)), np.random.default_rng(0))
    assert sorted(j.client for j in jobs) == sorted(clients)
    start = state.model
    for job in sorted(jobs, key=lambda j: j.client):  # a fixed arrival order
        update, states[job.client] = run_job(
            alg, job, model, shards[job.client], start, states.get(job.client), state.version
        )
        state = alg.on_update(state, update, 1.0)
    return state, jobs


def test_registered_with_their_keys() -> None:
    assert ALGORITHMS["scaffold"] is Scaffold
    assert ALGORITHMS["fedavg_m"] is FedAvgMomentum
    assert ALGORITHMS["scaffold_m"] is ScaffoldMomentum
    assert ScaffoldParams() == ScaffoldParams(clients_per_round=10, server_lr=1.0)
    assert MomentumParams() == MomentumParams(clients_per_round=10, server_lr=1.0, momentum=0.9)
    for cls in (Scaffold, FedAvgMomentum, ScaffoldMomentum):
        assert cls.description


def test_scaffold_two_rounds_by_hand() -> None:
    model, shards = quadratic_clients()
    alg = Scaffold(ScaffoldParams(clients_per_round=2), QUADRATIC, np.ones(4, dtype=np.int64))
    state = alg.init(f32(0))
    np.testing.assert_array_equal(state.control, f32(0))
    states: dict[int, Any] = {}

    # Round 1, clients 0 and 1 (a = 2, 6), c = c_i = 0: plain GD, y <- y - 0.5 (y - a):
    # 0 -> a/2 -> 3a/4. c_i+ = (x - y)/(K eta) = -3a/4 (the mean of the gradients -a, -a/2).
    state, jobs = run_round(alg, state, [0, 1], model, shards, states)
    for job in jobs:
        assert isinstance(job.task, ControlTask) and job.task.steps == 2
        np.testing.assert_array_equal(job.task.control, f32(0))  # the server's c travels with the job
        assert job.cost.bytes_down == 8  # the model and c: 2 x 4 bytes
    np.testing.assert_array_equal(states[0], f32(-1.5))
    np.testing.assert_array_equal(states[1], f32(-4.5))
    assert state.version == 1 and state.received == () and state.pending == ()
    np.testing.assert_array_equal(state.model, f32(3.0))  # 0 + mean(1.5, 4.5)
    np.testing.assert_array_equal(state.control, f32(-1.5))  # 0 + (1/4) (-1.5 - 4.5)

    # Round 2, clients 0 (c_0 = -1.5) and 2 (a = -2, c_2 = 0 as it never ran), x = 3, c = -1.5.
    # Client 0: c - c_0 = 0, plain GD: 3 -> 2.5 -> 2.25; c_0+ = -1.5 + 1.5 + 0.75/1 = 0.75.
    # Client 2: y <- y - 0.5 (y + 2 - 1.5): 3 -> 1.25 -> 0.375; c_2+ = 0 + 1.5 + 2.625 = 4.125
    # (= the mean of its gradients 5 and 3.25).
    state, jobs = run_round(alg, state, [0, 2], model, shards, states)
    np.testing.assert_array_equal(jobs[0].task.control, f32(-1.5))
    np.testing.assert_array_equal(states[0], f32(0.75))
    np.testing.assert_array_equal(states[2], f32(4.125))
    np.testing.assert_array_equal(states[1], f32(-4.5))  # not sampled: unchanged
    assert state.version == 2
    np.testing.assert_array_equal(state.model, f32(1.3125))  # 3 - mean(0.75, 2.625)
    np.testing.assert_array_equal(state.control, f32(0.09375))  # -1.5 + (2.25 + 4.125) / 4
    assert alg.stats(state) == {"dropped": 0.0, "control_norm": 0.09375}


def test_scaffold_server_lr_scales_the_model_step_only() -> None:
    model, shards = quadratic_clients()
    alg = Scaffold(ScaffoldParams(clients_per_round=2, server_lr=0.5), QUADRATIC, np.ones(4, dtype=np.int64))
    state, _ = run_round(alg, alg.init(f32(0)), [0, 1], model, shards, {})
    np.testing.assert_array_equal(state.model, f32(1.5))  # 0 + 0.5 * 3
    np.testing.assert_array_equal(state.control, f32(-1.5))  # as with eta_g = 1


def test_scaffold_payload_is_delta_and_control_twice_the_model() -> None:
    model, shards = softmax_clients()
    size = ParamLayout.of(model).size
    alg = Scaffold(
        ScaffoldParams(clients_per_round=1), LocalTraining(local_steps=3, batch_size=4, lr=0.3), SIZES
    )
    state, (job,) = alg.jobs(alg.init(initial(model)), 0.0, np.array([1]), np.random.default_rng(0))
    layout = ParamLayout.of(model)
    layout.load(model, state.model)
    result = alg.client_update(model, shards[1], job.task, None, torch.Generator().manual_seed(0))
    delta = np.subtract(state.model, layout.flatten(model), dtype=np.float32)
    payload, kept = alg.encode(delta, result.client_state, np.random.default_rng(0))
    assert sorted(payload) == ["control", "delta"]
    assert payload["delta"] is delta and payload["control"].dtype == np.float32
    assert payload["control"].shape == (size,)
    assert payload_bytes(payload) == 2 * state.model.nbytes == 2 * 4 * size
    # The kept state is a plain float32 array (server.client_state=disk can store it), and
    # the upload is its change from the zeros of a first job.
    assert isinstance(kept, np.ndarray) and kept.dtype == np.float32 and kept.shape == (size,)
    np.testing.assert_array_equal(payload["control"], kept)
    assert alg.decode(payload, 1) is delta
    assert job.cost.bytes_down == 2 * state.model.nbytes


# ---- against FedAvg ---------------------------------------------------------------------

SIZES = np.array([7, 12, 23], dtype=np.int64)
DIM, CLASSES = 4, 3


def softmax_clients() -> tuple[torch.nn.Module, list[ClientData]]:
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, CLASSES)
    g = torch.Generator().manual_seed(1)
    shards = [
        ClientData(
            torch.randn(int(n), DIM, generator=g),
            torch.randint(0, CLASSES, (int(n),), generator=g),
            F.cross_entropy,
        )
        for n in SIZES
    ]
    return model, shards


def initial(model: torch.nn.Module) -> np.ndarray:
    torch.manual_seed(0)
    fresh = torch.nn.Linear(DIM, CLASSES)
    return ParamLayout.of(fresh).flatten(fresh)


def fedavg_rounds(training: LocalTraining, rounds: int) -> np.ndarray:
    """FedAvg, uniform weights, all 3 clients each round, local_sgd with the same generators."""
    model, shards = softmax_clients()
    layout = ParamLayout.of(model)
    alg = FedAvg(FedAvgParams(clients_per_round=3, weighting="uniform"), training, SIZES)
    state = alg.init(initial(model))
    for _ in range(rounds):
        state, jobs = alg.jobs(state, 0.0, np.arange(3), np.random.default_rng(0))
        start = state.model
        for job in sorted(jobs, key=lambda j: j.client):
            layout.load(model, start)
            local_sgd(model, shards[job.client], job.task, torch.Generator().manual_seed(job.client))
            delta = np.subtract(start, layout.flatten(model), dtype=np.float32)
            state = alg.on_update(state, Update(job.client, delta, int(SIZES[job.client]), 0, start), 1.0)
    return state.model


def control_rounds(alg: ControlRounds, rounds: int) -> tuple[ControlState, dict[int, Any]]:
    model, shards = softmax_clients()
    state, states = alg.init(initial(model)), {}
    for _ in range(rounds):
        state, _ = run_round(alg, state, [0, 1, 2], model, shards, states)
    return state, states


@pytest.mark.parametrize("steps", [1, 3])
def test_scaffold_first_round_is_fedavg_exactly(steps: int) -> None:
    # c = c_i = 0 in the first round: the corrected steps are plain SGD, the server step a mean.
    training = LocalTraining(local_steps=steps, batch_size=4, lr=0.3)
    state, states = control_rounds(Scaffold(ScaffoldParams(clients_per_round=3), training, SIZES), 1)
    expected = fedavg_rounds(training, 1)
    np.testing.assert_array_equal(state.model, expected)
    assert np.abs(expected - initial(softmax_clients()[0])).max() > 1e-3  # it did move
    assert all(np.abs(s).max() > 0 for s in states.values())  # and learnt control variates


def test_fedavg_m_with_momentum_zero_is_fedavg_exactly() -> None:
    training = LocalTraining(local_steps=3, batch_size=4, lr=0.3)
    alg = FedAvgMomentum(MomentumParams(clients_per_round=3, momentum=0.0), training, SIZES)
    state, states = control_rounds(alg, 3)
    np.testing.assert_array_equal(state.model, fedavg_rounds(training, 3))
    assert states == {0: None, 1: None, 2: None}  # FedAvg-M keeps no client state
    assert state.control is None and state.direction is not None


def test_scaffold_m_with_momentum_zero_is_scaffold() -> None:
    # beta = 1: the mean of the local gradients is option II's c_i+ (up to rounding).
    training = LocalTraining(local_steps=3, batch_size=4, lr=0.3)
    m, m_states = control_rounds(ScaffoldMomentum(MomentumParams(3, momentum=0.0), training, SIZES), 3)
    s, s_states = control_rounds(Scaffold(ScaffoldParams(3), training, SIZES), 3)
    np.testing.assert_allclose(m.model, s.model, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m.control, s.control, rtol=0, atol=1e-6)
    for c in range(3):
        np.testing.assert_allclose(m_states[c], s_states[c], rtol=0, atol=1e-6)
    assert np.abs(s.control).max() > 1e-2


# ---- the momentum variants by hand --------------------------------------------------------


def test_fedavg_m_two_rounds_by_hand() -> None:
    # beta = 0.5, g^0 = 0: y <- y - 0.5 * (0.5 (y - a) + 0.5 g) = y - 0.25 (y - a) - 0.25 g.
    model, shards = quadratic_clients()
    alg = FedAvgMomentum(
        MomentumParams(clients_per_round=2, momentum=0.5), QUADRATIC, np.ones(4, dtype=np.int64)
    )
    state = alg.init(f32(0))
    # Round 1: a = 2: 0 -> 0.5 -> 0.875; a = 6: 0 -> 1.5 -> 2.625.
    state, jobs = run_round(alg, state, [0, 1], model, shards, {})
    np.testing.assert_array_equal(jobs[0].task.control, f32(0))  # g^0
    assert jobs[0].cost.bytes_down == 8
    np.testing.assert_array_equal(state.model, f32(1.75))  # 0 - mean(-0.875, -2.625)
    # g^1 = mean(x - y)/(eta K) = -1.75 = 0.5 * (mean gradient) + 0.5 * 0
    np.testing.assert_array_equal(state.direction, f32(-1.75))
    # Round 2 from 1.75 with g = -1.75 (each step adds 0.4375):
    # a = 2: 1.75 -> 2.25 -> 2.625; a = 6: 1.75 -> 3.25 -> 4.375.
    state, jobs = run_round(alg, state, [0, 1], model, shards, {})
    np.testing.assert_array_equal(jobs[0].task.control, f32(-1.75))  # the server's buffer, broadcast
    np.testing.assert_array_equal(state.model, f32(3.5))  # 1.75 - mean(-0.875, -2.625)
    np.testing.assert_array_equal(state.direction, f32(-1.75))
    assert state.version == 2


def test_scaffold_m_two_rounds_by_hand() -> None:
    model, shards = quadratic_clients()
    alg = ScaffoldMomentum(
        MomentumParams(clients_per_round=2, momentum=0.5), QUADRATIC, np.ones(4, dtype=np.int64)
    )
    state, states = alg.init(f32(0)), {}
    # Round 1, clients 0 and 1, everything 0: FedAvg-M's round 1. c_i+ = mean gradient:
    # a = 2: (-2 - 1.5)/2 = -1.75; a = 6: (-6 - 4.5)/2 = -5.25.
    state, _ = run_round(alg, state, [0, 1], model, shards, states)
    np.testing.assert_array_equal(states[0], f32(-1.75))
    np.testing.assert_array_equal(states[1], f32(-5.25))
    np.testing.assert_array_equal(state.model, f32(1.75))
    np.testing.assert_array_equal(state.direction, f32(-1.75))
    np.testing.assert_array_equal(state.control, f32(-1.75))  # (-1.75 - 5.25) / 4
    # Round 2, clients 0 and 2; sent w = beta c + (1 - beta) g = -1.75.
    # Client 0: offset w - beta c_0 = -0.875: y <- y - 0.25 (y - 2) + 0.4375: 1.75 -> 2.25 -> 2.625,
    #   gradients -0.25, 0.25: c_0+ = 0.
    # Client 2: offset -1.75: y <- y - 0.25 (y + 2) + 0.875: 1.75 -> 1.6875 -> 1.640625,
    #   gradients 3.75, 3.6875: c_2+ = 3.71875.
    state, jobs = run_round(alg, state, [0, 2], model, shards, states)
    np.testing.assert_array_equal(jobs[0].task.control, f32(-1.75))
    assert jobs[0].cost.bytes_down == 8  # one vector beside the model
    np.testing.assert_array_equal(states[0], f32(0))
    np.testing.assert_array_equal(states[2], f32(3.71875))
    # x: 1.75 - mean(-0.875, 0.109375); g^2 = that mean / (eta K); c: -1.75 + (1.75 + 3.71875) / 4
    np.testing.assert_array_equal(state.model, f32(2.1328125))
    np.testing.assert_array_equal(state.direction, f32(-0.3828125))
    np.testing.assert_array_equal(state.control, f32(-0.3828125))


# ---- rounds with drops, validation, buffers ----------------------------------------------


def test_dropped_clients_leave_the_round_and_the_control_variate() -> None:
    model, shards = quadratic_clients()
    alg = Scaffold(ScaffoldParams(clients_per_round=2), QUADRATIC, np.ones(4, dtype=np.int64))
    state, jobs = alg.jobs(alg.init(f32(0)), 0.0, np.array([0, 1]), np.random.default_rng(0))
    job = next(j for j in jobs if j.client == 1)
    update, _ = run_job(alg, job, model, shards[1], state.model, None, 0)
    state = alg.on_update(state, update, 1.0)
    assert state.version == 0 and state.pending == (0,)
    state = alg.on_drop(state, 0, 2.0)
    assert state.version == 1 and state.dropped == 1
    np.testing.assert_array_equal(state.model, f32(4.5))  # client 1 alone: 0 + 4.5
    np.testing.assert_array_equal(state.control, f32(-1.125))  # (1/N) * -4.5, N = 4
    # A round where everyone drops makes no version.
    state, _ = alg.jobs(state, 3.0, np.array([2, 3]), np.random.default_rng(0))
    state = alg.on_drop(alg.on_drop(state, 2, 4.0), 3, 4.0)
    assert state.version == 1 and state.pending == () and state.dropped == 3
    np.testing.assert_array_equal(state.model, f32(4.5))


def test_params_are_validated() -> None:
    for bad, match in [
        ({"clients_per_round": 0}, "clients_per_round must be >= 1"),
        ({"server_lr": 0.0}, "server_lr must be"),
        ({"server_lr": math.inf}, "server_lr must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            ScaffoldParams(**bad)
        with pytest.raises(ValueError, match=match):
            MomentumParams(**bad)
    for momentum in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match=r"^momentum must be in \[0, 1\)"):
            MomentumParams(momentum=momentum)
    with pytest.raises(ValueError, match=r"training\.momentum=0"):
        Scaffold(ScaffoldParams(), LocalTraining(momentum=0.9), SIZES)


def test_buffers_get_no_correction_and_no_control_variate() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, CLASSES), torch.nn.BatchNorm1d(CLASSES))
    layout = ParamLayout.of(model)
    is_buffer = np.concatenate(
        [
            np.full(math.prod(s), n.endswith(("running_mean", "running_var", "num_batches_tracked")))
            for n, s in zip(layout.names, layout.shapes, strict=True)
        ]
    )
    assert is_buffer.any()
    _, shards = softmax_clients()
    alg = Scaffold(
        ScaffoldParams(clients_per_round=1), LocalTraining(local_steps=2, batch_size=4, lr=0.3), SIZES
    )
    start = layout.flatten(model)
    _, (job,) = alg.jobs(alg.init(start), 0.0, np.array([2]), np.random.default_rng(0))
    update, kept = run_job(alg, job, model, shards[2], start, None, 0)
    assert np.all(kept[is_buffer] == 0) and np.abs(kept[~is_buffer]).max() > 0
    assert np.all(update.payload["control"][is_buffer] == 0)
    assert np.abs(update.delta[is_buffer]).max() > 0  # the running statistics did move
