"""Differential privacy for federated averaging: pure numpy, no torch.

Central, user-level DP (DP-FedAvg, McMahan et al. ICLR 2018): the server clips every
client's delta to L2 norm ``C``, sums, adds ``N(0, (z C)^2)`` to the sum once, and divides
by the *expected* number of clients per round, a fixed denominator, so that one client's
presence moves the aggregate by at most ``C`` / expected. Local DP: each client clips its
own delta and adds ``N(0, (z C)^2)`` before upload, trusting no one.

``epsilon`` turns (z, sampling rate q, rounds, delta) into the (epsilon, delta) spent, by
Google's ``dp-accounting`` (imported on first use, so that this module imports without it).
Results are float32, computed in float64 as in aggregation.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from algorithms.aggregation import check_choice

DP_MODES = ("none", "central", "local")
ACCOUNTANTS = ("rdp", "pld")


@dataclass(frozen=True)
class PrivacyConfig:
    mode: str = "none"  # one of DP_MODES
    clip: float = 1.0  # C: the L2 norm each client's delta is clipped to
    noise_multiplier: float = 1.0  # z: the noise std is z * C
    delta: float = 1e-5  # the delta of the (epsilon, delta) that is reported
    accountant: str = "rdp"  # rdp (Renyi DP, the usual upper bound) | pld (tighter, slower)

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, DP_MODES)
        if not 0 < self.clip < math.inf:  # written so that NaN fails too
            raise ValueError(f"clip must be > 0 and finite (got {self.clip})")
        if not 0 <= self.noise_multiplier < math.inf:
            raise ValueError(f"noise_multiplier must be >= 0 and finite (got {self.noise_multiplier})")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), typically below 1/clients (got {self.delta})")
        check_choice("accountant", self.accountant, ACCOUNTANTS)


def clip_to_norm(delta: np.ndarray, c: float) -> np.ndarray:
    """``delta * min(1, c / ||delta||_2)``: shorter deltas pass unchanged, a zero one too."""
    if not c > 0:
        raise ValueError(f"clip must be > 0 (got {c})")
    d = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(d))
    return (d if norm <= c else d * (c / norm)).astype(np.float32)


def gaussian_noise(size: int | tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """I.i.d. ``N(0, std^2)`` draws of the given size, as float32 (drawn in float64)."""
    if not std >= 0:
        raise ValueError(f"std must be >= 0 (got {std})")
    return rng.normal(0.0, std, size=size).astype(np.float32)


def central_dp_aggregate(
    deltas: Sequence[np.ndarray],
    clip: float,
    noise_multiplier: float,
    expected_clients: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """DP-FedAvg's server step: ``(sum_i clip(delta_i, C) + N(0, (z C)^2)) / expected_clients``.

    ``expected_clients`` is ``q * N``, not ``len(deltas)``: dividing by the realised count
    would make the scale itself depend on who took part. With no delta the result is
    pure noise, as the mechanism requires (an empty round is not skipped silently).
    """
    if not expected_clients > 0:
        raise ValueError(f"expected_clients must be > 0 (got {expected_clients})")
    if not deltas:
        raise ValueError("need at least one delta to know the model's size")
    total = np.zeros(np.shape(deltas[0]), dtype=np.float64)
    for d in deltas:  # fixed accumulation order, as in aggregation.weighted_sum
        total += clip_to_norm(d, clip).astype(np.float64)
    total += gaussian_noise(total.shape, noise_multiplier * clip, rng).astype(np.float64)
    return (total / expected_clients).astype(np.float32)


def local_dp_update(
    delta: np.ndarray, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Local DP on the client: ``clip(delta, C) + N(0, (z C)^2)`` per coordinate."""
    clipped = clip_to_norm(delta, clip).astype(np.float64)
    noise = gaussian_noise(clipped.shape, noise_multiplier * clip, rng).astype(np.float64)
    return (clipped + noise).astype(np.float32)


def epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """The epsilon of ``steps`` Poisson-subsampled Gaussian rounds at ``(z, q)`` for ``delta``.

    Each round samples every client independently with probability ``q`` (the accountant's
    assumption: a fixed-size sample is accounted approximately). ``rdp`` is the Renyi-DP
    bound (Mironov et al. 2019) that most papers report; ``pld`` (privacy loss
    distributions) is tighter. ``z = 0`` is no privacy (inf); no steps, none spent (0).
    """
    if not 0 <= noise_multiplier < math.inf:
        raise ValueError(f"noise_multiplier must be >= 0 and finite (got {noise_multiplier})")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1] (got {sample_rate})")
    if steps < 0:
        raise ValueError(f"steps must be >= 0 (got {steps})")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) (got {delta})")
    check_choice("accountant", accountant, ACCOUNTANTS)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    try:
        import dp_accounting
    except ImportError as e:  # an optional dependency: only the accounting needs it
        raise ImportError("epsilon needs the dp-accounting package: pip install dp-accounting") from e
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
        steps,
    )
    acct: dp_accounting.PrivacyAccountant = (
        dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant()
    )
    acct.compose(event)
    return float(acct.get_epsilon(delta))
