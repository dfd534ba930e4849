"""Byzantine client behaviours: pure numpy, no torch.

A Byzantine client trains like an honest one and then replaces its delta (model-side
attacks), or trains on poisoned labels (``label_flip``, a data-side attack: its delta is
sent unchanged). Which clients are Byzantine is drawn once per run by
``byzantine_clients``. Results are float32, computed in float64 as in aggregation.py.

Where each attack runs in a simulation (config ``clients.byzantine``, ``ByzantineConfig``):

* ``sign_flip``, ``scale``, ``gaussian`` and ``label_flip`` are the client's own doing and
  run on the executor (engine/worker/worker.py): label flipping changes the labels the
  client trains on; the others replace the delta before it is encoded, the noise drawn
  from a stream keyed by ``(seed, "byzantine_noise", client, job_index)``.
* ``alie`` needs the honest updates' moments, which colluders are assumed to know, and no
  client sees them: the loop hands a colluder's update to the algorithm as a
  ``ColludingUpdate``, and the algorithm's aggregation (FedAvg's round, FedBuff's buffer)
  replaces it by ``collude``: mean - z * std of the honest updates of that aggregate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from algorithms.aggregation import check_choice
from algorithms.base import Update
from engine.core.rng import stream

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


# The attacks an executor applies to the delta it computed (alie runs at the aggregation).
EXECUTOR_ATTACKS = ("sign_flip", "scale", "gaussian")


@dataclass(frozen=True)
class ByzantineConfig:
    """Config section ``clients.byzantine``: which share of the clients attack, and how.

    ``clients.byzantine.fraction=0.1 clients.byzantine.attack=sign_flip``: exactly
    ``round(fraction * clients.num)`` clients (half up), drawn from the stream
    ``(seed, "byzantine")``, send manipulated updates for the whole run. ``fraction`` 0
    means no attacker, whatever ``attack`` says.
    """

    attack: str = "none"  # one of ATTACKS
    fraction: float = 0.0  # share of the clients that are Byzantine
    scale: float = 10.0  # scale: the delta is multiplied by this
    noise_std: float = 1.0  # gaussian: the delta is replaced by N(0, noise_std^2) noise
    alie_z: float | None = None  # alie: z; None = Baruch et al.'s z_max for each aggregate's n and f

    def __post_init__(self) -> None:
        check_choice("attack", self.attack, ATTACKS)
        self.attack_config()  # the remaining checks, with these keys' names
        if self.fraction > 0 and self.attack == "none":
            raise ValueError(
                f"fraction is {self.fraction} but attack is none: set attack to one of "
                f"{', '.join(a for a in ATTACKS if a != 'none')}, or fraction to 0"
            )

    @property
    def active(self) -> bool:
        """Whether any client may attack (an attack is named and the fraction is > 0)."""
        return self.attack != "none" and self.fraction > 0

    def attack_config(self) -> AttackConfig:
        return AttackConfig(self.attack, self.fraction, self.scale, self.noise_std, self.alie_z)

    def clients(self, num_clients: int, seed: int) -> np.ndarray:
        """The sorted ids of the run's Byzantine clients (empty when not ``active``)."""
        return np.array(sorted(attacked_set(self, num_clients, seed)), dtype=np.int64)

    def summary(self, num_clients: int, seed: int, applied_clients: Any) -> dict[str, Any]:
        """``summary.json``'s ``byzantine`` section (none when not ``active``):
        ``applied_clients`` are the clients of the applied updates, one per update."""
        if not self.active:
            return {}
        attackers = self.clients(num_clients, seed)
        hits = np.isin(np.asarray(applied_clients, dtype=np.int64), attackers)
        section = {"attack": self.attack, "fraction": self.fraction, "clients": attackers.tolist()}
        return {"byzantine": {**section, "updates_applied": int(hits.sum())}}


@functools.lru_cache(maxsize=16)
def attacked_set(cfg: ByzantineConfig, num_clients: int, seed: int) -> frozenset[int]:
    """The run's Byzantine clients: ``byzantine_clients`` on the stream ``(seed, "byzantine")``.

    One draw per run, the same in the driver, the loop and every executor (cached: the
    loop asks at every completion)."""
    if not cfg.active:
        return frozenset()
    ids = byzantine_clients(num_clients, cfg.fraction, stream(seed, "byzantine"))
    return frozenset(int(c) for c in ids)


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


def alie_z_round(n: int, f: int) -> float:
    """``alie_z_max(n, f)`` for one aggregate of ``n`` updates, ``f`` of them colluding.

    Where the colluders already hold a majority (``s = floor(n/2 + 1) - f <= 0``) the
    formula has no ``z``; they then deviate as far as with ``s = 1``: ``Phi^-1((n-1)/n)``.
    """
    s = math.floor(n / 2 + 1) - f
    if s <= 0:
        return NormalDist().inv_cdf((n - 1) / n)
    return alie_z_max(n, f)


@dataclass(frozen=True)
class ColludingUpdate(Update):
    """An update of an ALIE colluder, as the loop hands it to the algorithm: its ``delta``
    is the client's honest one, to be replaced at the aggregation by ``collude``."""

    alie_z: float | None = None  # None: alie_z_round of the aggregate's n and f


def colluding(update: Update, alie_z: float | None) -> ColludingUpdate:
    """``update`` marked as a colluder's (every field kept)."""
    fields = {f.name: getattr(update, f.name) for f in dataclasses.fields(Update)}
    return ColludingUpdate(**fields, alie_z=alie_z)


def collude(
    deltas: Sequence[np.ndarray], colluders: Collection[int], alie_z: float | None
) -> list[np.ndarray]:
    """The aggregate's deltas with each colluder's (positions ``colluders``) replaced by
    ALIE's ``mean - z * std`` of the honest ones (all colluders send the same vector).

    ``z`` is ``alie_z``, or ``alie_z_round(n, f)`` for the aggregate's ``n`` updates and
    ``f`` colluders. With no honest update in the aggregate there is nothing to estimate:
    the deltas are returned as they are.
    """
    out = list(deltas)
    n, f = len(out), len(colluders)
    if f == 0 or f >= n:
        return out
    honest = [d for i, d in enumerate(out) if i not in colluders]
    mean, std = honest_moments(honest)
    fake = alie(mean, std, alie_z if alie_z is not None else alie_z_round(n, f))
    return [fake if i in colluders else d for i, d in enumerate(out)]
