"""Client-side local training against closed forms: FedAvg with one full-batch step is
centralised gradient descent; FedProx's proximal term; minibatch epochs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms.base import LocalTraining, Task, Update
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.fedprox import FedProx, FedProxParams
from engine.worker.training import ClientData, batch_indices, local_sgd
from workloads.base import ParamLayout

SIZES = (5, 12, 23)  # unequal shards, so sample weighting matters
DIM, CLASSES, LR = 4, 3, 0.3


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(DIM, CLASSES)  # multinomial logistic regression


def make_shards() -> list[ClientData]:
    g = torch.Generator().manual_seed(1)
    return [
        ClientData(
            torch.randn(n, DIM, generator=g), torch.randint(0, CLASSES, (n,), generator=g), F.cross_entropy
        )
        for n in SIZES
    ]


def train(
    layout: ParamLayout, model: torch.nn.Module, w: np.ndarray, data: ClientData, task: Task
) -> np.ndarray:
    layout.load(model, w)
    local_sgd(model, data, task, torch.Generator().manual_seed(0))
    return layout.flatten(model)


def test_fedavg_one_full_batch_step_is_centralised_gd() -> None:
    model, shards = make_model(), make_shards()
    layout = ParamLayout.of(model)
    w0 = layout.flatten(model)
    alg = FedAvg(
        FedAvgParams(clients_per_round=3, server_lr=1.0, weighting="samples"),
        LocalTraining(local_steps=1, batch_size=0, lr=LR),
        np.array(SIZES),
    )
    state, jobs = alg.jobs(alg.init(w0), 0.0, np.arange(3), np.random.default_rng(0))
    assert sorted(j.client for j in jobs) == [0, 1, 2]
    for job in jobs:
        data = shards[job.client]
        assert job.task.steps == 1 and job.task.batch_size == 0
        delta = w0 - train(layout, model, w0, data, job.task)  # x^tau - y
        state = alg.on_update(state, Update(job.client, delta, len(data), 0, w0), 1.0)
    assert state.version == 1

    # One GD step on the pooled data: the mean loss over all examples is the
    # n_i-weighted mean of the shard losses, so its gradient is FedAvg's direction.
    layout.load(model, w0)
    model.zero_grad(set_to_none=True)  # local_sgd leaves its last gradients behind
    x = torch.cat([d.x for d in shards])
    y = torch.cat([d.y for d in shards])
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():
            assert p.grad is not None
            p.sub_(LR * p.grad)
    np.testing.assert_allclose(state.model, layout.flatten(model), rtol=0, atol=1e-6)
    assert np.abs(state.model - w0).max() > 1e-3  # the step is not trivially small


def test_fedprox_first_step_is_plain_sgd_second_differs_by_prox_pull() -> None:
    model, (data, *_) = make_model(), make_shards()
    layout = ParamLayout.of(model)
    w0 = layout.flatten(model)
    mu = 0.5
    prox = FedProx(
        FedProxParams(clients_per_round=1, mu=mu),
        LocalTraining(local_steps=1, batch_size=0, lr=LR),
        np.array([5]),
    )
    task1 = prox.task_for(0)
    assert task1.prox_mu == mu
    plain1 = Task(steps=1, batch_size=0, lr=LR)
    # step 1 starts at w = w_start, where mu * (w - w_start) = 0
    w1 = train(layout, model, w0, data, plain1)
    np.testing.assert_array_equal(train(layout, model, w0, data, task1), w1)

    # step 2: the plain step from w1 minus lr * mu * (w1 - w0)
    plain2 = train(layout, model, w0, data, Task(steps=2, batch_size=0, lr=LR))
    prox2 = train(layout, model, w0, data, Task(steps=2, batch_size=0, lr=LR, prox_mu=mu))
    expected = plain2 - LR * mu * (w1 - w0)
    np.testing.assert_allclose(prox2, expected, rtol=0, atol=1e-6)
    assert np.abs(prox2 - plain2).max() > 1e-4


@pytest.mark.parametrize(("n", "batch", "epochs"), [(12, 4, 3), (12, 12, 2), (10, 3, 2)])
def test_batch_indices_one_pass_per_epoch(n: int, batch: int, epochs: int) -> None:
    per_epoch = -(-n // batch)  # ceil: the last batch of an epoch is short
    steps = per_epoch * epochs
    batches = batch_indices(n, steps, batch, torch.Generator().manual_seed(3))
    sizes = [len(b) for b in batches[:per_epoch]]
    assert len(batches) == steps and sizes == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    for e in range(epochs):
        seen = torch.cat(batches[e * per_epoch : (e + 1) * per_epoch]).tolist()
        assert sorted(seen) == list(range(n))  # every example exactly once per epoch


def test_batch_indices_full_batch_and_determinism() -> None:
    full = batch_indices(6, 3, 0, torch.Generator().manual_seed(0))
    assert [b.tolist() for b in full] == [list(range(6))] * 3
    a = batch_indices(9, 5, 2, torch.Generator().manual_seed(7))
    b = batch_indices(9, 5, 2, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_per_client_batch_sizes_round_robin_with_epoch_steps_and_samples() -> None:
    # Shards of 64, 64, 64, 10 examples; batch sizes 8, 32, 0 (full batch) round-robin.
    training = LocalTraining(epochs=1.0, batch_sizes=(8, 32, 0))
    algo = FedAvg(FedAvgParams(clients_per_round=4), training, np.array([64, 64, 64, 10]))
    tasks = [algo.task_for(c) for c in range(4)]
    assert [t.batch_size for t in tasks] == [8, 32, 0, 8]
    # One epoch: ceil(64/8) = 8 steps, ceil(64/32) = 2, full batch 1, ceil(10/8) = 2.
    assert [t.steps for t in tasks] == [8, 2, 1, 2]
    # Virtual compute is charged per example: one epoch is the shard, whatever the batch.
    assert [t.samples(n) for t, n in zip(tasks, (64, 64, 64, 10), strict=True)] == [64, 64, 64, 10]
    # Fixed local steps: the same 5 steps, but a bigger batch costs more examples. At
    # batch 32 an epoch of 100 is 4 steps (32+32+32+4), so 5 steps are 100 + 32.
    fixed = FedAvg(FedAvgParams(), LocalTraining(local_steps=5, batch_sizes=(8, 32)), np.full(2, 100))
    assert [fixed.task_for(c).samples(100) for c in range(2)] == [5 * 8, 100 + 32]
    # Without batch_sizes every client uses batch_size.
    plain = FedAvg(FedAvgParams(), LocalTraining(local_steps=5, batch_size=16), np.full(3, 100))
    assert {plain.task_for(c).batch_size for c in range(3)} == {16}


def test_batch_sizes_validated() -> None:
    with pytest.raises(ValueError, match=r"batch_sizes must all be >= 0"):
        LocalTraining(batch_sizes=(8, -1))
    with pytest.raises(ValueError, match=r"batch_size must be >= 0"):
        LocalTraining(batch_size=-2)


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01), (0.0, 0.05)])
def test_sgd_step_is_torch_sgd_bit_for_bit(momentum: float, weight_decay: float) -> None:
    from engine.worker.training import sgd_step

    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    theirs = copy.deepcopy(ours)
    task = Task(steps=6, batch_size=5, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    velocity: list[torch.Tensor | None] = [None] * 4
    x, y = torch.randn(20, 7), torch.randint(0, 3, (20,))
    for step in range(6):
        for model in (ours, theirs):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[step : step + 5]), y[step : step + 5]).backward()
        sgd_step(list(ours.parameters()), velocity, task)
        opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
