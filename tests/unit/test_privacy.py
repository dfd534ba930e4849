"""DP-FedAvg math, the ledger in the algorithms' state and the privacy accountant, against
values computed by hand and dp-accounting's own figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

import algorithms.privacy as dp
from algorithms.base import LocalTraining, Update, sample_clients
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.fedbuff import FedBuff, FedBuffParams
from algorithms.privacy import (
    PrivacyConfig,
    Spent,
    central_dp_aggregate,
    clip_to_norm,
    epsilon,
    gaussian_noise,
    local_dp_update,
)
from algorithms.robust import AggregatorConfig

TRAINING = LocalTraining(local_steps=3, batch_size=0, lr=0.1)

N = 200_000  # draws for a measured std: relative standard error 1/sqrt(2N) = 0.16%
STD_RTOL = 0.01  # about 6 standard errors; the seeds are fixed, so this never flakes


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_clip_to_norm_exact() -> None:
    np.testing.assert_allclose(clip_to_norm(f32(3, 4), 1.0), f32(0.6, 0.8), rtol=1e-7)  # norm 5 -> 1
    np.testing.assert_array_equal(clip_to_norm(f32(3, 4), 5.0), f32(3, 4))  # exactly at the bound
    np.testing.assert_array_equal(clip_to_norm(f32(3, 4), 10.0), f32(3, 4))
    np.testing.assert_array_equal(clip_to_norm(f32(0, 0), 1.0), f32(0, 0))
    out = clip_to_norm(np.full(1000, 7.0, np.float32), 2.0)
    assert out.dtype == np.float32
    assert float(np.linalg.norm(out)) == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="clip"):
        clip_to_norm(f32(1), 0.0)


def test_gaussian_noise_std_measured() -> None:
    x = gaussian_noise(N, 0.5, np.random.default_rng(0))
    assert x.shape == (N,) and x.dtype == np.float32
    assert float(x.std()) == pytest.approx(0.5, rel=STD_RTOL)
    assert abs(float(x.mean())) < 5 * 0.5 / math.sqrt(N)  # 5 standard errors of the mean
    np.testing.assert_array_equal(gaussian_noise((2, 3), 0.0, np.random.default_rng(0)), np.zeros((2, 3)))


def test_central_dp_without_noise_by_hand() -> None:
    # clip 2: (3,4) -> (1.2,1.6); (0,1) stays; (0,-6) -> (0,-2); sum (1.2, 0.6)
    deltas = [f32(3, 4), f32(0, 1), f32(0, -6)]
    # divided by the expected 4 clients, not the 3 that came
    out = central_dp_aggregate(deltas, 2.0, 0.0, 4.0, np.random.default_rng(0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, f32(0.3, 0.15), rtol=1e-6)


def test_central_dp_noise_is_added_once_to_the_sum() -> None:
    # Same seed: the noise is one draw of N(0, (z C)^2) on the sum, then the division.
    deltas = [f32(3, 4), f32(0, 1), f32(0, -6)]
    out = central_dp_aggregate(deltas, 2.0, 1.5, 4.0, np.random.default_rng(3))
    noise = np.random.default_rng(3).normal(0.0, 3.0, size=2)
    np.testing.assert_allclose(out, (np.array([1.2, 0.6]) + noise) / 4.0, rtol=1e-6, atol=1e-6)
    # measured: z=1.5, C=2 -> sum noise std 3, over 4 expected clients -> 0.75 per coordinate
    big = central_dp_aggregate([np.zeros(N, np.float32)], 2.0, 1.5, 4.0, np.random.default_rng(4))
    assert float(big.std()) == pytest.approx(0.75, rel=STD_RTOL)
    with pytest.raises(ValueError, match="expected_clients"):
        central_dp_aggregate(deltas, 2.0, 1.5, 0.0, np.random.default_rng(0))


def test_central_dp_weights_scale_the_clipped_deltas_and_stay_at_most_one() -> None:
    # FedBuff's staleness weights: 1 * (1.2, 1.6) + 0.5 * (0, 1) = (1.2, 2.1), over K = 2
    out = central_dp_aggregate([f32(3, 4), f32(0, 1)], 2.0, 0.0, 2.0, np.random.default_rng(0), [1.0, 0.5])
    np.testing.assert_allclose(out, f32(0.6, 1.05), rtol=1e-6)
    for bad in ([1.5, 1.0], [1.0]):  # a weight above 1 would exceed the sensitivity C
        with pytest.raises(ValueError, match="weights must be one per delta, each in"):
            central_dp_aggregate([f32(3, 4), f32(0, 1)], 2.0, 0.0, 2.0, np.random.default_rng(0), bad)


def test_local_dp_by_hand_and_measured() -> None:
    np.testing.assert_allclose(local_dp_update(f32(30, 40), 5.0, 0.0, np.random.default_rng(0)), f32(3, 4))
    # every client adds its own N(0, (z C)^2): z=0.5, C=2 -> std 1
    x = local_dp_update(np.zeros(N, np.float32), 2.0, 0.5, np.random.default_rng(5))
    assert float(x.std()) == pytest.approx(1.0, rel=STD_RTOL)


def test_privacy_config_validation() -> None:
    assert PrivacyConfig().mode == "none"
    for kwargs, field in [
        ({"mode": "shuffle"}, "mode"),
        ({"clip": 0.0}, "clip"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "moments"}, "accountant"),
    ]:
        with pytest.raises(ValueError, match=rf"^{field} must") as e:
            PrivacyConfig(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)


# ---- through the algorithms: the noise scale and the clipping by hand ------------------------


def central(**kw: float) -> PrivacyConfig:
    return PrivacyConfig(mode="central", **kw)  # type: ignore[arg-type]


def upd(client: int, delta: tuple[float, ...], version_start: int, base: np.ndarray) -> Update:
    return Update(client, f32(*delta), 1, version_start, base)


@pytest.mark.parametrize("z", [0.0, 1.5])
def test_fedavg_central_round_by_hand(z: float) -> None:
    p = FedAvgParams(clients_per_round=3, weighting="uniform", privacy=central(clip=2.0, noise_multiplier=z))
    alg = FedAvg(p, TRAINING, np.array([10, 20, 30, 40, 50]))
    s, jobs = alg.jobs(alg.init(f32(1, 2)), 0.0, np.arange(5), np.random.default_rng(0))
    # The noise key is drawn from the round's stream after the sampling, and only once.
    r = np.random.default_rng(0)
    assert sorted(sample_clients(r, np.arange(5), 3)) == sorted(j.client for j in jobs)
    assert s.ledger.key == int(r.integers(2**62)) and s.ledger.open == (5, 3)
    a, b, c = (j.client for j in jobs)
    for client, delta in ((a, (3, 4)), (b, (0, 1)), (c, (0, -6))):
        s = alg.on_update(s, upd(client, delta, 0, s.model), 1.0)
    assert s.version == 1 and s.ledger.rounds == ((5, 3, 1),) and s.ledger.open == (0, 0)
    # clip 2: (3,4) -> (1.2,1.6), (0,1) stays, (0,-6) -> (0,-2); sum (1.2, 0.6); noise
    # N(0, (z C)^2) once on the sum, from the stream keyed by (run key, version 1); / 3
    key = np.random.SeedSequence([s.ledger.key, 1])
    noise = np.random.Generator(np.random.PCG64(key)).normal(0.0, z * 2.0, 2).astype(np.float32)
    want = np.array([1, 2]) - (np.array([1.2, 0.6]) + noise) / 3
    np.testing.assert_allclose(s.model, want, rtol=1e-6, atol=1e-6)
    if z == 0:
        np.testing.assert_allclose(s.model, f32(0.6, 1.8), rtol=1e-6)


def test_fedavg_central_accounts_the_sample_really_drawn() -> None:
    p = FedAvgParams(clients_per_round=2, over_selection=1.5, weighting="uniform", privacy=central())
    alg = FedAvg(p, TRAINING, np.full(6, 10))
    s = alg.init(f32(0))
    assert alg.privacy_spent(s) == dp.Spending(Spent(), Spent())
    s, jobs = alg.jobs(s, 0.0, np.array([0, 1, 2, 3, 5]), np.random.default_rng(1))  # 4 unavailable
    assert len(jobs) == 3 and s.ledger.open == (5, 3)  # 3 of the 5 idle: over-selection's sample
    # before the round closes, the next release is it: the run could stop here
    assert alg.privacy_spent(s) == dp.Spending(Spent(), Spent(sampled=((5, 3, 1),)))
    s = alg.on_drop(s, jobs[0].client, 1.0)
    s = alg.on_drop(s, jobs[1].client, 1.0)
    s = alg.on_drop(s, jobs[2].client, 1.0)
    assert s.version == 0 and s.ledger.rounds == ()  # nothing came back: nothing released
    s, jobs = alg.jobs(s, 2.0, np.arange(6), np.random.default_rng(2))
    for j in jobs[:2]:  # the quorum of 2 closes the round
        s = alg.on_update(s, upd(j.client, (1,), 0, s.model), 3.0)
    assert s.version == 1 and alg.privacy_spent(s) == dp.Spending(*[Spent(sampled=((6, 3, 1),))] * 2)


def test_fedbuff_central_flush_by_hand_and_k_squared_accounting() -> None:
    privacy = central(noise_multiplier=0)
    alg = FedBuff(FedBuffParams(concurrency=3, buffer_size=3, privacy=privacy), TRAINING, np.full(4, 10))
    s, jobs = alg.jobs(alg.init(f32(0, 0)), 0.0, np.arange(4), np.random.default_rng(0))
    a, b, _ = (j.client for j in jobs)
    s = alg.on_update(s, upd(a, (3, 4), 0, s.model), 1.0)
    s, again = alg.jobs(s, 1.0, np.array([a]), np.random.default_rng(1))  # a trains again at once
    assert [j.client for j in again] == [a]
    s = alg.on_update(s, upd(b, (0, 0.5), 0, s.model), 2.0)
    assert s.ledger.held == (a, b) and list(s.ledger.weights) == [0, 0, 0, 0]
    # The next arrival flushes, and it may be a's second update in this buffer: a shift of
    # 2 * 2C for a, which spends k^2 = 4 times one release.
    assert alg.privacy_spent(s) == dp.Spending(Spent(gaussian=0), Spent(gaussian=4))
    s = alg.on_update(s, upd(a, (0, -10), 0, s.model), 3.0)
    # clip 1: (3,4) -> (0.6,0.8), (0,0.5) stays, (0,-10) -> (0,-1); staleness 0 (weight 1); / K 3
    assert s.version == 1
    np.testing.assert_allclose(s.model, -f32(0.6, 0.3) / 3, rtol=1e-6)
    assert s.ledger.weights[a] == 4 and s.ledger.weights[b] == 1 and s.ledger.held == ()
    assert alg.privacy_spent(s) == dp.Spending(Spent(gaussian=4), Spent(gaussian=4))


def test_fedbuff_central_staleness_weights_the_clipped_deltas() -> None:
    p = FedBuffParams(
        concurrency=2, buffer_size=1, staleness="poly", a=0.5, privacy=central(noise_multiplier=0)
    )
    alg = FedBuff(p, TRAINING, np.full(2, 10))
    s, _ = alg.jobs(alg.init(f32(0, 0)), 0.0, np.arange(2), np.random.default_rng(0))
    s = alg.on_update(s, upd(0, (0, 2), 0, s.model), 1.0)  # u 0: -(0, 1)
    s = alg.on_update(s, upd(1, (6, 8), 0, s.model), 2.0)  # u 1: weight 2^-0.5, clipped to (0.6, 0.8)
    np.testing.assert_allclose(s.model, -f32(0, 1) - 2**-0.5 * f32(0.6, 0.8), rtol=1e-6)


def test_local_dp_noises_the_upload_from_a_child_of_the_jobs_stream() -> None:
    p = FedAvgParams(privacy=PrivacyConfig(mode="local", clip=1.0, noise_multiplier=0.5))
    alg = FedAvg(p, TRAINING, np.full(3, 10))
    payload, _ = alg.encode(f32(3, 4), None, np.random.default_rng(7))
    want = local_dp_update(f32(3, 4), 1.0, 0.5, np.random.default_rng(7).spawn(1)[0])
    np.testing.assert_array_equal(payload["delta"], want)
    clipped, _ = FedAvg(
        FedAvgParams(privacy=PrivacyConfig(mode="local", noise_multiplier=0)), TRAINING, np.full(3, 10)
    ).encode(f32(3, 4), None, np.random.default_rng(7))
    np.testing.assert_allclose(clipped["delta"], f32(0.6, 0.8), rtol=1e-6)
    plain, _ = FedAvg(FedAvgParams(), TRAINING, np.full(3, 10)).encode(
        f32(3, 4), None, np.random.default_rng(7)
    )
    np.testing.assert_array_equal(plain["delta"], f32(3, 4))  # mode none: the delta untouched


def test_local_dp_counts_every_upload_and_foresees_the_next() -> None:
    p = FedAvgParams(clients_per_round=2, privacy=PrivacyConfig(mode="local"))
    alg = FedAvg(p, TRAINING, np.full(3, 10))
    s, jobs = alg.jobs(alg.init(f32(0)), 0.0, np.arange(3), np.random.default_rng(0))
    assert alg.privacy_spent(s) == dp.Spending(Spent(gaussian=0), Spent(gaussian=1))
    s = alg.on_update(s, upd(jobs[0].client, (1,), 0, s.model), 1.0)
    s = alg.on_update(s, upd(jobs[1].client, (1,), 0, s.model), 1.0)
    assert list(s.ledger.weights[[j.client for j in jobs]]) == [1, 1]
    assert alg.privacy_spent(s) == dp.Spending(Spent(gaussian=1), Spent(gaussian=1))  # none training


def test_central_dp_refuses_what_has_no_sensitivity_bound() -> None:
    with pytest.raises(
        ValueError, match=r"^privacy.mode=central sums clipped deltas .* set algorithm.weighting=uniform$"
    ):
        FedAvgParams(privacy=central())  # sample-weighted by default
    with pytest.raises(ValueError, match=r"^privacy.mode=central bounds .* aggregator median has no"):
        FedAvgParams(weighting="uniform", aggregator=AggregatorConfig("median"), privacy=central())
    with pytest.raises(ValueError, match="aggregator krum"):
        FedBuffParams(aggregator=AggregatorConfig("krum"), privacy=central())
    # local DP: whatever the server does with noised uploads is post-processing
    FedAvgParams(aggregator=AggregatorConfig("median"), privacy=PrivacyConfig(mode="local"))


# ---- accounting: dp-accounting's own figures --------------------------------------------------


def test_epsilon_edge_cases() -> None:
    assert epsilon(Spent(), 1.0, 1e-5) == 0.0  # nothing released, nothing spent
    assert epsilon(Spent(gaussian=3), 0.0, 1e-5) == math.inf  # no noise, no privacy
    assert epsilon(Spent(sampled=((10, 2, 1),)), 0.0, 1e-5) == math.inf
    with pytest.raises(ValueError, match="delta"):
        epsilon(Spent(gaussian=1), 1.0, 1.0)
    with pytest.raises(ValueError, match="accountant"):
        epsilon(Spent(gaussian=1), 1.0, 1e-5, "moments")
    with pytest.raises(ValueError, match="pld has no event for sampling without replacement"):
        epsilon(Spent(sampled=((10, 2, 1),)), 1.0, 1e-5, "pld")


def test_sampled_rounds_are_the_librarys_figure() -> None:
    lib = pytest.importorskip("dp_accounting")
    # 50 rounds of 10 of 100 clients without replacement, z = 1.1: the event built by hand
    # through the library's API, with the replace-one noise multiplier z / 2.
    acct = lib.rdp.RdpAccountant(neighboring_relation=lib.NeighboringRelation.REPLACE_ONE)
    acct.compose(
        lib.SelfComposedDpEvent(lib.SampledWithoutReplacementDpEvent(100, 10, lib.GaussianDpEvent(0.55)), 50)
    )
    want = acct.get_epsilon(1e-5)
    assert epsilon(Spent(sampled=((100, 10, 50),)), 1.1, 1e-5) == want
    assert 25 < want < 40  # 31.9 with dp-accounting 0.6.0: z/2 = 0.55 is little noise
    # rounds with different idle populations compose, in the ledger's (sorted) order
    mixed = lib.rdp.RdpAccountant(neighboring_relation=lib.NeighboringRelation.REPLACE_ONE)
    mixed.compose(
        lib.ComposedDpEvent(
            [
                lib.SelfComposedDpEvent(
                    lib.SampledWithoutReplacementDpEvent(8, 4, lib.GaussianDpEvent(1.0)), 2
                ),
                lib.SelfComposedDpEvent(
                    lib.SampledWithoutReplacementDpEvent(12, 4, lib.GaussianDpEvent(1.0)), 3
                ),
            ]
        )
    )
    assert epsilon(Spent(sampled=((8, 4, 2), (12, 4, 3))), 2.0, 1e-5) == mixed.get_epsilon(1e-5)


def test_unsampled_releases_are_the_librarys_figure() -> None:
    lib = pytest.importorskip("dp_accounting")
    event = lib.SelfComposedDpEvent(lib.GaussianDpEvent(2.0), 30)  # z = 4, replace-one: 4 / 2
    rdp, pld = lib.rdp.RdpAccountant(), lib.pld.PLDAccountant()
    rdp.compose(event)
    pld.compose(event)
    assert epsilon(Spent(gaussian=30), 4.0, 1e-5) == rdp.get_epsilon(1e-5)
    tight = epsilon(Spent(gaussian=30), 4.0, 1e-5, "pld")
    assert tight == pld.get_epsilon(1e-5) and tight < rdp.get_epsilon(1e-5)
    # The library's own replace-one PLD doubles the sensitivity of Gaussian(z) itself: the same figure.
    own = lib.pld.PLDAccountant(lib.NeighboringRelation.REPLACE_ONE)
    own.compose(lib.SelfComposedDpEvent(lib.GaussianDpEvent(4.0), 30))
    assert own.get_epsilon(1e-5) == pytest.approx(tight, rel=1e-3)


def test_the_factor_two_is_the_exact_gaussian_curve() -> None:
    pytest.importorskip("dp_accounting")
    from scipy.stats import norm

    # S releases of a shift 2C at std zC compose to one Gaussian of mu = 2 sqrt(S) / z, whose
    # exact delta(eps) is Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Balle & Wang 2018).
    z, s, delta = 4.0, 10, 1e-5
    eps = epsilon(Spent(gaussian=s), z, delta, "pld")
    mu = 2 * math.sqrt(s) / z

    def exact(e: float) -> float:
        return float(norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2))

    assert 0.97 * delta <= exact(eps) <= delta  # PLD rounds pessimistically, and tightly
    assert exact(0.99 * eps) > delta


def test_k_updates_in_one_release_spend_k_squared() -> None:
    lib = pytest.importorskip("dp_accounting")
    # one release with a client's 2 updates (shift 4C: multiplier z/4) between two with one
    acct = lib.rdp.RdpAccountant()
    acct.compose(
        lib.ComposedDpEvent([lib.GaussianDpEvent(1.5), lib.GaussianDpEvent(0.75), lib.GaussianDpEvent(1.5)])
    )
    assert epsilon(Spent(gaussian=1 + 4 + 1), 3.0, 1e-5) == pytest.approx(acct.get_epsilon(1e-5), rel=1e-12)
    # a round that samples every client is the unsampled Gaussian
    everyone = epsilon(Spent(sampled=((12, 12, 5),)), 3.0, 1e-5)
    assert everyone == pytest.approx(epsilon(Spent(gaussian=5), 3.0, 1e-5), rel=1e-12)


def test_epsilon_monotonic() -> None:
    pytest.importorskip("dp_accounting")
    by_rounds = [epsilon(Spent(sampled=((100, 10, r),)), 1.1, 1e-5) for r in (1, 10, 100)]
    assert by_rounds == sorted(by_rounds) and by_rounds[0] < by_rounds[-1]  # more rounds, more spent
    base = epsilon(Spent(sampled=((100, 10, 10),)), 1.1, 1e-5)
    assert epsilon(Spent(sampled=((100, 20, 10),)), 1.1, 1e-5) > base  # a larger sample, more spent
    assert epsilon(Spent(sampled=((100, 10, 10),)), 2.0, 1e-5) < base  # more noise, less spent
    assert epsilon(Spent(sampled=((100, 10, 10),)), 1.1, 1e-7) > base  # a smaller delta, a larger eps
