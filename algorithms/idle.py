"""The clients an algorithm may dispatch to now: available, with no job in flight.

A population of a million clients with a hundred in flight must not be scanned at every
dispatch, so ``IdleClients`` is a view of the idle set, built from the few busy clients,
that answers what sampling needs without listing the population:

* everyone available (no availability windows): the j-th idle id is ``j`` plus the busy
  ids at or below it, one binary search over the sorted busy ids. ``sample`` then draws
  the same clients as ``rng.choice(ids, k, replace=False)`` on the listed ids would, since
  numpy draws positions from the population's size alone (Floyd's algorithm for small k);
* availability windows and more than ``LISTED_UP_TO`` clients: ``sample`` draws client
  ids uniformly from the population and keeps the idle ones (rejection), which costs
  ``O(k / idle fraction)`` lookups instead of a scan (listing 100,000 clients under
  periodic windows took 24 ms per dispatch). It is uniform without replacement too, but a
  different draw than the listing, so populations up to 10,000 -- every published run of
  fedray -- still list the idle ids (about 1 ms per dispatch at 10,000) and draw as before.

Anything that needs every id (``len`` with windows, iteration, ``np.asarray``) lists them
once, in ``O(population)``: the algorithms in which every client takes part do that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

import numpy as np

LISTED_UP_TO = 10_000  # larger populations sample by rejection under availability windows
_REJECTION_ROUNDS = 8  # batches of candidates before falling back to listing the idle ids


class IdleClients:
    """Sorted ids of available clients with no job in flight (see the module docstring).

    ``busy``: the clients with a job in flight; ``available_mask()``: every client's
    availability now, or ``None`` when every client is always available;
    ``is_available(c)``: one client's, for rejection sampling. ``listed``: the idle ids
    themselves, when the caller has them (tests; algorithms that filter the idle set).
    """

    def __init__(
        self,
        num: int,
        busy: Any = (),
        available_mask: Callable[[], np.ndarray] | None = None,
        is_available: Callable[[int], bool] | None = None,
        listed: Any = None,
    ) -> None:
        self.num = int(num)
        self.busy = np.sort(np.asarray(busy, dtype=np.int64))
        if len(self.busy) > 1 and (self.busy[1:] == self.busy[:-1]).any():
            self.busy = np.unique(self.busy)  # rare: the engine's busy ids are distinct
        self._mask = available_mask
        self._is_available = is_available
        self._listed = None if listed is None else np.asarray(listed, dtype=np.int64)
        # busy[i] - i idle ids lie below busy[i]: nondecreasing in i, so binary-searchable.
        self._below = self.busy - np.arange(len(self.busy), dtype=np.int64)

    @staticmethod
    def of(ids: Any) -> IdleClients:
        """A view holding exactly ``ids``, in their order (sorted, as the engine gives them)."""
        ids = np.asarray(ids, dtype=np.int64)
        return IdleClients(int(ids.max()) + 1 if len(ids) else 0, listed=ids)

    @property
    def _positional(self) -> bool:
        """Whether idle ids can be found by position without listing them."""
        return self._listed is None and self._mask is None

    @cached_property
    def ids(self) -> np.ndarray:
        """Every idle id, sorted: ``O(population)`` unless given."""
        if self._listed is not None:
            return self._listed
        if self._mask is None:
            return np.delete(np.arange(self.num, dtype=np.int64), self.busy)
        free = np.array(self._mask(), dtype=bool)
        free[self.busy] = False
        return np.flatnonzero(free)

    def __len__(self) -> int:
        return self.num - len(self.busy) if self._positional else len(self.ids)

    def __iter__(self) -> Iterator[np.int64]:
        return iter(self.ids)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.ids if dtype is None else self.ids.astype(dtype)

    def __contains__(self, client: object) -> bool:
        c = int(client)  # type: ignore[call-overload]
        if self._listed is not None or (self._mask is not None and self._is_available is None):
            return bool((self.ids == c).any())
        i = int(np.searchsorted(self.busy, c))
        if not 0 <= c < self.num or (i < len(self.busy) and int(self.busy[i]) == c):
            return False
        return self._is_available is None or self._is_available(c)

    def at(self, positions: Any) -> np.ndarray:
        """The idle ids at ``positions`` in sorted order (0: the smallest idle id)."""
        j = np.asarray(positions, dtype=np.int64)
        if not self._positional:
            return self.ids[j]
        return j + np.searchsorted(self._below, j, side="right")

    def sample(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``min(k, len(self))`` distinct idle clients drawn uniformly, in draw order."""
        if self._listed is None and self._mask is not None and self.num > LISTED_UP_TO:
            return self._rejection(rng, k)
        k = min(k, len(self))
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        return self.at(rng.choice(len(self), size=k, replace=False))

    def _rejection(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """Uniform ids from the whole population, kept when idle, in draw order."""
        assert self._is_available is not None
        chosen: list[int] = []
        taken = set(self.busy.tolist())
        for _ in range(_REJECTION_ROUNDS):
            if len(chosen) >= k:
                break
            for c in rng.integers(0, self.num, size=2 * (k - len(chosen)) + 8).tolist():
                if c in taken or not self._is_available(c):
                    continue
                taken.add(c)
                chosen.append(c)
                if len(chosen) >= k:
                    break
        drawn = np.asarray(chosen, dtype=np.int64)
        if len(drawn) >= k:
            return drawn
        # Few clients are idle: draw the rest from the listed ids not drawn yet.
        rest = np.setdiff1d(self.ids, drawn)
        more = rng.choice(rest, size=min(k - len(drawn), len(rest)), replace=False)
        return np.concatenate([drawn, np.asarray(more, dtype=np.int64)])
