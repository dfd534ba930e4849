"""Evaluation metrics from per-example scores, and the clients' local test splits (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.evaluation import global_metrics, local_metrics, split_local_test
from engine.core.rng import stream


def test_global_metrics_are_over_examples() -> None:
    out = global_metrics(np.array([True, False, True, True]), np.array([0.5, 2.0, 0.25, 0.25]))
    assert out == {"accuracy": 0.75, "loss": 0.75}


def test_local_metrics_weigh_clients_equally_and_skip_empty_splits() -> None:
    # Client 0: 1 of 2 right; client 1: no split; client 2: 3 of 3; client 3: 0 of 1;
    # client 4: 3 of 4.
    correct = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1], dtype=bool)
    losses = np.array([1, 3, 0, 0, 0, 4, 1, 1, 1, 1], dtype=np.float32)
    out = local_metrics(correct, losses, np.array([2, 0, 3, 1, 4]))
    per_client = np.array([0.5, 1.0, 0.0, 0.75])
    assert out["local_accuracy"] == pytest.approx(2.25 / 4)  # not 7/10, the example mean
    assert out["local_loss"] == pytest.approx((2.0 + 0.0 + 4.0 + 1.0) / 4)
    # 10th percentile of (0, 0.5, 0.75, 1), linear: 0 + 0.3 * (0.5 - 0) = 0.15.
    assert out["local_accuracy_p10"] == pytest.approx(0.15)
    assert out["local_accuracy_p10"] == pytest.approx(float(np.percentile(per_client, 10)))


def test_local_metrics_refuse_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="3 scores for local test splits holding 4 examples"):
        local_metrics(np.ones(3, bool), np.ones(3), np.array([2, 2]))
    empty = local_metrics(np.zeros(0, bool), np.zeros(0), np.array([0, 0]))
    assert all(np.isnan(v) for v in empty.values())


def test_split_local_test_sizes_disjoint_order_kept_and_keyed() -> None:
    shards = [np.arange(0, 10), np.arange(10, 13), np.array([13]), np.arange(14, 114)]
    train, test = split_local_test(shards, 0.2, lambda c: stream(7, "local_test", c))
    # floor(0.2 n) to test: 2, 0, 0, 20; a lone example stays for training.
    assert [len(t) for t in test] == [2, 0, 0, 20]
    assert [len(t) for t in train] == [8, 3, 1, 80]
    for shard, tr, te in zip(shards, train, test, strict=True):
        assert sorted(np.concatenate([tr, te]).tolist()) == sorted(shard.tolist())
        # Both splits keep the shard's order (the shards here are increasing).
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)
    again, _ = split_local_test(shards, 0.2, lambda c: stream(7, "local_test", c))
    other, _ = split_local_test(shards, 0.2, lambda c: stream(8, "local_test", c))
    assert all(np.array_equal(a, b) for a, b in zip(train, again, strict=True))
    assert not np.array_equal(train[3], other[3])
    # A fraction below 1 always leaves one example to train on.
    kept, most = split_local_test([np.arange(4)], 0.99, lambda c: stream(0, "local_test", c))
    assert (len(kept[0]), len(most[0])) == (1, 3)
