"""Per-client delay models: compute speed, network, availability and dropout.

A job's virtual duration is ``download_time + compute_time + upload_time``
(specs/time-models.md section 1). Every random draw comes from a keyed stream
``stream(seed, purpose, client[, job_index])``, so a client's profile depends neither on
the other clients nor on how many jobs ran elsewhere. The one exception is the ``tiers``
family: a single permutation of all clients makes the tier counts exact.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from algorithms.attacks import ByzantineConfig
from engine.core.registry import Registry, function
from engine.core.rng import stream

_FAMILY_DOCS = {
    "constant": "every client at the nominal speed (factor 1)",
    "normal": "factor max(min_factor, N(1, sigma)) (FLSim PerUserGaussian)",
    "half_normal": "factor 1 + |N(0, sigma)| (FLSim PerUserHalfNormal)",
    "uniform": "factor max(min_factor, U(1 - sigma, 1 + sigma)) (FLSim PerUserUniform)",
    "exponential": "factor max(min_factor, Exp(mean 1)) (FLSim PerUserExponential)",
    "lognormal": "factor exp(N(0, sigma)), median 1 (after PAPAYA / FedScale)",
    "pareto": "factor 1 + Lomax(shape): heavy-tailed stragglers, minimum 1 (Plato)",
    "tiers": "exact fractions of clients per tier, each tier with its own factor",
    "linear": "deterministic factor 1 - i*spread/(N-1) (FedFix scenario F-X)",
}
FAMILIES: tuple[str, ...] = tuple(_FAMILY_DOCS)
# A speed family plug-in is ``family(num_clients, rng_for, speed_cfg)`` returning one speed
# factor per client; ``rng_for(i)`` is client i's keyed stream (engine/core/registry.py).
SPEED_PLUGINS: Registry[Callable[..., Any]] = Registry("speed", {}, function("speed family"))
AVAILABILITY_MODES = ("always", "periodic", "trace")
_TRACE_COLUMNS = ("seconds_per_sample", "latency", "up_mbps", "down_mbps")


def describe_families() -> list[tuple[str, str]]:
    """(name, one-line description) of each speed family, for the CLI's ``--list``."""
    return list(_FAMILY_DOCS.items())


class DelayConfigError(ValueError):
    """A trace file that cannot be used; the message is one line: file, problem, fix."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _floats(values: Any) -> tuple[float, ...]:
    # YAML and dotted overrides give lists (or one scalar); keep the frozen config hashable.
    return tuple(float(v) for v in (values if isinstance(values, list | tuple) else [values]))


@dataclass(frozen=True)
class SpeedConfig:
    family: str = "lognormal"
    seconds_per_sample: float = 0.001
    sigma: float = 1.0
    shape: float = 2.0
    min_factor: float = 0.05
    tier_fractions: tuple[float, ...] = (0.5, 0.5)
    tier_factors: tuple[float, ...] = (1.0, 10.0)
    spread: float = 0.8
    jitter: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tier_fractions", _floats(self.tier_fractions))
        object.__setattr__(self, "tier_factors", _floats(self.tier_factors))
        if self.family not in FAMILIES and (problem := SPEED_PLUGINS.problem(self.family)):
            raise ValueError(
                f"family: {problem}"
                if ":" in self.family
                else f"family must be one of {', '.join(FAMILIES)}, or a plug-in (package.module:function, "
                f"./file.py:function or a fedray.speeds entry point) (got {self.family!r})"
            )
        spp = self.seconds_per_sample
        _check(0 < spp < math.inf, f"seconds_per_sample must be > 0 and finite (got {spp})")
        _check(self.sigma >= 0, f"sigma must be >= 0 (got {self.sigma})")
        _check(self.shape > 0, f"shape must be > 0 (got {self.shape})")
        _check(0 < self.min_factor <= 1, f"min_factor must be in (0, 1] (got {self.min_factor})")
        fr, fa = self.tier_fractions, self.tier_factors
        _check(len(fr) == len(fa) > 0, f"tier_fractions must match tier_factors in length (got {fr}, {fa})")
        _check(all(f >= 0 for f in fr), f"tier_fractions must be >= 0 (got {fr})")
        _check(abs(sum(fr) - 1) <= 1e-6, f"tier_fractions must sum to 1 (got {fr}, sum {sum(fr)})")
        _check(all(0 < f < math.inf for f in fa), f"tier_factors must be > 0 (got {fa})")
        _check(0 <= self.spread < 1, f"spread must be in [0, 1) (got {self.spread})")
        _check(self.jitter >= 0, f"jitter must be >= 0 (got {self.jitter})")


@dataclass(frozen=True)
class NetworkConfig:
    latency: float = 0.05
    up_mbps: float = 10.0
    down_mbps: float = 50.0
    sigma: float = 0.0

    def __post_init__(self) -> None:
        _check(0 <= self.latency < math.inf, f"latency must be >= 0 and finite (got {self.latency})")
        _check(self.up_mbps > 0, f"up_mbps must be > 0 (got {self.up_mbps})")
        _check(self.down_mbps > 0, f"down_mbps must be > 0 (got {self.down_mbps})")
        _check(self.sigma >= 0, f"sigma must be >= 0 (got {self.sigma})")


@dataclass(frozen=True)
class AvailabilityConfig:
    mode: str = "always"
    period: float = 86400.0
    on_fraction: float = 1.0
    trace: str = ""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        modes = ", ".join(AVAILABILITY_MODES)
        _check(self.mode in AVAILABILITY_MODES, f"mode must be one of {modes} (got {self.mode!r})")
        _check(0 <= self.period < math.inf, f"period must be >= 0 and finite (got {self.period})")
        periodic_ok = self.mode != "periodic" or self.period > 0
        _check(periodic_ok, f"period must be > 0 in periodic mode (got {self.period})")
        # on_fraction 0 would leave no client ever available: the run could never dispatch.
        _check(0 < self.on_fraction <= 1, f"on_fraction must be in (0, 1] (got {self.on_fraction})")
        _check(self.mode != "trace" or bool(self.trace), "trace must name a CSV file in trace mode")
        # dropout 1 would lose every job, and a run that re-dispatches would never end.
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1) (got {self.dropout})")


@dataclass(frozen=True)
class ClientsConfig:
    num: int = 50
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    availability: AvailabilityConfig = field(default_factory=AvailabilityConfig)
    trace: str = ""
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)  # attackers (algorithms/attacks.py)

    def __post_init__(self) -> None:
        _check(isinstance(self.num, int) and self.num >= 1, f"num must be an integer >= 1 (got {self.num!r})")


def _fail(key: str, path: str, problem: str, fix: str) -> DelayConfigError:
    return DelayConfigError(f"{key}={path!r}: {problem}; {fix}")


def _read_csv(key: str, path: str, num: int, req: tuple[str, ...], opt: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a trace CSV of numbers; any problem becomes one DelayConfigError line (file, problem, fix)."""
    header = ",".join(req) + (f" plus any of {','.join(opt)}" if opt else "")
    if not os.path.isfile(path):
        raise _fail(key, path, "file not found", f"set {key} to an existing CSV file with header {header}")
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        problem = f"unreadable CSV ({str(exc).splitlines()[0]})"
        raise _fail(key, path, problem, f"write a CSV with header {header}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in req if c not in df.columns]
    unknown = [c for c in df.columns if c not in req + opt]
    if missing or unknown:
        what, cols = ("missing", missing) if missing else ("unknown", unknown)
        raise _fail(key, path, f"{what} column(s) {', '.join(cols)}", f"the header needs {header}")
    for col in df.columns:
        try:
            df[col] = pd.to_numeric(df[col]).astype(float)
        except (ValueError, TypeError):
            raise _fail(key, path, f"column {col} holds non-numeric values", "use plain numbers") from None
    # Empty cells are allowed only in optional columns (they keep the drawn value); inf never.
    bad = (df[list(req)].isna().any(axis=1) | np.isinf(df.to_numpy()).any(axis=1)).to_numpy()
    if bad.any():
        raise _fail(key, path, f"empty or infinite value in line {np.argmax(bad) + 2}", "give finite numbers")
    ids = df["client"].to_numpy()
    bad = (ids != np.round(ids)) | (ids < 0) | (ids >= num)
    if bad.any():
        problem = f"client id {ids[bad][0]:g} is not in 0..{num - 1}"
        raise _fail(key, path, problem, "use ids 0..clients.num-1 or raise clients.num")
    df["client"] = ids.astype(np.int64)
    return df


def _merge(c: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, ...]:
    """Union each client's windows, so that every remaining boundary is a real flip."""
    if len(c) == 0:
        return c, s, e
    order = np.lexsort((s, c))
    c, s, e = c[order], s[order], e[order]
    run_end = pd.Series(e).groupby(c).cummax().to_numpy()
    new = np.ones(len(c), bool)
    # Overlapping and touching windows merge: availability does not flip where one ends as the next starts.
    new[1:] = (c[1:] != c[:-1]) | (s[1:] > run_end[:-1])
    first = np.flatnonzero(new)
    return c[first], s[first], np.maximum.reduceat(e, first)


def _fold(c: np.ndarray, s: np.ndarray, e: np.ndarray, period: float) -> tuple[np.ndarray, ...]:
    """Reduce repeating windows to disjoint ones that start in [0, period) (the last may wrap)."""
    full = np.isin(c, c[e - s >= period])  # covers a whole period: always available, like an absent client
    c, s, e = c[~full], s[~full], e[~full]
    s0 = np.mod(s, period)
    s0[s0 >= period] = 0.0  # np.mod of a tiny negative number can round up to the period itself
    e0 = s0 + (e - s)
    wrap = e0 > period
    # Split windows that cross the period's end, then merge as usual.
    tail = e0[wrap] - period
    c, s, e = _merge(np.r_[c, c[wrap]], np.r_[s0, np.zeros_like(tail)], np.r_[np.minimum(e0, period), tail])
    if len(c) == 0:
        return c, s, e
    first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    last = np.r_[first[1:] - 1, len(c) - 1]
    # A window ending at the period continues into the same client's window starting at 0.
    join = (s[first] == 0) & (e[last] == period) & (first != last)
    e[last[join]] = period + e[first[join]]
    drop = np.zeros(len(c), bool)
    drop[first[join]] = True
    drop[first[(first == last) & (s[first] == 0) & (e[first] == period)]] = True
    return c[~drop], s[~drop], e[~drop]


class DelayModel:
    """Per-client delay profiles, drawn once from keyed streams (plus per-job jitter and dropout)."""

    def __init__(self, cfg: ClientsConfig, seed: int) -> None:
        self.cfg, self.seed, self.num = cfg, int(seed), cfg.num
        n = cfg.num
        sp, net, av = cfg.speed, cfg.network, cfg.availability
        self.speed_factor = self._speed_factors(sp, n)
        self.seconds_per_sample = sp.seconds_per_sample * self.speed_factor
        bw = np.ones(n)
        if net.sigma > 0:
            # One factor per client for both directions: a client on a poor link is slow both ways.
            bw = np.exp([stream(self.seed, "bandwidth", i).normal(0.0, net.sigma) for i in range(n)])
        self.latency = np.full(n, float(net.latency))
        self.up_bytes_per_s = net.up_mbps * 1e6 / 8 * bw
        self.down_bytes_per_s = net.down_mbps * 1e6 / 8 * bw
        if cfg.trace:
            self._apply_trace(cfg.trace)
            self.speed_factor = self.seconds_per_sample / sp.seconds_per_sample
        self._build_availability(av, n)

    def _apply_trace(self, path: str) -> None:
        """Per-client measured values override the drawn ones (an empty cell keeps the draw)."""
        key = "clients.trace"
        df = _read_csv(key, path, self.num, ("client",), _TRACE_COLUMNS)
        dup = df["client"][df["client"].duplicated()]
        if len(dup):
            raise _fail(key, path, f"client {dup.iloc[0]} has two rows", "give each client one row")
        targets = (self.seconds_per_sample, self.latency, self.up_bytes_per_s, self.down_bytes_per_s)
        for col, target, scale in zip(_TRACE_COLUMNS, targets, (1.0, 1.0, 1e6 / 8, 1e6 / 8), strict=True):
            if col not in df:
                continue
            given = df[col].notna().to_numpy()
            vals = df[col].to_numpy()[given]
            low = vals < 0 if col == "latency" else vals <= 0
            if low.any():
                rule = ">= 0" if col == "latency" else "> 0"
                problem = f"{col} {vals[low][0]:g} is out of range"
                raise _fail(key, path, problem, f"{col} must be {rule}")
            target[df["client"].to_numpy()[given]] = vals * scale

    def _speed_factors(self, sp: SpeedConfig, n: int) -> np.ndarray:
        fam = sp.family
        if fam == "constant" or (fam in ("normal", "half_normal", "uniform", "lognormal") and sp.sigma == 0):
            return np.ones(n)
        if fam == "linear":
            return 1.0 - np.arange(n) * sp.spread / max(n - 1, 1)
        if fam == "tiers":
            exact = np.asarray(sp.tier_fractions) / sum(sp.tier_fractions) * n
            counts = np.floor(np.round(exact, 9)).astype(np.int64)
            # Largest remainder: the clients left over go to the tiers that lost the most to flooring.
            counts[np.argsort(counts - exact, kind="stable")[: max(0, n - int(counts.sum()))]] += 1
            factors = np.empty(n)
            factors[stream(self.seed, "tiers").permutation(n)] = np.repeat(sp.tier_factors, counts)
            return factors
        if fam in SPEED_PLUGINS:
            factors = np.asarray(
                SPEED_PLUGINS[fam](n, lambda i: stream(self.seed, "speed", i), sp), dtype=float
            )
            if factors.shape != (n,) or not (np.isfinite(factors).all() and (factors > 0).all()):
                raise DelayConfigError(
                    f"speed family plug-in {fam!r} must return {n} finite factors > 0 "
                    f"(got shape {factors.shape})"
                )
            return factors
        draw = {
            "normal": lambda g: max(sp.min_factor, g.normal(1.0, sp.sigma)),
            "half_normal": lambda g: 1.0 + abs(g.normal(0.0, sp.sigma)),
            "uniform": lambda g: max(sp.min_factor, g.uniform(1.0 - sp.sigma, 1.0 + sp.sigma)),
            "exponential": lambda g: max(sp.min_factor, g.exponential(1.0)),
            "lognormal": lambda g: math.exp(g.normal(0.0, sp.sigma)),
            "pareto": lambda g: 1.0 + g.pareto(sp.shape),
        }[fam]
        return np.array([draw(stream(self.seed, "speed", i)) for i in range(n)], dtype=float)

    def _build_availability(self, av: AvailabilityConfig, n: int) -> None:
        # Availability is a set of windows [start, end) per client, repeating every `period`
        # when period > 0; clients without windows are always available.
        c, s, e, self.period = np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0.0
        self.phase = np.zeros(n)
        if av.mode == "periodic" and av.on_fraction < 1:
            self.period = float(av.period)
            self.phase = np.array([stream(self.seed, "availability", i).random() for i in range(n)])
            # frac(t/P + phase) < on  <=>  t in [(k - phase) P, (k - phase + on) P) for an integer k.
            c, s = np.arange(n), (1.0 - self.phase) * self.period
            e = s + av.on_fraction * self.period
        elif av.mode == "trace":
            key = "clients.availability.trace"
            df = _read_csv(key, av.trace, n, ("client", "start", "end"))
            bad = (df["end"] <= df["start"]).to_numpy()
            if bad.any():
                problem = f"end <= start in line {np.argmax(bad) + 2}"
                raise _fail(key, av.trace, problem, "each window needs start < end")
            c, s, e = (df[k].to_numpy() for k in ("client", "start", "end"))
            self.period = float(av.period)
            c, s, e = _fold(c, s, e, self.period) if self.period > 0 else _merge(c, s, e)
        self._wc, self._ws, self._we = c, s, e
        self._bounds = np.r_[s, e]
        self._always = np.ones(n, bool)
        self._always[c] = False

    def _cycles(self, t: float, starts: np.ndarray) -> np.ndarray:
        # Candidate cycle indices m around t; window m is [s + m*P, e + m*P), and every caller
        # computes boundaries with that same expression, so available() and next_change() agree.
        m = np.floor((t - starts) / self.period)
        return m[:, None] + np.array([-1.0, 0.0, 1.0, 2.0])

    def _active(self, t: float, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        if self.period == 0:
            return (s <= t) & (t < e)
        m = self._cycles(t, s)
        return np.any((s[:, None] + m * self.period <= t) & (t < e[:, None] + m * self.period), axis=1)

    def available(self, t: float) -> np.ndarray:
        """Availability of every client at virtual time ``t``."""
        out = self._always.copy()
        out[self._wc[self._active(t, self._ws, self._we)]] = True
        return out

    def is_available(self, client: int, t: float) -> bool:
        if self._always[client]:
            return True
        lo, hi = np.searchsorted(self._wc, [client, client + 1])
        return bool(self._active(t, self._ws[lo:hi], self._we[lo:hi]).any())

    def next_change(self, t: float) -> float:
        """The earliest time > t at which any client's availability flips (inf if never)."""
        b = self._bounds
        if self.period > 0 and len(b):
            b = (b[:, None] + self._cycles(t, b) * self.period).ravel()
        later = b[b > t]
        return float(later.min()) if len(later) else math.inf

    def compute_time(self, client: int, job_index: int, samples: float) -> float:
        t = samples * float(self.seconds_per_sample[client])
        jitter = self.cfg.speed.jitter
        if jitter > 0:
            t *= math.exp(stream(self.seed, "jitter", client, job_index).normal(0.0, jitter))
        return t

    def download_time(self, client: int, nbytes: float) -> float:
        return float(self.latency[client] + nbytes / self.down_bytes_per_s[client])

    def upload_time(self, client: int, nbytes: float) -> float:
        return float(self.latency[client] + nbytes / self.up_bytes_per_s[client])

    def round_trip_time(self, client: int, bytes_up: float, bytes_down: float) -> float:
        """One blocking exchange during a job: up and back down again."""
        c = client
        return float(
            2 * self.latency[c] + bytes_up / self.up_bytes_per_s[c] + bytes_down / self.down_bytes_per_s[c]
        )

    def dropped(self, client: int, job_index: int) -> bool:
        p = self.cfg.availability.dropout
        return p > 0 and bool(stream(self.seed, "dropout", client, job_index).random() < p)

    def describe(self) -> dict[str, float]:
        spp = self.seconds_per_sample
        return {
            "clients": float(self.num),
            "seconds_per_sample_min": float(spp.min()),
            "seconds_per_sample_median": float(np.median(spp)),
            "seconds_per_sample_max": float(spp.max()),
            "slowest_to_fastest": float(spp.max() / spp.min()),
            "latency_median": float(np.median(self.latency)),
            "up_mbps_median": float(np.median(self.up_bytes_per_s)) * 8 / 1e6,
            "down_mbps_median": float(np.median(self.down_bytes_per_s)) * 8 / 1e6,
            "available_fraction_at_0": float(self.available(0.0).mean()),
            "dropout": float(self.cfg.availability.dropout),
        }
