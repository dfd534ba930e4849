"""Evaluation metrics from per-example scores (pure numpy; the executor computes the scores).

The global metrics are over the workload's test set. With ``eval.local_test_fraction``
each client also keeps a local test split of its own shard, and the global model is
scored on every client's split: the personalisation view of FL, where what matters is
how well the one model serves each client's own distribution. Clients count equally
there (a client with 3 test examples weighs as much as one with 300), which is why the
mean is over clients, not examples; the 10th percentile shows the clients the model
serves worst (Li et al.'s q-FFL fairness view).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LOCAL_METRICS = ("local_accuracy", "local_accuracy_p10", "local_loss")


def global_metrics(correct: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    """Accuracy and mean loss over all examples."""
    n = max(1, len(correct))
    return {"accuracy": float(np.sum(correct)) / n, "loss": float(np.sum(losses, dtype=np.float64)) / n}


def local_metrics(correct: np.ndarray, losses: np.ndarray, sizes: np.ndarray) -> dict[str, float]:
    """Per-client scores over consecutive runs of examples (client ``i`` owns the next
    ``sizes[i]`` entries): the mean over clients of accuracy and loss, and the 10th
    percentile of client accuracy. Clients with no local test example are left out."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(correct) != int(sizes.sum()):
        raise ValueError(f"{len(correct)} scores for local test splits holding {int(sizes.sum())} examples")
    scored = sizes > 0
    if not scored.any():
        return dict.fromkeys(LOCAL_METRICS, float("nan"))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])[scored]
    n = sizes[scored].astype(np.float64)
    accuracy = np.add.reduceat(np.asarray(correct, dtype=np.float64), starts) / n
    loss = np.add.reduceat(np.asarray(losses, dtype=np.float64), starts) / n
    return {
        "local_accuracy": float(accuracy.mean()),
        "local_accuracy_p10": float(np.percentile(accuracy, 10)),
        "local_loss": float(loss.mean()),
    }


def split_local_test(
    shards: list[np.ndarray], fraction: float, rng_of: Callable[[int], np.random.Generator]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split every shard into (train, local test): ``floor(fraction * n)`` examples, drawn
    without replacement by ``rng_of(client)``, go to the client's test split. Both keep
    the shard's order."""
    train, test = [], []
    for client, shard in enumerate(shards):
        k = int(fraction * len(shard))  # fraction < 1: at least one example stays to train on
        held = np.zeros(len(shard), dtype=bool)
        held[rng_of(client).choice(len(shard), size=k, replace=False)] = True
        test.append(shard[held])
        train.append(shard[~held])
    return train, test
