"""The shared server-side math, against values computed by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from algorithms.aggregation import (
    STALENESS_KINDS,
    check_staleness,
    descend,
    dispatch,
    fedasync_mix,
    release,
    staleness_weight,
    weighted_average,
    weighted_sum,
)
from algorithms.base import Task


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_staleness_values_by_hand() -> None:
    assert STALENESS_KINDS == ("const", "poly", "hinge")
    assert staleness_weight("const", 7, 0.5, 4.0) == 1.0
    assert staleness_weight("poly", 0, 0.5, 4.0) == 1.0  # fresh updates are never discounted
    assert staleness_weight("poly", 3, 0.5, 4.0) == 0.5  # (3+1)^(-1/2)
    assert staleness_weight("poly", 1, 1.0, 0.0) == 0.5  # (1+1)^(-1)
    assert staleness_weight("poly", 8, 0.5, 0.0) == pytest.approx(1 / 3)  # 9^(-1/2)
    assert staleness_weight("hinge", 1, 2.0, 1.0) == 1.0  # u <= b
    assert staleness_weight("hinge", 3, 2.0, 1.0) == pytest.approx(0.2)  # 1 / (2*(3-1) + 1)
    assert staleness_weight("hinge", 10, 0.5, 4.0) == pytest.approx(0.25)  # 1 / (0.5*6 + 1)


def test_staleness_decreases_with_u() -> None:
    # The sign pitfall (spec §9.1): (u+1)^(+a) would grow; ours must not.
    for kind in ("poly", "hinge"):
        w = [staleness_weight(kind, u, 0.5, 2.0) for u in range(20)]
        assert all(x >= y for x, y in itertools.pairwise(w)), kind
        assert w[-1] < w[0], kind
    assert staleness_weight("poly", 15, 0.5, 0.0) == 0.25


def test_staleness_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"^staleness must be >= 0"):
        staleness_weight("poly", -1, 0.5, 4.0)
    with pytest.raises(ValueError, match=r"^staleness must be one of const, poly, hinge"):
        staleness_weight("exp", 1, 0.5, 4.0)
    with pytest.raises(ValueError, match=r"^a must be >= 0"):
        check_staleness("poly", -0.5, 4.0)
    with pytest.raises(ValueError, match=r"^b must be >= 0"):
        check_staleness("hinge", 0.5, math.nan)


def test_weighted_average_by_hand() -> None:
    d = [f32(1, 0, 2), f32(0, 4, 2), f32(2, 2, -2)]
    # weights 1:1:2 -> 1/4, 1/4, 1/2
    out = weighted_average(d, [1, 1, 2])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, f32(1.25, 2.0, 0.0))
    # samples 10, 30, 60 -> 0.1, 0.3, 0.6
    np.testing.assert_allclose(weighted_average(d, [10, 30, 60]), f32(1.3, 2.4, -0.4), rtol=1e-6)
    # scale-free: only the ratios matter
    np.testing.assert_array_equal(weighted_average(d, [2, 2, 4]), weighted_average(d, [1, 1, 2]))


def test_weighted_sum_and_errors() -> None:
    np.testing.assert_array_equal(weighted_sum([f32(1, 2), f32(3, 4)], [0.5, 2.0]), f32(6.5, 9.0))
    with pytest.raises(ValueError, match="coefficients"):
        weighted_sum([f32(1)], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        weighted_sum([], [])
    with pytest.raises(ValueError, match="weights"):
        weighted_average([f32(1), f32(2)], [0, 0])
    with pytest.raises(ValueError, match="weights"):
        weighted_average([f32(1), f32(2)], [1, -1])


def test_descend_is_new_float32() -> None:
    x = f32(1, 2)
    out = descend(x, f32(4, -2), 0.5)
    np.testing.assert_array_equal(out, f32(-1, 3))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(x, f32(1, 2))  # input untouched


def test_fedasync_mix_both_modes_by_hand() -> None:
    current, base, delta = f32(1, 1), f32(0, 0), f32(-4, 0)  # client model y = base - delta = (4, 0)
    # paper: (1 - 0.25) * (1, 1) + 0.25 * (4, 0)
    np.testing.assert_array_equal(fedasync_mix(current, base, delta, 0.25, "mix_current"), f32(1.75, 0.75))
    # APPFL gradient_based: (1, 1) - 0.25 * (-4, 0)
    np.testing.assert_array_equal(fedasync_mix(current, base, delta, 0.25, "delta_on_stale_base"), f32(2, 1))
    # with a fresh base (x^t == x^tau) the two rules agree: (1,1) - 0.5 * (-2, 2) = (2, 0)
    a = fedasync_mix(current, current, f32(-2, 2), 0.5, "mix_current")
    b = fedasync_mix(current, current, f32(-2, 2), 0.5, "delta_on_stale_base")
    np.testing.assert_array_equal(a, f32(2, 0))
    np.testing.assert_array_equal(b, f32(2, 0))
    with pytest.raises(ValueError, match=r"^mix_mode must be one of mix_current, delta_on_stale_base"):
        fedasync_mix(current, base, delta, 0.5, "average")


def test_dispatch_and_release() -> None:
    task = Task(steps=1, batch_size=0, lr=0.1)
    idle = np.arange(10, dtype=np.int64)
    in_flight, jobs = dispatch(lambda c: task, (3,), 4, idle[idle != 3], np.random.default_rng(0))
    assert len(jobs) == 3 and len(in_flight) == 4 and 3 in in_flight
    assert in_flight == tuple(sorted(in_flight))
    assert all(j.task is task and isinstance(j.client, int) for j in jobs)
    # full: nothing sampled, nothing drawn
    same, none = dispatch(lambda c: task, in_flight, 4, idle, np.random.default_rng(0))
    assert same == in_flight and none == []
    assert release((1, 3, 5), 3) == (1, 5)
    assert release((3, 1, 3, 5), 3) == (1, 5)  # every entry of the client goes
    with pytest.raises(ValueError, match="no job in flight"):
        release((1, 5), 3)
