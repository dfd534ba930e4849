"""Partitions: exact covers, equal sizes, the requested label skew, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

import workloads.partition as P
from workloads.partition import PARTITIONS, PartitionConfig, partition

C = 10


def balanced_labels(per_class: int = 100, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(C), per_class)).astype(np.int64)


def class_shares(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """(clients, classes) share of each class in each client's data."""
    counts = np.stack([np.bincount(labels[p], minlength=C) for p in parts])
    return counts / counts.sum(1, keepdims=True)


def mean_max_share(name: str, alpha: float) -> float:
    labels = balanced_labels(200)
    parts = partition(PartitionConfig(name, alpha=alpha), labels, 10, C, seed=0)
    return float(class_shares(labels, parts).max(1).mean())


def test_names() -> None:
    assert PARTITIONS == (
        "iid",
        "dirichlet_per_class",
        "dirichlet_per_client",
        "shards",
        "quantity_skew",
        "dual_dirichlet",
        "natural",
    )


@pytest.mark.parametrize("name", ["iid", "dirichlet_per_class", "shards", "quantity_skew", "dual_dirichlet"])
def test_exact_cover(name: str) -> None:
    labels = balanced_labels(97)  # 970 samples: nothing divides evenly
    parts = partition(PartitionConfig(name, alpha=0.5), labels, 13, C, seed=4)
    assert len(parts) == 13
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0) and len(p) >= 1
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_iid_sizes_and_shares() -> None:
    labels = balanced_labels(1000)
    parts = partition(PartitionConfig("iid"), labels, 10, C, seed=1)
    assert {len(p) for p in parts} == {1000}
    # Each client's class mix is close to the global 10% per class.
    assert np.abs(class_shares(labels, parts) - 0.1).max() < 0.05


def test_dirichlet_per_client_equal_sizes_and_disjoint() -> None:
    labels = balanced_labels(103)
    parts = partition(PartitionConfig("dirichlet_per_client", alpha=0.3), labels, 7, C, seed=2)
    assert {len(p) for p in parts} == {len(labels) // 7}
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union) and np.all(np.diff(parts[0]) > 0)


def test_dirichlet_per_client_uses_exhausted_pools_correctly() -> None:
    # Tiny alpha with few samples per class forces many classes to run dry mid-client.
    labels = balanced_labels(12)
    parts = partition(PartitionConfig("dirichlet_per_client", alpha=0.01), labels, 10, C, seed=3)
    assert {len(p) for p in parts} == {12}
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(120))


def test_dirichlet_per_class_sizes_are_unequal() -> None:
    labels = balanced_labels(200)
    parts = partition(PartitionConfig("dirichlet_per_class", alpha=0.5), labels, 10, C, seed=0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() > 1.5 * sizes.min()


@pytest.mark.parametrize("name", ["dirichlet_per_class", "dirichlet_per_client"])
def test_alpha_controls_skew(name: str) -> None:
    skewed, near_iid = mean_max_share(name, 0.05), mean_max_share(name, 100.0)
    # A few classes per client at 0.05 (per-client mixes are diluted by the class pools
    # running dry as clients fill up); close to the global 0.1 at 100.
    assert skewed > 0.5, skewed
    assert near_iid < 0.2, near_iid
    assert skewed > 4 * near_iid


def test_shards_one_class_per_client() -> None:
    labels = balanced_labels(50)
    for clients in (10, 20, 50):  # shards line up with class boundaries
        parts = partition(PartitionConfig("shards", classes_per_client=1), labels, clients, C, seed=0)
        assert all(len(np.unique(labels[p])) == 1 for p in parts)
        assert {len(p) for p in parts} == {len(labels) // clients}


def test_shards_two_classes_per_client() -> None:
    labels = balanced_labels(100)
    parts = partition(PartitionConfig("shards", classes_per_client=2), labels, 10, C, seed=5)
    n_classes = [len(np.unique(labels[p])) for p in parts]
    assert max(n_classes) <= 2 and np.mean(n_classes) > 1.5


@pytest.mark.parametrize(
    "name",
    ["iid", "dirichlet_per_class", "dirichlet_per_client", "shards", "quantity_skew", "dual_dirichlet"],
)
def test_deterministic_in_seed(name: str) -> None:
    labels = balanced_labels(60)
    cfg = PartitionConfig(name, alpha=1.0)
    a, b, c = (partition(cfg, labels, 8, C, seed=s) for s in (11, 11, 12))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_quantity_skew_sizes_follow_the_draw_and_labels_stay_iid() -> None:
    labels = balanced_labels(500)
    cfg = PartitionConfig("quantity_skew", alpha=0.5)
    parts = partition(cfg, labels, 10, C, seed=3)
    # The sizes are the Dirichlet draw that follows the shuffle in the partition's own stream.
    rng = np.random.default_rng([3, P._PURPOSE])
    rng.permutation(len(labels))
    q = rng.dirichlet(np.full(10, 0.5))
    expected = np.diff(
        np.concatenate([[0], (np.cumsum(q)[:-1] * len(labels)).astype(np.int64), [len(labels)]])
    )
    sizes = np.array([len(p) for p in parts])
    assert np.array_equal(sizes, expected)
    assert sizes.max() > 3 * sizes.min()  # alpha 0.5: very unequal clients
    # Labels i.i.d.: every client of 200+ samples holds every class near its global 10%.
    for p in parts:
        if len(p) >= 200:
            share = np.bincount(labels[p], minlength=C) / len(p)
            assert np.abs(share - 0.1).max() < 0.07
    # A large alpha gives near-equal sizes.
    even = partition(PartitionConfig("quantity_skew", alpha=1000.0), labels, 10, C, seed=3)
    assert max(len(p) for p in even) < 1.2 * min(len(p) for p in even)


def test_quantity_skew_min_samples_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = balanced_labels(50)
    cfg = PartitionConfig("quantity_skew", alpha=0.3, min_samples=10)
    assert min(len(p) for p in partition(cfg, labels, 10, C, seed=0)) >= 10
    monkeypatch.setattr(P, "MAX_DIRICHLET_DRAWS", 1)
    with pytest.raises(ValueError, match=r"quantity_skew with alpha=0\.3 left some"):
        partition(cfg, labels, 10, C, seed=0)


@pytest.mark.parametrize("name", ["iid", "shards", "dirichlet_per_class", "quantity_skew"])
def test_data_sharing_adds_exactly_the_shared_samples(name: str) -> None:
    labels = balanced_labels(100)  # 1000 samples
    cfg = PartitionConfig(name, classes_per_client=1, shared_fraction=0.05, shared_per_client=0.4)
    parts = partition(cfg, labels, 10, C, seed=2)
    plain = partition(PartitionConfig(name, classes_per_client=1), labels, 10, C, seed=2)
    # G (drawn first in the partition's stream): 5% of the data, 5 samples of every class.
    g = P._shared_set(labels, C, 0.05, np.random.default_rng([2, P._PURPOSE]))
    assert len(g) == 50 and np.array_equal(np.bincount(labels[g], minlength=C), np.full(C, 5))
    # The scheme split the other 950 into disjoint private parts ...
    private = [np.setdiff1d(p, g) for p in parts]
    union = np.concatenate(private)
    assert len(union) == len(np.unique(union)) and np.array_equal(
        np.sort(union), np.setdiff1d(np.arange(1000), g)
    )
    # ... and every client got exactly 40% of G on top.
    for p in parts:
        assert len(np.intersect1d(p, g)) == 20 and len(p) == len(np.unique(p))
    assert len(np.unique(np.concatenate([np.intersect1d(p, g) for p in parts]))) > 20  # not all the same 20
    # Without sharing the same scheme is a plain exact cover.
    assert all(np.all(np.diff(p) > 0) for p in plain)
    assert np.array_equal(np.sort(np.concatenate(plain)), np.arange(len(labels)))
    if name == "shards":  # 1-class clients stay 1-class in their private data
        assert all(len(np.unique(labels[q])) == 1 for q in private)


def test_data_sharing_on_a_natural_partition_and_unbalanced_classes() -> None:
    # Class 0 has 2 samples, class 1 has 98: G of 10 takes both of class 0 and 8 of class 1.
    labels = np.array([0, 0] + [1] * 98, dtype=np.int64)
    natural = [np.arange(0, 50), np.arange(50, 100)]
    cfg = PartitionConfig("natural", shared_fraction=0.1, shared_per_client=1.0)
    parts = partition(cfg, labels, 2, 2, seed=0, natural=natural)
    both = np.intersect1d(parts[0], parts[1])
    assert len(both) == 10 and np.array_equal(np.bincount(labels[both], minlength=2), [2, 8])
    assert len(parts[0]) + len(parts[1]) == 100 + 10  # each private sample once, G twice
    assert np.isin(np.setdiff1d(parts[0], both), natural[0]).all()


def test_natural() -> None:
    natural = [np.array([3, 1, 2]), np.array([0, 4])]
    labels = np.zeros(5, dtype=np.int64)
    parts = partition(PartitionConfig("natural"), labels, 2, C, seed=0, natural=natural)
    assert [p.tolist() for p in parts] == [[1, 2, 3], [0, 4]] and parts[0].dtype == np.int64
    with pytest.raises(ValueError, match="needs a workload that comes partitioned"):
        partition(PartitionConfig("natural"), labels, 2, C, seed=0)
    with pytest.raises(ValueError, match="set num_clients to 2"):
        partition(PartitionConfig("natural"), labels, 3, C, seed=0, natural=natural)


def test_min_samples_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = balanced_labels(100)
    # Clients average 100 samples; a single draw gives all ten >= 60 only ~15% of the time.
    cfg = PartitionConfig("dirichlet_per_class", alpha=0.5, min_samples=60)
    parts = partition(cfg, labels, 10, C, seed=0)
    assert min(len(p) for p in parts) >= 60
    # The same request with a single draw fails: the first draw alone was not good enough.
    monkeypatch.setattr(P, "MAX_DIRICHLET_DRAWS", 1)
    with pytest.raises(ValueError, match="use a larger alpha or fewer clients"):
        partition(cfg, labels, 10, C, seed=0)


def test_hopeless_dirichlet_fails_clearly() -> None:
    labels = balanced_labels(20)
    with pytest.raises(ValueError, match="use a larger alpha or fewer clients"):
        partition(PartitionConfig("dirichlet_per_class", alpha=0.01), labels, 100, C, seed=0)


@pytest.mark.parametrize(
    ("cfg", "clients", "message"),
    [
        (PartitionConfig("iid"), 2000, "use fewer clients or more samples"),
        (PartitionConfig("dirichlet_per_client", min_samples=200), 10, "use fewer clients or more samples"),
        (PartitionConfig("shards", classes_per_client=5), 300, "lower classes_per_client"),
        (PartitionConfig("iid"), 0, "num_clients must be >= 1"),
    ],
)
def test_errors_say_how_to_fix(cfg: PartitionConfig, clients: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition(cfg, balanced_labels(100), clients, C, seed=0)


def test_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match="pass the workload's num_classes"):
        partition(PartitionConfig("iid"), np.array([0, 1, 5]), 1, 3, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "dirichlet"}, "name must be one of iid, dirichlet_per_class"),
        ({"alpha": 0.0}, "alpha must be > 0 (got 0.0)"),
        ({"size_alpha": -1.0}, "size_alpha must be > 0 (got -1.0)"),
        ({"classes_per_client": 0}, "classes_per_client must be >= 1 (got 0)"),
        ({"min_samples": 0}, "min_samples must be >= 1 (got 0)"),
        ({"shared_fraction": 1.0}, "shared_fraction must be in [0, 1) (got 1.0)"),
        ({"shared_per_client": 0.0}, "shared_per_client must be in (0, 1] (got 0.0)"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        PartitionConfig(**kwargs)
    assert str(e.value).startswith(message)


def test_dual_dirichlet_counts_by_hand() -> None:
    # Classes of 10 and 7 examples; sizes w = (0.5, 0.3, 0.2); class mixes q_i per row.
    w = np.array([0.5, 0.3, 0.2])
    q = np.array([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])
    # Class 0's mass sum_k w_k q_k0 = 0.3 + 0.15 + 0.02 = 0.47: shares 0.638, 0.319, 0.043 of
    # 10 -> floors 6, 3 and the last client the rest, 1. Class 1's mass 0.2 + 0.15 + 0.18 =
    # 0.53: shares 0.377, 0.283, 0.340 of 7 -> 2, 1 and the rest, 4 (not round(2.38) = 2).
    counts = P.dual_dirichlet_counts(np.array([10, 7]), w, q)
    assert counts.tolist() == [[6, 2], [3, 1], [1, 4]]


def test_dual_dirichlet_follows_the_seeds_draws() -> None:
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3, dtype=np.int64)
    cfg = PartitionConfig("dual_dirichlet", alpha=2.0, size_alpha=6.0)
    parts = partition(cfg, labels, 3, 4, seed=5)  # class 3 has no example: it takes no part
    # The partition's own stream: each class pool shuffled, then the sizes, then the mixes.
    rng = np.random.default_rng([5, P._PURPOSE])
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(4)][:3]
    w = rng.dirichlet(np.full(3, 6.0 / 3))
    q = rng.dirichlet(2.0 * np.array([10, 7, 3]) / 20, size=3)
    counts = P.dual_dirichlet_counts(np.array([10, 7, 3]), w, q)
    assert [np.bincount(labels[p], minlength=4)[:3].tolist() for p in parts] == counts.tolist()
    # Each class pool is cut in client order: client 0 takes its first examples, and so on.
    ends = np.cumsum(counts, axis=0)
    for i, p in enumerate(parts):
        expected = np.concatenate([pools[c][ends[i, c] - counts[i, c] : ends[i, c]] for c in range(3)])
        assert np.array_equal(p, np.sort(expected))
    # Every example assigned exactly once.
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_dual_dirichlet_size_alpha_and_alpha_control_the_skew() -> None:
    labels = balanced_labels(500)

    def parts_of(alpha: float, size_alpha: float) -> list[np.ndarray]:
        return partition(
            PartitionConfig("dual_dirichlet", alpha=alpha, size_alpha=size_alpha), labels, 10, C, 1
        )

    def spread(parts: list[np.ndarray]) -> float:
        return max(len(p) for p in parts) / min(len(p) for p in parts)

    # With near-i.i.d. mixes the sizes follow w: even at size_alpha 1000, far apart at 2.
    assert spread(parts_of(1000.0, 1000.0)) < 1.5 and spread(parts_of(1000.0, 2.0)) > 5
    # Class mixes: the paper's alpha 0.5 concentrates clients on few classes; 1000 is near i.i.d.
    assert class_shares(labels, parts_of(0.5, 1000.0)).max(1).mean() > 0.5
    assert class_shares(labels, parts_of(1000.0, 1000.0)).max(1).mean() < 0.2


def test_dual_dirichlet_min_samples_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = balanced_labels(50)
    cfg = PartitionConfig("dual_dirichlet", size_alpha=5.0, min_samples=20)
    assert min(len(p) for p in partition(cfg, labels, 10, C, seed=0)) >= 20
    monkeypatch.setattr(P, "MAX_DIRICHLET_DRAWS", 1)
    with pytest.raises(ValueError, match=r"dual_dirichlet with alpha=0\.5, size_alpha=5\.0 left some"):
        partition(cfg, labels, 10, C, seed=0)
