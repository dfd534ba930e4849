"""FedFix: Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated Optimization
with Asynchronous and Heterogeneous Clients Updates", JMLR 2023 (arXiv 2206.10189);
spec async-algorithms.md §3.

The server aggregates at fixed times ``n * delta_t`` whatever has come back in the
window ``((n-1) delta_t, n delta_t]`` (an arrival exactly at ``n delta_t`` is in: the
engine applies completions before timers at equal times):

    theta <- theta + eta_g sum_i d_i (theta_i^returned - theta_i^sent)
           = theta - eta_g sum_i d_i Delta_i

All clients take part, as in the paper. A client that returns inside a window idles
until the window closes and restarts from the new model at ``n delta_t``; a client still
computing keeps its old model and contributes to a later window as a stale update.
A client that is idle without having returned in the open window (its job dropped, or
it was unavailable) starts at once. A **version** is one window with at least one
update; an empty window changes nothing and makes no version.

Weights (``p_i = n_i / sum_j n_j`` over all clients):

* ``fedfix``: ``d_i = ceil(c_i / delta_t) p_i``, the paper's correction. A client with
  compute time ``c_i`` contributes once every ``ceil(c_i / delta_t)`` windows, so
  without it slow clients would weigh less than their importance ``p_i``. ``c_i`` is
  the measured duration of the job being aggregated (its arrival minus the dispatch
  time recorded here): known at aggregation, with no clairvoyance. At least 1.
* ``identical``: ``d_i = 1 / |window|``, the plain mean of the window's updates.

``delta_t`` is in virtual seconds and only means something relative to the clients'
job durations: the paper uses 0.2 to 0.8 times the slowest client's time (``c_i`` in
[0.2, 1]). With ``delta_t`` above every duration, FedFix is synchronous FedAvg with
rounds of fixed length. Server compute time is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from algorithms.aggregation import check_choice, descend, release, weighted_sum
from algorithms.base import Algorithm, Job, Update
from algorithms.idle import IdleClients

WEIGHTS = ("fedfix", "identical")
# Measured durations carry float error: 0.30000000000000004 / 0.1 must count 3 windows.
_WINDOW_TOL = 1e-9


@dataclass(frozen=True)
class FedFixParams:
    delta_t: float = 1.0  # window length, virtual seconds: set it relative to job durations
    server_lr: float = 1.0  # eta_g (1 in every experiment of the paper)
    weights: str = "fedfix"  # fedfix: ceil(c_i / delta_t) p_i; identical: 1 / |window|

    def __post_init__(self) -> None:
        if not (self.delta_t > 0 and math.isfinite(self.delta_t)):
            raise ValueError(f"delta_t must be > 0 and finite (got {self.delta_t})")
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0 (got {self.server_lr})")
        check_choice("weights", self.weights, WEIGHTS)


@dataclass(frozen=True, eq=False)
class Contribution:
    client: int
    delta: np.ndarray  # Delta_i = theta_i^sent - theta_i^returned
    version_start: int  # the version theta_i^sent was
    windows: int  # ceil(c_i / delta_t): windows one job of this client takes


@dataclass(frozen=True, eq=False)
class FedFixState:
    model: np.ndarray
    version: int = 0  # = non-empty windows aggregated
    window: int = 0  # n: the open window ends at (n + 1) * delta_t
    in_flight: tuple[int, ...] = ()  # clients training now (sorted)
    sent_at: tuple[float, ...] = ()  # per client: dispatch time of its current job
    contributions: tuple[Contribution, ...] = ()  # the open window's, in arrival order
    windows_closed: int = 0  # timers fired, empty windows included
    applied: int = 0  # updates that went into an aggregation
    staleness_sum: int = 0  # sum of versions between sent and applied model
    dropped: int = 0  # jobs that ended without an update

    @property
    def waiting(self) -> tuple[int, ...]:
        """Clients that returned in the open window: idle until it closes."""
        return tuple(c.client for c in self.contributions)


class FedFix(Algorithm[FedFixState]):
    description: ClassVar[str] = (
        "FedFix (Fraboni et al. JMLR'23): aggregation at fixed virtual-time windows, bias-corrected weights"
    )
    name: ClassVar[str] = "fedfix"
    Params: ClassVar[type] = FedFixParams
    params: FedFixParams

    def init(self, model: np.ndarray) -> FedFixState:
        return FedFixState(model=np.array(model, dtype=np.float32), sent_at=(0.0,) * self.num_clients)

    def window_end(self, window: int) -> float:
        return (window + 1) * self.params.delta_t

    def jobs(
        self, state: FedFixState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedFixState, list[Job]]:
        waiting = set(state.waiting)
        go = [int(c) for c in idle if int(c) not in waiting]
        if not go:
            return state, []
        if not state.in_flight and not state.contributions:
            # No timer was armed (nothing could arrive): restart on the grid n * delta_t.
            state = replace(state, window=self._window_at(now))
        sent_at = list(state.sent_at)
        for c in go:
            sent_at[c] = now
        in_flight = tuple(sorted(state.in_flight + tuple(go)))
        state = replace(state, in_flight=in_flight, sent_at=tuple(sent_at))
        return state, [Job(c, self.task_for(c)) for c in go]

    def _window_at(self, now: float) -> int:
        """n with ``n delta_t <= now < (n + 1) delta_t``."""
        n = max(0, math.floor(now / self.params.delta_t))
        while self.window_end(n) <= now:
            n += 1
        while n > 0 and self.window_end(n - 1) > now:
            n -= 1
        return n

    def on_update(self, state: FedFixState, update: Update, now: float) -> FedFixState:
        c = update.client
        duration = now - state.sent_at[c]
        windows = max(1, math.ceil(duration / self.params.delta_t - _WINDOW_TOL))
        contribution = Contribution(c, update.delta, update.version_start, windows)
        return replace(
            state,
            in_flight=release(state.in_flight, c),
            contributions=(*state.contributions, contribution),
        )

    def on_drop(self, state: FedFixState, client: int, now: float) -> FedFixState:
        return replace(state, in_flight=release(state.in_flight, client), dropped=state.dropped + 1)

    def next_timer(self, state: FedFixState) -> float | None:
        if not state.in_flight and not state.contributions:
            return None  # an empty window would change nothing; jobs() re-arms the grid
        return self.window_end(state.window)

    def on_timer(self, state: FedFixState, now: float) -> FedFixState:
        state = replace(state, window=state.window + 1, windows_closed=state.windows_closed + 1)
        window = state.contributions
        if not window:
            return state
        direction = weighted_sum([w.delta for w in window], self.aggregation_weights(window))
        stale = sum(state.version - w.version_start for w in window)
        return replace(
            state,
            model=descend(state.model, direction, self.params.server_lr),
            version=state.version + 1,
            contributions=(),  # the waiting clients are dispatched by jobs() right after
            applied=state.applied + len(window),
            staleness_sum=state.staleness_sum + stale,
        )

    def aggregation_weights(self, window: tuple[Contribution, ...]) -> list[float]:
        """``d_i`` of each contribution of one window (see the module docstring)."""
        if self.params.weights == "identical":
            return [1.0 / len(window)] * len(window)
        total = float(self.client_sizes.sum())
        return [w.windows * float(self.client_sizes[w.client]) / total for w in window]

    def stats(self, state: FedFixState) -> dict[str, float]:
        return {
            "windows": float(state.windows_closed),
            "empty_windows": float(state.windows_closed - state.version),
            "waiting": float(len(state.contributions)),
            "mean_staleness": state.staleness_sum / state.applied if state.applied else 0.0,
            "dropped": float(state.dropped),
        }
