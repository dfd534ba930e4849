"""FedCompass driven without Ray: by hand, and by a tiny virtual-time loop that follows
the engine's rules (completions in dispatch order, then timers, then one ``jobs`` call
per instant; a job lasts ``Q * seconds_per_step``). Expected numbers are worked out by
hand in the comments."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from algorithms.base import LocalTraining, Update
from algorithms.compass_schedule import (
    ArrivalGroup,
    assign_group,
    create_steps,
    job_lr,
    join_steps,
    update_speed,
)
from algorithms.fedcompass import FedCompass, FedCompassParams, FedCompassState

TRAINING = LocalTraining(local_steps=3, batch_size=0, lr=0.1)
A, B, C = 0, 1, 2
R2, R3 = math.sqrt(2), math.sqrt(3)


@dataclass
class Run:
    dispatches: list[tuple[float, int, int]] = field(default_factory=list)  # (time, client, Q)
    lrs: list[float] = field(default_factory=list)  # each dispatched job's client lr, in order
    made: dict[int, float] = field(default_factory=dict)  # version -> time it was made
    models: dict[int, np.ndarray] = field(default_factory=dict)
    states: dict[float, FedCompassState] = field(default_factory=dict)  # end of each instant

    def step(self, version: int) -> np.ndarray:
        """What version ``version`` subtracted: sum_j alpha s(u_j) / N e_j."""
        return self.models[version - 1] - self.models[version]


def simulate(alg: FedCompass, seconds_per_step: Callable[[int, int], float], until: float) -> Run:
    """Client c's update is the unit vector e_c, so each version's step shows per client
    the coefficient ``alpha s(u) / N`` it got."""
    n = alg.num_clients
    state = alg.init(np.zeros(n, dtype=np.float32))
    run = Run(made={0: 0.0}, models={0: state.model})
    heap: list[tuple[float, int, int, int]] = []  # (finish, seq, client, version_start)
    seq, job_index = itertools.count(), [0] * n

    def dispatch(now: float) -> None:
        nonlocal state
        busy = {c for _, _, c, _ in heap}
        idle = np.array([c for c in range(n) if c not in busy], dtype=np.int64)
        state, jobs = alg.jobs(state, now, idle, np.random.default_rng(0))
        for j in jobs:
            finish = now + j.task.steps * seconds_per_step(j.client, job_index[j.client])
            job_index[j.client] += 1
            heapq.heappush(heap, (finish, next(seq), j.client, state.version))
            run.dispatches.append((now, j.client, j.task.steps))
            run.lrs.append(j.task.lr)
        run.states[now] = state

    def record(now: float) -> None:
        if state.version not in run.models:
            run.made[state.version], run.models[state.version] = now, state.model

    dispatch(0.0)
    while True:
        timer = alg.next_timer(state)
        t = min(heap[0][0] if heap else math.inf, math.inf if timer is None else timer)
        if t > until:
            return run
        while heap and heap[0][0] == t:
            _, _, c, v = heapq.heappop(heap)
            delta = np.eye(n, dtype=np.float32)[c]
            state = alg.on_update(state, Update(c, delta, 1, v, run.models[v]), t)
            record(t)
        if timer == t:
            state = alg.on_timer(state, t)
            record(t)
        dispatch(t)


def compass(n: int = 3, **kw: Any) -> FedCompass:
    return FedCompass(FedCompassParams(**kw), TRAINING, np.ones(n, dtype=np.int64))


def groups_of(state: FedCompassState) -> list[tuple[int, float, float, tuple[int, ...], tuple[int, ...]]]:
    return [(g.gid, g.expected, g.latest, g.pending, g.arrived) for g in state.groups]


def test_group_formation_three_speeds() -> None:
    """A, B, C take 1, 2, 5 s per step; q_max 100, q_min 20, lambda 1.5, m 0.9."""
    run = simulate(compass(), lambda c, k: (1.0, 2.0, 5.0)[c], until=800.0)
    assert run.dispatches == [
        (0.0, A, 100), (0.0, B, 100), (0.0, C, 100),  # everyone starts with q_max
        # 100: A first arrives, v_A = 100/100 = 1: aggregated alone (v1); no group yet ->
        # G0 with q_max: T = 100 + 100*1 = 200, T^max = 100 + 1.5*100 = 250
        (100.0, A, 100),
        # 200: B (dispatched earlier, so first) first arrives, v_B = 2: aggregated alone (v2).
        # Join G0: floor((200-200)/2) = 0 < 20. Create: G0 open (200 < 250), fastest v 1,
        # estimate 250 + 1*100 = 350, Q = floor((350-200)/2) = 75 -> G1: T 350, T^max 425.
        # Then A arrives on time in G0, its last member: G0 aggregates (v3). A: join G1 needs
        # Q = 150 > 100; create: G1's estimate 425 + 2*100 = 625 gives Q 425 > 100 -> q_max:
        # G2: T 300, T^max 350
        (200.0, B, 75), (200.0, A, 100),
        (300.0, A, 50),  # G2 aggregates A (v4); A joins G1: floor((350-300)/1) = 50
        # 350: B then A arrive: G1 aggregates (v5). Fastest first: A creates G3 (T 450,
        # T^max 500) with q_max; B joins it: floor((450-350)/2) = 50
        (350.0, A, 100), (350.0, B, 50),
        (450.0, A, 100), (450.0, B, 50),  # G3 aggregates (v6); A: G4 (T 550, T^max 600); B joins
        # 500: C first arrives, v_C = 5: aggregated alone (v7). Join G4: floor(50/5) = 10 < 20.
        # Create: G4's estimate 600 + 1*100 = 700, Q = floor(200/5) = 40 -> G5 (T 700, T^max 800)
        (500.0, C, 40),
        # 550: G4 aggregates (v8). A: join G5 needs 150 > 100; create: G5's estimate
        # 800 + 5*100 gives 750 > 100 -> q_max, G6 (T 650, T^max 700). B: G5 gives
        # floor(150/2) = 75, G6 floor(100/2) = 50: the largest, 75, wins
        (550.0, A, 100), (550.0, B, 75),
        (650.0, A, 50),  # G6 aggregates A (v9); A joins G5: floor(50/1) = 50
        # 700: C, B, A arrive; G5 aggregates (v10). A: G7 (T 800, T^max 850) with q_max; B joins
        # with floor(100/2) = 50, C with floor(100/5) = 20 = q_min: one group for everyone
        (700.0, A, 100), (700.0, B, 50), (700.0, C, 20),
        (800.0, A, 100), (800.0, B, 50), (800.0, C, 20),  # steady state: G7 aggregates (v11)
    ]  # fmt: skip
    assert run.made == {
        0: 0.0, 1: 100.0, 2: 200.0, 3: 200.0, 4: 300.0, 5: 350.0,
        6: 450.0, 7: 500.0, 8: 550.0, 9: 650.0, 10: 700.0, 11: 800.0,
    }  # fmt: skip
    # coefficient alpha (u+1)^(-1/2) / N = 0.3 / sqrt(u+1) per client, u = versions since its job started
    expected = {
        1: (0.3, 0, 0),  # A from v0 at v0
        2: (0, 0.3 / R2, 0),  # B from v0 at v1
        3: (0.3 / R2, 0, 0),  # A from v1 at v2
        4: (0.3, 0, 0),
        # B was re-dispatched at the end of instant 200, after G0's aggregation: from v3, not v2
        5: (0.3, 0.3 / R2, 0),  # B from v3, A from v4, at v4
        6: (0.3, 0.3, 0),
        7: (0, 0, 0.3 / math.sqrt(7)),  # C's first job, from v0 at v6
        8: (0.3 / R2, 0.3 / R2, 0),  # both from v6 at v7: C's single update came in between
        9: (0.3, 0, 0),
        10: (0.3, 0.3 / R2, 0.3 / R3),  # A from v9, B from v8, C from v7, at v9
        11: (0.3, 0.3, 0.3),
    }
    for version, step in expected.items():
        np.testing.assert_allclose(run.step(version), np.array(step, dtype=np.float32), rtol=1e-6, atol=1e-7)

    assert groups_of(run.states[200.0]) == [(1, 350.0, 425.0, (B,), ()), (2, 300.0, 350.0, (A,), ())]
    assert groups_of(run.states[500.0]) == [(4, 550.0, 600.0, (A, B), ()), (5, 700.0, 800.0, (C,), ())]
    assert groups_of(run.states[700.0]) == [(7, 800.0, 850.0, (A, B, C), ())]
    end = run.states[800.0]
    assert end.speed == (1.0, 2.0, 5.0) and end.steps == (100, 50, 20)
    assert compass().next_timer(end) == 950.0  # G8's deadline: 800 + 1.5 * 100
    assert compass().stats(end) == {
        "single_updates": 3.0,
        "group_aggregations": 8.0,
        "timeouts": 0.0,
        "late": 0.0,
        "open_groups": 1.0,
        "general_buffer": 0.0,
        "mean_staleness": 14 / 18,  # u summed over the 18 updates: 1+1+1+6+2+1+2 (v2 v3 v5 v7 v8 v10)
        "dropped": 0.0,
    }


def late_run(**kw: Any) -> Run:
    """As above, but C's second job runs at 10 s per step instead of 5."""
    return simulate(compass(**kw), lambda c, k: 10.0 if (c, k) == (C, 1) else (1.0, 2.0, 5.0)[c], 900.0)


def test_deadline_late_arrival_and_general_buffer() -> None:
    run = late_run()
    assert run.dispatches[-9:] == [
        (500.0, C, 40),  # C in G5 (T 700, T^max 800), now due at 500 + 40*10 = 900
        (550.0, A, 100), (550.0, B, 75),
        (650.0, A, 50),
        # 700: B and A arrive on time and are held: nothing is dispatched.
        # 800: G5's timer aggregates B and A (v10) without C. A creates G7 (T 900, T^max 950)
        # with q_max; B joins it with floor(100/2) = 50
        (800.0, A, 100), (800.0, B, 50),
        # 900: C arrives late: v_C = 0.1*5 + 0.9*(400/40) = 9.5. Its update goes to the general
        # buffer and it is re-dispatched at once: join G7 floor(0/9.5) = 0 < 20; create: G7's
        # estimate 950 + 1*100 = 1050, floor(150/9.5) = 15, raised to q_min 20: G8 (T 900 +
        # 20*9.5 = 1090, T^max 900 + 1.5*190 = 1185). Then A and B arrive: G7 aggregates the
        # general buffer with them (v11). A: join G8 needs 190 > 100; create -> q_max, G9
        # (T 1000); B: G8 gives floor(190/2) = 95, G9 only 50
        (900.0, C, 20), (900.0, A, 100), (900.0, B, 95),
    ]  # fmt: skip
    held = run.states[700.0]
    assert groups_of(held) == [(5, 700.0, 800.0, (C,), (B, A))] and held.in_flight == (C,)
    assert compass().next_timer(held) == 800.0
    assert run.made[10] == 800.0 and run.made[11] == 900.0 and 12 not in run.made
    np.testing.assert_allclose(run.step(10), np.array([0.3, 0.3 / R2, 0], dtype=np.float32), rtol=1e-6)
    # v11: C's late update (from v7, applied at v10: u = 3, (3+1)^(-1/2) = 1/2) first, then A and B
    np.testing.assert_allclose(run.step(11), np.array([0.3, 0.3, 0.15], dtype=np.float32), rtol=1e-6)
    end = run.states[900.0]
    assert end.speed[C] == pytest.approx(9.5)  # the usual EMA convention would give 5.5
    assert groups_of(end)[0] == (8, 1090.0, 1185.0, (C, B), ())
    assert end.general == () and end.late == 1 and end.timeouts == 1


def test_compat_positive_exponent_weighs_stale_updates_more() -> None:
    run = late_run(compat_positive_exponent=True)
    # (u+1)^(+1/2): B's u = 1 gets 0.3*sqrt(2), C's u = 3 gets 0.3*2 instead of 0.3/2
    np.testing.assert_allclose(run.step(10), np.array([0.3, 0.3 * R2, 0], dtype=np.float32), rtol=1e-6)
    np.testing.assert_allclose(run.step(11), np.array([0.3, 0.3, 0.6], dtype=np.float32), rtol=1e-6)
    alg, compat = compass(), compass(compat_positive_exponent=True)
    assert [alg.staleness_factor(u) for u in range(4)] == pytest.approx([1, 1 / R2, 1 / R3, 0.5])
    assert [compat.staleness_factor(u) for u in range(4)] == pytest.approx([1, R2, R3, 2])


# ---- by hand ------------------------------------------------------------------------------


def upd(client: int, version_start: int, *delta: float) -> Update:
    d = np.array(delta, dtype=np.float32)
    return Update(client, d, 1, version_start, np.zeros_like(d))


def test_timer_without_arrivals_closes_group_and_late_update_waits() -> None:
    alg = compass(n=1, q_max=10, q_min=2)
    s, jobs = alg.jobs(alg.init(np.zeros(1, dtype=np.float32)), 0.0, np.array([0]), np.random.default_rng(0))
    assert [(j.client, j.task.steps) for j in jobs] == [(0, 10)] and alg.next_timer(s) is None
    s = alg.on_update(s, upd(0, 0, 1.0), 10.0)  # v = 1: alone (v1); G0: T 20, T^max 25
    np.testing.assert_allclose(s.model, [-0.9])  # alpha * 1 / N with N = 1
    s, jobs = alg.jobs(s, 10.0, np.array([0]), np.random.default_rng(0))
    assert [j.task.steps for j in jobs] == [10] and alg.next_timer(s) == 25.0
    s = alg.on_timer(s, 25.0)  # nobody arrived: the group closes, no version
    assert s.version == 1 and alg.next_timer(s) is None and s.groups[0].open is False
    s = alg.on_update(s, upd(0, 1, 1.0), 30.0)  # late: v = 0.1*1 + 0.9*2 = 1.9
    assert s.version == 1 and len(s.general) == 1 and s.late == 1 and s.timeouts == 1
    # G0 had nobody pending any more: deleted. New group with q_max: T 30 + 19, T^max 30 + 28.5
    assert groups_of(s) == [(1, 49.0, 58.5, (0,), ())] and s.assigned == (0,)
    s, jobs = alg.jobs(s, 30.0, np.array([0]), np.random.default_rng(0))  # re-dispatched at once
    assert [j.task.steps for j in jobs] == [10]
    s = alg.on_update(s, upd(0, 1, 2.0), 49.0)  # on time, last member: general + group, both u 0
    assert s.version == 2 and s.general == () and s.applied == 3
    np.testing.assert_allclose(s.model, [-0.9 - 0.9 * 1 - 0.9 * 2], rtol=1e-6)


def test_drops_complete_a_group_and_rejoin_later() -> None:
    alg = compass(n=2, q_max=10, q_min=2)
    rng = np.random.default_rng(0)
    s, _ = alg.jobs(alg.init(np.zeros(2, dtype=np.float32)), 0.0, np.arange(2), rng)
    s = alg.on_update(s, upd(0, 0, 1, 0), 10.0)  # v_0 = 1: G0 (T 20, T^max 25)
    s, _ = alg.jobs(s, 10.0, np.array([0]), rng)
    s = alg.on_update(s, upd(1, 0, 0, 1), 15.0)  # v_1 = 1.5: joins G0 with floor(5/1.5) = 3
    s, jobs = alg.jobs(s, 15.0, np.array([1]), rng)
    assert [(j.client, j.task.steps) for j in jobs] == [(1, 3)]
    s = alg.on_update(s, upd(1, 2, 0, 1), 19.5)  # on time; held while 0 is pending
    assert groups_of(s) == [(0, 20.0, 25.0, (0,), (1,))]
    assert alg.jobs(s, 19.5, np.array([1]), rng)[1] == []  # held clients are not dispatched
    s = alg.on_drop(s, 0, 20.0)  # the last pending member is gone: G0 aggregates now
    assert s.version == 3 and s.dropped == 1 and s.group_of[0] == -1
    assert groups_of(s) == [(1, 35.0, 42.5, (1,), ())]  # 1 alone again: q_max from 20
    s, jobs = alg.jobs(s, 20.0, np.array([1]), rng)  # 0 is unavailable
    assert [(j.client, j.task.steps) for j in jobs] == [(1, 10)]
    # 0 is back at 22 with its estimate 1: join G1 needs 13 > 10; create: G1's estimate
    # 42.5 + 1.5*10 = 57.5 gives 35 > 10 -> q_max: G2 (T 32, T^max 37)
    s, jobs = alg.jobs(s, 22.0, np.array([0]), rng)
    assert [(j.client, j.task.steps) for j in jobs] == [(0, 10)]
    assert groups_of(s)[-1] == (2, 32.0, 37.0, (0,), ())
    s = alg.on_drop(s, 1, 23.0)  # the only member of G1: the group is deleted
    assert [g.gid for g in s.groups] == [2] and alg.next_timer(s) == 37.0


def test_never_measured_client_restarts_with_q_max() -> None:
    alg = compass(n=2, q_max=10, q_min=2)
    rng = np.random.default_rng(0)
    s, jobs = alg.jobs(alg.init(np.zeros(1, dtype=np.float32)), 0.0, np.array([0]), rng)  # 1 unavailable
    assert [j.client for j in jobs] == [0]
    s = alg.on_drop(s, 0, 4.0)
    s, jobs = alg.jobs(s, 6.0, np.array([0, 1]), rng)
    assert [(j.client, j.task.steps) for j in jobs] == [(0, 10), (1, 10)] and s.groups == ()
    s = alg.on_update(s, upd(1, 0, 1.0), 26.0)  # measured from its own dispatch: (26 - 6) / 10
    assert s.speed[1] == 2.0 and s.single_updates == 1 and s.version == 1


def test_schedule_rules() -> None:
    g = [ArrivalGroup(0, 110.0, 130.0, pending=(1,)), ArrivalGroup(1, 110.0, 150.0, pending=(2,))]
    assert join_steps(g, 1.0, 100.0, 5, 20) == (1, 10)  # equal Q: the later group, as in APPFL
    assert join_steps(g, 3.0, 100.0, 5, 20) == (-1, -1)  # floor(10/3) = 3 < q_min
    speeds = [0.0, 1.0, 4.0, 0.5]
    # estimates: 130 + 1*20 = 150 and 150 + 4*20 = 230 -> floor(50/0.5) = 100 > 20, 260 > 20
    assert create_steps(g, speeds, 0.5, 100.0, 5, 20) == 20
    assert create_steps(g, speeds, 4.0, 100.0, 5, 20) == 12  # max(floor(50/4), floor(130/4) > 20)
    assert create_steps(g, speeds, 40.0, 100.0, 5, 20) == 5  # floor(130/40) = 3, raised to q_min
    closed = [ArrivalGroup(0, 110.0, 130.0, pending=(1,), open=False)]
    assert create_steps(closed, speeds, 4.0, 100.0, 5, 20) == 20
    groups, gid, q = assign_group(tuple(g), 3, speeds, 100.0, 5, 20, 1.5, 2)
    assert (gid, q) == (1, 20) and groups[1].pending == (2, 3)  # floor(10/0.5) = 20 <= q_max
    groups, gid, q = assign_group(tuple(g), 2, speeds, 100.0, 5, 20, 1.5, 2)
    assert (gid, q) == (2, 12) and (groups[2].expected, groups[2].latest) == (148.0, 172.0)


def test_speed_momentum_weighs_the_new_measurement() -> None:
    assert update_speed(0.0, 3.0, 0.9) == 3.0  # the first measurement as is
    assert update_speed(5.0, 10.0, 0.9) == pytest.approx(9.5)
    assert update_speed(5.0, 10.0, 1.0) == 10.0
    assert update_speed(0.0, 0.0, 0.9) > 0  # a zero-length job never makes an infinite Q


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"q_min": 0}, r"^q_min must be >= 1 \(got 0\)"),
        ({"q_max": 10}, r"^q_max must be >= q_min \(got 10 < 20\)"),
        ({"latest_time_factor": 0.9}, r"^latest_time_factor must be >= 1 \(got 0.9\)"),
        ({"speed_momentum": 0.0}, r"^speed_momentum must be in \(0, 1\] \(got 0.0\)"),
        ({"alpha": 1.5}, r"^alpha must be in \(0, 1\]"),
        ({"staleness": "exp"}, r"^staleness must be one of const, poly, hinge"),
        ({"a": -0.5}, r"^a must be >= 0"),
        (
            {"staleness": "const", "compat_positive_exponent": True},
            r"^compat_positive_exponent needs staleness poly",
        ),
        ({"lr_decay": 0.0}, r"^lr_decay must be in \(0, 1\], 1 meaning no decay \(got 0.0\)"),
        ({"lr_decay": 1.5}, r"^lr_decay must be in \(0, 1\]"),
    ],
)
def test_params_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FedCompassParams(**kwargs)


def test_params_defaults() -> None:
    assert FedCompassParams() == FedCompassParams(100, 20, 1.5, 0.9, 0.9, "poly", 0.5, 4.0, False, 1.0)


def test_legacy_lr_decay_by_hand() -> None:
    """The three-speed run above with lr_decay 0.5 (the legacy code's 0.995, made visible):
    a job's lr is 0.1 * 0.5^floor(count / 100), the count starting at q_min = 20 on the
    client's first arrival and growing by every later job's Q; the schedule is unchanged."""
    plain = simulate(compass(), lambda c, k: (1.0, 2.0, 5.0)[c], until=800.0)
    run = simulate(compass(lr_decay=0.5), lambda c, k: (1.0, 2.0, 5.0)[c], until=800.0)
    assert run.dispatches == plain.dispatches and run.made == plain.made
    assert plain.lrs == [0.1] * len(plain.dispatches)  # lr_decay 1: every job at the configured lr
    halvings = [
        0, 0, 0,  # first jobs: the configured lr
        1,  # 100: A 20 + 100 = 120
        0, 2,  # 200: B 20 + 75 = 95; A 120 + 100 = 220
        2,  # 300: A 270
        3, 1,  # 350: A 370; B 95 + 50 = 145
        4, 1,  # 450: A 470; B 195
        0,  # 500: C's first arrival: 20 + 40 = 60
        5, 2,  # 550: A 570; B 270
        6,  # 650: A 620
        7, 3, 0,  # 700: A 720; B 320; C 80
        8, 3, 1,  # 800: A 820; B 370; C 100
    ]  # fmt: skip
    assert run.lrs == pytest.approx([0.1 * 0.5**k for k in halvings], rel=1e-12)
    assert run.states[800.0].lr_steps == (820, 370, 100)
    assert plain.states[800.0].lr_steps == (0, 0, 0)  # not counted without the decay


def test_job_lr_rule() -> None:
    # (count, lr): first arrival 20 + 100 = 120, one decay; then + 80 = 200, two decays
    assert job_lr(0.1, 0.995, 0, 100, True, 20, 100) == (120, pytest.approx(0.0995))
    assert job_lr(0.1, 0.995, 120, 80, True, 20, 100) == (200, pytest.approx(0.1 * 0.995**2))
    assert job_lr(0.1, 0.995, 0, 100, False, 20, 100) == (0, 0.1)  # a first job: not counted
    assert job_lr(0.1, 1.0, 120, 80, True, 20, 100) == (120, 0.1)  # no decay: nothing counted
