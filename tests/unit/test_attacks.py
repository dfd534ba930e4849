"""Byzantine client behaviours, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from algorithms.attacks import (
    ATTACKS,
    AttackConfig,
    alie,
    alie_z_max,
    attack_update,
    byzantine_clients,
    flip_labels,
    gaussian,
    honest_moments,
    scale,
    sign_flip,
)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_sign_flip_and_scale_exact() -> None:
    d = f32(1, -2, 0.5)
    np.testing.assert_array_equal(sign_flip(d), f32(-1, 2, -0.5))
    np.testing.assert_array_equal(scale(d, 10.0), f32(10, -20, 5))
    assert sign_flip(d).dtype == np.float32 and scale(d, 3.0).dtype == np.float32
    np.testing.assert_array_equal(d, f32(1, -2, 0.5))  # input untouched


def test_gaussian_replaces_the_delta() -> None:
    # Only the delta's shape is used: two different deltas with one seed give one draw.
    a = gaussian(f32(1, 2, 3), np.random.default_rng(0), 1.0)
    b = gaussian(f32(-9, 9, 0), np.random.default_rng(0), 1.0)
    np.testing.assert_array_equal(a, b)
    # Sample std of N draws has relative standard error ~ 1/sqrt(2N) = 0.16% at N=2e5:
    # 1% is about 6 standard errors, and the seed is fixed anyway.
    x = gaussian(np.zeros(200_000, np.float32), np.random.default_rng(1), 3.0)
    assert x.dtype == np.float32
    assert abs(float(x.std()) / 3.0 - 1) < 0.01
    assert abs(float(x.mean())) < 5 * 3.0 / math.sqrt(200_000)


def test_alie_z_by_hand() -> None:
    # n=10, f=3: s = floor(6) - 3 = 3, Phi^-1(7/10) = 0.5244005
    assert alie_z_max(10, 3) == pytest.approx(0.5244005127)
    # n=50, f=12: s = 26 - 12 = 14, Phi^-1(36/50) = 0.5828415
    assert alie_z_max(50, 12) == pytest.approx(0.5828415073)
    # n=10, f=5: s = 1, Phi^-1(0.9) = 1.2815516: more colluders may deviate further
    assert alie_z_max(10, 5) == pytest.approx(1.2815515655)
    # n=10, f=1: s = 5, Phi^-1(0.5) = 0: one colluder can only send the mean
    assert alie_z_max(10, 1) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="undefined"):
        alie_z_max(10, 6)  # s = 0: a majority of colluders
    with pytest.raises(ValueError, match="1 <= byzantine < n"):
        alie_z_max(10, 0)


def test_alie_update_by_hand() -> None:
    # honest (1, 0) and (3, 4): mean (2, 2), population std (1, 2)
    mean, std = honest_moments([f32(1, 0), f32(3, 4)])
    np.testing.assert_array_equal(mean, [2, 2])
    np.testing.assert_array_equal(std, [1, 2])
    np.testing.assert_array_equal(alie(mean, std, 1.5), f32(0.5, -1))  # (2 - 1.5, 2 - 3)
    # through the config, with z from n=10, f=3: (2 - 0.5244, 2 - 2 * 0.5244)
    cfg = AttackConfig("alie", fraction=0.3)
    out = attack_update(
        cfg,
        f32(9, 9),
        np.random.default_rng(0),
        honest_mean=mean,
        honest_std=std,
        num_clients=10,
        num_byzantine=3,
    )
    np.testing.assert_allclose(out, f32(1.4755995, 0.9511990), rtol=1e-6)
    # a fixed z overrides the formula
    fixed = AttackConfig("alie", alie_z=1.5)
    out = attack_update(fixed, f32(9, 9), np.random.default_rng(0), honest_mean=mean, honest_std=std)
    np.testing.assert_array_equal(out, f32(0.5, -1))
    with pytest.raises(ValueError, match="honest_mean"):
        attack_update(cfg, f32(9, 9), np.random.default_rng(0))


def test_attack_update_dispatch() -> None:
    d, rng = f32(1, -2), np.random.default_rng(0)
    assert set(ATTACKS) == {"none", "sign_flip", "scale", "gaussian", "alie", "label_flip"}
    np.testing.assert_array_equal(attack_update(AttackConfig("sign_flip"), d, rng), f32(-1, 2))
    np.testing.assert_array_equal(attack_update(AttackConfig("scale", scale=-3.0), d, rng), f32(-3, 6))
    g = attack_update(AttackConfig("gaussian", noise_std=2.0), d, np.random.default_rng(5))
    np.testing.assert_array_equal(g, gaussian(d, np.random.default_rng(5), 2.0))
    # none and label_flip send the delta they trained (label_flip's harm is in the data)
    for name in ("none", "label_flip"):
        out = attack_update(AttackConfig(name), d, rng)
        np.testing.assert_array_equal(out, d)
        assert out is not d


def test_flip_labels() -> None:
    y = np.array([0, 1, 2, 9], dtype=np.int64)
    out = flip_labels(y, 10)
    np.testing.assert_array_equal(out, [9, 8, 7, 0])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(flip_labels(out, 10), y)  # its own inverse
    np.testing.assert_array_equal(flip_labels(np.array([0, 1], np.uint8), 2), [1, 0])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        flip_labels(np.array([3, 10]), 10)
    assert flip_labels(np.array([], np.int64), 10).size == 0


def test_byzantine_clients() -> None:
    ids = byzantine_clients(10, 0.3, np.random.default_rng(0))
    assert len(ids) == 3 and len(set(ids.tolist())) == 3
    assert ids.tolist() == sorted(ids.tolist()) and ids.dtype == np.int64
    assert all(0 <= i < 10 for i in ids)
    np.testing.assert_array_equal(ids, byzantine_clients(10, 0.3, np.random.default_rng(0)))  # seeded
    assert len(byzantine_clients(10, 0.25, np.random.default_rng(0))) == 3  # 2.5 rounds up
    assert len(byzantine_clients(10, 0.0, np.random.default_rng(0))) == 0
    np.testing.assert_array_equal(byzantine_clients(4, 1.0, np.random.default_rng(0)), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="fraction"):
        byzantine_clients(10, 1.5, np.random.default_rng(0))


def test_config_validation_is_one_line_naming_the_field() -> None:
    assert AttackConfig().name == "none"
    for kwargs, field in [
        ({"name": "backdoor"}, "name"),
        ({"fraction": -0.1}, "fraction"),
        ({"fraction": math.nan}, "fraction"),
        ({"scale": math.inf}, "scale"),
        ({"noise_std": 0.0}, "noise_std"),
        ({"alie_z": math.nan}, "alie_z"),
    ]:
        with pytest.raises(ValueError, match=rf"^{field} must") as e:
            AttackConfig(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)
