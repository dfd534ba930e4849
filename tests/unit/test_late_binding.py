"""The Ray pool's late binding (engine/core/late_binding.py): hand-computed schedules."""

from __future__ import annotations

import pytest

from engine.core.late_binding import Pace, call_size, has_room, plan_calls, window


def singles(n: int) -> list[list[int]]:
    return [[j] for j in range(n)]


def sizes(calls: list[tuple[int, list[int]]]) -> list[tuple[int, int]]:
    return [(i, len(items)) for i, items in calls]


def test_pace_counts_only_the_time_with_jobs_outstanding() -> None:
    p = Pace().sent(10.0)
    p = p.finished(10.3, 1, outstanding_after=1)  # 0.3 s for the first job
    p = p.finished(10.5, 1, outstanding_after=0)  # 0.2 s for the second; then idle
    p = p.sent(20.0)  # the idle 9.5 s do not count
    p = p.sent(20.1)  # already busy: the clock keeps running from 20.0
    p = p.finished(20.4, 2, outstanding_after=0)
    assert p.jobs == 4
    assert p.busy_seconds == pytest.approx(0.3 + 0.2 + 0.4)
    assert p.seconds_per_job == pytest.approx(0.225)
    assert Pace().seconds_per_job is None


def test_window_is_queue_seconds_of_work_and_at_least_two_jobs() -> None:
    pace = Pace(jobs=4, busy_seconds=0.52)  # 0.13 s a job (a CIFAR CNN job)
    assert window(pace, 0.5) == 4  # ceil(0.5 / 0.13)
    assert window(pace, 0.1) == 2  # LOW_WATER
    assert window(Pace(jobs=2000, busy_seconds=1.0), 0.5) == 1000  # no-op jobs: 0.5 ms each
    assert window(Pace(), 0.5) is None  # pace unknown: no limit yet
    assert window(pace, 0.0) is None  # late binding off


def test_call_size_is_half_the_window_within_max_batch() -> None:
    assert [call_size(w, 16) for w in (None, 2, 3, 4, 9, 1000)] == [16, 1, 1, 2, 4, 16]
    assert has_room(2, 4, 16) and not has_room(3, 4, 16)  # 2 held + a call of 2 fit in 4
    assert has_room(10**6, None, 16)


def test_a_round_of_fifty_on_executors_holding_four() -> None:
    # Windows of 4 jobs, calls of 2: each executor gets 2 calls of 2, the other 42 jobs wait.
    calls, sent = plan_calls(singles(50), [0, 0], [4, 4], 16)
    assert sizes(calls) == [(0, 2), (1, 2), (0, 2), (1, 2)]
    assert sent == 8
    assert [j for _, items in calls for j in items] == list(range(8))  # most urgent first


def test_the_executor_that_freed_up_takes_the_next_jobs() -> None:
    # Executor 1 is down to 2 held, executor 0 still holds 4: only 1 gets a call.
    calls, sent = plan_calls(singles(10), [4, 2], [4, 4], 16)
    assert calls == [(1, [0, 1])]
    assert sent == 2


def test_a_call_evens_out_the_shares() -> None:
    # 3 left, 2 held by each (7 in all, an even share of 4): executor 0 gets 2, executor 1 the
    # last one.
    calls, sent = plan_calls(singles(3), [2, 2], [4, 4], 16)
    assert calls == [(0, [0, 1]), (1, [2])]
    assert sent == 3
    # Executor 1 holds 2, executor 0 none; 1 job left: it goes to executor 0 alone.
    assert plan_calls(singles(1), [0, 2], [4, 4], 16) == ([(0, [0])], 1)


def test_a_faster_executor_holds_more() -> None:
    # Executor 0 at 0.05 s a job holds 10 (calls of 5), executor 1 at 0.25 s holds 2 (calls of 1).
    limits = [window(Pace(10, 0.5), 0.5), window(Pace(10, 2.5), 0.5)]
    assert limits == [10, 2]
    calls, sent = plan_calls(singles(30), [0, 0], limits, 16)
    assert sizes(calls) == [(0, 5), (1, 1), (1, 1), (0, 5)]
    assert sent == 12


def test_without_a_window_everything_goes_in_full_calls() -> None:
    # Pace unknown or queue_seconds 0: the old eager pool, least-loaded first, max_batch a call.
    # Even shares of 20: a full call each, then the 4 that bring each to 20.
    calls, sent = plan_calls(singles(40), [0, 0], [None, None], 16)
    assert sizes(calls) == [(0, 16), (1, 16), (0, 4), (1, 4)]
    assert sent == 40


def test_a_sum_group_travels_whole_beyond_the_call_size() -> None:
    groups = [list(range(25)), list(range(25, 50))]
    calls, sent = plan_calls(groups, [0, 0], [4, 4], 16)
    assert calls == [(0, groups[0]), (1, groups[1])]
    assert sent == 2


def test_units_share_a_call_up_to_its_size() -> None:
    # Calls of 2 (window 4): [0] and [1] together; the stack [2, 3] alone; [4] then to 0.
    calls, sent = plan_calls([[0], [1], [2, 3], [4]], [0, 0], [4, 4], 16)
    assert calls == [(0, [0, 1]), (1, [2, 3]), (0, [4])]
    assert sent == 4  # units, not jobs


def test_no_executor_with_room_sends_nothing() -> None:
    assert plan_calls(singles(4), [3, 4], [4, 4], 16) == ([], 0)
