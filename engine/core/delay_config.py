"""The clients' delay settings (``clients.*``): speed family, network, availability, each
checked when built, with the errors a user sees. The model they configure is
engine/core/delays.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from algorithms.attacks import ByzantineConfig
from engine.core.registry import Registry, function

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
