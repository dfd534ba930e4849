"""The idle-client view: the same draws as listing the idle ids, without listing them."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.base import sample_clients
from algorithms.idle import LISTED_UP_TO, IdleClients
from engine.core.delays import AvailabilityConfig, ClientsConfig, DelayModel


def test_positions_by_hand() -> None:
    idle = IdleClients(6, busy=[3, 0])
    assert len(idle) == 4
    assert idle.at([0, 1, 2, 3]).tolist() == [1, 2, 4, 5]
    assert list(idle) == [1, 2, 4, 5]
    assert [c in idle for c in range(-1, 7)] == [False, False, True, True, False, True, True, False]
    # A busy id given twice counts once.
    twice = IdleClients(6, busy=[3, 0, 3])
    assert twice.busy.tolist() == [0, 3] and len(twice) == 4 and list(twice) == [1, 2, 4, 5]


@pytest.mark.parametrize("num", [7, 10_001, 1_000_000])
@pytest.mark.parametrize("k", [1, 5, 100])
def test_sample_draws_as_choice_on_the_listed_ids(num: int, k: int) -> None:
    busy = np.random.default_rng(num).choice(num, size=min(num // 2, 150), replace=False)
    listed = np.delete(np.arange(num), np.sort(busy))
    view = IdleClients(num, busy)
    assert len(view) == len(listed)
    seed = [num, k]
    expected = np.random.default_rng(seed).choice(listed, size=min(k, len(listed)), replace=False)
    got = sample_clients(np.random.default_rng(seed), view, k)
    assert got.tolist() == expected.tolist()
    # An array is sampled as before: rng.choice on it.
    assert sample_clients(np.random.default_rng(seed), listed, k).tolist() == expected.tolist()


def test_everyone_busy_samples_nobody() -> None:
    view = IdleClients(3, busy=[0, 1, 2])
    assert len(view) == 0 and sample_clients(np.random.default_rng(0), view, 2).tolist() == []


def _periodic(num: int, on: float = 0.3) -> DelayModel:
    av = AvailabilityConfig(mode="periodic", period=100.0, on_fraction=on)
    return DelayModel(ClientsConfig(num=num, availability=av), seed=4)


def test_small_population_with_windows_lists_them() -> None:
    delays = _periodic(500)
    view = delays.idle(37.0, [1, 2, 3])
    mask = delays.available(37.0)
    mask[[1, 2, 3]] = False
    assert view.ids.tolist() == np.flatnonzero(mask).tolist()
    expected = np.random.default_rng(9).choice(np.flatnonzero(mask), size=20, replace=False)
    assert sample_clients(np.random.default_rng(9), view, 20).tolist() == expected.tolist()


def test_large_population_with_windows_samples_by_rejection_without_a_scan() -> None:
    num = LISTED_UP_TO + 1
    delays = _periodic(num)
    busy = list(range(0, 5000, 50))
    view = delays.idle(37.0, busy)
    got = sample_clients(np.random.default_rng(1), view, 100)
    assert len(set(got.tolist())) == 100
    assert all(delays.is_available(c, 37.0) and c not in set(busy) for c in got.tolist())
    # Only the drawn candidates' phases were drawn, not the population's.
    assert int(np.isfinite(delays._phase.values).sum()) < 1000  # type: ignore[union-attr]
    again = delays.idle(37.0, busy)
    assert sample_clients(np.random.default_rng(1), again, 100).tolist() == got.tolist()


def test_rejection_falls_back_to_the_listing_when_few_are_idle() -> None:
    num = LISTED_UP_TO + 1
    mask = np.zeros(num, dtype=bool)
    mask[[5, 7_000, num - 1]] = True
    view = IdleClients(num, busy=[7_000], available_mask=lambda: mask, is_available=lambda c: bool(mask[c]))
    assert sorted(sample_clients(np.random.default_rng(0), view, 10).tolist()) == [5, num - 1]
