"""Server fine-tuning: held-out server examples and SGD on them (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import ConfigError
from engine.worker.data import load_data
from engine.worker.finetune import FineTuner, server_examples
from tests.conftest import tiny
from workloads import WORKLOADS, DatasetMeta, ParamLayout


def _synthetic():  # type: ignore[no-untyped-def]
    cfg = tiny()
    workload = WORKLOADS["synthetic"](cfg.workload.params)
    return workload, workload.load(cfg.clients.num, seed=0)


def test_server_examples_are_never_in_a_client_shard_and_shards_keep_the_rest() -> None:
    plain = load_data(tiny())
    held = load_data(tiny("algorithm.name=pfl", "server.steps=1", "server.data_samples=40"))
    idx = held.server_idx
    n = len(plain.dataset.y_train)
    assert idx is not None and len(idx) == 40 and len(np.unique(idx)) == 40
    np.testing.assert_array_equal(idx, server_examples(n, 40, seed=0))  # keyed: the same again
    flat = held.shards.indices
    assert not np.isin(flat, idx).any()
    # natural shards lose exactly the held-out examples, and keep their order
    for c in range(len(plain.shards.sizes)):
        old = plain.shards.shard(c)
        np.testing.assert_array_equal(held.shards.shard(c), old[~np.isin(old, idx)])
    with pytest.raises(ValueError, match=r"server\.data_samples"):
        server_examples(n, n, seed=0)


def test_one_full_batch_fine_tuning_step_is_gradient_descent_on_the_server_data() -> None:
    cfg = tiny("algorithm.name=pfl", "server.steps=1", "server.batch_size=0", "server.lr=0.3")
    workload, data = _synthetic()
    idx = server_examples(len(data.y_train), 50, seed=0)
    tuner = FineTuner(workload, DatasetMeta.of(data), data.x_train[idx], data.y_train[idx], seed=0)
    model = workload.model(DatasetMeta.of(data))
    layout = ParamLayout.of(model)
    start = layout.flatten(model)
    x, y = workload.to_tensor(data.x_train[idx]), torch.from_numpy(data.y_train[idx])
    workload.loss(model(x), y).backward()
    expected = start - 0.3 * np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])
    np.testing.assert_allclose(tuner(start, cfg.server.finetune_task, 1), expected, atol=1e-6)


def test_fine_tuning_is_keyed_by_version() -> None:
    cfg = tiny("algorithm.name=pfl", "server.steps=3", "server.batch_size=8", "server.data_samples=50")
    workload, data = _synthetic()
    idx = server_examples(len(data.y_train), 50, seed=0)
    tuner = FineTuner(workload, DatasetMeta.of(data), data.x_train[idx], data.y_train[idx], seed=0)
    start = np.zeros(ParamLayout.of(workload.model(DatasetMeta.of(data))).size, dtype=np.float32)
    task = cfg.server.finetune_task
    np.testing.assert_array_equal(tuner(start, task, 4), tuner(start, task, 4))
    assert not np.array_equal(tuner(start, task, 4), tuner(start, task, 5))  # other minibatches


def test_server_time_with_an_algorithm_that_ignores_it_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not model the server's time"):
        tiny("algorithm.name=fedbuff", "server.steps=2")
    with pytest.raises(ConfigError, match="does not model the server's time"):
        tiny("algorithm.name=fedasync", "server.seconds_per_aggregation=1")
    cost = tiny("algorithm.name=pfl", "server.steps=2").server.cost
    assert cost.finetune_seconds == 0.0 and cost.finetune
    cost = tiny("algorithm.name=vpfl", "server.steps=4", "server.seconds_per_step=0.5").server.cost
    assert cost.finetune_seconds == 2.0 and cost.aggregation_time(3, 100) == 2.0
