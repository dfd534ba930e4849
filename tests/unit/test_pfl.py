"""PFL and VPFL driven by hand in the engine's order: arrivals, server work, jobs (no Ray)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from algorithms.base import LocalTraining, ServerCost, ServerJob, Update
from algorithms.pfl import PFL, VPFL, PFLParams, VPFLParams
from engine.core.server_queue import ServerQueue

TRAINING = LocalTraining(local_steps=2, batch_size=0, lr=0.1)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


class Sim:
    """The engine's order at each instant: completions, then server work ending now, then
    ``jobs`` (which may start server work); again while server work ends now (a zero-cost
    aggregation started in ``jobs``). Server work ending before an instant ends at its own
    time first, on one server (engine/core/server_queue.py). ``finetune(model, version)``
    stands for the engine's fine-tuning. Jobs start from ``state.model`` / ``state.version``
    as ``jobs`` returns them."""

    def __init__(
        self, alg: Any, x0: np.ndarray, unavailable: tuple[int, ...] = (), finetune: Any = None
    ) -> None:
        self.alg, self.s = alg, alg.init(x0)
        self.start: dict[int, tuple[int, np.ndarray]] = {}  # client -> (version, model) at dispatch
        self.unavailable = set(unavailable)
        self.server = ServerQueue(1)
        self.work: list[tuple[float, ServerJob]] = []  # (finish, job) in start order
        self.finetune = finetune
        self.forks = self.at(0.0)

    def next_end(self) -> float | None:
        """When the next server work ends (what the engine awaits besides clients)."""
        return min((t for t, _ in self.work), default=None)

    def at(
        self, now: float, ups: Mapping[int, tuple[float, ...]] | None = None, drops: tuple[int, ...] = ()
    ) -> dict[int, int]:
        while (t := self.next_end()) is not None and t < now:
            self._settle(t)
        for c, y in (ups or {}).items():
            v, base = self.start.pop(c)
            self.s = self.alg.on_update(self.s, Update(c, base - f32(*y), 1, v, base), now)
        for c in drops:
            self.start.pop(c)
            self.s = self.alg.on_drop(self.s, c, now)
        return self._settle(now)

    def _settle(self, now: float) -> dict[int, int]:
        forks: dict[int, int] = {}
        while True:
            for t, job in [w for w in self.work if w[0] == now]:
                self.work.remove((t, job))
                model = self.finetune(job.model, job.key) if job.finetune else job.model
                self.s = self.alg.on_server_job(self.s, job, model, now)
            idle = [c for c in range(self.alg.num_clients) if c not in self.start.keys() | self.unavailable]
            self.s, jobs = self.alg.jobs(self.s, now, np.array(idle, dtype=np.int64), None)
            for j in jobs:
                self.start[j.client] = (self.s.version, self.s.model)
                forks[j.client] = self.s.version
            self.s, started = self.alg.server_jobs(self.s)
            self.work += [(self.server.schedule(now, job.seconds)[1], job) for job in started]
            if self.next_end() != now:
                return forks


def pfl(n: int, max_lost: int = 1, cost: ServerCost | None = None, **kw: Any) -> PFL:
    return PFL(PFLParams(max_lost=max_lost, **kw), TRAINING, np.ones(n, dtype=np.int64), cost)


def test_pfl_zero_cost_matches_hand_computation() -> None:
    sim = Sim(pfl(3, max_lost=2), f32(0, 0))
    assert sim.forks == {0: 0, 1: 0, 2: 0} and sim.s.version == 0
    # Node 0 forks version 0 (the model before its own upload is aggregated), then the
    # aggregate of all slots appears at once: mean((3,0), (0,0), (0,0)).
    assert sim.at(1.0, {0: (3, 0)}) == {0: 0}
    assert sim.s.version == 1
    np.testing.assert_array_equal(sim.s.model, f32(1, 0))
    np.testing.assert_array_equal(sim.start[0][1], f32(0, 0))
    assert sim.at(2.0, {1: (0, 6)}) == {1: 1}  # mean((3,0), (0,6), (0,0))
    np.testing.assert_array_equal(sim.s.model, f32(1, 2))
    # n = (2, 1, 0): node 0 is max_lost ahead of node 2 and waits idle
    assert sim.at(3.0, {0: (6, 0)}) == {}
    assert sim.s.version == 3 and 0 not in sim.s.in_flight
    np.testing.assert_array_equal(sim.s.model, f32(2, 2))  # mean((6,0), (0,6), (0,0))
    # node 2's upload lifts the minimum: it and the waiting node 0 fork version 3
    assert sim.at(4.0, {2: (3, 3)}) == {0: 3, 2: 3}
    np.testing.assert_array_equal(sim.s.model, f32(3, 3))  # mean((6,0), (0,6), (3,3))
    assert sim.alg.stats(sim.s) == {
        "min_uploads": 1.0,
        "max_uploads": 2.0,
        "server_busy": 0.0,
        "dropped": 0.0,
    }


def test_pfl_max_lost_one_waits_for_everyone() -> None:
    sim = Sim(pfl(3), f32(0))
    assert sim.at(1.0, {0: (3,)}) == {} and sim.s.version == 1
    assert sim.at(2.0, {2: (3,)}) == {}
    # a new permutation block starts, from version 2: node 1's upload is not aggregated yet
    assert sim.at(3.0, {1: (3,)}) == {0: 2, 1: 2, 2: 2}
    assert sim.s.version == 3


def test_pfl_aggregate_appears_after_aggregation_time_and_queues() -> None:
    cost = ServerCost(seconds_per_aggregation=0.3, seconds_per_update=0.1)  # 0.3 + 2 * 0.1
    sim = Sim(pfl(2, max_lost=3, cost=cost), f32(0))
    assert sim.at(1.0, {0: (2,)}) == {0: 0}
    assert sim.next_end() == 1.5 and sim.s.version == 0
    np.testing.assert_array_equal(sim.s.model, f32(0))  # not yet: the server is aggregating
    assert sim.at(1.2, {1: (4,)}) == {1: 0}  # busy server: node 1 still forks version 0
    assert sim.next_end() == 1.5 and sim.s.dirty  # its aggregation is queued
    sim.at(1.5)
    assert sim.s.version == 1 and sim.next_end() == 2.0  # the queued one started
    np.testing.assert_array_equal(sim.s.model, f32(1))  # mean(2, 0): without the 1.2 upload
    sim.at(2.0)
    assert sim.s.version == 2 and sim.next_end() is None
    np.testing.assert_array_equal(sim.s.model, f32(3))  # mean(2, 4)
    assert sim.alg.stats(sim.s)["server_busy"] == 1.0


def test_pfl_back_to_back_uploads_coalesce_into_one_aggregation() -> None:
    sim = Sim(pfl(3, max_lost=3, cost=ServerCost(seconds_per_aggregation=1.0)), f32(0))
    sim.at(1.0, {0: (3,)})
    sim.at(1.2, {1: (6,)})
    sim.at(1.4, {2: (9,)})
    sim.at(2.0)  # publishes mean(3, 0, 0); one aggregation of all three slots starts
    np.testing.assert_array_equal(sim.s.model, f32(1))
    sim.at(3.0)
    assert sim.s.version == 2 and sim.next_end() is None
    np.testing.assert_array_equal(sim.s.model, f32(6))


def test_pfl_samples_weighting() -> None:
    alg = PFL(PFLParams(max_lost=2, weighting="samples"), TRAINING, np.array([1, 3]))
    sim = Sim(alg, f32(0))
    sim.at(1.0, {0: (4,)})
    np.testing.assert_array_equal(sim.s.model, f32(1))  # 1/4 * 4 + 3/4 * 0


@pytest.mark.parametrize("max_lost", [1, 2, 3])
def test_pfl_token_gate_bounds_upload_spread(max_lost: int) -> None:
    rng = np.random.default_rng(max_lost)
    n, now, drops, spreads = 6, 0.0, 0, set()
    sim = Sim(pfl(n, max_lost, ServerCost(seconds_per_aggregation=0.05)), f32(0, 0))
    for _ in range(1500):
        assert sim.start, "the slowest node can always fork: no deadlock"
        now += float(rng.exponential(0.1))
        c = int(rng.choice(sorted(sim.start)))  # a random node finishes: random arrival order
        if rng.random() < 0.1:
            sim.at(now, drops=(c,))
            drops += 1
        else:
            sim.at(now, {c: tuple(rng.normal(size=2))})
        spread = max(sim.s.uploads) - min(sim.s.uploads)
        assert spread <= max_lost
        spreads.add(spread)
    assert max(spreads) == max_lost  # the bound is reached, not just kept
    assert sim.alg.stats(sim.s)["dropped"] == drops and sum(sim.s.uploads) == 1500 - drops


def test_vpfl_round_structure() -> None:
    """Node 0 takes 1 s a job, node 1 takes 3 s; aggregation takes 0.5 s."""
    alg = VPFL(VPFLParams(), TRAINING, np.ones(2, dtype=np.int64), ServerCost(seconds_per_aggregation=0.5))
    sim = Sim(alg, f32(0))
    assert sim.forks == {0: 0, 1: 0}
    assert sim.at(1.0, {0: (2,)}) == {0: 0}  # round 2 forks w^0 at once, without the barrier
    assert sim.next_end() is None  # round 1 still lacks node 1
    assert sim.at(2.0, {0: (4,)}) == {}  # round 3 needs w^1, not published yet
    assert sim.at(3.0, {1: (6,)}) == {1: 0}
    assert sim.next_end() == 3.5 and len(sim.s.slots[0]) == 1  # round 1 is aggregating
    assert sim.at(3.5) == {0: 1} and sim.s.version == 1
    np.testing.assert_array_equal(sim.s.model, f32(4))  # mean(2, 6): node 0's round-2 model waits
    assert sim.at(4.5, {0: (8,)}) == {}
    assert sim.s.uploads == (3, 1)  # max n - min n reaches 2
    assert sim.at(6.0, {1: (10,)}) == {1: 1}
    assert sim.at(6.5) == {0: 2} and sim.s.version == 2
    np.testing.assert_array_equal(sim.s.model, f32(7))  # mean(4, 10)
    assert [len(h) for h in sim.s.slots] == [1, 0]  # node 0's round 3 waits for round 3


def test_vpfl_aggregation_overlaps_the_next_round() -> None:
    """Three equal nodes (1 s a job), aggregation 0.5 s: vanilla FedAvg's round is 1.5 s;
    VPFL forks at every whole second and publishes round r at r + 0.5. PFL on the same
    simultaneous arrivals makes the same models."""
    cost = ServerCost(seconds_per_aggregation=0.5)
    sims = [
        Sim(VPFL(VPFLParams(), TRAINING, np.ones(3, dtype=np.int64), cost), f32(0)),
        Sim(pfl(3, cost=cost), f32(0)),
    ]
    for r in range(1, 6):
        for sim in sims:
            ups = {c: (float(r * 10 + c),) for c in range(3)}
            assert sim.at(float(r), ups) == dict.fromkeys(range(3), max(0, r - 1))
            assert sim.next_end() == r + 0.5 and sim.s.version == r - 1
        np.testing.assert_array_equal(sims[0].s.model, sims[1].s.model)
    sims[0].at(5.5)
    np.testing.assert_array_equal(sims[0].s.model, f32(51))  # mean(50, 51, 52)


def test_drop_refork_from_current_model() -> None:
    alg = VPFL(VPFLParams(), TRAINING, np.ones(2, dtype=np.int64))
    sim = Sim(alg, f32(0))
    assert sim.at(1.0, {0: (2,)}) == {0: 0}
    assert sim.at(1.5, drops=(1,)) == {1: 0} and sim.s.dropped == 1  # the round waits for a retry
    sim.at(2.0, {1: (4,)})
    assert sim.s.version == 1 and sim.s.uploads == (1, 1)
    np.testing.assert_array_equal(sim.s.model, f32(3))
    with pytest.raises(ValueError, match="no job in flight"):
        alg.on_drop(alg.on_drop(sim.s, 1, 3.0), 1, 3.0)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (PFLParams, {"max_lost": 0}, r"^max_lost must be >= 1 \(got 0\)"),
        (PFLParams, {"weighting": "size"}, r"^weighting must be one of uniform, samples \(got 'size'\)"),
        (VPFLParams, {"weighting": "mean"}, r"^weighting must be one of uniform, samples"),
    ],
)
def test_params_validation(cls: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_params_defaults_and_names() -> None:
    assert PFLParams() == PFLParams(weighting="uniform", max_lost=1)
    assert VPFLParams() == VPFLParams(weighting="uniform")
    assert (PFL.name, VPFL.name) == ("pfl", "vpfl")


def test_fine_tuning_refines_the_aggregate_and_its_time_is_hidden() -> None:
    """Fine-tuning runs on every aggregate before it is published (here: + 10 x version),
    and its time adds to the aggregation time; nodes keep forking meanwhile."""
    cost = ServerCost(seconds_per_aggregation=0.2, finetune_seconds=0.3, finetune=True)
    alg = PFL(PFLParams(max_lost=3), TRAINING, np.ones(2, dtype=np.int64), cost)
    sim = Sim(alg, f32(0), finetune=lambda m, v: m + 10 * v)
    assert sim.at(1.0, {0: (2,)}) == {0: 0}  # node 0 forks version 0 at once
    assert sim.next_end() == 1.5  # 0.2 aggregation + 0.3 fine-tuning
    sim.at(1.5)
    np.testing.assert_array_equal(sim.s.model, f32(11))  # mean(2, 0) + 10 * version 1
    assert alg.stats(sim.s)["server_busy"] == 0.5
