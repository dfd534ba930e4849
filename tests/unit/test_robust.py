"""Robust aggregation rules, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from algorithms.robust import (
    AGGREGATORS,
    AggregatorConfig,
    aggregate,
    check_feasible,
    clip_update,
    coordinate_median,
    geometric_median,
    is_finite,
    krum,
    krum_scores,
    multi_krum,
    norm_bounded_mean,
    trim_count,
    trimmed_mean,
)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# Four honest updates near the origin and one Byzantine one far away. Squared distances:
#   AB 1, AC 4, AD 5, AE 200, BC 5, BD 2, BE 181, CD 5, CE 164, DE 145.
# With f=1 each score sums the n-f-2 = 2 smallest of a point's four:
#   A 1+4=5, B 1+2=3, C 4+5=9, D 2+5=7, E 145+164=309.
A, B, C, D, E = f32(0, 0), f32(1, 0), f32(0, 2), f32(2, 1), f32(10, 10)
KRUM_SET = [A, B, C, D, E]


def test_median_by_hand() -> None:
    # per coordinate: (1,3,2) -> 2, (5,0,2) -> 2, (2,4,2) -> 2
    out = coordinate_median([f32(1, 5, 2), f32(3, 0, 4), f32(2, 2, 2)])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, f32(2, 2, 2))
    # even n averages the middle two: (1,2,3,10) -> 2.5, (-1,0,2,5) -> 1
    np.testing.assert_array_equal(
        coordinate_median([f32(1, 5), f32(3, 0), f32(2, 2), f32(10, -1)]), f32(2.5, 1)
    )
    # one huge outlier among three moves the median nowhere
    np.testing.assert_array_equal(coordinate_median([f32(1), f32(2), f32(1e6)]), f32(2))


def test_trim_count() -> None:
    assert trim_count(10, 0.1) == 1
    assert trim_count(5, 0.2) == 1
    assert trim_count(9, 0.1) == 0  # 0.9 rounds down: nothing is cut
    assert trim_count(4, 0.49) == 1
    assert trim_count(100, 0.29) == 29  # 0.29 * 100 is 28.999999999999996 in floating point


def test_trimmed_mean_by_hand() -> None:
    # column 0 holds 100,1,3,2,4 and column 1 holds 0,3,-50,1,2, each in a different order
    u = [f32(100, 0), f32(1, 3), f32(3, -50), f32(2, 1), f32(4, 2)]
    # beta 0.2, n 5: one cut from each end -> mean(2,3,4) = 3 and mean(0,1,2) = 1
    np.testing.assert_array_equal(trimmed_mean(u, 0.2), f32(3, 1))
    # beta 0.1: floor(0.5) = 0 cut, the plain mean: 110/5 and -44/5
    np.testing.assert_allclose(trimmed_mean(u, 0.1), f32(22, -8.8), rtol=1e-6)


def test_krum_scores_and_choice_by_hand() -> None:
    np.testing.assert_array_equal(krum_scores(KRUM_SET, 1), [5, 3, 9, 7, 309])
    out = krum(KRUM_SET, 1)
    np.testing.assert_array_equal(out, B)  # lowest score, in the honest cluster
    assert out.dtype == np.float32 and out is not B
    # Multi-Krum m=3: B, A, D -> mean of (1,0), (0,0), (2,1)
    np.testing.assert_allclose(multi_krum(KRUM_SET, 1, 3), f32(1, 1 / 3), rtol=1e-6)
    # m = n - f = 4: the four honest ones, exactly their mean; E never gets in
    np.testing.assert_array_equal(multi_krum(KRUM_SET, 1, 4), f32(0.75, 0.75))
    # f = 0 on three points: scores are each point's nearest squared distance (1 nearest)
    np.testing.assert_array_equal(krum_scores([A, B, E], 0), [1, 1, 181])
    with pytest.raises(ValueError, match="n > 2"):
        krum_scores(KRUM_SET[:4], 1)  # n = 4 <= 2f + 2


def test_norm_bound_by_hand() -> None:
    np.testing.assert_allclose(clip_update(f32(3, 4), 2.0), [1.2, 1.6])  # norm 5 -> 2
    np.testing.assert_array_equal(clip_update(f32(0, 1), 2.0), [0, 1])  # already short
    np.testing.assert_array_equal(clip_update(f32(0, 0), 2.0), [0, 0])  # no division by zero
    u = [f32(3, 4), f32(0, 1)]  # clipped: (1.2, 1.6) and (0, 1)
    np.testing.assert_allclose(norm_bounded_mean(u, [1, 1], 2.0), f32(0.6, 1.3), rtol=1e-6)
    # weights 3:1 -> 0.75 (1.2, 1.6) + 0.25 (0, 1)
    np.testing.assert_allclose(norm_bounded_mean(u, [3, 1], 2.0), f32(0.9, 1.45), rtol=1e-6)


def test_geometric_median_of_a_kite() -> None:
    # A convex quadrilateral's geometric median is where its diagonals cross: for any p,
    # |p-a| + |p-c| >= |a-c| with equality only on segment ac, and likewise for bd.
    # The diagonals (-1,0)-(1,0) and (0,3)-(0,-1) cross at the origin; the mean is (0, 0.5).
    kite = [f32(-1, 0), f32(1, 0), f32(0, 3), f32(0, -1)]
    tight = geometric_median(kite, [1] * 4, tol=1e-12, max_iter=1000)
    np.testing.assert_allclose(tight, [0, 0], atol=1e-5)
    # The default stop is on the objective, which is flat near its minimum: an objective
    # within tol=1e-6 (relative) leaves the point off by about sqrt(tol).
    np.testing.assert_allclose(geometric_median(kite, [1] * 4), [0, 0], atol=2e-3)


def test_geometric_median_ignores_a_minority() -> None:
    # A point carrying at least half the weight is the geometric median; the smoothing nu
    # stops Weiszfeld within about nu of it instead of dividing by zero on arrival.
    dup = [f32(0, 0)] * 3 + [f32(10, 0), f32(0, 10)]
    np.testing.assert_allclose(geometric_median(dup, [1] * 5), [0, 0], atol=1e-4)
    # weights act as multiplicities: weight 3 on the origin is the same configuration
    weighted = geometric_median([f32(0, 0), f32(10, 0), f32(0, 10)], [3, 1, 1])
    np.testing.assert_allclose(weighted, [0, 0], atol=1e-4)
    with pytest.raises(ValueError, match="weights"):
        geometric_median(dup, [1, 1])


def test_config_validation_is_one_line_naming_the_field() -> None:
    assert AggregatorConfig().name == "mean"
    for kwargs, field in [
        ({"name": "bulyan"}, "name"),
        ({"trim": 0.5}, "trim"),
        ({"trim": math.nan}, "trim"),
        ({"byzantine": -1}, "byzantine"),
        ({"multi_krum_m": -2}, "multi_krum_m"),
        ({"max_norm": 0.0}, "max_norm"),
        ({"gm_nu": 0.0}, "gm_nu"),
        ({"gm_max_iter": 0}, "gm_max_iter"),
        ({"gm_tol": -1.0}, "gm_tol"),
    ]:
        with pytest.raises(ValueError, match=rf"^{field} must") as e:
            AggregatorConfig(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)


def test_check_feasible() -> None:
    check_feasible(AggregatorConfig("krum", byzantine=1), 5)  # 5 > 2*1 + 2
    with pytest.raises(ValueError, match=r"^krum needs n > 2\*byzantine \+ 2.*byzantine to <= 0"):
        check_feasible(AggregatorConfig("krum", byzantine=1), 4)
    with pytest.raises(ValueError, match=r"^multi_krum_m must be in \[1, n - byzantine\] = \[1, 4\]"):
        check_feasible(AggregatorConfig("multi_krum", byzantine=1, multi_krum_m=5), 5)
    with pytest.raises(ValueError, match="fewer than half"):
        check_feasible(AggregatorConfig("median", byzantine=2), 4)
    check_feasible(AggregatorConfig("median", byzantine=2), 5)
    # n=10, trim 0.1 cuts one per side: enough for f=1, not for f=2
    check_feasible(AggregatorConfig("trimmed_mean", trim=0.1, byzantine=1), 10)
    with pytest.raises(ValueError, match=r"raise trim to >= 2/10"):
        check_feasible(AggregatorConfig("trimmed_mean", trim=0.1, byzantine=2), 10)
    with pytest.raises(ValueError, match="at least one"):
        check_feasible(AggregatorConfig(), 0)


def test_aggregate_dispatches_every_rule() -> None:
    expect = {
        "mean": f32(2.6, 2.6),  # (13, 13) / 5
        "median": f32(1, 1),  # (0,1,0,2,10) and (0,0,2,1,10)
        "trimmed_mean": f32(1, 1),  # trim 0.2 of 5 cuts one per side: mean(0,1,2), mean(0,1,2)
        "krum": B,
        "multi_krum": f32(0.75, 0.75),
        # max_norm 1: A, B stay; C -> (0, 1); D -> (2, 1)/sqrt(5); E -> (1, 1)/sqrt(2)
        "norm_bound": f32(
            (1 + 2 / math.sqrt(5) + 1 / math.sqrt(2)) / 5, (1 + 1 / math.sqrt(5) + 1 / math.sqrt(2)) / 5
        ),
        "geometric_median": geometric_median(KRUM_SET, [1] * 5),  # the rule itself, tested above
    }
    assert set(expect) == set(AGGREGATORS)
    for name, want in expect.items():
        cfg = AggregatorConfig(name, trim=0.2, byzantine=1)
        out = aggregate(cfg, KRUM_SET)
        assert out.dtype == np.float32, name
        np.testing.assert_allclose(out, want, rtol=1e-6, err_msg=name)
    # weights reach the weighted rules only: 4:0:0:0:0 puts the mean on A
    np.testing.assert_array_equal(aggregate(AggregatorConfig(), KRUM_SET, [4, 0, 0, 0, 0]), A)
    with pytest.raises(ValueError, match="5 updates but 2 weights"):
        aggregate(AggregatorConfig(), KRUM_SET, [1, 1])


def test_non_finite_updates_are_refused() -> None:
    assert is_finite(f32(1, 2))
    assert not is_finite(f32(1, math.nan))
    assert not is_finite(f32(-math.inf, 0))
    with pytest.raises(ValueError, match="is_finite"):
        aggregate(AggregatorConfig("median"), [f32(1, 2), f32(math.inf, 0), f32(0, 0)])
