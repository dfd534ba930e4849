"""Delay models: family laws, keyed determinism, network arithmetic, availability, traces."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.core.delays import (
    FAMILIES,
    AvailabilityConfig,
    ClientsConfig,
    DelayConfigError,
    DelayModel,
    NetworkConfig,
    SpeedConfig,
    describe_families,
)
from engine.core.rng import stream

SEED = 1234


def model(num: int = 50, seed: int = SEED, trace: str = "", **parts: Any) -> DelayModel:
    return DelayModel(ClientsConfig(num=num, trace=trace, **parts), seed)


def factors(num: int, **speed: Any) -> np.ndarray:
    m = model(num, speed=SpeedConfig(**speed))
    return m.seconds_per_sample / 0.001


def write(tmp_path: Path, text: str, name: str = "t.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- speed families --------------------------------------------------------------------------


def test_lognormal_median_one_and_log_std_sigma() -> None:
    f = factors(4000, family="lognormal", sigma=0.5)
    assert abs(np.median(f) - 1) < 0.05
    assert abs(np.log(f).std() - 0.5) < 0.03


def test_normal_uniform_exponential_half_normal_laws() -> None:
    f = factors(4000, family="normal", sigma=0.2)
    assert abs(f.mean() - 1) < 0.02 and abs(f.std() - 0.2) < 0.02 and f.min() >= 0.05
    f = factors(4000, family="normal", sigma=2.0, min_factor=0.1)
    assert f.min() == 0.1  # the clip is hit with sigma 2
    f = factors(4000, family="uniform", sigma=0.5)
    assert f.min() >= 0.5 and f.max() <= 1.5 and abs(f.mean() - 1) < 0.02
    f = factors(4000, family="exponential")
    assert f.min() >= 0.05 and abs(f.mean() - 1) < 0.06
    f = factors(4000, family="half_normal", sigma=1.0)
    assert f.min() >= 1 and abs(f.mean() - (1 + math.sqrt(2 / math.pi))) < 0.05


def test_pareto_at_least_one_with_lomax_median() -> None:
    f = factors(4000, family="pareto", shape=3.0)
    assert f.min() >= 1
    assert abs(np.median(f) - 2 ** (1 / 3)) < 0.03  # Pareto(x_m=1, a): median 2^(1/a)


def test_constant_and_zero_sigma_are_nominal() -> None:
    assert np.array_equal(factors(7, family="constant"), np.ones(7))
    assert np.array_equal(factors(7, family="lognormal", sigma=0.0), np.ones(7))
    assert model(3, speed=SpeedConfig(family="constant")).seconds_per_sample.tolist() == [0.001] * 3


def test_tiers_exact_counts_largest_remainder() -> None:
    f = factors(1001, family="tiers", tier_fractions=(0.2, 0.3, 0.5), tier_factors=(1.0, 2.0, 5.0))
    # 200.2, 300.3, 500.5 -> floors 200, 300, 500; the one left goes to the largest remainder.
    assert [int((f == v).sum()) for v in (1.0, 2.0, 5.0)] == [200, 300, 501]
    f = factors(3, family="tiers", tier_fractions=[0.5, 0.5], tier_factors=[1.0, 10.0])
    assert sorted(f.tolist()) == [1.0, 1.0, 10.0]  # tie goes to the first tier
    a = factors(100, family="tiers")
    assert np.array_equal(a, factors(100, family="tiers"))  # keyed permutation
    assert not np.array_equal(a[:50], np.ones(50))  # and actually shuffled


def test_linear_fedfix_values() -> None:
    f = factors(5, family="linear", spread=0.8)
    assert np.allclose(f, [1.0, 0.8, 0.6, 0.4, 0.2])
    assert factors(1, family="linear").tolist() == [1.0]


# --- keyed determinism -----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["lognormal", "pareto", "normal", "exponential", "half_normal", "uniform"])
def test_client_speed_independent_of_population(family: str) -> None:
    small, big = factors(10, family=family), factors(1000, family=family)
    assert small[3] == big[3]
    assert np.array_equal(small, big[:10])


def test_bandwidth_and_phase_keyed_per_client() -> None:
    parts: dict[str, Any] = {
        "network": NetworkConfig(sigma=0.7),
        "availability": AvailabilityConfig(mode="periodic", period=100.0, on_fraction=0.5),
    }
    small, big = model(10, **parts), model(1000, **parts)
    assert small.up_bytes_per_s[3] == big.up_bytes_per_s[3] != 10e6 / 8
    assert small.phase[3] == big.phase[3] == stream(SEED, "availability", 3).random()
    # One factor per client for both directions.
    assert math.isclose(big.down_bytes_per_s[3] / big.up_bytes_per_s[3], 5.0)


def test_seed_changes_draws() -> None:
    assert not np.array_equal(model(20, seed=1).seconds_per_sample, model(20, seed=2).seconds_per_sample)


def test_jitter_keyed_by_client_and_job_not_call_order() -> None:
    a = model(10, speed=SpeedConfig(jitter=0.3))
    b = model(500, speed=SpeedConfig(jitter=0.3))
    first = a.compute_time(2, 7, 100)
    for j in range(20):
        a.compute_time(j % 10, j, 50)
    assert a.compute_time(2, 7, 100) == first == b.compute_time(2, 7, 100)
    assert a.compute_time(2, 8, 100) != first
    expected = 100 * a.seconds_per_sample[2] * math.exp(stream(SEED, "jitter", 2, 7).normal(0.0, 0.3))
    assert math.isclose(first, expected)
    plain = model(10)
    assert plain.compute_time(4, 0, 32) == 32 * plain.seconds_per_sample[4]


# --- network ---------------------------------------------------------------------------------


def test_network_times_by_hand() -> None:
    m = model(3)
    assert math.isclose(m.download_time(0, 1e6), 0.05 + 8e6 / 50e6)  # 0.21 s
    assert math.isclose(m.download_time(0, 1e6), 0.21)
    assert math.isclose(m.upload_time(2, 1e6), 0.85)
    assert m.download_time(1, 0) == 0.05


# --- availability ----------------------------------------------------------------------------


def test_periodic_availability_by_hand() -> None:
    m = model(1, availability=AvailabilityConfig(mode="periodic", period=100.0, on_fraction=0.25))
    p = float(m.phase[0])
    start = (1 - p) * 100  # frac(t/100 + p) == 0 here: the on-window opens
    for dt, on in ((1.0, True), (24.0, True), (26.0, False), (99.0, False), (101.0, True)):
        assert m.is_available(0, start + dt) is on
        assert bool(m.available(start + dt)[0]) is on
    assert math.isclose(m.next_change(start + 1), start + 25)
    assert math.isclose(m.next_change(start + 30), start + 100)
    assert m.is_available(0, 0.0) is (p < 0.25)


def test_periodic_matches_formula_for_many_clients() -> None:
    m = model(300, availability=AvailabilityConfig(mode="periodic", period=50.0, on_fraction=0.4))
    for t in np.random.default_rng(0).uniform(0, 500, 50):
        frac = np.mod(t / 50 + m.phase, 1.0)
        far = np.minimum(np.abs(frac - 0.4), np.minimum(frac, 1 - frac)) > 1e-9
        assert np.array_equal(m.available(t)[far], (frac < 0.4)[far])
    assert abs(m.available(3.0).mean() - 0.4) < 0.1


def test_always_mode_and_full_on_fraction() -> None:
    for av in (AvailabilityConfig(), AvailabilityConfig(mode="periodic", on_fraction=1.0)):
        m = model(4, availability=av)
        assert m.available(123.0).all() and m.next_change(0.0) == math.inf


WINDOWS = "client,start,end\n0,10,20\n0,15,30\n0,30,40\n1,5,6\n3,45,55\n"


def test_trace_windows_without_period(tmp_path: Path) -> None:
    av = AvailabilityConfig(mode="trace", trace=write(tmp_path, WINDOWS), period=0.0)
    m = model(4, availability=av)
    expect = {0: [0, 0, 1, 0], 5: [0, 1, 1, 0], 6: [0, 0, 1, 0], 10: [1, 0, 1, 0], 39.9: [1, 0, 1, 0]}
    expect |= {40: [0, 0, 1, 0], 50: [0, 0, 1, 1], 55: [0, 0, 1, 0]}
    for t, row in expect.items():
        assert m.available(t).astype(int).tolist() == row, t
        assert [m.is_available(c, t) for c in range(4)] == [bool(v) for v in row]
    # Overlapping and touching windows of client 0 merged: no flips at 15, 20 or 30.
    times, t = [], 0.0
    while (t := m.next_change(t)) < math.inf:
        times.append(t)
    assert times == [5, 6, 10, 40, 45, 55]


def test_trace_windows_repeat_with_period(tmp_path: Path) -> None:
    text = WINDOWS + "2,0,5\n2,45,50\n"  # client 2: [45, 55) once folded, no flip at 50
    m = model(5, availability=AvailabilityConfig(mode="trace", trace=write(tmp_path, text), period=50.0))
    assert m.is_available(1, 55.5) and not m.is_available(1, 56.0)
    assert m.is_available(0, 85.0) and not m.is_available(0, 91.0)  # [10, 40) again as [60, 90)
    # Client 3's window [45, 55) wraps: [0, 5) of every period too.
    assert m.is_available(3, 2.0) and m.is_available(3, 52.0) and not m.is_available(3, 10.0)
    assert m.is_available(2, 49.0) and m.is_available(2, 50.0) and m.is_available(2, 4.9)
    assert m.is_available(4, 17.0)  # absent: always available
    assert m.next_change(46.0) == 50 + 5  # 50 is no flip for clients 2 and 3; 55 closes both
    full = "client,start,end\n0,10,70\n"
    m = model(1, availability=AvailabilityConfig(mode="trace", trace=write(tmp_path, full), period=50.0))
    assert m.available(0.0).all() and m.next_change(0.0) == math.inf


@pytest.mark.parametrize("periodic", [True, False])
def test_next_change_finds_every_flip_and_only_flips(tmp_path: Path, periodic: bool) -> None:
    if periodic:
        av = AvailabilityConfig(mode="periodic", period=7.0, on_fraction=0.3)
    else:
        rng = np.random.default_rng(5)
        rows = [
            (int(c), s, s + w)
            for c, s, w in zip(
                rng.integers(0, 6, 25), rng.uniform(0, 30, 25), rng.uniform(0.1, 9, 25), strict=True
            )
        ]
        text = "client,start,end\n" + "".join(f"{c},{s},{e}\n" for c, s, e in rows)
        av = AvailabilityConfig(mode="trace", trace=write(tmp_path, text), period=11.0)
    m = model(6, availability=av)
    grid = np.linspace(0, 60, 6001)
    states = np.array([m.available(t) for t in grid])
    flips_on_grid = int((states[1:] != states[:-1]).any(axis=1).sum())
    t, found = 0.0, 0
    while (t_next := m.next_change(t)) <= 60:
        assert t_next > t
        assert not np.array_equal(m.available(t_next), m.available(t))
        mid = (t + t_next) / 2
        assert np.array_equal(m.available(mid), m.available(t))
        t, found = t_next, found + 1
    assert found == flips_on_grid > 0


# --- dropout ---------------------------------------------------------------------------------


def test_dropout_rate_and_keying() -> None:
    m = model(100, availability=AvailabilityConfig(dropout=0.2))
    drops = [m.dropped(c, j) for c in range(100) for j in range(200)]
    assert abs(np.mean(drops) - 0.2) < 0.01
    assert m.dropped(5, 17) == drops[5 * 200 + 17] == (stream(SEED, "dropout", 5, 17).random() < 0.2)
    assert not any(model(5).dropped(c, j) for c in range(5) for j in range(100))


# --- per-client trace and CSV errors -------------------------------------------------------------


def test_client_trace_overrides_given_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "client,seconds_per_sample,up_mbps,latency\n1,0.5,2,\n3,,8,0\n")
    drawn, m = model(5), model(5, trace=path)
    assert m.seconds_per_sample[1] == 0.5 and m.seconds_per_sample[3] == drawn.seconds_per_sample[3]
    assert m.up_bytes_per_s[1] == 2e6 / 8 and m.up_bytes_per_s[3] == 1e6
    assert m.latency.tolist() == [0.05, 0.05, 0.05, 0.0, 0.05]
    assert np.array_equal(m.down_bytes_per_s, drawn.down_bytes_per_s)
    assert np.array_equal(m.seconds_per_sample[[0, 2, 4]], drawn.seconds_per_sample[[0, 2, 4]])
    assert math.isclose(m.upload_time(1, 1e6), 0.05 + 4.0)


@pytest.mark.parametrize(
    ("text", "availability", "pattern"),
    [
        (None, False, "file not found; set clients.trace"),
        ("id,latency\n0,1\n", False, "missing column.s. client"),
        ("client,speed\n0,1\n", False, "unknown column.s. speed; "),
        ("client,latency\n5,1\n", False, "client id 5 is not in 0..4; "),
        ("client,latency\n-1,1\n", False, "client id -1 is not in 0..4"),
        ("client,seconds_per_sample\n0,0\n", False, "seconds_per_sample 0 is out of range; .* must be > 0"),
        ("client,latency\n0,-1\n", False, "latency -1 is out of range; latency must be >= 0"),
        ("client,latency\n0,1\n0,2\n", False, "client 0 has two rows"),
        ("client,latency\n0,fast\n", False, "column latency holds non-numeric values"),
        ("", False, "unreadable CSV"),
        ("client,start,end\n0,5,5\n", True, "end <= start in line 2; "),
        ("client,start\n0,5\n", True, "missing column.s. end"),
        ("client,start,end\n0,,5\n", True, "empty or infinite value in line 2"),
        ("client,start,end\n9,1,5\n", True, "client id 9 is not in 0..4"),
    ],
)
def test_csv_errors_one_clear_line(
    tmp_path: Path, text: str | None, availability: bool, pattern: str
) -> None:
    path = str(tmp_path / "missing.csv") if text is None else write(tmp_path, text)
    key = "clients.availability.trace" if availability else "clients.trace"
    with pytest.raises(DelayConfigError, match=pattern) as info:
        if availability:
            model(5, availability=AvailabilityConfig(mode="trace", trace=path))
        else:
            model(5, trace=path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{key}={path!r}: ")
    assert isinstance(info.value, ValueError)


# --- config validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: SpeedConfig(sigma=-1), r"^sigma must be >= 0 \(got -1\)"),
        (lambda: SpeedConfig(family="zipf"), r"^family must be one of constant, normal, "),
        (lambda: SpeedConfig(shape=0), r"^shape must be > 0"),
        (lambda: SpeedConfig(seconds_per_sample=0), r"^seconds_per_sample must be > 0"),
        (lambda: SpeedConfig(tier_fractions=(0.5, 0.6)), r"^tier_fractions must sum to 1"),
        (lambda: SpeedConfig(tier_fractions=(1.0,)), r"^tier_fractions must match tier_factors"),
        (lambda: SpeedConfig(spread=1.0), r"^spread must be in \[0, 1\)"),
        (lambda: NetworkConfig(up_mbps=0), r"^up_mbps must be > 0"),
        (lambda: NetworkConfig(latency=-0.1), r"^latency must be >= 0"),
        (lambda: AvailabilityConfig(mode="sometimes"), r"^mode must be one of always, periodic, trace"),
        (lambda: AvailabilityConfig(mode="periodic", period=0), r"^period must be > 0 in periodic mode"),
        (lambda: AvailabilityConfig(on_fraction=0), r"^on_fraction must be in \(0, 1\]"),
        (lambda: AvailabilityConfig(mode="trace"), r"^trace must name a CSV file"),
        (lambda: AvailabilityConfig(dropout=1.0), r"^dropout must be in \[0, 1\)"),
        (lambda: ClientsConfig(num=0), r"^num must be an integer >= 1"),
    ],
)
def test_config_validation_messages(build: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build()  # type: ignore[operator]


def test_config_accepts_lists_and_scalars() -> None:
    sp = SpeedConfig(tier_fractions=[0.25, 0.75], tier_factors=[1, 4])  # type: ignore[arg-type]
    assert sp.tier_fractions == (0.25, 0.75) and sp.tier_factors == (1.0, 4.0)
    hash(sp)
    assert SpeedConfig(tier_fractions=1.0, tier_factors=3).tier_factors == (3.0,)  # type: ignore[arg-type]


# --- summary, listing, scale -----------------------------------------------------------------------


def test_describe_and_families() -> None:
    d = model(5, speed=SpeedConfig(family="linear")).describe()
    assert math.isclose(d["seconds_per_sample_min"], 0.0002) and math.isclose(d["slowest_to_fastest"], 5.0)
    assert d["down_mbps_median"] == 50.0 and d["clients"] == 5.0 and d["available_fraction_at_0"] == 1.0
    assert all(isinstance(v, float) for v in d.values())
    assert [name for name, _ in describe_families()] == list(FAMILIES)
    assert len(FAMILIES) == 9 and all(doc for _, doc in describe_families())


def test_build_time_10k_clients() -> None:
    heavy: dict[str, Any] = {
        "network": NetworkConfig(sigma=0.5),
        "availability": AvailabilityConfig(mode="periodic", on_fraction=0.5),
    }
    runs: list[tuple[str, dict[str, Any]]] = [
        ("default lognormal", {}),
        ("lognormal+bandwidth+periodic", heavy),
    ]
    for label, parts in runs:
        t0 = time.perf_counter()
        m = model(10_000, **parts)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        m.available(1234.5), m.next_change(1234.5)
        query = time.perf_counter() - t0
        print(f"\n10k clients, {label}: build {built:.3f} s, available+next_change {query * 1e3:.2f} ms")


def test_profiles_drawn_one_client_at_a_time_equal_the_whole_arrays() -> None:
    """Profiles are drawn lazily, when a job of the client is priced: the values do not
    depend on which clients were looked at first."""
    cfg = ClientsConfig(
        num=400,
        speed=SpeedConfig(family="lognormal", sigma=0.8),
        network=NetworkConfig(sigma=0.5),
        availability=AvailabilityConfig(mode="periodic", period=60.0, on_fraction=0.5),
    )
    lazy, whole = DelayModel(cfg, SEED), DelayModel(cfg, SEED)
    arrays = (whole.seconds_per_sample, whole.up_bytes_per_s, whole.available(17.0))
    order = np.random.default_rng(0).permutation(400)
    for c in order.tolist():
        assert lazy.compute_time(c, 0, 10.0) == 10.0 * arrays[0][c]
        assert lazy.upload_time(c, 1e6) == whole.upload_time(c, 1e6)
        assert lazy.is_available(c, 17.0) == arrays[2][c]
    assert np.array_equal(lazy.up_bytes_per_s, arrays[1])


def test_large_population_is_described_by_its_first_clients() -> None:
    cfg = ClientsConfig(num=50_000, speed=SpeedConfig(family="lognormal", sigma=0.8))
    d = DelayModel(cfg, SEED).describe()
    first = DelayModel(ClientsConfig(num=10_000, speed=cfg.speed), SEED).describe()
    assert d["described_clients"] == 10_000 and d["clients"] == 50_000
    assert d["seconds_per_sample_median"] == first["seconds_per_sample_median"]
