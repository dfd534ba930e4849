"""Byzantine clients and robust aggregation wired into the algorithms and the config:
robust rules and ALIE on hand-built updates with hand-computed models, and the one-line
config errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from algorithms.attacks import (
    ATTACKS,
    ByzantineConfig,
    ColludingUpdate,
    alie_z_max,
    alie_z_round,
    attacked_set,
    byzantine_clients,
    collude,
    colluding,
)
from algorithms.base import LocalTraining, Update
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.fedbuff import FedBuff, FedBuffParams
from algorithms.fedprox import FedProx, FedProxParams
from algorithms.robust import AggregatorConfig
from engine.config import ConfigError, load_config
from engine.core import serial
from engine.core.rng import stream

TRAINING = LocalTraining(local_steps=3, batch_size=0, lr=0.1)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def upd(client: int, delta: tuple[float, ...], base: np.ndarray, n: int = 1, version: int = 0) -> Update:
    return Update(client, f32(*delta), n, version, base)


def fedavg_round(alg: FedAvg, sizes: int) -> Any:
    state, jobs = alg.jobs(alg.init(f32(1, 2)), 0.0, np.arange(sizes), np.random.default_rng(0))
    assert sorted(j.client for j in jobs) == list(range(sizes))
    return state


# ---- which clients attack ------------------------------------------------------------------


def test_attackers_are_one_keyed_draw() -> None:
    cfg = ByzantineConfig("sign_flip", fraction=0.3)
    expected = byzantine_clients(20, 0.3, stream(7, "byzantine"))
    assert len(expected) == 6
    np.testing.assert_array_equal(cfg.clients(20, 7), expected)
    assert attacked_set(cfg, 20, 7) == frozenset(expected.tolist())
    assert not np.array_equal(cfg.clients(20, 8), expected)  # another seed, other attackers
    # fraction 0, whatever the attack: nobody; the attack 'none' cannot take a fraction
    assert attacked_set(ByzantineConfig("alie", fraction=0.0), 20, 7) == frozenset()
    assert not ByzantineConfig("alie").active and ByzantineConfig("alie", 0.1).active


# ---- ALIE at the aggregation ------------------------------------------------------------


def test_collude_replaces_colluders_by_the_honest_moments() -> None:
    # honest (1, 0) and (3, 4): mean (2, 2), std (1, 2); z = 1.5 -> (0.5, -1)
    deltas = [f32(1, 0), f32(9, 9), f32(3, 4), f32(-7, 7)]
    out = collude(deltas, {1, 3}, 1.5)
    for i in (0, 2):
        assert out[i] is deltas[i]
    np.testing.assert_array_equal(out[1], f32(0.5, -1))
    np.testing.assert_array_equal(out[3], f32(0.5, -1))
    # z from the aggregate's n=4, f=2: s = floor(3) - 2 = 1, z = Phi^-1(3/4)
    z = alie_z_max(4, 2)
    np.testing.assert_allclose(collude(deltas, {1, 3}, None)[1], f32(2 - z, 2 - 2 * z), rtol=1e-6)
    # nothing to estimate from: no colluder, or no honest update
    assert collude(deltas, set(), None) == deltas
    assert collude(deltas[:2], {0, 1}, None) == deltas[:2]


def test_alie_z_of_a_colluding_majority_uses_s_1() -> None:
    assert alie_z_round(10, 3) == alie_z_max(10, 3)
    # n=5, f=3: s = floor(3.5) - 3 = 0 -> as s = 1: Phi^-1(4/5)
    assert alie_z_round(5, 3) == pytest.approx(0.8416212336)
    assert alie_z_round(5, 4) == alie_z_round(5, 3)


def test_fedavg_round_with_alie_colluders_by_hand() -> None:
    alg = FedAvg(FedAvgParams(clients_per_round=3, weighting="uniform"), TRAINING, np.ones(3))
    s = fedavg_round(alg, 3)
    base = s.model
    s = alg.on_update(s, upd(0, (1, 0), base), 1.0)
    s = alg.on_update(s, colluding(upd(1, (100, 100), base), 1.5), 1.0)
    s = alg.on_update(s, upd(2, (3, 4), base), 1.0)
    # colluder -> (0.5, -1); mean of (1,0), (0.5,-1), (3,4) = (1.5, 1); x = (1,2) - (1.5,1)
    assert s.version == 1
    np.testing.assert_allclose(s.model, f32(-0.5, 1), rtol=1e-6)


def test_a_colluding_update_keeps_every_field() -> None:
    u = Update(4, f32(1, 2), 17, 3, f32(0, 0), {"delta": f32(1, 2)})
    c = colluding(u, None)
    assert isinstance(c, ColludingUpdate) and c.alie_z is None
    assert (c.client, c.num_samples, c.version_start, c.payload) == (4, 17, 3, u.payload)


def test_states_holding_colluders_round_trip_through_a_checkpoint() -> None:
    alg = FedAvg(FedAvgParams(clients_per_round=3), TRAINING, np.ones(3))
    s = fedavg_round(alg, 3)
    s = alg.on_update(s, colluding(upd(1, (5, 5), s.model, n=4), None), 1.0)
    back = serial.loads(serial.dumps(s))
    (u,) = back.received
    assert isinstance(u, ColludingUpdate) and u.alie_z is None and (u.client, u.num_samples) == (1, 4)
    np.testing.assert_array_equal(u.delta, f32(5, 5))
    buff, b = fedbuff()
    b = buff.on_update(b, colluding(upd(2, (1, 1), b.model), 0.5), 1.0)
    back = serial.loads(serial.dumps(b))
    assert back.colluders == ((0, 0.5),) and back.weights == (1.0,)


# ---- robust aggregators in FedAvg / FedProx ----------------------------------------------


def test_fedavg_median_of_three_hand_deltas() -> None:
    params = FedAvgParams(clients_per_round=3, server_lr=0.5, aggregator=AggregatorConfig("median"))
    alg = FedAvg(params, TRAINING, np.array([10, 30, 60]))
    s = fedavg_round(alg, 3)
    base = s.model
    for c, d in ((0, (1, -4)), (1, (100, 0)), (2, (3, 2))):
        s = alg.on_update(s, upd(c, d, base, n=10 * (c + 1)), 1.0)
    # median per coordinate: (3, 0), sample weights ignored; x = (1,2) - 0.5*(3,0)
    assert s.version == 1 and s.received == ()
    np.testing.assert_array_equal(s.model, f32(-0.5, 2))
    assert alg.stats(s) == {"dropped": 0.0, "robust_skipped": 0.0}


def test_fedavg_krum_picks_the_central_update_and_server_opt_follows() -> None:
    agg = AggregatorConfig("krum", byzantine=1)
    params = FedAvgParams(clients_per_round=5, server_lr=1.0, server_opt="avgm", beta1=0.5, aggregator=agg)
    alg = FedAvg(params, TRAINING, np.ones(5))
    s = fedavg_round(alg, 5)
    base = s.model
    deltas = ((0, 0), (1, 0), (0, 1), (1, 1), (50, -50))
    for c, d in enumerate(deltas):
        s = alg.on_update(s, upd(c, d, base), 1.0)
    # n - f - 2 = 2 nearest: scores (0,0): 1+1, (1,0): 1+1, (0,1): 1+1, (1,1): 1+1, far one huge;
    # ties go to the lower index: (0,0). avgm: m = (0,0), x unchanged.
    np.testing.assert_array_equal(s.model, f32(1, 2))
    # second round: the same deltas shifted so that (1, 1) is the unique centre
    s, _ = alg.jobs(s, 2.0, np.arange(5), np.random.default_rng(1))
    for c, d in enumerate(((1, 1), (0, 1), (1, 0), (2, 1), (1, 2))):
        s = alg.on_update(s, upd(c, d, s.model, version=1), 3.0)
    # Krum: (1,1) (its two nearest at distance 1). avgm: m = 0.5*0 + (1,1); x = (1,2) - (1,1)
    np.testing.assert_array_equal(s.model, f32(0, 1))


def test_fedavg_round_too_small_for_the_rule_makes_no_version() -> None:
    agg = AggregatorConfig("krum", byzantine=1)  # needs n > 4
    alg = FedAvg(FedAvgParams(clients_per_round=5, aggregator=agg), TRAINING, np.ones(5))
    s = fedavg_round(alg, 5)
    for c in range(4):
        s = alg.on_update(s, upd(c, (1, 1), s.model), 1.0)
    s = alg.on_drop(s, 4, 1.0)  # four updates: krum cannot choose
    assert s.version == 0 and s.received == () and s.pending == ()
    np.testing.assert_array_equal(s.model, f32(1, 2))
    assert alg.stats(s) == {"dropped": 1.0, "robust_skipped": 1.0}


def test_fedprox_uses_the_robust_aggregator() -> None:
    params = FedProxParams(clients_per_round=3, aggregator=AggregatorConfig("trimmed_mean", trim=0.34))
    alg = FedProx(params, TRAINING, np.ones(3))
    s = fedavg_round(alg, 3)
    for c, d in ((0, (1, 5)), (1, (2, -9)), (2, (30, 6))):
        s = alg.on_update(s, upd(c, d, s.model), 1.0)
    # floor(0.34 * 3) = 1 cut per side: the middle values (2, 5)
    np.testing.assert_array_equal(s.model, f32(-1, -3))


# ---- robust aggregators in FedBuff --------------------------------------------------------


def fedbuff(**kw: Any) -> tuple[FedBuff, Any]:
    alg = FedBuff(
        FedBuffParams(concurrency=3, buffer_size=3, staleness="poly", a=1.0, **kw), TRAINING, np.ones(3)
    )
    s, jobs = alg.jobs(alg.init(f32(1, 1)), 0.0, np.arange(3), np.random.default_rng(0))
    assert len(jobs) == 3
    return alg, s


def test_fedbuff_median_of_the_staleness_weighted_buffer() -> None:
    alg, s = fedbuff(aggregator=AggregatorConfig("median"))
    base = s.model
    s = alg.on_update(s, upd(0, (2, 0), base), 1.0)
    s = alg.on_update(s, upd(1, (4, 8), base), 2.0)
    assert s.weights == (1.0, 1.0) and s.version == 0
    s = alg.on_update(s, upd(2, (-6, 2), base), 3.0)
    # all fresh (s = 1): median of (2,4,-6), (0,8,2) = (2, 2); x = (1,1) - (2,2)
    assert s.version == 1 and s.buffer == () and s.weights == ()
    np.testing.assert_array_equal(s.model, f32(-1, -1))


def test_fedbuff_robust_rule_sees_stale_updates_weighted_and_sum_scales_by_k() -> None:
    alg, s = fedbuff(aggregator=AggregatorConfig("median"), buffer_reduce="sum")
    base = s.model
    # pretend the server is at version 1: every update is 1 stale, s(1) = 1/2
    s = type(s)(model=s.model, version=1, in_flight=s.in_flight)
    for c, d in ((0, (2, 0)), (1, (4, 8)), (2, (-6, 2))):
        s = alg.on_update(s, upd(c, d, base), 1.0)
    # median of 0.5 * deltas = (1, 1); sum: times K = 3; x = (1,1) - (3,3)
    np.testing.assert_array_equal(s.model, f32(-2, -2))


def test_fedbuff_buffer_with_an_alie_colluder() -> None:
    alg, s = fedbuff()  # the mean (1/K of the staleness-weighted sum): FedBuff's own flush
    base = s.model
    s = alg.on_update(s, upd(0, (1, 0), base), 1.0)
    s = alg.on_update(s, colluding(upd(1, (50, 50), base), 2.0), 2.0)
    assert s.colluders == ((1, 2.0),)
    s = alg.on_update(s, upd(2, (3, 4), base), 3.0)
    # honest mean (2,2), std (1,2): colluder -> (0, -2); mean of (1,0), (0,-2), (3,4) = (4/3, 2/3)
    assert s.colluders == ()
    np.testing.assert_allclose(s.model, f32(1 - 4 / 3, 1 - 2 / 3), rtol=1e-6)


# ---- config -------------------------------------------------------------------------------

BASE = ["workload.name=synthetic", "clients.num=12", "executors.backend=local"]


def cfg_of(*overrides: str) -> Any:
    return load_config(None, [*BASE, *overrides])


def test_config_sections_build() -> None:
    cfg = cfg_of(
        "algorithm.name=fedavg",
        "algorithm.aggregator.name=multi_krum",
        "algorithm.aggregator.byzantine=2",
        "clients.byzantine.fraction=0.25",
        "clients.byzantine.attack=gaussian",
        "clients.byzantine.noise_std=0.5",
    )
    assert cfg.algorithm.params.aggregator == AggregatorConfig("multi_krum", byzantine=2)
    assert cfg.clients.byzantine == ByzantineConfig("gaussian", 0.25, noise_std=0.5)
    assert (
        cfg_of("clients.byzantine.attack=alie", "clients.byzantine.alie_z=null").clients.byzantine.alie_z
        is None
    )
    assert set(ATTACKS) >= {"sign_flip", "scale", "gaussian", "alie", "label_flip"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("clients.byzantine.attack=flip",), "clients.byzantine.attack must be one of none, sign_flip"),
        (("clients.byzantine.fraction=1.5",), "clients.byzantine.fraction must be in [0, 1]"),
        (("clients.byzantine.fraction=0.1",), "fraction is 0.1 but attack is none"),
        (("clients.byzantine.noise_std=0",), "clients.byzantine.noise_std must be > 0"),
        (
            ("algorithm.name=fedavg", "algorithm.aggregator.name=mode"),
            "algorithm.aggregator.name must be one of",
        ),
        (
            ("algorithm.name=fedavg", "algorithm.aggregator.name=krum", "algorithm.aggregator.byzantine=4"),
            "algorithm.aggregator with algorithm.clients_per_round=10: krum needs n > 2*byzantine + 2",
        ),
        (
            (
                "algorithm.name=fedbuff",
                "algorithm.aggregator.name=median",
                "algorithm.aggregator.byzantine=3",
            ),
            "algorithm.aggregator with algorithm.buffer_size=5: median tolerates fewer than half",
        ),
        (
            (
                "algorithm.name=fedprox",
                "algorithm.aggregator.name=trimmed_mean",
                "algorithm.aggregator.byzantine=2",
            ),
            "trimmed_mean cuts floor(trim * n) = 1 per side, fewer than byzantine=2",
        ),
        (
            ("algorithm.name=fedasync", "algorithm.aggregator.name=median"),
            "unknown key 'algorithm.aggregator'",
        ),
        (
            ("algorithm.name=fedasync", "clients.byzantine.attack=alie", "clients.byzantine.fraction=0.2"),
            "clients.byzantine.attack=alie replaces colluders' updates where many are aggregated",
        ),
    ],
)
def test_config_errors_are_one_line(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg_of(*overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_client_side_attacks_run_on_any_algorithm() -> None:
    cfg = cfg_of(
        "algorithm.name=fedasync", "clients.byzantine.attack=sign_flip", "clients.byzantine.fraction=0.2"
    )
    assert cfg.clients.byzantine.active
