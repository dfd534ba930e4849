"""Stacked local SGD (torch.func.vmap over clients): equal to one-at-a-time SGD up to
float rounding, and each slot's result independent of the rest of its stack (no Ray)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from algorithms.base import Task
from engine.core.backend import Stack
from engine.core.jobs import InFlight, assign_stacks
from engine.worker.stacked import stacked_rows, stacked_sgd, unstackable_layers
from engine.worker.training import ClientData, local_sgd
from workloads import WORKLOADS, DatasetMeta, ParamLayout

SIZES = (23, 40, 7, 31)  # 7 < batch 8: a shard smaller than the batch; others end epochs short


def _setup(model_fn: object = None) -> tuple[nn.Module, ParamLayout, np.ndarray, list[ClientData]]:
    wl = WORKLOADS["synthetic"](WORKLOADS["synthetic"].Params())
    ds = wl.load(10, 0)
    torch.manual_seed(0)
    model = wl.model(DatasetMeta.of(ds)) if model_fn is None else model_fn()  # type: ignore[operator]
    rng = np.random.default_rng(0)
    clients = []
    for n in SIZES:
        idx = rng.choice(len(ds.y_train), size=n, replace=False)
        x, y = wl.to_tensor(ds.x_train[idx]), torch.from_numpy(ds.y_train[idx].astype(np.int64))
        clients.append(ClientData(x, y, wl.loss, None, wl.losses))
    layout = ParamLayout.of(model)
    return model, layout, layout.flatten(model), clients


def _gen(i: int) -> torch.Generator:
    return torch.Generator().manual_seed(100 + i)


@pytest.mark.parametrize(
    "task",
    [
        Task(steps=9, batch_size=8, lr=0.1),
        Task(steps=6, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-3, prox_mu=0.1),
        Task(steps=3, batch_size=0, lr=0.2),  # full batch: the width is the largest shard
    ],
)
def test_stacked_equals_one_at_a_time_sgd(task: Task) -> None:
    model, layout, start, clients = _setup()
    expected, expected_loss = [], []
    for i, data in enumerate(clients):
        layout.load(model, start)
        expected_loss.append(local_sgd(model, data, task, _gen(i)))
        expected.append(layout.flatten(model))
    layout.load(model, start)
    width = max(SIZES) if task.batch_size == 0 else task.batch_size
    params, losses = stacked_sgd(model, [(d, _gen(i)) for i, d in enumerate(clients)], task, width)
    rows = stacked_rows(model, layout.names, params).numpy()
    for i in range(len(clients)):
        np.testing.assert_allclose(rows[i], expected[i], atol=2e-6, rtol=0)
        assert losses[i] == pytest.approx(expected_loss[i], rel=1e-5)
    assert not np.array_equal(rows[0], start)


def test_augmented_minibatches_draw_from_each_job_generator_as_one_at_a_time() -> None:
    def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + 0.1 * torch.randn(x.shape, generator=generator)

    model, layout, start, clients = _setup()
    clients = [dataclasses.replace(c, augment=jitter) for c in clients]
    task = Task(steps=7, batch_size=8, lr=0.1)
    expected = []
    for i, data in enumerate(clients):
        layout.load(model, start)
        local_sgd(model, data, task, _gen(i))
        expected.append(layout.flatten(model))
    layout.load(model, start)
    slots = [(d, _gen(i)) for i, d in enumerate(clients)]
    rows = stacked_rows(model, layout.names, stacked_sgd(model, slots, task, 8)[0]).numpy()
    np.testing.assert_allclose(rows, np.stack(expected), atol=2e-6, rtol=0)
    # Without the augmentation the result differs: it really was applied.
    plain = stacked_sgd(
        model, [(dataclasses.replace(d, augment=None), _gen(i)) for i, d in enumerate(clients)], task, 8
    )
    assert not np.allclose(stacked_rows(model, layout.names, plain[0]).numpy(), rows, atol=1e-4)


def test_a_slot_gives_the_same_bits_whoever_else_is_in_the_stack() -> None:
    model, _, _, clients = _setup()
    task = Task(steps=9, batch_size=8, lr=0.1, momentum=0.5)
    full, _ = stacked_sgd(model, [(d, _gen(i)) for i, d in enumerate(clients)], task, 8)
    alone, losses = stacked_sgd(model, [None, None, (clients[2], _gen(2)), None], task, 8)
    assert np.isnan(losses[0]) and not np.isnan(losses[2])
    for name in full:
        assert torch.equal(full[name][2], alone[name][2]), name


def test_dropout_masks_depend_on_the_seed_and_the_slot_only() -> None:
    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(60, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))

    model, _, _, clients = _setup(mlp)
    task = Task(steps=5, batch_size=8, lr=0.1)
    runs = []
    for slots in ([(d, _gen(i)) for i, d in enumerate(clients)], [None, (clients[1], _gen(1)), None, None]):
        torch.manual_seed(7)
        runs.append(stacked_sgd(model, slots, task, 8)[0])
    torch.manual_seed(8)
    other = stacked_sgd(model, [None, (clients[1], _gen(1)), None, None], task, 8)[0]
    assert all(torch.equal(runs[0][n][1], runs[1][n][1]) for n in runs[0])
    assert not all(torch.equal(runs[1][n][1], other[n][1]) for n in other)


def test_only_linear_models_stack() -> None:
    shapes = WORKLOADS["shapes"](WORKLOADS["shapes"].Params(train_samples=20, test_samples=10))
    cnn = shapes.model(DatasetMeta((1, 28, 28), 10))
    assert unstackable_layers(cnn) == ["Conv2d", "MaxPool2d"]
    assert unstackable_layers(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.1))) == []


def _job(seq: int, client: int, task: Task) -> InFlight:
    return InFlight(seq, client, 0, task, 0, 0.0, 0.0, 1.0, 0, 1.0)


def test_assign_stacks_by_task_in_dispatch_order() -> None:
    a, b = Task(steps=5, batch_size=16, lr=0.1), Task(steps=3, batch_size=16, lr=0.1)
    jobs = [_job(10 + i, i, t) for i, t in enumerate([a, a, b, a, a, a, b, b])]
    shard_sizes = np.array([100, 12, 100, 100, 100, 100, 100, 9])
    assign_stacks(jobs, 3, shard_sizes)
    # Task a: jobs 10, 11, 13 | 14, 15; task b: 12, 16, 17. Width: the largest minibatch.
    assert [f.stack for f in jobs] == [
        Stack(10, 0, 3, 16),
        Stack(10, 1, 3, 16),
        Stack(12, 0, 3, 16),
        Stack(10, 2, 3, 16),
        Stack(14, 0, 2, 16),
        Stack(14, 1, 2, 16),
        Stack(12, 1, 3, 16),
        Stack(12, 2, 3, 16),
    ]
    small = [_job(1, 1, a), _job(2, 7, a), _job(3, 0, b)]
    assign_stacks(small, 4, shard_sizes)
    # Shards of 12 and 9 under batch 16: width 12; a lone job (task b) is not stacked.
    assert [f.stack for f in small] == [Stack(1, 0, 2, 12), Stack(1, 1, 2, 12), None]
    unstacked = [_job(1, 1, a), _job(2, 2, a)]
    assign_stacks(unstacked, 1, shard_sizes)
    assert [f.stack for f in unstacked] == [None, None]
