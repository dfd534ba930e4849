"""Synchronous rounds under stragglers, driven by hand-built event sequences in the
engine's per-instant order: completions, the timer if due, ``discard``, then ``jobs``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from algorithms.base import LocalTraining, ServerCost, Update
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.fedprox import FedProx, FedProxParams

TRAINING = LocalTraining(local_steps=3, batch_size=0, lr=0.1)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def upd(state: Any, client: int, *delta: float) -> Update:
    return Update(client, f32(*delta), 1, state.version, state.model)


def start(
    params: FedAvgParams, num_clients: int, cost: ServerCost | None = None
) -> tuple[FedAvg, Any, list[int]]:
    alg = FedAvg(params, TRAINING, np.ones(num_clients, dtype=np.int64), cost)
    s, jobs = alg.jobs(alg.init(f32(0, 0)), 0.0, np.arange(num_clients), rng())
    return alg, s, [j.client for j in jobs]


# ---- round deadline ---------------------------------------------------------------------


def test_deadline_aggregates_the_early_clients_and_discards_the_rest() -> None:
    alg, s, chosen = start(FedAvgParams(clients_per_round=4, deadline=10.0, weighting="uniform"), 4)
    a, b, c, d = chosen
    assert alg.next_timer(s) == 10.0
    s = alg.on_update(s, upd(s, a, 2, 0), 3.0)
    s = alg.on_update(s, upd(s, b, 0, 2), 5.0)
    assert s.version == 0 and alg.next_timer(s) == 10.0
    assert alg.jobs(s, 5.0, np.array([], dtype=np.int64), rng())[1] == []  # round still open
    s = alg.on_timer(s, 10.0)  # the deadline: aggregate the two that made it
    assert s.version == 1 and s.pending == () and alg.next_timer(s) is None
    np.testing.assert_array_equal(s.model, f32(-1, -1))
    s, late = alg.discard(s)
    assert sorted(late) == sorted((c, d)) and alg.discard(s)[1] == []
    s, jobs = alg.jobs(s, 10.0, np.arange(4), rng(1))  # the next round starts at the deadline
    assert len(jobs) == 4 and s.round_start == 10.0 and alg.next_timer(s) == 20.0
    assert alg.stats(s) == {"dropped": 0.0, "discarded": 2.0}


def test_deadline_counts_an_arrival_at_the_deadline_and_may_close_empty() -> None:
    alg, s, (a, b) = start(FedAvgParams(clients_per_round=2, deadline=4.0), 2)
    s = alg.on_update(s, upd(s, a, 2, 2), 4.0)  # completions precede the timer in an instant
    s = alg.on_timer(s, 4.0)
    assert s.version == 1 and alg.discard(s)[1] == [b]
    s, _ = alg.jobs(alg.discard(s)[0], 4.0, np.arange(2), rng())
    s = alg.on_timer(s, 8.0)  # nobody made it: the round closes without a version
    assert s.version == 1 and sorted(alg.discard(s)[1]) == [0, 1]
    np.testing.assert_array_equal(s.model, f32(-2, -2))


def test_round_finished_before_the_deadline_needs_no_timer() -> None:
    alg, s, (a, b) = start(FedAvgParams(clients_per_round=2, deadline=10.0), 2)
    s = alg.on_update(s, upd(s, a, 1, 1), 1.0)
    s = alg.on_drop(s, b, 2.0)
    assert s.version == 1 and alg.next_timer(s) is None and alg.discard(s)[1] == []
    assert alg.stats(s) == {"dropped": 1.0, "discarded": 0.0}


# ---- over-selection ---------------------------------------------------------------------


def test_over_selection_keeps_the_first_arrivals() -> None:
    alg = FedAvg(
        FedAvgParams(clients_per_round=2, over_selection=1.5, weighting="uniform"), TRAINING, np.ones(5)
    )
    s, jobs = alg.jobs(alg.init(f32(0, 0)), 0.0, np.arange(5), rng())
    assert len(jobs) == 3 and all(j.quorum == 2 for j in jobs) and s.quorum == 2
    a, b, c = (j.client for j in jobs)
    s = alg.on_update(s, upd(s, b, 4, 0), 1.0)
    assert s.version == 0
    s = alg.on_update(s, upd(s, c, 0, 4), 2.0)  # the quorum is full: aggregate these two
    assert s.version == 1 and s.pending == ()
    np.testing.assert_array_equal(s.model, f32(-2, -2))
    s, unwanted = alg.discard(s)
    assert unwanted == [a] and alg.stats(s) == {"dropped": 0.0, "discarded": 1.0}
    assert len(alg.jobs(s, 2.0, np.arange(5), rng())[1]) == 3  # the next round starts at once


def test_over_selected_arrival_in_the_same_instant_is_ignored() -> None:
    alg, s, (a, b, c) = start(FedAvgParams(clients_per_round=2, over_selection=1.5), 3)
    s = alg.on_update(s, upd(s, a, 1, 1), 1.0)
    s = alg.on_update(s, upd(s, b, 1, 1), 1.0)
    model = s.model
    s = alg.on_update(s, upd(s, c, 9, 9), 1.0)  # before discard() in the same instant
    assert s.version == 1 and s.model is model and s.unwanted == ()
    assert alg.discard(s)[1] == []


def test_over_selection_waits_for_a_replacement_after_a_drop() -> None:
    alg, s, (a, b, c) = start(FedAvgParams(clients_per_round=2, over_selection=1.5), 3)
    s = alg.on_drop(s, a, 1.0)  # the engine now computes the held-back job
    s = alg.on_update(s, upd(s, b, 1, 1), 2.0)
    assert s.version == 0
    s = alg.on_update(s, upd(s, c, 1, 1), 3.0)
    assert s.version == 1 and alg.discard(s)[1] == []


def test_over_selection_limits() -> None:
    # 1.1 * 10 is 11.000000000000002 in floats: still 11 clients
    assert FedAvgParams(clients_per_round=10, over_selection=1.1).sampled_per_round() == 11
    assert FedAvgParams(clients_per_round=10, over_selection=1.3).sampled_per_round() == 13
    # too few idle clients for a surplus: no quorum, every job is wanted
    alg = FedAvg(FedAvgParams(clients_per_round=2, over_selection=2.0), TRAINING, np.ones(5))
    s, jobs = alg.jobs(alg.init(f32(0)), 0.0, np.array([1, 3]), rng())
    assert [j.quorum for j in jobs] == [0, 0] and s.quorum == 2
    s, jobs = alg.jobs(alg.init(f32(0)), 0.0, np.array([4]), rng())
    assert [j.quorum for j in jobs] == [0] and s.quorum == 1
    s = alg.on_update(s, Update(4, f32(1), 1, 0, s.model), 1.0)
    assert s.version == 1


def test_no_straggler_options_is_the_plain_round() -> None:
    alg, s, chosen = start(FedAvgParams(clients_per_round=3), 5)
    assert len(chosen) == 3 and s.quorum == 3 and alg.next_timer(s) is None
    assert alg.stats(s) == {"dropped": 0.0}


# ---- the server's aggregation time ------------------------------------------------------


def test_aggregation_time_delays_the_version_and_the_next_round() -> None:
    cost = ServerCost(seconds_per_aggregation=2.0, seconds_per_update=0.5, seconds_per_mb=1e5)
    alg, s, (a, b) = start(FedAvgParams(clients_per_round=2), 4, cost)
    s = alg.on_update(s, upd(s, a, 2, 0), 1.0)
    s = alg.on_update(s, upd(s, b, 0, 2), 5.0)
    s, work = alg.server_jobs(s)
    # 2 + 0.5*2 + 1e5 * 2 updates * 8 bytes / 1e6 = 4.6 seconds of server work
    assert s.version == 0 and [w.seconds for w in work] == [pytest.approx(4.6)] and not work[0].finetune
    assert alg.server_jobs(s)[1] == []  # handed over once
    np.testing.assert_array_equal(s.model, f32(0, 0))
    assert alg.jobs(s, 5.0, np.arange(4), rng())[1] == []  # the server is busy
    t = 5.0 + work[0].seconds
    s = alg.on_server_job(s, work[0], work[0].model, t)
    assert s.version == 1 and alg.next_timer(s) is None
    np.testing.assert_array_equal(s.model, f32(-1, -1))
    s, jobs = alg.jobs(s, t, np.arange(4), rng())
    assert len(jobs) == 2 and s.round_start == t


def test_deadline_then_aggregation_time() -> None:
    cost = ServerCost(seconds_per_aggregation=3.0)
    alg, s, (a, _b) = start(FedAvgParams(clients_per_round=2, deadline=10.0), 2, cost)
    s = alg.on_update(s, upd(s, a, 1, 1), 2.0)
    s = alg.on_timer(s, 10.0)
    s, work = alg.server_jobs(s)
    assert s.version == 0 and [w.seconds for w in work] == [3.0] and len(alg.discard(s)[1]) == 1
    assert alg.next_timer(s) is None  # the deadline is spent
    s = alg.on_server_job(s, work[0], work[0].model, 13.0)
    assert s.version == 1


def test_round_with_no_update_skips_the_aggregation_time() -> None:
    alg, s, (a,) = start(FedAvgParams(clients_per_round=1), 1, ServerCost(seconds_per_aggregation=3.0))
    s = alg.on_drop(s, a, 1.0)
    assert alg.server_jobs(s)[1] == [] and len(alg.jobs(s, 1.0, np.arange(1), rng())[1]) == 1


# ---- FedProx's variable local work ------------------------------------------------------


def prox_round(variable_work: float, seed: int, training: LocalTraining, sizes: Any = None) -> list[Any]:
    sizes = np.full(10, 50) if sizes is None else sizes
    alg = FedProx(FedProxParams(clients_per_round=10, mu=0.1, variable_work=variable_work), training, sizes)
    return alg.jobs(alg.init(f32(0)), 0.0, np.arange(len(sizes)), rng(seed))[1]


@pytest.mark.parametrize(("p", "stragglers"), [(0.0, 0), (0.3, 3), (0.5, 5), (0.9, 9), (1.0, 10)])
def test_variable_work_fraction_and_range(p: float, stragglers: int) -> None:
    training = LocalTraining(local_steps=1000, batch_size=10, lr=0.1)
    for seed in range(5):
        jobs = prox_round(p, seed, training)
        steps = [j.task.steps for j in jobs]
        assert all(1 <= k <= 1000 for k in steps) and all(j.task.prox_mu == 0.1 for j in jobs)
        # a straggler drawing all 1000 steps has probability 1/1000 per client; none here
        assert sum(k < 1000 for k in steps) == stragglers


def test_variable_work_draws_uniformly_from_one_to_the_full_steps() -> None:
    training = LocalTraining(local_steps=4, batch_size=10, lr=0.1)
    steps = [j.task.steps for seed in range(200) for j in prox_round(1.0, seed, training)]
    counts = np.bincount(steps, minlength=5)
    assert counts[0] == 0 and all(400 < n < 600 for n in counts[1:])  # 2000 draws over 1..4


def test_variable_work_bound_is_the_clients_epoch_steps() -> None:
    training = LocalTraining(epochs=1.0, batch_size=10, lr=0.1)  # steps = ceil(size / 10)
    sizes = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    for seed in range(20):
        for j in prox_round(1.0, seed, training, sizes):
            assert 1 <= j.task.steps <= sizes[j.client] // 10


def test_no_variable_work_is_fedavgs_dispatch() -> None:
    """p = 0 draws nothing more, so FedProx samples and tasks exactly as FedAvg does."""
    params = {"clients_per_round": 4, "over_selection": 1.5}
    fedavg = FedAvg(FedAvgParams(**params), TRAINING, np.ones(10))
    fedprox = FedProx(FedProxParams(mu=0.0, **params), TRAINING, np.ones(10))
    r1, r2 = rng(7), rng(7)
    jobs1 = fedavg.jobs(fedavg.init(f32(0)), 0.0, np.arange(10), r1)[1]
    jobs2 = fedprox.jobs(fedprox.init(f32(0)), 0.0, np.arange(10), r2)[1]
    assert jobs1 == jobs2 and r1.random() == r2.random()


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (FedAvgParams, {"deadline": -1.0}, r"^deadline must be >= 0, 0 for none \(got -1.0\)"),
        (FedAvgParams, {"over_selection": 0.9}, r"^over_selection must be >= 1 \(got 0.9\)"),
        (FedProxParams, {"variable_work": 1.5}, r"^variable_work must be in \[0, 1\] \(got 1.5\)"),
        (FedProxParams, {"variable_work": -0.1}, r"^variable_work must be in \[0, 1\]"),
    ],
)
def test_straggler_params_validation(cls: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
