"""Byzantine-robust aggregation rules: pure numpy, no torch.

Each rule maps a list of flat float32 update vectors (and, where the rule has a use for
them, weights such as sample counts) to one aggregate direction. As in aggregation.py,
the math runs in float64 and the result is rounded once to float32. The order-statistic
rules (median, trimmed mean, Krum, Multi-Krum) ignore the weights on purpose: a Byzantine
client can claim any sample count, and weighting by it would hand it the aggregate.

``f`` (``byzantine``) is the number of Byzantine updates a rule is asked to tolerate;
``check_feasible`` says, before a round is aggregated, when ``n`` updates are too few.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from algorithms.aggregation import check_choice, weighted_average

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound", "geometric_median")


@dataclass(frozen=True)
class AggregatorConfig:
    name: str = "mean"  # one of AGGREGATORS
    trim: float = 0.1  # trimmed_mean: fraction beta cut from each side of every coordinate
    byzantine: int = 0  # f: Byzantine updates tolerated (krum, multi_krum; checked for the others)
    multi_krum_m: int = 0  # multi_krum: updates averaged; 0 = n - f (Blanchard et al.'s choice)
    max_norm: float = 1.0  # norm_bound: each update is clipped to this L2 norm
    gm_nu: float = 1e-6  # geometric_median: smoothing nu, the smallest distance divided by
    gm_max_iter: int = 100  # geometric_median: Weiszfeld iterations at most
    gm_tol: float = 1e-6  # geometric_median: stop when the objective improves by less (relative)

    def __post_init__(self) -> None:
        check_choice("name", self.name, AGGREGATORS)
        if not 0 <= self.trim < 0.5:  # written so that NaN fails too
            raise ValueError(f"trim must be in [0, 0.5): it is cut from each side (got {self.trim})")
        if self.byzantine < 0:
            raise ValueError(f"byzantine must be >= 0 (got {self.byzantine})")
        if self.multi_krum_m < 0:
            raise ValueError(f"multi_krum_m must be >= 1, or 0 for n - byzantine (got {self.multi_krum_m})")
        if not 0 < self.max_norm < math.inf:
            raise ValueError(f"max_norm must be > 0 and finite (got {self.max_norm})")
        if not 0 < self.gm_nu < math.inf:
            raise ValueError(f"gm_nu must be > 0 and finite (got {self.gm_nu})")
        if self.gm_max_iter < 1:
            raise ValueError(f"gm_max_iter must be >= 1 (got {self.gm_max_iter})")
        if not self.gm_tol >= 0:
            raise ValueError(f"gm_tol must be >= 0 (got {self.gm_tol})")


def trim_count(n: int, beta: float) -> int:
    """Values cut from *each* side of a coordinate: ``floor(beta * n)``; n=10, beta=0.1 -> 1.

    The 1e-9 keeps products such as 0.29 * 100 = 28.999999999999996 from losing one.
    """
    return math.floor(beta * n + 1e-9)


def multi_krum_count(cfg: AggregatorConfig, n: int) -> int:
    """Updates Multi-Krum averages: ``multi_krum_m``, or ``n - f`` when it is 0."""
    return cfg.multi_krum_m if cfg.multi_krum_m > 0 else n - cfg.byzantine


def check_feasible(cfg: AggregatorConfig, n_updates: int) -> None:
    """Raise a one-line ValueError when ``n_updates`` break the rule's assumption on ``f``."""
    n, f = n_updates, cfg.byzantine
    if n < 1:
        raise ValueError(f"{cfg.name} needs at least one update (got {n})")
    if cfg.name in ("krum", "multi_krum") and n <= 2 * f + 2:
        raise ValueError(
            f"{cfg.name} needs n > 2*byzantine + 2 updates (got n={n}, byzantine={f}): "
            + (f"lower byzantine to <= {(n - 3) // 2} or " if n >= 3 else "")
            + "aggregate more updates"
        )
    if cfg.name == "multi_krum" and not 1 <= multi_krum_count(cfg, n) <= n - f:
        raise ValueError(
            f"multi_krum_m must be in [1, n - byzantine] = [1, {n - f}] (got {cfg.multi_krum_m})"
        )
    if cfg.name in ("median", "geometric_median") and f > 0 and n <= 2 * f:
        raise ValueError(
            f"{cfg.name} tolerates fewer than half Byzantine updates (got n={n}, byzantine={f}): "
            f"aggregate more than {2 * f} updates"
        )
    if cfg.name == "trimmed_mean" and trim_count(n, cfg.trim) < f:
        raise ValueError(
            f"trimmed_mean cuts floor(trim * n) = {trim_count(n, cfg.trim)} per side, fewer than "
            f"byzantine={f}: raise trim to >= {f}/{n}"
        )


def is_finite(update: np.ndarray) -> bool:
    """True when every entry is finite: a NaN or Inf update must be rejected, not aggregated."""
    return bool(np.all(np.isfinite(update)))


def _stack(updates: Sequence[np.ndarray]) -> np.ndarray:
    if not updates:
        raise ValueError("need at least one update to aggregate")
    return np.stack([np.asarray(u, dtype=np.float64) for u in updates])


def coordinate_median(updates: Sequence[np.ndarray]) -> np.ndarray:
    """Per-coordinate median (an even count averages the two middle values)."""
    return np.median(_stack(updates), axis=0).astype(np.float32)


def trimmed_mean(updates: Sequence[np.ndarray], beta: float) -> np.ndarray:
    """Per coordinate: sort, cut ``trim_count(n, beta)`` values from each end, average the rest."""
    x = np.sort(_stack(updates), axis=0)
    k = trim_count(len(x), beta)
    return x[k : len(x) - k].mean(axis=0).astype(np.float32)


def krum_scores(updates: Sequence[np.ndarray], f: int) -> np.ndarray:
    """Blanchard et al.'s score: the sum of squared distances to the ``n - f - 2`` nearest others."""
    x = _stack(updates)
    n = len(x)
    if n <= 2 * f + 2:
        raise ValueError(f"krum needs n > 2*byzantine + 2 updates (got n={n}, byzantine={f})")
    sq = np.sum(x * x, axis=1)
    # ||a-b||^2 = |a|^2 + |b|^2 - 2ab: one BLAS product instead of n^2 vector differences;
    # in float64 the cancellation is far below float32 resolution. Rounding can dip below 0.
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, np.inf)  # a point is not its own neighbour
    return np.sort(d2, axis=1)[:, : n - f - 2].sum(axis=1)


def krum_select(updates: Sequence[np.ndarray], f: int, m: int) -> np.ndarray:
    """Indices of the ``m`` best (lowest) scores; ties go to the lower index."""
    return np.argsort(krum_scores(updates, f), kind="stable")[:m]


def krum(updates: Sequence[np.ndarray], f: int) -> np.ndarray:
    """The single update with the lowest Krum score."""
    return np.asarray(updates[int(krum_select(updates, f, 1)[0])], dtype=np.float32).copy()


def multi_krum(updates: Sequence[np.ndarray], f: int, m: int) -> np.ndarray:
    """The plain mean of the ``m`` best-scored updates (scores computed once, as in the paper)."""
    chosen = krum_select(updates, f, m)
    return _stack([updates[int(i)] for i in chosen]).mean(axis=0).astype(np.float32)


def clip_update(update: np.ndarray, max_norm: float) -> np.ndarray:
    """``update * min(1, max_norm / ||update||)``, in float64 (a zero vector stays zero)."""
    u = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(u))
    return u if norm <= max_norm else u * (max_norm / norm)


def norm_bounded_mean(updates: Sequence[np.ndarray], weights: Sequence[float], max_norm: float) -> np.ndarray:
    """Clip each update to L2 norm ``max_norm``, then take the weighted mean."""
    return weighted_average([clip_update(u, max_norm) for u in updates], weights)


def geometric_median(
    updates: Sequence[np.ndarray],
    weights: Sequence[float],
    nu: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> np.ndarray:
    """Weighted geometric median by the smoothed Weiszfeld algorithm of RFA (Pillutla et al. 2022).

    From the weighted mean, repeat ``v <- sum b_i w_i / sum b_i`` with
    ``b_i = alpha_i / max(nu, ||v - w_i||)``; the ``nu`` keeps a step well defined when
    ``v`` lands on an update. Stops when the objective ``sum alpha_i ||v - w_i||`` improves by
    less than ``tol`` times its value, or after ``max_iter`` iterations.
    """
    x = _stack(updates)
    a = np.asarray(weights, dtype=np.float64)
    if a.shape != (len(x),) or np.any(a < 0) or not a.sum() > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, one per update (got {a.tolist()})")
    a = a / a.sum()
    v = a @ x
    obj = float(a @ np.linalg.norm(x - v, axis=1))
    for _ in range(max_iter):
        b = a / np.maximum(nu, np.linalg.norm(x - v, axis=1))
        v = (b @ x) / b.sum()
        prev, obj = obj, float(a @ np.linalg.norm(x - v, axis=1))
        if abs(prev - obj) <= tol * obj:
            break
    return v.astype(np.float32)


def aggregate(
    cfg: AggregatorConfig, updates: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    """The aggregate direction of ``updates`` under ``cfg``; ``weights`` default to uniform.

    Non-finite updates are refused: the caller drops them with ``is_finite`` first.
    """
    n = len(updates)
    check_feasible(cfg, n)
    w = [1.0] * n if weights is None else list(weights)
    if len(w) != n:
        raise ValueError(f"got {n} updates but {len(w)} weights")
    if not all(is_finite(u) for u in updates):
        raise ValueError("an update holds NaN or Inf: drop it with is_finite before aggregating")
    if cfg.name == "mean":
        return weighted_average(updates, w)
    if cfg.name == "median":
        return coordinate_median(updates)
    if cfg.name == "trimmed_mean":
        return trimmed_mean(updates, cfg.trim)
    if cfg.name == "krum":
        return krum(updates, cfg.byzantine)
    if cfg.name == "multi_krum":
        return multi_krum(updates, cfg.byzantine, multi_krum_count(cfg, n))
    if cfg.name == "norm_bound":
        return norm_bounded_mean(updates, w, cfg.max_norm)
    return geometric_median(updates, w, cfg.gm_nu, cfg.gm_max_iter, cfg.gm_tol)
