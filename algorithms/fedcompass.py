"""FedCompass: Li et al., "FedCompass: Efficient Cross-Silo Federated Learning on
Heterogeneous Client Devices Using a Computing Power-Aware Scheduler", ICLR 2024
(arXiv 2309.14675); the scheduler of current APPFL (spec async-algorithms.md §4).

Every client trains all the time. The server measures each client's speed ``v_i``
(seconds per local step) from its arrivals and gives it a number of local steps
``Q_i in [q_min, q_max]`` so that clients of one *arrival group* finish together around
the group's expected time ``T_g``; the group aggregates when its last member arrives
or at its deadline ``T_g^max`` (a timer), whichever comes first. On-time members are
held until then; a member arriving after the deadline is *late*: its update waits in
the general buffer for the next group aggregation and it is re-dispatched at once.
A client's first arrival is aggregated at once, FedAsync-style. A job runs ``Q_i``
steps of the configured local training (``training.local_steps`` / ``epochs`` do not
apply). The group rules are in ``compass_schedule``.

Aggregation is APPFL's gradient mode, ``x <- x - sum_j alpha s(u_j) (1/N) Delta_j``
with ``N`` the number of clients: current APPFL always uses ``1/N`` (spec §4 pitfall 2).
``s`` is ``(u+1)^(-a)`` for poly; ``compat_positive_exponent`` reproduces the FedCompass
repository's ``(u+1)^(+a)`` (spec §9 item 1). A **version** is one aggregation, a
single first arrival or a group; staleness ``u_j`` counts them.

Engine-specific choices: a job starts when ``jobs`` dispatches it, at the end of the
instant, so a client re-dispatched at an instant where a group also aggregates gets the
newer model. A client whose job dropped rejoins when it is idle again (a new group if
it has a speed estimate, else ``q_max`` steps and a first-arrival update). Both
buffers keep every update (APPFL's dict merge loses a client's general-buffer update
when the same client is also in the group buffer). Server compute time is not modelled.
``lr_decay`` < 1 adds the legacy scheduler's client lr decay (``compass_schedule.job_lr``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from algorithms.aggregation import check_staleness, descend, release, staleness_weight, weighted_sum
from algorithms.base import Algorithm, Job, Update
from algorithms.compass_schedule import (
    ArrivalGroup,
    Entry,
    assign_group,
    find_group,
    job_lr,
    next_deadline,
    put_group,
    update_speed,
)
from algorithms.idle import IdleClients


@dataclass(frozen=True)
class FedCompassParams:
    q_max: int = 100  # Q_max: local steps of a first job, upper bound of every Q
    q_min: int = 20  # Q_min: lower bound of an assigned Q
    latest_time_factor: float = 1.5  # lambda: T_g^max = start + lambda * Q * v
    speed_momentum: float = 0.9  # weight of the NEW speed measurement
    alpha: float = 0.9  # server mixing rate (times s(u) / N per update)
    staleness: str = "poly"  # const | poly | hinge
    a: float = 0.5  # poly exponent / hinge slope
    b: float = 4.0  # hinge: staleness up to b is not discounted
    compat_positive_exponent: bool = False  # poly as (u+1)^(+a): the reference repo's bug
    lr_decay: float = 1.0  # client lr x lr_decay^floor(steps / q_max); legacy APPFL 0.995; 1 = off

    def __post_init__(self) -> None:
        if self.q_min < 1:
            raise ValueError(f"q_min must be >= 1 (got {self.q_min})")
        if self.q_max < self.q_min:
            raise ValueError(f"q_max must be >= q_min (got {self.q_max} < {self.q_min})")
        if not self.latest_time_factor >= 1:
            raise ValueError(f"latest_time_factor must be >= 1 (got {self.latest_time_factor})")
        if not 0 < self.speed_momentum <= 1:
            raise ValueError(f"speed_momentum must be in (0, 1] (got {self.speed_momentum})")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1] (got {self.alpha})")
        check_staleness(self.staleness, self.a, self.b)
        if self.compat_positive_exponent and self.staleness != "poly":
            raise ValueError(f"compat_positive_exponent needs staleness poly (got {self.staleness!r})")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], 1 meaning no decay (got {self.lr_decay})")


@dataclass(frozen=True, eq=False)
class FedCompassState:
    model: np.ndarray
    version: int = 0  # = aggregations: single first arrivals plus group aggregations
    # per client (index = client id)
    speed: tuple[float, ...] = ()  # v_i, seconds per local step; 0 = not measured yet
    steps: tuple[int, ...] = ()  # Q_i of the job in flight or about to be dispatched
    start: tuple[float, ...] = ()  # dispatch time of the client's current job
    lr_steps: tuple[int, ...] = ()  # lr_decay's step count per client (compass_schedule.job_lr)
    group_of: tuple[int, ...] = ()  # gid of the client's arrival group; -1: none
    in_flight: tuple[int, ...] = ()  # clients training now (sorted)
    assigned: tuple[int, ...] = ()  # clients with a Q waiting to be dispatched, in order
    groups: tuple[ArrivalGroup, ...] = ()  # in creation order
    general: tuple[Entry, ...] = ()  # late updates, applied with the next group
    next_gid: int = 0
    applied: int = 0  # updates that went into an aggregation
    staleness_sum: int = 0  # sum of u over applied updates
    single_updates: int = 0  # first arrivals aggregated on their own
    group_aggregations: int = 0
    timeouts: int = 0  # groups whose deadline fired before all members arrived
    late: int = 0  # arrivals after their group's deadline
    dropped: int = 0  # jobs that ended without an update


def _put(values: tuple, index: int, value: object) -> tuple:
    return (*values[:index], value, *values[index + 1 :])


class FedCompass(Algorithm[FedCompassState]):
    description: ClassVar[str] = (
        "FedCompass (Li et al. ICLR'24): speed-aware local steps so clients arrive in groups"
    )
    name: ClassVar[str] = "fedcompass"
    Params: ClassVar[type] = FedCompassParams
    params: FedCompassParams

    def init(self, model: np.ndarray) -> FedCompassState:
        n = self.num_clients
        return FedCompassState(
            model=np.array(model, dtype=np.float32),
            speed=(0.0,) * n,
            steps=(self.params.q_max,) * n,
            start=(0.0,) * n,
            lr_steps=(0,) * n,
            group_of=(-1,) * n,
        )

    # ---- dispatch ------------------------------------------------------------------------
    def jobs(
        self, state: FedCompassState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedCompassState, list[Job]]:
        # Every client takes part: idle clients with nothing scheduled (at t=0, or back
        # after a drop) start now; held clients wait for their group's aggregation.
        p = self.params
        held = {c for g in state.groups for c in g.arrived}
        waiting = set(state.in_flight) | set(state.assigned) | held
        fresh = [int(c) for c in idle if int(c) not in waiting]
        for c in sorted(fresh, key=lambda c: state.speed[c]):  # measured ones fastest first
            if state.speed[c] > 0:
                state = self._assign(state, c, now)
            else:  # never measured: a first job of q_max steps, aggregated on arrival
                steps = _put(state.steps, c, p.q_max)
                state = replace(state, steps=steps, assigned=(*state.assigned, c))
        available = {int(c) for c in idle}
        go = [c for c in state.assigned if c in available]
        if not go:
            return state, []
        start, lr_steps, jobs = list(state.start), list(state.lr_steps), []
        for c in go:
            start[c] = now
            q, measured = state.steps[c], state.speed[c] > 0
            lr_steps[c], lr = job_lr(self.training.lr, p.lr_decay, lr_steps[c], q, measured, p.q_min, p.q_max)
            jobs.append(Job(c, replace(self.task_for(c), steps=q, lr=lr)))
        state = replace(
            state,
            start=tuple(start),
            lr_steps=tuple(lr_steps),
            in_flight=tuple(sorted(state.in_flight + tuple(go))),
            assigned=tuple(c for c in state.assigned if c not in available),
        )
        return state, jobs

    def _assign(self, state: FedCompassState, client: int, now: float) -> FedCompassState:
        p = self.params
        groups, gid, q = assign_group(
            state.groups, client, state.speed, now, p.q_min, p.q_max, p.latest_time_factor, state.next_gid
        )
        return replace(
            state,
            groups=groups,
            next_gid=max(state.next_gid, gid + 1),
            steps=_put(state.steps, client, q),
            group_of=_put(state.group_of, client, gid),
            assigned=(*state.assigned, client),
        )

    # ---- arrivals, drops, deadlines -------------------------------------------------------
    def on_update(self, state: FedCompassState, update: Update, now: float) -> FedCompassState:
        c = update.client
        measured = (now - state.start[c]) / state.steps[c]
        state = replace(
            state,
            in_flight=release(state.in_flight, c),
            speed=_put(state.speed, c, update_speed(state.speed[c], measured, self.params.speed_momentum)),
        )
        entry: Entry = (update.delta, update.version_start)
        group = find_group(state.groups, state.group_of[c])
        if group is None:  # first arrival: aggregate at once, then join a group
            state = self._aggregate(state, (entry,))
            return self._assign(replace(state, single_updates=state.single_updates + 1), c, now)
        pending = tuple(m for m in group.pending if m != c)
        if not group.open or now > group.latest:  # late: general buffer, re-dispatch at once
            state = replace(
                state,
                groups=put_group(state.groups, replace(group, pending=pending)),
                general=(*state.general, entry),
                late=state.late + 1,
            )
            return self._assign(state, c, now)
        group = replace(group, pending=pending, arrived=(*group.arrived, c), buffer=(*group.buffer, entry))
        state = replace(state, groups=put_group(state.groups, group))
        return self._aggregate_group(state, group, now) if not pending else state

    def on_drop(self, state: FedCompassState, client: int, now: float) -> FedCompassState:
        group = find_group(state.groups, state.group_of[client])
        state = replace(
            state,
            in_flight=release(state.in_flight, client),
            group_of=_put(state.group_of, client, -1),  # rejoins when idle again (jobs)
            dropped=state.dropped + 1,
        )
        if group is None:
            return state
        group = replace(group, pending=tuple(m for m in group.pending if m != client))
        state = replace(state, groups=put_group(state.groups, group))
        if group.open and not group.pending and group.arrived:  # everyone else is in: no need to wait
            return self._aggregate_group(state, group, now)
        return state

    def next_timer(self, state: FedCompassState) -> float | None:
        return next_deadline(state.groups)

    def on_timer(self, state: FedCompassState, now: float) -> FedCompassState:
        for gid in [g.gid for g in state.groups if g.open and g.latest <= now]:
            group = find_group(state.groups, gid)
            assert group is not None
            state = replace(state, timeouts=state.timeouts + 1)
            if group.arrived:
                state = self._aggregate_group(state, group, now)
            else:  # nobody made it: close the group; its members will all be late
                state = replace(state, groups=put_group(state.groups, replace(group, open=False)))
        return state

    # ---- aggregation -----------------------------------------------------------------------
    def _aggregate_group(self, state: FedCompassState, group: ArrivalGroup, now: float) -> FedCompassState:
        """Aggregate the general buffer and ``group``'s buffer, close the group, and give
        its arrived members new groups, fastest first (stable: ties keep arrival order)."""
        state = self._aggregate(state, state.general + group.buffer)
        closed = replace(group, arrived=(), buffer=(), open=False)
        state = replace(
            state,
            general=(),
            groups=put_group(state.groups, closed),
            group_aggregations=state.group_aggregations + 1,
        )
        for c in sorted(group.arrived, key=lambda c: state.speed[c]):
            state = self._assign(state, c, now)
        return state

    def _aggregate(self, state: FedCompassState, entries: tuple[Entry, ...]) -> FedCompassState:
        """``x <- x - sum_j alpha s(u_j) / N Delta_j``: one new version."""
        p = self.params
        stale = [state.version - tau for _, tau in entries]
        coeffs = [p.alpha * self.staleness_factor(u) / self.num_clients for u in stale]
        direction = weighted_sum([d for d, _ in entries], coeffs)
        return replace(
            state,
            model=descend(state.model, direction, 1.0),
            version=state.version + 1,
            applied=state.applied + len(entries),
            staleness_sum=state.staleness_sum + sum(stale),
        )

    def staleness_factor(self, u: int) -> float:
        p = self.params
        if p.compat_positive_exponent:  # the FedCompass repository's sign: staler weighs more
            return float((u + 1.0) ** p.a)
        return staleness_weight(p.staleness, u, p.a, p.b)

    def stats(self, state: FedCompassState) -> dict[str, float]:
        return {
            "single_updates": float(state.single_updates),
            "group_aggregations": float(state.group_aggregations),
            "timeouts": float(state.timeouts),
            "late": float(state.late),
            "open_groups": float(sum(g.open for g in state.groups)),
            "general_buffer": float(len(state.general)),
            "mean_staleness": state.staleness_sum / state.applied if state.applied else 0.0,
            "dropped": float(state.dropped),
        }
