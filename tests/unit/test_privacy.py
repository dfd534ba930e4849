"""DP-FedAvg math and the privacy accountant, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from algorithms.privacy import (
    PrivacyConfig,
    central_dp_aggregate,
    clip_to_norm,
    epsilon,
    gaussian_noise,
    local_dp_update,
)

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


def test_epsilon_edge_cases_need_no_library() -> None:
    assert epsilon(1.0, 0.01, 0, 1e-5) == 0.0  # nothing released, nothing spent
    assert epsilon(0.0, 0.01, 10, 1e-5) == math.inf  # no noise, no privacy
    with pytest.raises(ValueError, match="sample_rate"):
        epsilon(1.0, 0.0, 10, 1e-5)
    with pytest.raises(ValueError, match="delta"):
        epsilon(1.0, 0.01, 10, 1.0)
    with pytest.raises(ValueError, match="accountant"):
        epsilon(1.0, 0.01, 10, 1e-5, "moments")


def test_epsilon_matches_the_library() -> None:
    dp = pytest.importorskip("dp_accounting")
    # The same event built by hand through the library's own API: our wrapper must only
    # translate (z, q, steps, delta), never change the figure.
    event = dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(0.01, dp.GaussianDpEvent(1.1)), 1000)
    rdp = dp.rdp.RdpAccountant()
    rdp.compose(event)
    want = rdp.get_epsilon(1e-5)
    assert epsilon(1.1, 0.01, 1000, 1e-5) == want
    assert 1.0 < want < 3.0  # 1.71 with dp-accounting 0.6.0: a plausible DP-FedAvg budget
    pld = dp.pld.PLDAccountant()
    pld.compose(event)
    tight = epsilon(1.1, 0.01, 1000, 1e-5, "pld")
    assert tight == pld.get_epsilon(1e-5)
    assert tight <= want  # RDP is an upper bound; PLD accounting is (nearly) exact


def test_epsilon_monotonic() -> None:
    pytest.importorskip("dp_accounting")
    by_steps = [epsilon(1.1, 0.01, s, 1e-5) for s in (10, 100, 1000, 10000)]
    assert by_steps == sorted(by_steps) and by_steps[0] < by_steps[-1]  # more rounds, more spent
    assert epsilon(2.0, 0.01, 1000, 1e-5) < epsilon(1.1, 0.01, 1000, 1e-5)  # more noise, less spent
    assert epsilon(1.1, 0.05, 1000, 1e-5) > epsilon(1.1, 0.01, 1000, 1e-5)  # more sampling, more spent
    assert epsilon(1.1, 0.01, 1000, 1e-7) > epsilon(1.1, 0.01, 1000, 1e-5)  # smaller delta, larger eps
