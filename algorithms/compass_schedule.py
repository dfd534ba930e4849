"""FedCompass's scheduling math (spec async-algorithms.md §4): arrival groups and the
join / create rules of current APPFL's ``CompassScheduler``, as pure functions over
immutable values.

Times are virtual seconds. A speed ``v`` is seconds per local step, measured from the
client's own arrivals (arrival time minus the dispatch time the algorithm recorded), so
nothing here can see a scheduled finish time (time-models.md §7, no clairvoyance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

# A job measured at zero duration would make every step count infinite.
MIN_SPEED = 1e-9

# An update waiting in a buffer: (Delta_j, tau_j: the version its job started from).
Entry = tuple[np.ndarray, int]


@dataclass(frozen=True, eq=False)
class ArrivalGroup:
    """Clients scheduled to finish together around ``expected`` (T_g)."""

    gid: int
    expected: float  # T_g: when the members should arrive
    latest: float  # T_g^max: the group's timer; members arriving after it are late
    pending: tuple[int, ...] = ()  # members still training
    arrived: tuple[int, ...] = ()  # on-time members, held (not re-dispatched) until aggregation
    buffer: tuple[Entry, ...] = ()  # their updates, in arrival order
    open: bool = True  # False once aggregated or timed out: nobody joins, its timer is off

    @property
    def members(self) -> tuple[int, ...]:
        return self.pending + self.arrived


def update_speed(previous: float, measured: float, momentum: float) -> float:
    """``(1 - m) v_old + m v_new``: the momentum weighs the **new** measurement (APPFL's
    ``speed_momentum``, the opposite of the usual EMA convention). ``previous <= 0``
    means no estimate yet: the first measurement is taken as is."""
    measured = max(measured, MIN_SPEED)
    if previous <= 0:
        return measured
    return (1.0 - momentum) * previous + momentum * measured


def join_steps(
    groups: Sequence[ArrivalGroup], speed: float, now: float, q_min: int, q_max: int
) -> tuple[int, int]:
    """(gid, Q) of the open group this client can reach with the most local steps
    ``Q = floor((T_g - now) / v)`` within ``[q_min, q_max]``, or (-1, -1) if none.
    Ties go to the later group, as in APPFL's loop."""
    best_gid, best_q = -1, -1
    for g in groups:
        if not g.open:
            continue
        q = math.floor((g.expected - now) / speed)
        if q_min <= q <= q_max and q >= best_q:
            best_gid, best_q = g.gid, q
    return best_gid, best_q


def create_steps(
    groups: Sequence[ArrivalGroup], speeds: Sequence[float], speed: float, now: float, q_min: int, q_max: int
) -> int:
    """Local steps for a client that starts a new group: aim at the next expected arrival
    of an open group, estimated as ``T_g^max + v_fastest Q_max``, with the largest such
    ``Q <= q_max``; raised to ``q_min`` if below; ``q_max`` if no open group qualifies."""
    best = -1
    for g in groups:
        if not g.open or not now < g.latest or not g.members:
            continue
        fastest = min(speeds[c] for c in g.members)
        q = math.floor((g.latest + fastest * q_max - now) / speed)
        if q <= q_max:
            best = max(best, q)
    if best < 0:
        return q_max
    return max(best, q_min)


def assign_group(
    groups: tuple[ArrivalGroup, ...],
    client: int,
    speeds: Sequence[float],
    now: float,
    q_min: int,
    q_max: int,
    latest_time_factor: float,
    next_gid: int,
) -> tuple[tuple[ArrivalGroup, ...], int, int]:
    """Put ``client`` (speed ``speeds[client]``) into a group at ``now``: join the best
    open group, else create one. Returns (groups, the client's gid, its Q).

    With no open group at all this creates a group with ``Q = q_max``, which is also
    APPFL's rule for the very first group."""
    speed = speeds[client]
    gid, q = join_steps(groups, speed, now, q_min, q_max)
    if gid >= 0:
        joined = tuple(replace(g, pending=(*g.pending, client)) if g.gid == gid else g for g in groups)
        return joined, gid, q
    q = create_steps(groups, speeds, speed, now, q_min, q_max)
    created = ArrivalGroup(
        gid=next_gid,
        expected=now + q * speed,
        latest=now + latest_time_factor * q * speed,
        pending=(client,),
    )
    return (*groups, created), next_gid, q


def put_group(groups: tuple[ArrivalGroup, ...], group: ArrivalGroup) -> tuple[ArrivalGroup, ...]:
    """``groups`` with ``group`` replacing the one of the same gid; a group nobody is
    training for any more is deleted (closed, or open with no member left at all)."""
    keep = bool(group.pending) or (group.open and bool(group.arrived))
    return tuple(group if g.gid == group.gid else g for g in groups if keep or g.gid != group.gid)


def find_group(groups: Sequence[ArrivalGroup], gid: int) -> ArrivalGroup | None:
    return next((g for g in groups if g.gid == gid), None)


def next_deadline(groups: Sequence[ArrivalGroup]) -> float | None:
    """The earliest armed timer: ``T_g^max`` of the open groups."""
    return min((g.latest for g in groups if g.open), default=None)


def job_lr(
    lr: float, decay: float, counted: int, q: int, measured: bool, q_min: int, q_max: int
) -> tuple[int, float]:
    """(step count, client lr) for a job of ``q`` steps under the legacy APPFL FedCompass
    scheduler's decay (``LR_DECAY`` 0.995): ``lr * decay^floor(count / q_max)``, one decay
    per ``q_max`` steps the client has been given. The count starts at ``q_min`` at the
    client's first arrival (``counted`` 0), not at its first job's ``q_max`` steps, and grows
    by each later job's ``q``; a first job (``measured`` False: no speed yet) runs at ``lr``.
    ``decay`` 1 is no decay: ``lr`` itself, the count untouched."""
    if decay == 1 or not measured:
        return counted, lr
    count = (counted if counted > 0 else q_min) + q
    return count, lr * decay ** (count // q_max)
