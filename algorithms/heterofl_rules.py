"""HeteroFL's index math and aggregation (algorithms/heterofl.py), pure numpy.

A model travels as one flat float32 vector: its tensors in ``ParamLayout`` order, each
flattened row-major. A sub-model of width rate ``r`` has the same tensors, each of the shape
of the *leading block* of the full one's (workloads/models.py ``WidthScalable``: the first
``ceil(r * d)`` units of every hidden dimension ``d``, input and classifier dimensions whole).
``leading_block_indices`` gives the flat positions of those blocks in the full vector, in the
sub-model's own flat order, so that ``full[index]`` *is* the sub-model's flat vector and
``full[index] = sub`` writes it back.

``aggregate`` is the reference's ``combine`` on pseudo-gradients: every entry is averaged
over the clients whose sub-model covers it, and an entry no client covered keeps its value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from algorithms.aggregation import descend

Shape = tuple[int, ...]


@dataclass(frozen=True)
class SubModel:
    """A sub-model as the server knows it: where its entries lie in the flat vector (in its
    own flat order) and its FLOPs as a share of the full model's."""

    index: np.ndarray
    flops_fraction: float


def leading_block_indices(shapes: Sequence[Shape], sub_shapes: Sequence[Shape]) -> np.ndarray:
    """Flat indices (int64) into a vector of tensors of ``shapes`` of the leading blocks of
    ``sub_shapes``, tensor by tensor, each block row-major.

    E.g. tensors of shapes ((3, 2), (3,)) and the blocks ((2, 2), (2,)): the first tensor
    occupies entries 0..5 (rows [0, 1], [2, 3], [4, 5]) and its leading 2 x 2 block is
    entries 0, 1, 2, 3; the second occupies 6..8 and its leading block is 6, 7."""
    if len(shapes) != len(sub_shapes):
        raise ValueError(f"the sub-model has {len(sub_shapes)} tensors, the model {len(shapes)}")
    parts: list[np.ndarray] = []
    offset = 0
    for shape, sub in zip(shapes, sub_shapes, strict=True):
        if len(shape) != len(sub) or any(not 0 <= k <= n for k, n in zip(sub, shape, strict=True)):
            raise ValueError(f"a sub-model tensor of shape {sub} is no leading block of one of shape {shape}")
        if shape:
            block = np.ix_(*(np.arange(k) for k in sub))
            parts.append(offset + np.ravel_multi_index(block, shape).reshape(-1))
        else:  # a scalar (e.g. a counter buffer) is its own block
            parts.append(np.array([offset]))
        offset += math.prod(shape)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def coverage(index: np.ndarray, payload: Mapping[str, np.ndarray], shapes: Sequence[Shape]) -> np.ndarray:
    """The entries a client trained, as a bool mask over the vector of tensors of ``shapes``:
    its sub-model's ``index``, less the classifier rows of the classes it does not hold when
    its upload flags them (``labels``: one bool per class, the masked classifier)."""
    if payload["delta"].size != index.size:
        raise ValueError(f"an upload of {payload['delta'].size} entries for a sub-model of {index.size}")
    cover = np.zeros(sum(math.prod(s) for s in shapes), dtype=bool)
    cover[index] = True
    held = payload.get("labels")
    if held is not None:
        cover &= ~class_entries(shapes, ~np.asarray(held, dtype=bool))
    return cover


def expand(values: np.ndarray, subs: Sequence[SubModel], size: int) -> np.ndarray:
    """A sub-model's uploaded ``values`` in place in a float32 vector of ``size``, zeros
    elsewhere. Their count names the sub-model: sub-model sizes grow strictly with the
    widths, so two rates' sub-models of one size are the same sub-model."""
    if values.size == size:
        return values
    index = next((s.index for s in subs if s.index.size == values.size), None)
    if index is None:
        raise ValueError(f"an upload of {values.size} entries matches no rate's sub-model")
    full = np.zeros(size, dtype=np.float32)
    full[index] = values
    return full


def classifier(shapes: Sequence[Shape]) -> tuple[int, Shape, int | None]:
    """Where the output layer lies in the flat vector: (offset of its weight, the weight's
    shape (classes, ...), offset of its bias or None). The weight is the last tensor of two or
    more dimensions; its bias, the 1-D tensor of one entry per class right after it (the
    reference's last ``weight`` and ``bias``)."""
    offsets = np.concatenate([[0], np.cumsum([math.prod(s) for s in shapes])]).astype(int)
    last = max((i for i, s in enumerate(shapes) if len(s) >= 2), default=None)
    if last is None:
        raise ValueError("the model has no weight matrix to be its classifier")
    weight = shapes[last]
    has_bias = last + 1 < len(shapes) and shapes[last + 1] == (weight[0],)
    return int(offsets[last]), weight, int(offsets[last + 1]) if has_bias else None


def class_entries(shapes: Sequence[Shape], classes: np.ndarray) -> np.ndarray:
    """A boolean mask over the flat vector: the classifier's rows (weight row and bias
    entry) of the classes where ``classes`` (one bool per class) is true."""
    size = sum(math.prod(s) for s in shapes)
    at, weight, bias = classifier(shapes)
    classes = np.asarray(classes, dtype=bool)
    if classes.shape != (weight[0],):
        raise ValueError(f"need one flag per class ({weight[0]}), got shape {classes.shape}")
    mask = np.zeros(size, dtype=bool)
    row = math.prod(weight[1:])
    mask[at : at + weight[0] * row] = np.repeat(classes, row)
    if bias is not None:
        mask[bias : bias + weight[0]] = classes
    return mask


def aggregate(
    model: np.ndarray,
    deltas: Sequence[np.ndarray],
    covers: Sequence[np.ndarray],
    weights: Sequence[float],
    server_lr: float = 1.0,
) -> np.ndarray:
    """``x - server_lr * D`` with, entry by entry, ``D_e = sum_i w_i delta_i,e / sum_i w_i``
    over the clients ``i`` whose ``covers[i]`` (a bool mask over the vector) holds ``e``, and
    ``D_e = 0`` where none does: the entry keeps its value.

    Accumulated in float64 in the given order with per-entry coefficients ``w_i / sum w``,
    then rounded once to float32: when every client covers everything this is
    ``aggregation.weighted_average`` followed by ``descend``, FedAvg's step, bit for bit."""
    if not (len(deltas) == len(covers) == len(weights)) or not deltas:
        raise ValueError(f"need as many deltas, covers and weights, at least one (got {len(deltas)})")
    if any(not w >= 0 for w in weights):
        raise ValueError(f"weights must be >= 0 (got {list(weights)})")
    total = np.zeros(np.shape(model), dtype=np.float64)
    for cover, w in zip(covers, weights, strict=True):
        total += np.where(cover, float(w), 0.0)
    share = np.where(total > 0, total, 1.0)  # only read where some client covers the entry
    acc = np.zeros(np.shape(model), dtype=np.float64)
    for delta, cover, w in zip(deltas, covers, weights, strict=True):
        acc += np.where(cover, (float(w) / share) * np.asarray(delta, dtype=np.float64), 0.0)
    return descend(model, acc.astype(np.float32), server_lr)


def check_rates(rates: Sequence[float], proportions: Sequence[float], drawn: bool) -> None:
    """Validate Params' ``rates`` and ``proportions`` (``drawn``: rate_mode random)."""
    if not rates or not all(0 < r <= 1 for r in rates):
        raise ValueError(f"rates must be width rates in (0, 1], at least one (got {list(rates)})")
    p = proportions
    if p and not drawn:
        raise ValueError("proportions are rate_mode=random's chances: set rate_mode=random or drop them")
    if p and (len(p) != len(rates) or not all(x >= 0 for x in p) or not sum(p) > 0):
        raise ValueError(f"proportions must give each rate a chance >= 0, not all 0 (got {list(p)})")


def tier_rates(speed_factor: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """Each client's rate from its device class: clients with the k-th smallest speed factor
    (the k-th fastest tier; a factor multiplies the seconds per example) get ``rates[k]``.
    A single rate is everyone's, whatever the speeds."""
    tiers, which = np.unique(np.asarray(speed_factor, dtype=np.float64), return_inverse=True)
    if len(rates) == 1:
        which = np.zeros_like(which)
    elif len(tiers) > len(rates):
        raise ValueError(
            f"rate_mode=tier gives the k-th fastest speed tier rates[k], but the clients have "
            f"{len(tiers)} distinct speed factors and rates has {len(rates)} entries: use "
            f"clients.speed.family=tiers with at most {len(rates)} tier_factors, or rate_mode=random"
        )
    return np.asarray(rates, dtype=np.float64)[which]


def draw_rates(
    rng: np.random.Generator, count: int, rates: Sequence[float], proportions: Sequence[float]
) -> np.ndarray:
    """``count`` rates drawn independently with probabilities ``proportions`` (equal if
    empty): the reference's ``make_model_rate`` in its dynamic mode."""
    p = np.asarray(proportions if proportions else [1.0] * len(rates), dtype=np.float64)
    return np.asarray(rates, dtype=np.float64)[rng.choice(len(rates), size=count, p=p / p.sum())]
