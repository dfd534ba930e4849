"""The optional server step: held-out server data and SGD on it (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import ConfigError
from engine.server_step import hold_out, server_step
from tests.conftest import tiny
from workloads import WORKLOADS, DatasetMeta, ParamLayout


def _synthetic():  # type: ignore[no-untyped-def]
    cfg = tiny()
    workload = WORKLOADS["synthetic"](cfg.workload.params)
    return workload, workload.load(cfg.clients.num, seed=0)


def test_hold_out_removes_exactly_the_server_examples_and_renumbers_natural_shards() -> None:
    _, data = _synthetic()
    clients, idx = hold_out(data, 40, seed=0)
    n = len(data.y_train)
    assert len(idx) == 40 and len(np.unique(idx)) == 40
    assert len(clients.y_train) == n - 40
    kept = np.setdiff1d(np.arange(n), idx)
    np.testing.assert_array_equal(clients.x_train, data.x_train[kept])
    assert data.natural_partition is not None and clients.natural_partition is not None
    for old, new in zip(data.natural_partition, clients.natural_partition, strict=True):
        # the same examples, minus the held-out ones, at their new positions
        np.testing.assert_array_equal(clients.x_train[new], data.x_train[np.setdiff1d(old, idx)])
    _, again = hold_out(data, 40, seed=0)
    np.testing.assert_array_equal(again, idx)
    with pytest.raises(ValueError, match=r"server\.data_samples"):
        hold_out(data, n, seed=0)


def test_one_full_batch_server_step_is_gradient_descent_on_the_server_data() -> None:
    cfg = tiny(
        "algorithm.name=pfl",
        "server.steps=1",
        "server.batch_size=0",
        "server.lr=0.3",
        "server.data_samples=50",
    )
    workload, data = _synthetic()
    clients, step = server_step(cfg.server, workload, data, seed=0)
    assert step is not None and len(clients.y_train) == len(data.y_train) - 50
    _, idx = hold_out(data, 50, seed=0)
    model = workload.model(DatasetMeta.of(data))
    layout = ParamLayout.of(model)
    start = layout.flatten(model)
    x, y = workload.to_tensor(data.x_train[idx]), torch.from_numpy(data.y_train[idx])
    workload.loss(model(x), y).backward()
    expected = start - 0.3 * np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])
    np.testing.assert_allclose(step(start, 1), expected, atol=1e-6)


def test_server_step_is_keyed_by_version() -> None:
    cfg = tiny("algorithm.name=pfl", "server.steps=3", "server.batch_size=8", "server.data_samples=50")
    workload, data = _synthetic()
    _, step = server_step(cfg.server, workload, data, seed=0)
    assert step is not None
    start = np.zeros(ParamLayout.of(workload.model(DatasetMeta.of(data))).size, dtype=np.float32)
    np.testing.assert_array_equal(step(start, 4), step(start, 4))
    assert not np.array_equal(step(start, 4), step(start, 5))  # other minibatches


def test_server_time_with_an_algorithm_that_ignores_it_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not model the server's time"):
        tiny("algorithm.name=fedbuff", "server.steps=2")
    with pytest.raises(ConfigError, match="does not model the server's time"):
        tiny("algorithm.name=fedasync", "server.seconds_per_aggregation=1")
    assert tiny("algorithm.name=pfl", "server.steps=2").server.cost.step_seconds == 0.0
    cost = tiny("algorithm.name=vpfl", "server.steps=4", "server.seconds_per_step=0.5").server.cost
    assert cost.step_seconds == 2.0 and cost.aggregation_time(3, 100) == 2.0
