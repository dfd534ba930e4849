"""Each algorithm driven by hand: dispatch, constructed updates, exact resulting models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from algorithms import ALGORITHMS
from algorithms.base import LocalTraining, Update
from algorithms.fedasync import FedAsync, FedAsyncParams
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.fedbuff import FedBuff, FedBuffParams
from algorithms.fedprox import FedProx, FedProxParams

TRAINING = LocalTraining(local_steps=3, batch_size=0, lr=0.1)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def upd(client: int, delta: tuple[float, ...], version_start: int, base: np.ndarray, n: int = 1) -> Update:
    return Update(client, f32(*delta), n, version_start, base)


def idle_of(num_clients: int, state: Any, *unavailable: int) -> np.ndarray:
    busy = set(state.in_flight if hasattr(state, "in_flight") else state.pending) | set(unavailable)
    return np.array([c for c in range(num_clients) if c not in busy], dtype=np.int64)


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_registry_names() -> None:
    # Every built-in's config name is its class's own name (plug-ins are named by their path).
    assert all(name == cls.name for name, cls in ALGORITHMS.builtins.items())
    assert {"fedavg", "fedprox", "fedasync", "fedbuff"} <= set(ALGORITHMS)


# ---- FedAvg / FedProx -------------------------------------------------------------------


def fedavg_round(params: FedAvgParams, sizes: list[int]) -> tuple[FedAvg, Any]:
    alg = FedAvg(params, TRAINING, np.array(sizes))
    state, jobs = alg.jobs(alg.init(f32(1, 2)), 0.0, np.arange(len(sizes)), rng())
    assert sorted(j.client for j in jobs) == list(range(len(sizes)))
    assert all(j.task.steps == 3 and j.task.prox_mu == 0 for j in jobs)
    return alg, state


def test_fedavg_sample_weighted_round() -> None:
    alg, s = fedavg_round(FedAvgParams(clients_per_round=3, server_lr=0.5), [10, 30, 60])
    base = s.model
    s = alg.on_update(s, upd(2, (1, 1), 0, base, n=60), 1.0)
    assert alg.jobs(s, 1.0, np.array([2]), rng())[1] == []  # the round is still open
    s = alg.on_update(s, upd(0, (1, 0), 0, base, n=10), 2.0)
    assert s.version == 0 and s.model is base
    s = alg.on_update(s, upd(1, (0, 1), 0, base, n=30), 3.0)
    # avg = 0.1*(1,0) + 0.3*(0,1) + 0.6*(1,1) = (0.7, 0.9);  x = (1,2) - 0.5*avg
    assert s.version == 1 and s.pending == () and s.received == ()
    np.testing.assert_allclose(s.model, f32(0.65, 1.55), rtol=1e-6)
    assert s.model.dtype == np.float32
    np.testing.assert_array_equal(base, f32(1, 2))  # the old state's model is untouched


def test_fedavg_uniform_weighting() -> None:
    alg, s = fedavg_round(FedAvgParams(clients_per_round=3, weighting="uniform"), [10, 30, 60])
    for c, d in ((0, (1, 0)), (1, (0, 1)), (2, (1, 1))):
        s = alg.on_update(s, upd(c, d, 0, s.model, n=10 * (c + 1)), 1.0)
    np.testing.assert_allclose(s.model, f32(1 - 2 / 3, 2 - 2 / 3), rtol=1e-6)


def test_fedavg_round_with_a_drop() -> None:
    alg, s = fedavg_round(FedAvgParams(clients_per_round=3), [10, 30, 60])
    base = s.model
    s = alg.on_update(s, upd(0, (1, 0), 0, base, n=10), 1.0)
    s = alg.on_drop(s, 1, 1.5)
    assert s.version == 0
    s = alg.on_update(s, upd(2, (1, 1), 0, base, n=60), 2.0)
    # weights over the returned clients only: 10/70, 60/70 -> avg = (1, 6/7)
    assert s.version == 1 and alg.stats(s) == {"dropped": 1.0}
    np.testing.assert_allclose(s.model, f32(0, 2 - 6 / 7), rtol=1e-6, atol=1e-7)


def test_fedavg_all_dropped_round_makes_no_version() -> None:
    alg, s = fedavg_round(FedAvgParams(clients_per_round=2), [5, 5])
    s = alg.on_drop(alg.on_drop(s, 1, 1.0), 0, 1.0)
    assert s.version == 0 and s.pending == ()
    np.testing.assert_array_equal(s.model, f32(1, 2))
    s, jobs = alg.jobs(s, 2.0, np.array([0]), rng())  # the next round starts with who is there
    assert [j.client for j in jobs] == [0] and s.pending == (0,)
    assert alg.jobs(s, 2.0, np.array([], dtype=np.int64), rng())[1] == []
    with pytest.raises(ValueError, match="no job in flight"):
        alg.on_update(s, upd(1, (0, 0), 0, s.model), 3.0)


def test_fedprox_is_fedavg_with_prox_task() -> None:
    alg = FedProx(FedProxParams(clients_per_round=2, mu=0.5), TRAINING, np.array([3, 1]))
    assert isinstance(alg, FedAvg) and alg.name == "fedprox"
    s, jobs = alg.jobs(alg.init(f32(1, 2)), 0.0, np.arange(2), rng())
    assert all(j.task.prox_mu == 0.5 and j.task.lr == 0.1 for j in jobs)
    s = alg.on_update(s, upd(0, (4, 0), 0, s.model, n=3), 1.0)
    s = alg.on_update(s, upd(1, (0, 4), 0, s.model, n=1), 1.0)
    np.testing.assert_array_equal(s.model, f32(-2, 1))  # (1,2) - (3/4*(4,0) + 1/4*(0,4))


# ---- FedBuff ----------------------------------------------------------------------------


def fedbuff_run(**kw: Any) -> tuple[FedBuff, list[Any]]:
    """C=3, K=2, poly a=1 (s(1) = 1/2), x0=(1,1): p,q flush; r (stale by 1) and s flush."""
    alg = FedBuff(
        FedBuffParams(concurrency=3, buffer_size=2, staleness="poly", a=1.0, **kw), TRAINING, np.ones(6)
    )
    s0 = alg.init(f32(1, 1))
    s0, jobs = alg.jobs(s0, 0.0, np.arange(6), rng())
    p, q, r = (j.client for j in jobs)
    s1 = alg.on_update(s0, upd(p, (2, 0), 0, s0.model), 1.0)
    s2 = alg.on_update(s1, upd(q, (0, 2), 0, s0.model), 2.0)
    s2, jobs = alg.jobs(s2, 2.0, idle_of(6, s2), rng())
    assert len(jobs) == 2 and len(s2.in_flight) == 3 and r in s2.in_flight
    s3 = alg.on_update(s2, upd(r, (4, 0), 0, s0.model), 3.0)
    s4 = alg.on_update(s3, upd(jobs[0].client, (0, 2), 1, s2.model), 4.0)
    return alg, [s0, s1, s2, s3, s4]


def test_fedbuff_flush_after_k_with_staleness_weights() -> None:
    alg, (s0, s1, s2, s3, s4) = fedbuff_run()
    assert s1.version == 0 and s1.model is s0.model and len(s1.buffer) == 1
    assert s2.version == 1  # (1,1) - ((2,0) + (0,2)) / 2
    np.testing.assert_array_equal(s2.model, f32(0, 0))
    assert s3.version == 1 and s3.buffer[0][1] == 0.25  # s(1) / K
    assert s4.version == 2  # (0,0) - (0.5*(4,0) + 1*(0,2)) / 2
    np.testing.assert_array_equal(s4.model, f32(-1, -1))
    assert alg.stats(s4) == {
        "applied": 4.0,
        "buffered": 0.0,
        "discarded_stale": 0.0,
        "mean_staleness": 0.25,
        "dropped": 0.0,
    }


def test_fedbuff_sum_vs_mean() -> None:
    _, states = fedbuff_run(buffer_reduce="sum")
    np.testing.assert_array_equal(states[2].model, f32(-1, -1))  # (1,1) - ((2,0) + (0,2))
    np.testing.assert_array_equal(states[4].model, f32(-3, -3))  # (-1,-1) - (0.5*(4,0) + (0,2))
    # FLSim's sum with server_lr 1/K is the paper's mean with server_lr 1
    _, summed = fedbuff_run(buffer_reduce="sum", server_lr=0.5)
    _, mean = fedbuff_run()
    np.testing.assert_array_equal(summed[4].model, mean[4].model)


def test_fedbuff_max_staleness_discards() -> None:
    alg, (_, _, s2, s3, s4) = fedbuff_run(max_staleness=0)
    assert s3.version == 1 and s3.buffer == () and s3.discarded_stale == 1
    assert len(s3.in_flight) == 2  # the discarded client's slot is free again
    assert s4.version == 1 and len(s4.buffer) == 1  # s is fresh: buffered, no flush yet
    np.testing.assert_array_equal(s4.model, s2.model)
    assert alg.stats(s4)["discarded_stale"] == 1.0 and alg.stats(s4)["applied"] == 2.0


def test_concurrency_refills_after_updates_and_drops() -> None:
    algs: tuple[Any, ...] = (
        FedBuff(FedBuffParams(concurrency=3, buffer_size=2), TRAINING, np.ones(5)),
        FedAsync(FedAsyncParams(concurrency=3), TRAINING, np.ones(5)),
    )
    for alg in algs:
        s, jobs = alg.jobs(alg.init(f32(0, 0)), 0.0, np.arange(5), rng())
        assert len(jobs) == 3 and len(set(s.in_flight)) == 3
        assert alg.jobs(s, 0.0, idle_of(5, s), rng())[1] == []  # full
        a, b, _ = (j.client for j in jobs)
        s = alg.on_drop(s, a, 1.0)
        assert len(s.in_flight) == 2 and s.dropped == 1
        s = alg.on_update(s, upd(b, (1, 1), 0, s.model), 1.0)
        assert len(s.in_flight) == 1
        s, jobs = alg.jobs(s, 1.0, idle_of(5, s, a), rng())  # a is unavailable now
        assert len(jobs) == 2 and a not in s.in_flight and len(s.in_flight) == 3
        s, jobs = alg.jobs(s, 1.0, np.array([], dtype=np.int64), rng())
        assert jobs == [] and len(s.in_flight) == 3
        with pytest.raises(ValueError, match="no job in flight"):
            alg.on_drop(s, a, 2.0)


# ---- FedAsync ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mix_mode", "expected"), [("mix_current", (1.75, 0.75)), ("delta_on_stale_base", (2, 1))]
)
def test_fedasync_both_mix_modes(mix_mode: str, expected: tuple[float, float]) -> None:
    params = FedAsyncParams(concurrency=2, alpha=0.5, staleness="poly", a=1.0, mix_mode=mix_mode)
    alg = FedAsync(params, TRAINING, np.ones(4))
    s0, jobs = alg.jobs(alg.init(f32(0, 0)), 0.0, np.arange(4), rng())
    a, b = (j.client for j in jobs)
    s1 = alg.on_update(s0, upd(a, (-2, -2), 0, s0.model), 1.0)
    # fresh: alpha_t = 0.5 -> 0.5*(0,0) + 0.5*(2,2) in both modes
    assert s1.version == 1
    np.testing.assert_array_equal(s1.model, f32(1, 1))
    s2 = alg.on_update(s1, upd(b, (-4, 0), 0, s0.model), 2.0)
    # stale by 1: alpha_t = 0.5 * 1/2; mix_current 0.75*(1,1) + 0.25*(4,0); stale base (1,1) + 0.25*(4,0)
    assert s2.version == 2 and s2.in_flight == ()
    np.testing.assert_array_equal(s2.model, f32(*expected))
    assert alg.stats(s2) == {"mean_staleness": 0.5, "dropped": 0.0}


def test_fedasync_defaults_no_1_over_n() -> None:
    alg = FedAsync(FedAsyncParams(), TRAINING, np.ones(20))  # alpha 0.6, poly a=0.5
    s0, jobs = alg.jobs(alg.init(f32(0)), 0.0, np.arange(20), rng())
    assert len(jobs) == 10
    s = s0
    for j in jobs[:3]:
        s = alg.on_update(s, upd(j.client, (0,), s.version, s.model), 1.0)
    s = alg.on_update(s, upd(jobs[3].client, (-10,), 0, s0.model), 2.0)
    np.testing.assert_allclose(s.model, f32(3.0), rtol=1e-6)  # alpha_t = 0.6 * 4^-0.5 = 0.3 on y=10


# ---- FedBuff and FedAvg coincide ---------------------------------------------------------


def test_fedbuff_k_equals_concurrency_is_fedavg_bit_for_bit() -> None:
    sizes = np.full(8, 7)
    algs: tuple[Any, ...] = (
        FedAvg(FedAvgParams(clients_per_round=3), TRAINING, sizes),
        FedBuff(FedBuffParams(concurrency=3, buffer_size=3), TRAINING, sizes),
    )
    states = [a.init(np.linspace(-1, 1, 5, dtype=np.float32)) for a in algs]
    for t in range(4):
        drawn = []
        for i, alg in enumerate(algs):
            states[i], jobs = alg.jobs(states[i], float(t), np.arange(8), np.random.default_rng(t))
            drawn.append([j.client for j in jobs])
            base = states[i].model
            for c in drawn[-1]:
                delta = np.sin(np.arange(5, dtype=np.float32) * (c + 1) + t).astype(np.float32) / 3
                states[i] = alg.on_update(states[i], Update(c, delta, 7, states[i].version, base), t + 0.5)
        assert drawn[0] == drawn[1]
        assert states[0].version == states[1].version == t + 1
        np.testing.assert_array_equal(states[0].model, states[1].model)


# ---- Params validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (FedAvgParams, {"clients_per_round": 0}, r"^clients_per_round must be >= 1 \(got 0\)"),
        (FedAvgParams, {"server_lr": 0.0}, r"^server_lr must be > 0"),
        (FedAvgParams, {"weighting": "size"}, r"^weighting must be one of samples, uniform \(got 'size'\)"),
        (FedProxParams, {"mu": -0.1}, r"^mu must be >= 0 \(got -0.1\)"),
        (FedProxParams, {"clients_per_round": -1}, r"^clients_per_round must be >= 1"),
        (FedAsyncParams, {"concurrency": 0}, r"^concurrency must be >= 1"),
        (FedAsyncParams, {"alpha": 0.0}, r"^alpha must be in \(0, 1\] \(got 0.0\)"),
        (FedAsyncParams, {"alpha": 1.5}, r"^alpha must be in \(0, 1\]"),
        (FedAsyncParams, {"staleness": "exp"}, r"^staleness must be one of const, poly, hinge"),
        (FedAsyncParams, {"a": -1.0}, r"^a must be >= 0"),
        (FedAsyncParams, {"mix_mode": "mix"}, r"^mix_mode must be one of mix_current, delta_on_stale_base"),
        (FedBuffParams, {"buffer_size": 0}, r"^buffer_size must be >= 1 \(got 0\)"),
        (FedBuffParams, {"concurrency": 0}, r"^concurrency must be >= 1"),
        (FedBuffParams, {"server_lr": -1.0}, r"^server_lr must be > 0"),
        (FedBuffParams, {"b": -2.0}, r"^b must be >= 0"),
        (FedBuffParams, {"buffer_reduce": "avg"}, r"^buffer_reduce must be one of mean, sum"),
        (FedBuffParams, {"max_staleness": -2}, r"^max_staleness must be >= 0, or -1 for no limit \(got -2\)"),
    ],
)
def test_params_validation(cls: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_params_defaults() -> None:
    assert FedAvgParams() == FedAvgParams(clients_per_round=10, server_lr=1.0, weighting="samples")
    assert FedProxParams().mu == 0.01 and FedProxParams().variable_work == 0.0
    # stragglers and server optimizer off by default: the plain synchronous round
    assert (FedAvgParams().deadline, FedAvgParams().over_selection) == (0.0, 1.0)
    assert FedAvgParams().server_opt == FedBuffParams().server_opt == "sgd"
    assert FedAsyncParams() == FedAsyncParams(10, 0.6, "poly", 0.5, 4.0, "mix_current")
    assert FedBuffParams() == FedBuffParams(10, 5, 1.0, "poly", 0.5, 4.0, "mean", -1)
