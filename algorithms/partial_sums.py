"""Partial sums: a weighted mean computed where the updates are (``executors.partial_sums``).

An executor that computed several jobs of one aggregate returns, instead of each job's
delta, one ``PartialSum``: ``total = sum_i w_i * Delta_i`` over its members and their
``weight = sum_i w_i``. The server then divides the sum of the partial sums by the sum of
their weights, which is the same weighted mean it would have computed from the updates.

Summation order, so that a run is identical on any number of executors and on either
backend: which jobs form one partial sum (``members``) is decided at dispatch, from the
dispatch alone (engine/core/jobs.py ``assign_sum_groups``); a partial sum adds its members
in job-sequence order, in float64; the server adds the partial sums in the order of their
keys (the first member's sequence), then any update that came on its own, in arrival
order, and only then divides. The result differs from the per-update mean
(``aggregation.weighted_average``: each update times ``w_i / W``, added in arrival order)
only by float64 rounding, far below float32's resolution, so the model usually agrees bit
for bit and otherwise in its last float32 place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class PartialSum:
    key: int  # the sum group's id: its first job's dispatch sequence
    members: tuple[int, ...]  # the clients whose deltas it holds, in job-sequence order
    total: np.ndarray  # sum_i w_i * Delta_i, float64
    weight: float  # sum_i w_i


def partial_sum(key: int, summands: Iterable[tuple[int, np.ndarray, float]]) -> PartialSum | None:
    """The partial sum of ``summands`` (client, delta, weight), given in job-sequence order
    (an iterator is consumed one delta at a time); None when there are none."""
    members: list[int] = []
    total: np.ndarray | None = None
    weight = 0.0
    term: np.ndarray | None = None
    for client, delta, w in summands:
        # w_i * Delta_i in float64 (the float32 delta widened exactly), into one reused buffer.
        term = np.multiply(delta, float(w), dtype=np.float64, out=term)
        if total is None:
            total, term = term, None
        else:
            total += term
        weight += float(w)
        members.append(int(client))
    if total is None:
        return None
    total.setflags(write=False)
    return PartialSum(key, tuple(members), total, weight)


def combined_mean(
    partials: Sequence[PartialSum | None],
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    clients: Sequence[int],
) -> np.ndarray:
    """The weighted mean of one aggregate's updates, some of them summed on executors.

    Update ``i`` (of ``clients[i]``) came in partial sum ``partials[i]``, or on its own
    (``None``) with ``deltas[i]`` and ``weights[i]``. Every member of every partial sum
    must be among ``clients``: a summed job that did not become an update (dropped, cut
    off) would otherwise count. A job computed again after a resume comes back in a
    smaller partial sum of the same key, whose members the first one already holds: per
    key, the partial sum with the most members is the one that counts.
    """
    by_key: dict[int, PartialSum] = {}
    for p in partials:
        if p is not None and (p.key not in by_key or len(p.members) > len(by_key[p.key].members)):
            by_key[p.key] = p
    summed = [c for c, p in zip(clients, partials, strict=True) if p is not None]
    covered = sorted(m for p in by_key.values() for m in p.members)
    if covered != sorted(summed):
        raise ValueError(
            f"the partial sums hold clients {covered}, the aggregate's summed updates {sorted(summed)}"
        )
    shape = next(p.total.shape for p in by_key.values()) if by_key else np.shape(deltas[0])
    total = np.zeros(shape, dtype=np.float64)
    weight = 0.0
    for key in sorted(by_key):
        total += by_key[key].total
        weight += by_key[key].weight
    for p, delta, w in zip(partials, deltas, weights, strict=True):
        if p is None:
            total += float(w) * np.asarray(delta, dtype=np.float64)
            weight += float(w)
    if not weight > 0:
        raise ValueError(f"weights must have a positive sum (got {weight})")
    return (total / weight).astype(np.float32)
