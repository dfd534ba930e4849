"""Synthetic(alpha, beta): the FedProx / LEAF synthetic federated data set (arXiv 1812.06127).

Each client k has its own multinomial-logistic model and its own feature distribution:

    u_k ~ N(0, alpha)             B_k ~ N(0, beta)
    W_k ~ N(u_k, 1)  (classes x dim),   b_k ~ N(u_k, 1)
    v_k ~ N(B_k, 1)  per dimension
    x   ~ N(v_k, Sigma),  Sigma diagonal with Sigma_jj = j^(-1.2)
    y   = argmax(softmax(W_k x + b_k))

``alpha`` controls how much the local *models* differ, ``beta`` how much the local *data*
differ; Synthetic(0, 0) is the paper's mildest heterogeneous setting. As in the FedProx
reference code (``generate_niid.py``), the second argument of N(., .) is numpy's ``scale``
(a standard deviation), and client sizes follow the power law int(lognormal(4, 2)) + 50.

Deviations, both documented in ``Params``: the size tail is capped at ``max_samples``
(LEAF's is unbounded: one client can hold 10^5 samples, which at 10k clients makes memory
depend on luck), and each client's samples are split train/test locally, the test parts
pooled into the global test set.

Client k's data comes from a generator keyed by ``(seed, purpose, k)``, so it does not
change with ``num_clients``: growing the federation only adds clients. The same key lets a
run make each client's shard when a job needs it (``on_demand``): a population of a
million holds no data but the test set, and each job regenerates its client's examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from workloads.base import Dataset, DatasetMeta, Workload

if TYPE_CHECKING:
    import torch

# Fixed purpose constant for this workload's random streams (zlib.crc32(b"workload.synthetic")),
# so the data never shares a stream with other seeded draws of the same experiment seed.
_PURPOSE = 0x143EB1F5

# LEAF's size power law: int(lognormal(mean=4, sigma=2)) + 50 samples per client.
_SIZE_LOG_MEAN, _SIZE_LOG_SIGMA, _SIZE_MIN = 4.0, 2.0, 50


@dataclass(frozen=True)
class SyntheticParams:
    """alpha: model heterogeneity; beta: data heterogeneity (both std devs, >= 0).

    max_samples caps LEAF's unbounded lognormal size tail (a deviation that bounds memory
    at 10k clients); test_fraction of each client's samples goes to the pooled test set.
    samples_per_client > 0 gives every client exactly that many samples instead of the
    power law (640 with test_fraction 0.2 is 512 training examples each), the data of each
    client otherwise unchanged. hidden: units of ReLU hidden layers between the features and
    the classes (an MLP, e.g. for HeteroFL's width-scaled sub-models); () keeps FedProx's
    logistic regression. test_clients: the global test set pools the test parts of the
    first test_clients clients (all of them when there are fewer). on_demand: make each
    client's training examples from its id when a job needs them, instead of holding the
    whole population's (the same examples; memory independent of the population, at the
    cost of regenerating a shard per job).
    """

    alpha: float = 1.0
    beta: float = 1.0
    dim: int = 60
    num_classes: int = 10
    max_samples: int = 1000
    test_fraction: float = 0.2
    samples_per_client: int = 0  # > 0: equal sizes instead of the power law
    hidden: tuple[int, ...] = ()  # ReLU hidden layers (an MLP); () is logistic regression
    test_clients: int = 10_000  # the test set pools these first clients' test parts
    on_demand: bool = False  # make shards per job from the client id (engine/worker/data.py)

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0 (got {self.alpha})")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0 (got {self.beta})")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1 (got {self.dim})")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (got {self.num_classes})")
        # Two samples per client is the least that leaves one for training and one for test.
        if self.max_samples < 2:
            raise ValueError(f"max_samples must be >= 2 (got {self.max_samples})")
        if self.samples_per_client < 0 or self.samples_per_client == 1:
            n = self.samples_per_client
            raise ValueError(f"samples_per_client must be 0 (power law) or >= 2 (got {n})")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1) (got {self.test_fraction})")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must all be >= 1 (got {list(self.hidden)})")
        if self.test_clients < 1:
            raise ValueError(f"test_clients must be >= 1 (got {self.test_clients})")


class Synthetic(Workload):
    name: ClassVar[str] = "synthetic"
    Params: ClassVar[type] = SyntheticParams
    description: ClassVar[str] = (
        "Synthetic(alpha, beta) of FedProx/LEAF: per-client logistic-regression data with "
        "model (alpha) and feature (beta) heterogeneity; naturally partitioned"
    )
    default_partition: ClassVar[str] = "natural"
    params: SyntheticParams

    def __init__(self, params: SyntheticParams | None = None) -> None:
        super().__init__(params if params is not None else SyntheticParams())

    def client_data(self, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """All samples of client ``k`` (features float32, labels int64), before the split."""
        p = self.params
        rng = np.random.default_rng([int(seed), _PURPOSE, int(k)])
        n = min(int(rng.lognormal(_SIZE_LOG_MEAN, _SIZE_LOG_SIGMA)) + _SIZE_MIN, p.max_samples)
        n = p.samples_per_client or n  # drawn all the same, so that the draws below do not move
        u_k = rng.normal(0.0, p.alpha)
        big_b_k = rng.normal(0.0, p.beta)
        W_k = rng.normal(u_k, 1.0, (p.num_classes, p.dim))
        b_k = rng.normal(u_k, 1.0, p.num_classes)
        v_k = rng.normal(big_b_k, 1.0, p.dim)
        # Sigma is diagonal, so x = v_k + sqrt(diag(Sigma)) * z draws N(v_k, Sigma) exactly
        # without a Cholesky factor per client.
        sigma_sqrt = np.arange(1, p.dim + 1, dtype=np.float64) ** -0.6
        x = v_k + rng.standard_normal((n, p.dim)) * sigma_sqrt
        # softmax is monotone, so argmax of the logits is argmax of softmax(W_k x + b_k).
        # einsum, not @: tiny per-client products cost more in BLAS thread start-up than math.
        y = np.argmax(np.einsum("nd,cd->nc", x, W_k) + b_k, axis=1)
        return x.astype(np.float32), y.astype(np.int64)

    def _train_count(self, n: int) -> int:
        """Training examples of a client with ``n``; the rest are its test part. Samples are
        i.i.d. within a client, so a prefix split is a random split."""
        n_test = min(max(1, round(n * self.params.test_fraction)), n - 1)
        return n - n_test

    def client_shard(self, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``k``'s training examples, made from its id alone."""
        x, y = self.client_data(seed, k)
        n = self._train_count(len(y))
        return x[:n], y[:n]

    def shard_sizes(self, num_clients: int, seed: int) -> np.ndarray:
        """Every client's number of training examples, without making their data (the
        power law draws each client's size from its key: about 15 us a client)."""
        p = self.params
        if p.samples_per_client:
            return np.full(num_clients, self._train_count(p.samples_per_client), dtype=np.int64)
        sizes = np.empty(num_clients, dtype=np.int64)
        for k in range(num_clients):
            rng = np.random.default_rng([int(seed), _PURPOSE, k])  # the first draw of client_data
            n = int(rng.lognormal(_SIZE_LOG_MEAN, _SIZE_LOG_SIGMA)) + _SIZE_MIN
            sizes[k] = self._train_count(min(n, p.max_samples))
        return sizes

    def held_out(self, num_clients: int, seed: int) -> Dataset:
        """The dataset without training examples: the test set alone (``on_demand`` runs)."""
        x_te, y_te = [], []
        for k in range(min(num_clients, self.params.test_clients)):
            x, y = self.client_data(seed, k)
            n = self._train_count(len(y))
            x_te.append(x[n:])
            y_te.append(y[n:])
        return Dataset(
            x_train=np.zeros((0, self.params.dim), dtype=np.float32),
            y_train=np.zeros(0, dtype=np.int64),
            x_test=np.concatenate(x_te),
            y_test=np.concatenate(y_te),
            num_classes=self.params.num_classes,
        )

    def load(self, num_clients: int, seed: int) -> Dataset:
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1 (got {num_clients})")
        x_tr: list[np.ndarray] = []
        y_tr: list[np.ndarray] = []
        x_te: list[np.ndarray] = []
        y_te: list[np.ndarray] = []
        natural: list[np.ndarray] = []
        offset = 0
        for k in range(num_clients):
            x, y = self.client_data(seed, k)
            n_train = self._train_count(len(y))
            x_tr.append(x[:n_train])
            y_tr.append(y[:n_train])
            if k < self.params.test_clients:
                x_te.append(x[n_train:])
                y_te.append(y[n_train:])
            natural.append(np.arange(offset, offset + n_train, dtype=np.int64))
            offset += n_train
        return Dataset(
            x_train=np.concatenate(x_tr),
            y_train=np.concatenate(y_tr),
            x_test=np.concatenate(x_te),
            y_test=np.concatenate(y_te),
            num_classes=self.params.num_classes,
            natural_partition=natural,
        )

    def model(self, dataset_meta: DatasetMeta) -> torch.nn.Module:
        import torch

        inputs = int(np.prod(dataset_meta.input_shape))
        if self.params.hidden:
            from workloads.models import MLP

            return MLP(inputs, self.params.hidden, dataset_meta.num_classes)
        # Multinomial logistic regression, the model FedProx trains on this data.
        return torch.nn.Linear(inputs, dataset_meta.num_classes)
