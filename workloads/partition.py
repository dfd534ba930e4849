"""Splitting a training set across clients: i.i.d. and the standard non-i.i.d. schemes.

- ``iid``: shuffle, then near-equal parts.
- ``dirichlet_per_class``: for every class c, proportions p_c ~ Dir(alpha * 1_N) across
  the N clients; client sizes differ (GWPF's partition, alpha = 1 there).
- ``dirichlet_per_client``: every client gets floor(n / N) samples with its own class mix
  q_i ~ Dir(alpha * 1_C), drawn without replacement from the class pools (Hsu et al. 2019,
  arXiv 1909.06335; FSL-SAGE's ``noniid_dirichlet``, alpha = 10 there).
- ``shards``: sort by label, cut into classes_per_client * N shards, classes_per_client
  random shards per client (McMahan et al.'s pathological non-i.i.d.; 1 gives 1-class).
- ``quantity_skew``: client sizes q ~ Dir(alpha * 1_N) of the data, labels i.i.d. (Li et al.
  2021, NIID-Bench, arXiv 2102.02079); small alpha gives a few big clients and many small ones.
- ``dual_dirichlet``: client sizes w ~ Dir(size_alpha / N * 1_N) and class mixes
  q_i ~ Dir(alpha * p) with p the global class frequencies; client i gets the share
  w_i q_ij / sum_k w_k q_kj of class j, floored, and the last client the rest of every
  class (APPFL's ``dirichlet_noniid_partition``, the FedCompass paper's "dual Dirichlet",
  size_alpha 8 and alpha 0.5 there; arXiv 2309.14675).
- ``natural``: the workload's own per-client split (e.g. Synthetic(alpha, beta)).

Data sharing (Zhao et al. 2018, arXiv 1806.00582) goes on top of any scheme: with
``shared_fraction`` > 0, a class-balanced set G of that fraction of the training set is set
aside, the scheme splits the rest, and every client also gets its own random
``shared_per_client`` portion of G (the paper's alpha; shared samples appear in several
clients). The paper's other half, warming the global model up on G, is the server's business.

Every scheme is deterministic in ``seed`` and returns sorted int64 index arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.core.registry import Registry, function

PARTITIONS = (
    "iid",
    "dirichlet_per_class",
    "dirichlet_per_client",
    "shards",
    "quantity_skew",
    "dual_dirichlet",
    "natural",
)

# A partition plug-in is ``scheme(labels, num_clients, num_classes, rng, cfg)`` returning one
# array of positions into ``labels`` per client (engine/core/registry.py names it).
PARTITION_PLUGINS: Registry[Callable[..., list[np.ndarray]]] = Registry(
    "partition", {}, function("partition")
)

# Fixed purpose constant for partition draws (zlib.crc32(b"workload.partition")), so
# partitioning never reuses the stream that generated the data from the same seed.
_PURPOSE = 0xCB43A346

# dirichlet_per_class, quantity_skew and dual_dirichlet redraw until every client has min_samples;
# past this many draws the setting is hopeless in practice (alpha far too small for the client count).
MAX_DIRICHLET_DRAWS = 1000


@dataclass(frozen=True)
class PartitionConfig:
    """alpha: Dirichlet concentration (small = skewed); size_alpha: dual_dirichlet's
    concentration of the client sizes (small = unequal); classes_per_client: for shards;
    shared_fraction, shared_per_client: Zhao et al.'s data sharing (|G| / n and the paper's
    alpha, the portion of G each client gets); 0 turns it off."""

    name: str = "iid"
    alpha: float = 0.5
    size_alpha: float = 8.0
    classes_per_client: int = 2
    min_samples: int = 1
    shared_fraction: float = 0.0
    shared_per_client: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in PARTITIONS and (problem := PARTITION_PLUGINS.problem(self.name)):
            if ":" in self.name:
                raise ValueError(f"name: {problem}")
            raise ValueError(
                f"name must be one of {', '.join(PARTITIONS)}, or a plug-in (package.module:function, "
                f"./file.py:function or a fedray.partitions entry point) (got {self.name!r})"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 (got {self.alpha})")
        if not self.size_alpha > 0:
            raise ValueError(f"size_alpha must be > 0 (got {self.size_alpha})")
        if self.classes_per_client < 1:
            raise ValueError(f"classes_per_client must be >= 1 (got {self.classes_per_client})")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1 (got {self.min_samples})")
        if not 0.0 <= self.shared_fraction < 1.0:
            raise ValueError(f"shared_fraction must be in [0, 1) (got {self.shared_fraction})")
        if not 0.0 < self.shared_per_client <= 1.0:
            raise ValueError(f"shared_per_client must be in (0, 1] (got {self.shared_per_client})")


def partition(
    cfg: PartitionConfig,
    labels: np.ndarray,
    num_clients: int,
    num_classes: int,
    seed: int,
    natural: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Split the indices of ``labels`` into ``num_clients`` sorted int64 index arrays."""
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1 (got {num_clients}).")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) but span [{labels.min()}, {labels.max()}]; "
            "pass the workload's num_classes."
        )
    rng = np.random.default_rng([int(seed), _PURPOSE])
    # Without sharing no draw comes first, so plain schemes split exactly as they always did.
    shared = _shared_set(labels, num_classes, cfg.shared_fraction, rng) if cfg.shared_fraction else None
    private = np.arange(n) if shared is None else np.setdiff1d(np.arange(n), shared)
    if cfg.name == "natural":
        parts = _natural(natural, num_clients)
        if shared is not None:
            parts = [p[~np.isin(p, shared)] for p in parts]
    else:
        if len(private) < num_clients * cfg.min_samples:
            raise ValueError(
                f"partition {cfg.name!r} cannot give {num_clients} clients {cfg.min_samples} "
                f"sample(s) each from {len(private)} samples; use fewer clients or more samples."
            )
        parts = [private[p] for p in _scheme(cfg, labels[private], num_clients, num_classes, rng)]
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    smallest = min(len(p) for p in parts)
    if smallest < cfg.min_samples:
        raise ValueError(
            f"partition {cfg.name!r} left a client with {smallest} sample(s), fewer than "
            f"min_samples={cfg.min_samples}; use fewer clients, more samples or another partition."
        )
    if shared is not None:
        m = max(1, round(cfg.shared_per_client * len(shared)))
        parts = [np.sort(np.concatenate([p, rng.choice(shared, m, replace=False)])) for p in parts]
    return parts


def _scheme(
    cfg: PartitionConfig, labels: np.ndarray, num_clients: int, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The (non-natural) scheme's split of positions 0..len(labels)-1."""
    if cfg.name == "iid":
        return np.array_split(rng.permutation(len(labels)), num_clients)
    if cfg.name == "dirichlet_per_class":
        return _dirichlet_per_class(labels, num_clients, num_classes, cfg, rng)
    if cfg.name == "dirichlet_per_client":
        return _dirichlet_per_client(labels, num_clients, num_classes, cfg.alpha, rng)
    if cfg.name == "quantity_skew":
        return _quantity_skew(len(labels), num_clients, cfg, rng)
    if cfg.name == "shards":
        return _shards(labels, num_clients, cfg.classes_per_client, rng)
    if cfg.name == "dual_dirichlet":
        return _dual_dirichlet(labels, num_clients, num_classes, cfg, rng)
    parts = PARTITION_PLUGINS[cfg.name](labels, num_clients, num_classes, rng, cfg)
    if len(parts) != num_clients:
        raise ValueError(
            f"partition plug-in {cfg.name!r} returned {len(parts)} shards for {num_clients} clients"
        )
    return [np.asarray(p, dtype=np.int64) for p in parts]


def _shared_set(
    labels: np.ndarray, num_classes: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Zhao et al.'s G: ``round(fraction * n)`` samples, as class-balanced as the data allows.

    Classes in ascending size each take an equal share of what is still wanted, or all they
    have; the larger classes then make up for the small ones (water-filling).
    """
    size = round(fraction * len(labels))
    if size < 1:
        raise ValueError(
            f"shared_fraction={fraction} of {len(labels)} samples is no sample; raise it or set it to 0"
        )
    pools = _class_pools(labels, num_classes, rng)
    counts = np.array([len(p) for p in pools])
    take = np.zeros(num_classes, dtype=np.int64)
    wanted = size
    for i, c in enumerate(np.argsort(counts, kind="stable")):
        take[c] = min(counts[c], wanted // (num_classes - i))
        wanted -= take[c]
    return np.sort(np.concatenate([pools[c][: take[c]] for c in range(num_classes)]))


def _natural(natural: list[np.ndarray] | None, num_clients: int) -> list[np.ndarray]:
    if natural is None:
        raise ValueError(
            "partition 'natural' needs a workload that comes partitioned (e.g. synthetic); "
            f"choose one of {', '.join(p for p in PARTITIONS if p != 'natural')} for this workload."
        )
    if len(natural) != num_clients:
        raise ValueError(
            f"the workload's natural partition has {len(natural)} clients but num_clients is "
            f"{num_clients}; set num_clients to {len(natural)} or choose another partition."
        )
    return list(natural)


def _class_pools(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each class's indices in random order."""
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def _dirichlet_per_class(
    labels: np.ndarray,
    num_clients: int,
    num_classes: int,
    cfg: PartitionConfig,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    pools = _class_pools(labels, num_classes, rng)
    owner = np.empty(len(labels), dtype=np.int64)  # client of every sample
    for _ in range(MAX_DIRICHLET_DRAWS):
        for pool in pools:
            p_c = rng.dirichlet(np.full(num_clients, cfg.alpha))
            # Cut the shuffled class pool at the cumulative proportions: position j goes
            # to the client whose slice [cuts[i-1], cuts[i]) contains it.
            cuts = (np.cumsum(p_c)[:-1] * len(pool)).astype(np.int64)
            owner[pool] = np.searchsorted(cuts, np.arange(len(pool)), side="right")
        sizes = np.bincount(owner, minlength=num_clients)
        # GWPF's loader cuts the same way but never checks sizes, so clients can come out
        # empty. Redrawing (as FedML's loader does) keeps the result a Dirichlet draw,
        # conditioned on the minimum size, where patching small clients up would not.
        if sizes.min() >= cfg.min_samples:
            return np.split(np.argsort(owner, kind="stable"), np.cumsum(sizes)[:-1])
    raise ValueError(
        f"dirichlet_per_class with alpha={cfg.alpha} left some of {num_clients} clients with "
        f"fewer than {cfg.min_samples} sample(s) in {MAX_DIRICHLET_DRAWS} draws; use a larger "
        "alpha or fewer clients."
    )


def _quantity_skew(
    n: int, num_clients: int, cfg: PartitionConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    order = rng.permutation(n)  # labels i.i.d.: every client is a random subset
    for _ in range(MAX_DIRICHLET_DRAWS):
        q = rng.dirichlet(np.full(num_clients, cfg.alpha))
        cuts = (np.cumsum(q)[:-1] * n).astype(np.int64)
        # Redrawn until every client has min_samples, as in dirichlet_per_class.
        if np.diff(np.concatenate([[0], cuts, [n]])).min() >= cfg.min_samples:
            return np.split(order, cuts)
    raise ValueError(
        f"quantity_skew with alpha={cfg.alpha} left some of {num_clients} clients with fewer than "
        f"{cfg.min_samples} sample(s) in {MAX_DIRICHLET_DRAWS} draws; use a larger alpha or fewer clients."
    )


def dual_dirichlet_counts(class_sizes: np.ndarray, w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(clients, classes) sample counts of the dual Dirichlet partition: client i's share
    of class j is ``w_i q_ij / sum_k w_k q_kj``; every client but the last gets the floor of
    its share of ``class_sizes[j]``, the last client what is left (APPFL's rounding, which
    hands the last client up to N - 1 extra samples per class). Every class's mass
    ``sum_k w_k q_kj`` must be > 0."""
    share = w[:, None] * q / (w @ q)[None, :]
    counts = np.floor(share * np.asarray(class_sizes)[None, :]).astype(np.int64)
    counts[-1] = class_sizes - counts[:-1].sum(axis=0)
    return counts


def _dual_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    num_classes: int,
    cfg: PartitionConfig,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    # Classes absent from the data have no prior mass and take no part (Dir(0) is undefined).
    pools = [p for p in _class_pools(labels, num_classes, rng) if len(p)]
    sizes_j = np.array([len(p) for p in pools], dtype=np.int64)
    prior = sizes_j / sizes_j.sum()
    for _ in range(MAX_DIRICHLET_DRAWS):
        w = rng.dirichlet(np.full(num_clients, cfg.size_alpha / num_clients))  # client sizes
        q = rng.dirichlet(cfg.alpha * prior, size=num_clients)  # each client's class mix
        # A class nobody drew any mass for (possible at tiny alpha) cannot be shared out:
        # redraw, as for clients below min_samples, so the result stays a Dirichlet draw.
        if (w @ q).min() <= 0:
            continue
        counts = dual_dirichlet_counts(sizes_j, w, q)
        if counts.sum(axis=1).min() >= cfg.min_samples:
            ends = np.cumsum(counts, axis=0)  # each class pool is cut in client order
            starts = ends - counts
            return [
                np.concatenate([pool[a:b] for pool, a, b in zip(pools, starts[i], ends[i], strict=True)])
                for i in range(num_clients)
            ]
    raise ValueError(
        f"dual_dirichlet with alpha={cfg.alpha}, size_alpha={cfg.size_alpha} left some of {num_clients} "
        f"clients with fewer than {cfg.min_samples} sample(s) in {MAX_DIRICHLET_DRAWS} draws; use a larger "
        "size_alpha or fewer clients."
    )


def _dirichlet_per_client(
    labels: np.ndarray,
    num_clients: int,
    num_classes: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    pools = _class_pools(labels, num_classes, rng)
    left = np.array([len(p) for p in pools], dtype=np.int64)  # unused samples per class
    taken = np.zeros(num_classes, dtype=np.int64)  # next unused position in each pool
    size = len(labels) // num_clients  # equal sizes; the n mod N remainder goes unused
    parts = []
    for _ in range(num_clients):
        q_i = rng.dirichlet(np.full(num_classes, alpha))
        counts = np.zeros(num_classes, dtype=np.int64)
        need = size
        while need > 0:
            # Drawing all remaining samples at once, then redrawing the excess of exhausted
            # classes from q_i renormalised over classes that still have samples, has the
            # same law as drawing one sample at a time that way, at numpy speed.
            avail = left - counts
            p = np.where(avail > 0, q_i, 0.0)
            if p.sum() == 0:  # q_i has (numerically) no mass on the classes left
                p = (avail > 0).astype(np.float64)
            draw = np.minimum(rng.multinomial(need, p / p.sum()), avail)
            counts += draw
            need -= int(draw.sum())
        parts.append(np.concatenate([pools[c][taken[c] : taken[c] + counts[c]] for c in range(num_classes)]))
        taken += counts
        left -= counts
    return parts


def _shards(
    labels: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    num_shards = classes_per_client * num_clients
    if len(labels) < num_shards:
        raise ValueError(
            f"shards needs at least classes_per_client * num_clients = {num_shards} samples "
            f"(got {len(labels)}); lower classes_per_client or use fewer clients."
        )
    # Sort by label with a random order inside each class, then cut into contiguous shards.
    by_label = rng.permutation(len(labels))
    by_label = by_label[np.argsort(labels[by_label], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owner = rng.permutation(num_shards).reshape(num_clients, classes_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in owner]
