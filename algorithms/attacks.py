"""Byzantine client behaviours: pure numpy, no torch.

A Byzantine client trains like an honest one and then replaces its delta (model-side
attacks), or trains on poisoned labels (``label_flip``, a data-side attack: its delta is
sent unchanged). Which clients are Byzantine is drawn once per run by
``byzantine_clients``. Results are float32, computed in float64 as in aggregation.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from algorithms.aggregation import check_choice

ATTACKS = ("none", "sign_flip", "scale", "gaussian", "alie", "label_flip")


@dataclass(frozen=True)
class AttackConfig:
    name: str = "none"  # one of ATTACKS
    fraction: float = 0.0  # share of the clients that are Byzantine (round(fraction * n) of them)
    scale: float = 10.0  # scale: the delta is multiplied by this (a boosting attack when > 1)
    noise_std: float = 1.0  # gaussian: the delta is replaced by N(0, noise_std^2) per coordinate
    alie_z: float | None = None  # alie: z; None = Baruch et al.'s z_max for the round's n and f

    def __post_init__(self) -> None:
        check_choice("name", self.name, ATTACKS)
        if not 0 <= self.fraction <= 1:  # written so that NaN fails too
            raise ValueError(f"fraction must be in [0, 1] (got {self.fraction})")
        if not math.isfinite(self.scale):
            raise ValueError(f"scale must be finite (got {self.scale})")
        if not 0 < self.noise_std < math.inf:
            raise ValueError(f"noise_std must be > 0 and finite (got {self.noise_std})")
        if self.alie_z is not None and not math.isfinite(self.alie_z):
            raise ValueError(f"alie_z must be finite, or None for Baruch et al.'s z_max (got {self.alie_z})")


def byzantine_clients(num_clients: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted ids of exactly ``round(fraction * num_clients)`` distinct clients.

    Rounds half up (2.5 -> 3), not to even as Python's ``round`` does, so that a
    fraction's count never shrinks at an odd boundary.
    """
    if num_clients < 0:
        raise ValueError(f"num_clients must be >= 0 (got {num_clients})")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1] (got {fraction})")
    k = math.floor(fraction * num_clients + 0.5)
    return np.sort(rng.choice(num_clients, size=k, replace=False)).astype(np.int64)


def sign_flip(delta: np.ndarray) -> np.ndarray:
    """``-delta``: the server steps up the honest loss instead of down."""
    return (-np.asarray(delta, dtype=np.float64)).astype(np.float32)


def scale(delta: np.ndarray, factor: float) -> np.ndarray:
    """``factor * delta``: a large factor dominates a plain mean."""
    return (factor * np.asarray(delta, dtype=np.float64)).astype(np.float32)


def gaussian(delta: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """Replace ``delta`` by i.i.d. ``N(0, std^2)`` noise of its shape (only its shape is used)."""
    return rng.normal(0.0, std, size=np.shape(delta)).astype(np.float32)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al. 2019's ``z``: ``s = floor(n/2 + 1) - f``, ``z = Phi^-1((n - s) / n)``.

    ``s`` is how many honest clients the ``f`` colluders must have on their side for a
    majority; ``z`` is the largest deviation that, for normally spread honest updates,
    still leaves ``s`` of them farther from the mean than the colluders' common update.
    n=10, f=3: s=3, z=Phi^-1(0.7)=0.5244. Some implementations use ``(n-f-s)/(n-f)``.
    """
    if not 1 <= f < n:
        raise ValueError(f"alie needs 1 <= byzantine < n (got n={n}, byzantine={f})")
    s = math.floor(n / 2 + 1) - f
    if s <= 0:  # the colluders already hold a majority; the formula has no z for it
        raise ValueError(f"alie's z is undefined when byzantine >= n/2 + 1 (got n={n}, byzantine={f})")
    return NormalDist().inv_cdf((n - s) / n)


def honest_moments(deltas: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean and (population, ddof=0) std of the round's honest deltas."""
    if not deltas:
        raise ValueError("need at least one honest delta")
    x = np.stack([np.asarray(d, dtype=np.float64) for d in deltas])
    return x.mean(axis=0), x.std(axis=0)


def alie(mean: np.ndarray, std: np.ndarray, z: float) -> np.ndarray:
    """A little is enough (ALIE): ``mean - z * std``, per coordinate (every colluder sends the same)."""
    m = np.asarray(mean, dtype=np.float64)
    return (m - z * np.asarray(std, dtype=np.float64)).astype(np.float32)


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """``y -> C - 1 - y``: class 0 is taught as C-1 and back (a new array, same dtype)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
    labels = np.asarray(y)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}) (got {labels.min()}..{labels.max()}): check num_classes"
        )
    return (num_classes - 1 - labels).astype(labels.dtype)


def attack_update(
    cfg: AttackConfig,
    delta: np.ndarray,
    rng: np.random.Generator,
    *,
    honest_mean: np.ndarray | None = None,
    honest_std: np.ndarray | None = None,
    num_clients: int = 0,
    num_byzantine: int = 0,
) -> np.ndarray:
    """What a Byzantine client uploads in place of its honest ``delta`` under ``cfg``.

    ``alie`` needs the round's honest moments and, unless ``cfg.alie_z`` is set, the
    round's ``num_clients`` and ``num_byzantine`` for ``z``. ``none`` and ``label_flip``
    (whose harm is already in the delta) return the delta unchanged.
    """
    if cfg.name == "sign_flip":
        return sign_flip(delta)
    if cfg.name == "scale":
        return scale(delta, cfg.scale)
    if cfg.name == "gaussian":
        return gaussian(delta, rng, cfg.noise_std)
    if cfg.name == "alie":
        if honest_mean is None or honest_std is None:
            raise ValueError("alie needs honest_mean and honest_std of the round (see honest_moments)")
        z = cfg.alie_z if cfg.alie_z is not None else alie_z_max(num_clients, num_byzantine)
        return alie(honest_mean, honest_std, z)
    return np.asarray(delta, dtype=np.float32).copy()
