"""Partial sums (executors.partial_sums): the sums and their combination worked out by hand,
the rule for a job computed again after a resume, FedAvg's round from partial sums, and
the configurations that are refused, each in one line."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.aggregation import weighted_average
from algorithms.base import LocalTraining, Update
from algorithms.cmfl import CMFL
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.fedbuff import FedBuff
from algorithms.idle import IdleClients
from algorithms.partial_sums import PartialSum, combined_mean, partial_sum
from engine.config import ConfigError, load_config
from engine.core.jobs import InFlight, assign_sum_groups
from tests import conftest


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_a_partial_sum_adds_weighted_deltas_and_their_weights() -> None:
    # 2*(1, 2) + 1*(3, -1) = (5, 3); weight 2 + 1 = 3
    p = partial_sum(7, iter([(3, f32(1, 2), 2.0), (5, f32(3, -1), 1.0)]))
    assert p is not None
    assert (p.key, p.members, p.weight) == (7, (3, 5), 3.0)
    assert p.total.dtype == np.float64 and p.total.tolist() == [5.0, 3.0]
    assert not p.total.flags.writeable
    assert partial_sum(7, iter([])) is None  # every member non-finite: nothing to sum


def test_combined_mean_divides_the_sum_of_sums_by_the_sum_of_weights() -> None:
    a = partial_sum(0, [(0, f32(1, 2), 2.0), (1, f32(3, -1), 1.0)])  # (5, 3) / 3
    b = partial_sum(2, [(2, f32(0, 4), 1.0)])  # (0, 4) / 1
    # with client 3 on its own: (6, 6) weight 2 -> ((5+0+6)/6, (3+4+6)/6) = (11/6, 13/6)
    partials = [a, a, b, None]
    deltas = [f32(), f32(), f32(), f32(3, 3)]
    mean = combined_mean(partials, deltas, [2.0, 1.0, 1.0, 2.0], [0, 1, 2, 3])
    assert mean.dtype == np.float32
    np.testing.assert_array_equal(mean, f32(11 / 6, 13 / 6))
    # the same mean the server computes from the four updates, up to float64 rounding
    each = weighted_average([f32(1, 2), f32(3, -1), f32(0, 4), f32(3, 3)], [2.0, 1.0, 1.0, 2.0])
    np.testing.assert_allclose(mean, each, rtol=1e-7)


def test_after_a_resume_the_largest_partial_sum_of_a_group_counts() -> None:
    # Client 1's job was in flight at the checkpoint: computed again alone, it comes back
    # in a partial sum of the same group holding only itself, which the first one holds too.
    full = partial_sum(0, [(0, f32(2), 1.0), (1, f32(4), 1.0)])
    again = partial_sum(0, [(1, f32(4), 1.0)])
    mean = combined_mean([full, again], [f32(), f32()], [1.0, 1.0], [0, 1])
    np.testing.assert_array_equal(mean, f32(3))
    assert combined_mean([again, full], [f32(), f32()], [1.0, 1.0], [1, 0]).tolist() == [3.0]


def test_a_summed_job_that_is_not_in_the_aggregate_is_an_error() -> None:
    p = partial_sum(0, [(0, f32(2), 1.0), (1, f32(4), 1.0)])
    with pytest.raises(ValueError, match=r"partial sums hold clients \[0, 1\], .* summed updates \[0\]"):
        combined_mean([p], [f32()], [1.0], [0])


def test_sum_groups_take_a_dispatch_in_order_size_at_a_time() -> None:
    jobs = [InFlight(seq, seq, 0, None, 0, 0.0, 0.0, 0.0, 0, 0.0) for seq in range(10, 17)]  # type: ignore[arg-type]
    assign_sum_groups(jobs, 3)
    assert [(f.group.key, f.group.size) for f in jobs if f.group] == [(10, 3)] * 3 + [(13, 3)] * 3 + [(16, 1)]
    off = [InFlight(0, 0, 0, None, 0, 0.0, 0.0, 0.0, 0, 0.0)]  # type: ignore[arg-type]
    assign_sum_groups(off, 0)
    assert off[0].group is None


def fedavg(**params: object) -> FedAvg:
    algo = FedAvg(FedAvgParams(**params), LocalTraining(), np.array([10, 30, 20]))  # type: ignore[arg-type]
    return algo


def test_fedavg_aggregates_a_round_summed_on_executors() -> None:
    """Samples weighting, n = (10, 30, 20): clients 0 and 1 summed on one executor, client
    2 on another. Delta = (10*(1,0) + 30*(0,1) + 20*(3,3)) / 60 = (70, 90) / 60."""
    algo = fedavg(clients_per_round=3)
    state = algo.init(f32(1, 1))
    rng = np.random.default_rng(0)
    state, jobs = algo.jobs(state, 0.0, IdleClients.of(np.arange(3)), rng)
    assert len(jobs) == 3
    w = [algo.summand_weight(n) for n in (10, 30, 20)]
    first = partial_sum(0, [(0, f32(1, 0), w[0]), (1, f32(0, 1), w[1])])
    second = partial_sum(2, [(2, f32(3, 3), w[2])])
    for client, p in ((1, first), (2, second), (0, first)):  # in any arrival order
        n = int(algo.client_sizes[client])
        state = algo.on_update(state, Update(client, f32(), n, 0, f32(1, 1), partial=p), 0.0)
    assert state.version == 1
    direction = f32(70 / 60, 90 / 60)  # the mean, as float32, then x - server_lr * mean
    np.testing.assert_array_equal(state.model, (1.0 - direction.astype(np.float64)).astype(np.float32))
    assert fedavg(weighting="uniform").summand_weight(30) == 1.0


def test_only_a_plain_weighted_mean_may_be_summed() -> None:
    assert FedAvg.partial_sums_refusal(FedAvgParams()) == ""
    params = load_config(None, ["algorithm.name=fedavg", "algorithm.aggregator.name=median"]).algorithm.params
    assert FedAvg.partial_sums_refusal(params) == (
        "algorithm.aggregator=median needs each update, not their sum (set it to mean)"
    )
    assert "handles each update on its own" in CMFL.partial_sums_refusal(None)
    assert FedBuff.partial_sums_refusal(None) == "fedbuff handles each update on its own"
    assert isinstance(PartialSum(0, (), np.zeros(1), 0.0), PartialSum)


AVG = "algorithm.name=fedavg"
OFF = "or set executors.partial_sums=0"
LOCAL_DP = (
    "algorithm.privacy.mode=local",
    "algorithm.privacy.clip=1",
    "algorithm.privacy.noise_multiplier=2",
)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], f"executors.partial_sums: fedbuff handles each update on its own, {OFF}"),
        ([AVG, "algorithm.deadline=3"], "algorithm.deadline cuts off jobs an executor may"),
        ([AVG, "algorithm.weighting=uniform", *LOCAL_DP], "algorithm.privacy=local needs each update"),
        ([AVG, "executors.stack=2"], f"set executors.stack=1 {OFF}"),
        ([AVG, "clock.mode=wall"], "wall mode returns each job at its own time"),
        (
            [AVG, "clients.availability.mode=periodic", "clients.availability.on_fraction=0.5"],
            f"set clients.availability.mode=always {OFF}",
        ),
        (
            [AVG, "clients.byzantine.fraction=0.2", "clients.byzantine.attack=alie"],
            "clients.byzantine.attack=alie needs each update",
        ),
        (["executors.partial_sums=-1"], "executors.partial_sums must be >= 0, 0 meaning off (got -1)"),
    ],
)
def test_what_cannot_be_summed_is_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        conftest.tiny("executors.partial_sums=3", *overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_worker_returns_a_group_as_one_partial_sum_of_its_jobs_updates() -> None:
    """Three jobs of one group, given out of order: one partial sum, shared by their
    outputs, equal to the sum of the updates the jobs give alone; payloads empty, bytes
    up those of the real uploads."""
    from engine.core.backend import JobSpec, SumGroup
    from engine.worker.data import load_data
    from engine.worker.worker import ExecutorSpec, Worker

    cfg = conftest.tiny("executors.backend=local", AVG)
    w = Worker(0.0)
    w.setup(ExecutorSpec.of(cfg), load_data(cfg))
    start = w.initial_params()

    def spec(uid: int, client: int, group: SumGroup | None) -> JobSpec:
        return JobSpec(uid, client, 0, w.algorithm.task_for(client), 0, group=group)

    alone = {c: w.compute([(spec(9, c, None), start)])[0] for c in (4, 1, 7)}
    group = SumGroup(20, 3)
    outs = w.compute([(spec(21, 1, group), start), (spec(20, 4, group), start), (spec(22, 7, group), start)])
    assert [o.uid for o in outs] == [21, 20, 22]  # the order given
    p = outs[0].partial
    assert p is not None and all(o.partial is p for o in outs)
    assert (p.key, p.members) == (20, (4, 1, 7))  # added in job-sequence order
    client = {21: 1, 20: 4, 22: 7}
    assert all(o.payload == {} and o.bytes_up == alone[client[o.uid]].bytes_up > 0 for o in outs)
    expected = np.zeros_like(start, dtype=np.float64)
    for c in (4, 1, 7):
        expected += float(w.algorithm.client_sizes[c]) * alone[c].payload["delta"].astype(np.float64)
    np.testing.assert_array_equal(p.total, expected)
    assert p.weight == float(sum(w.algorithm.client_sizes[[4, 1, 7]]))
