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
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from algorithms.idle import IdleClients
from engine.core.delay_config import (
    AVAILABILITY_MODES,
    FAMILIES,
    SPEED_PLUGINS,
    AvailabilityConfig,
    ClientsConfig,
    DelayConfigError,
    NetworkConfig,
    SpeedConfig,
    describe_families,
)
from engine.core.rng import stream

__all__ = [  # the settings are imported from here too
    "AVAILABILITY_MODES",
    "FAMILIES",
    "SPEED_PLUGINS",
    "AvailabilityConfig",
    "ClientsConfig",
    "DelayConfigError",
    "DelayModel",
    "NetworkConfig",
    "SpeedConfig",
    "describe_families",
]

DESCRIBED = 10_000  # describe() summarises at most this many clients (the first ones)
_TRACE_COLUMNS = ("seconds_per_sample", "latency", "up_mbps", "down_mbps")


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


class _Drawn:
    """One value per client, drawn from the client's keyed stream when first needed: a
    million clients cost a million draws only if every one of them is looked at."""

    def __init__(self, n: int, draw: Callable[[int], float]) -> None:
        self.values = np.full(n, np.nan)
        self.draw = draw

    def __getitem__(self, client: int) -> float:
        v = self.values[client]
        if v != v:  # NaN: not drawn yet
            v = self.values[client] = self.draw(int(client))
        return float(v)

    def all(self) -> np.ndarray:
        for c in np.flatnonzero(np.isnan(self.values)).tolist():
            self.values[c] = self.draw(c)
        return self.values


class DelayModel:
    """Per-client delay profiles from keyed streams (plus per-job jitter and dropout). A
    client's profile is drawn the first time a job of it is priced, so a large population
    costs only its drawn clients' time; whole arrays (``seconds_per_sample``...) draw all."""

    def __init__(self, cfg: ClientsConfig, seed: int) -> None:
        self.cfg, self.seed, self.num = cfg, int(seed), cfg.num
        n = cfg.num
        sp, net, av = cfg.speed, cfg.network, cfg.availability
        self._factor = factor = self._speed_factors(sp, n)
        nominal = sp.seconds_per_sample
        self._spp = _Drawn(n, lambda c: nominal * factor[c])
        # One factor per client for both directions: a client on a poor link is slow both ways.
        bw: Any = np.ones(n)
        if net.sigma > 0:
            bw = _Drawn(n, lambda c: float(np.exp(stream(self.seed, "bandwidth", c).normal(0.0, net.sigma))))
        up, down = net.up_mbps * 1e6 / 8, net.down_mbps * 1e6 / 8
        self._up = _Drawn(n, lambda c: up * bw[c])
        self._down = _Drawn(n, lambda c: down * bw[c])
        self.latency = np.full(n, float(net.latency))
        if cfg.trace:
            self._apply_trace(cfg.trace)
        self._build_availability(av, n)

    @property
    def seconds_per_sample(self) -> np.ndarray:
        return self._spp.all()

    @property
    def speed_factor(self) -> np.ndarray:
        if self.cfg.trace:  # measured speeds, relative to the nominal one
            return self._spp.all() / self.cfg.speed.seconds_per_sample
        return self._factor.all() if isinstance(self._factor, _Drawn) else self._factor

    @property
    def up_bytes_per_s(self) -> np.ndarray:
        return self._up.all()

    @property
    def down_bytes_per_s(self) -> np.ndarray:
        return self._down.all()

    @property
    def phase(self) -> np.ndarray:
        """Each client's phase in periodic availability (zeros in other modes)."""
        return np.zeros(self.num) if self._phase is None else self._phase.all()

    def up_rate(self, client: int) -> float:
        """Client ``client``'s upload bandwidth in bytes per second."""
        return self._up[client]

    def _apply_trace(self, path: str) -> None:
        """Per-client measured values override the drawn ones (an empty cell keeps the draw)."""
        key = "clients.trace"
        df = _read_csv(key, path, self.num, ("client",), _TRACE_COLUMNS)
        dup = df["client"][df["client"].duplicated()]
        if len(dup):
            raise _fail(key, path, f"client {dup.iloc[0]} has two rows", "give each client one row")
        targets = (self._spp.values, self.latency, self._up.values, self._down.values)
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

    def _speed_factors(self, sp: SpeedConfig, n: int) -> Any:
        """Each client's factor: an array, or ``_Drawn`` for the families drawn per client."""
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
        if fam not in FAMILIES:  # a plug-in (built-ins first: a registry miss scans entry points)
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
        return _Drawn(n, lambda i: float(draw(stream(self.seed, "speed", i))))

    def _build_availability(self, av: AvailabilityConfig, n: int) -> None:
        # Availability is a set of windows [start, end) per client, repeating every `period`
        # when period > 0; clients without windows are always available.
        c, s, e, self.period = np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0.0
        self._phase: _Drawn | None = None  # periodic mode: each client's phase, drawn when needed
        self._windows: tuple[np.ndarray, ...] | None = None  # periodic mode: made on first use
        self._always = np.ones(n, bool)
        if av.mode == "periodic" and av.on_fraction < 1:
            self.period = float(av.period)
            self._phase = _Drawn(n, lambda i: stream(self.seed, "availability", i).random())
            self._always[:] = False
            return
        if av.mode == "trace":
            key = "clients.availability.trace"
            df = _read_csv(key, av.trace, n, ("client", "start", "end"))
            bad = (df["end"] <= df["start"]).to_numpy()
            if bad.any():
                problem = f"end <= start in line {np.argmax(bad) + 2}"
                raise _fail(key, av.trace, problem, "each window needs start < end")
            c, s, e = (df[k].to_numpy() for k in ("client", "start", "end"))
            self.period = float(av.period)
            c, s, e = _fold(c, s, e, self.period) if self.period > 0 else _merge(c, s, e)
        self._always[c] = False
        self._windows = (c, s, e, np.r_[s, e])

    def _periodic_window(self, phase: Any) -> tuple[Any, Any]:
        # frac(t/P + phase) < on  <=>  t in [(k - phase) P, (k - phase + on) P) for an integer k.
        s = (1.0 - phase) * self.period
        return s, s + self.cfg.availability.on_fraction * self.period

    def _all_windows(self) -> tuple[np.ndarray, ...]:
        """(client, start, end, every bound) of all windows; periodic mode draws every phase."""
        if self._windows is None:
            assert self._phase is not None
            s, e = self._periodic_window(self._phase.all())
            self._windows = (np.arange(self.num), s, e, np.r_[s, e])
        return self._windows

    @property
    def always_available(self) -> bool:
        """No client ever goes offline (no availability windows)."""
        return self._phase is None and not len(self._all_windows()[0])

    def _cycles(self, t: float, starts: np.ndarray) -> np.ndarray:
        # Candidate cycle indices m around t; window m is [s + m*P, e + m*P), and every caller
        # computes boundaries with that same expression, so available() and next_change() agree.
        m = np.floor((t - starts) / self.period)
        return m[:, None] + np.array([-1.0, 0.0, 1.0, 2.0])

    def _active(self, t: float, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        if self.period == 0:
            return (s <= t) & (t < e)
        # The candidate cycles of _cycles, one at a time: the same float operations per
        # element as the (n, 4) broadcast, in a quarter of the memory.
        p = self.period
        m = np.floor((t - s) / p)
        out = np.zeros(len(s), dtype=bool)
        for shift in (-1.0, 0.0, 1.0, 2.0):
            k = (m + shift) * p
            out |= (s + k <= t) & (t < e + k)
        return out

    def available(self, t: float) -> np.ndarray:
        """Availability of every client at virtual time ``t``."""
        c, s, e, _ = self._all_windows()
        out = self._always.copy()
        out[c[self._active(t, s, e)]] = True
        return out

    def is_available(self, client: int, t: float) -> bool:
        if self._always[client]:
            return True
        if self._phase is not None:
            # _active for one window in Python floats: the same IEEE operations in the same
            # order, so the same answer as the array form, without numpy's per-call cost.
            s, e = self._periodic_window(self._phase[client])
            p = self.period
            m = math.floor((t - s) / p)
            return any(s + k * p <= t < e + k * p for k in (m - 1.0, m, m + 1.0, m + 2.0))
        c, s, e, _ = self._all_windows()
        lo, hi = np.searchsorted(c, [client, client + 1])
        return bool(self._active(t, s[lo:hi], e[lo:hi]).any())

    def idle(self, t: float, busy: Iterable[int]) -> IdleClients:
        """The clients available at ``t`` with no job in flight (``busy`` have one)."""
        ids = np.fromiter(busy, dtype=np.int64)
        if self.always_available:
            return IdleClients(self.num, ids)
        return IdleClients(self.num, ids, lambda: self.available(t), lambda c: self.is_available(c, t))

    def next_change(self, t: float) -> float:
        """The earliest time > t at which any client's availability flips (inf if never)."""
        b = self._all_windows()[3]
        if self.period > 0 and len(b):
            b = (b[:, None] + self._cycles(t, b) * self.period).ravel()
        later = b[b > t]
        return float(later.min()) if len(later) else math.inf

    def compute_time(self, client: int, job_index: int, samples: float) -> float:
        t = samples * self._spp[client]
        jitter = self.cfg.speed.jitter
        if jitter > 0:
            t *= math.exp(stream(self.seed, "jitter", client, job_index).normal(0.0, jitter))
        return t

    def download_time(self, client: int, nbytes: float) -> float:
        return float(self.latency[client] + nbytes / self._down[client])

    def upload_time(self, client: int, nbytes: float) -> float:
        return float(self.latency[client] + nbytes / self._up[client])

    def round_trip_time(self, client: int, bytes_up: float, bytes_down: float) -> float:
        """One blocking exchange during a job: up and back down again."""
        c = client
        return float(2 * self.latency[c] + bytes_up / self._up[c] + bytes_down / self._down[c])

    def dropped(self, client: int, job_index: int) -> bool:
        p = self.cfg.availability.dropout
        return p > 0 and bool(stream(self.seed, "dropout", client, job_index).random() < p)

    def describe(self) -> dict[str, float]:
        """Summary of the profiles; above ``DESCRIBED`` clients, of the first ``DESCRIBED``
        (profiles are i.i.d. per client, so that is a sample, and it keeps start-up from
        drawing every client of a million)."""
        n = min(self.num, DESCRIBED)
        if n == self.num:
            spp, up, down = self.seconds_per_sample, self.up_bytes_per_s, self.down_bytes_per_s
            available = float(self.available(0.0).mean())
        else:
            spp, up, down = (np.array([x[c] for c in range(n)]) for x in (self._spp, self._up, self._down))
            available = float(np.mean([self.is_available(c, 0.0) for c in range(n)]))
        out = {
            "clients": float(self.num),
            "seconds_per_sample_min": float(spp.min()),
            "seconds_per_sample_median": float(np.median(spp)),
            "seconds_per_sample_max": float(spp.max()),
            "slowest_to_fastest": float(spp.max() / spp.min()),
            "latency_median": float(np.median(self.latency[:n])),
            "up_mbps_median": float(np.median(up)) * 8 / 1e6,
            "down_mbps_median": float(np.median(down)) * 8 / 1e6,
            "available_fraction_at_0": available,
            "dropout": float(self.cfg.availability.dropout),
        }
        if n < self.num:
            out["described_clients"] = float(n)
        return out
