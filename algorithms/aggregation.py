"""Server-side math and bookkeeping shared by the algorithms: pure numpy, no torch.

Staleness ``u`` is always counted in server versions (spec async-algorithms.md §0);
each algorithm's module docstring says what one version is there. Vector results are
computed in float64 and rounded once to float32, so that a rule's outcome depends only
on its inputs and on a fixed accumulation order, never on numpy's promotion rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from algorithms.base import Job, Task, sample_clients
from algorithms.idle import IdleClients
from algorithms.task import check_choice

STALENESS_KINDS = ("const", "poly", "hinge")
MIX_MODES = ("mix_current", "delta_on_stale_base")


# ---- Params validation (messages start with the field name: the config layer prefixes it)


def check_staleness(kind: str, a: float, b: float) -> None:
    """Validate the ``staleness``, ``a`` and ``b`` fields of an asynchronous algorithm."""
    check_choice("staleness", kind, STALENESS_KINDS)
    if not a >= 0:  # written so that NaN fails too
        raise ValueError(f"a must be >= 0 (got {a})")
    if not b >= 0:
        raise ValueError(f"b must be >= 0 (got {b})")


# ---- staleness and aggregation rules --------------------------------------------------


def staleness_weight(kind: str, u: int, a: float, b: float) -> float:
    """``s(u)`` of spec §0: const 1; poly ``(u+1)^(-a)``; hinge 1 up to ``b``, then decaying.

    The exponent is negative: FedCompass and legacy APPFL use ``(u+1)^(+a)``, which makes
    staler updates weigh *more* (spec §9, item 1).
    """
    if u < 0:
        raise ValueError(f"staleness must be >= 0 (got {u}): an update cannot start from a future version")
    if kind == "const":
        return 1.0
    if kind == "poly":
        return float((u + 1.0) ** -a)
    if kind == "hinge":
        return 1.0 if u <= b else 1.0 / (a * (u - b) + 1.0)
    raise ValueError(f"staleness must be one of {', '.join(STALENESS_KINDS)} (got {kind!r})")


def weighted_sum(deltas: Sequence[np.ndarray], coeffs: Sequence[float]) -> np.ndarray:
    """``sum_i coeffs[i] * deltas[i]`` accumulated in the given order, as float32."""
    if len(deltas) != len(coeffs):
        raise ValueError(f"got {len(deltas)} deltas but {len(coeffs)} coefficients")
    if not deltas:
        raise ValueError("need at least one delta to aggregate")
    acc = np.zeros(np.shape(deltas[0]), dtype=np.float64)
    for delta, c in zip(deltas, coeffs, strict=True):
        acc += float(c) * np.asarray(delta, dtype=np.float64)
    return acc.astype(np.float32)


def weighted_average(deltas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Average with ``weights`` normalised to sum 1 (they must be >= 0, not all 0)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum (got {w.tolist()})")
    return weighted_sum(deltas, (w / w.sum()).tolist())


def descend(model: np.ndarray, direction: np.ndarray, server_lr: float) -> np.ndarray:
    """``x - server_lr * direction``: a new float32 array (the state's is never touched)."""
    step = np.asarray(model, dtype=np.float64) - server_lr * np.asarray(direction, dtype=np.float64)
    return step.astype(np.float32)


def fedasync_mix(
    current: np.ndarray, base: np.ndarray, delta: np.ndarray, alpha_t: float, mix_mode: str
) -> np.ndarray:
    """FedAsync's server rule for one arrival (spec §1, pitfall 2).

    ``mix_current``: ``(1 - alpha_t) x^t + alpha_t y`` with the client model
    ``y = x^tau - delta`` (the paper). ``delta_on_stale_base``: ``x^t - alpha_t delta``,
    the client's step taken relative to its stale base (APPFL's ``gradient_based``).
    The two coincide only when ``x^t == x^tau``.
    """
    x = np.asarray(current, dtype=np.float64)
    d = np.asarray(delta, dtype=np.float64)
    if mix_mode == "mix_current":
        y = np.asarray(base, dtype=np.float64) - d
        return ((1.0 - alpha_t) * x + alpha_t * y).astype(np.float32)
    if mix_mode == "delta_on_stale_base":
        return (x - alpha_t * d).astype(np.float32)
    raise ValueError(f"mix_mode must be one of {', '.join(MIX_MODES)} (got {mix_mode!r})")


# ---- jobs in flight (FedAvg's round, FedAsync's and FedBuff's concurrency) ---------------


def dispatch(
    task_for: Callable[[int], Task],
    in_flight: tuple[int, ...],
    target: int,
    idle: IdleClients,
    rng: np.random.Generator,
) -> tuple[tuple[int, ...], list[Job]]:
    """Top ``in_flight`` up to ``target`` jobs with clients sampled from ``idle``.

    Returns the new (sorted) in-flight tuple and the jobs, in draw order. Sampling always
    goes through ``sample_clients`` so that algorithms meant to coincide draw alike.
    """
    chosen = [int(c) for c in sample_clients(rng, idle, target - len(in_flight))]
    return tuple(sorted(in_flight + tuple(chosen))), [Job(c, task_for(c)) for c in chosen]


def release(in_flight: tuple[int, ...], client: int) -> tuple[int, ...]:
    """``in_flight`` without ``client``, whose job just ended (with or without an update)."""
    if client not in in_flight:
        raise ValueError(f"client {client} has no job in flight (in flight: {list(in_flight)})")
    i = in_flight.index(client)  # slicing and scanning in C: this runs for every job
    rest = in_flight[:i] + in_flight[i + 1 :]
    return rest if client not in rest else tuple(c for c in rest if c != client)
