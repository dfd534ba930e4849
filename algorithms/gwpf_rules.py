"""GWPF's per-scalar rules as pure functions (algorithms/gwpf.py is the algorithm): the
EMAs, the stability ratio, freezing, the threshold's halving, the thaw tally, the merge,
the exact encodings of what crosses the network both ways (pure numpy), and the client's
local steps that feed its EMAs (``tracked_sgd``: torch, imported on the executor only).

Notation (spec seed-methods.md §3): for one scalar, ``ema`` and ``abs_ema`` are EMAs with
decay ``alpha`` of its change ``Delta`` and of ``|Delta|``; the stability ratio
``r = |ema| / abs_ema`` is near 1 for a consistent drift and near 0 for an oscillation. An
entry that never moved (``abs_ema == 0``) has no ratio (NaN, as the reference's 0/0): it
neither freezes nor votes.

Sets of entries travel as a *subset* of a universe both sides know (for example the thaw
set within the frozen set): uint32 positions within the universe, or a packed bitmap of
the universe, whichever is smaller (indices on a tie), as the codecs do
(``min(4k, ceil(n/8))`` bytes for k members of n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from algorithms.base import Task
    from engine.worker.training import ClientData
    from workloads.base import ParamLayout

Payload = dict[str, np.ndarray]
VOTE_BITS = (1, 32)


# ---- the server's and the clients' rules ---------------------------------------------


def ema_update(
    ema: np.ndarray, abs_ema: np.ndarray, change: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha*ema + (1-alpha)*change, alpha*abs_ema + (1-alpha)*|change|)``, float32,
    computed in float64 (new arrays)."""
    c = np.asarray(change, np.float64)
    new = alpha * np.asarray(ema, np.float64) + (1 - alpha) * c
    new_abs = alpha * np.asarray(abs_ema, np.float64) + (1 - alpha) * np.abs(c)
    return new.astype(np.float32), new_abs.astype(np.float32)


def stability_ratio(ema: np.ndarray, abs_ema: np.ndarray) -> np.ndarray:
    """``|ema| / abs_ema`` in float64; NaN where ``abs_ema`` is 0 (the entry never moved)."""
    e, a = np.asarray(ema, np.float64), np.asarray(abs_ema, np.float64)
    return np.divide(np.abs(e), a, out=np.full(e.shape, np.nan), where=a > 0)


def freezes(ratio: np.ndarray, threshold: float) -> np.ndarray:
    """Which active entries freeze: ``r < T_s`` (an entry without a ratio does not)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(ratio) < threshold


def votes(ratio: np.ndarray, threshold: float) -> np.ndarray:
    """A client's thaw votes on its frozen entries: ``r_f >= T_s`` (none without a ratio)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(ratio) >= threshold


def next_threshold(threshold: float, frozen_fraction: float, tighten_above: float) -> float:
    """``T_s`` halves at every sync that ends with more than ``tighten_above`` of all
    entries frozen (thawed ones count as frozen), so fewer entries freeze and fewer vote."""
    return threshold / 2 if frozen_fraction > tighten_above else threshold


def tally(thaw_count: np.ndarray, vote_sum: np.ndarray) -> np.ndarray:
    """``thaw_cnt + 1`` where some client voted, else ``floor(thaw_cnt / 2)``: an entry
    stays thawed for about log2(thaw_cnt) syncs after its votes stop (int32)."""
    t = np.asarray(thaw_count, np.int64)
    return np.where(np.asarray(vote_sum) > 0, t + 1, t // 2).astype(np.int32)


def merge(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of the clients' values of the synchronised entries (float64
    accumulation in the given order, float32 result); uniform weights are the reference's
    all-reduce divided by the number of workers."""
    total = np.zeros(np.shape(values[0]), dtype=np.float64)
    for v, w in zip(values, weights, strict=True):
        total += w * np.asarray(v, np.float64)
    return (total / float(sum(weights))).astype(np.float32)


# ---- encodings -------------------------------------------------------------------------


def subset_bytes(members: int, universe: int) -> int:
    """Bytes of a subset of ``members`` entries of a universe of ``universe``."""
    return min(4 * members, -(-universe // 8))


def encode_subset(name: str, member: np.ndarray) -> Payload:
    """``member`` (bool, over the universe) as ``{name}_idx`` (uint32 positions) or
    ``{name}_bits`` (packed bitmap), whichever is smaller."""
    m = np.asarray(member, dtype=bool)
    idx = np.flatnonzero(m)
    if 4 * idx.size <= -(-m.size // 8):
        return {f"{name}_idx": idx.astype(np.uint32)}
    return {f"{name}_bits": np.packbits(m)}


def decode_subset(payload: Mapping[str, np.ndarray], name: str, universe: int) -> np.ndarray:
    """The bool mask over a universe of ``universe`` entries that ``encode_subset`` sent."""
    out = np.zeros(universe, dtype=bool)
    if f"{name}_idx" in payload:
        out[np.asarray(payload[f"{name}_idx"], np.int64)] = True
    else:
        out[:] = np.unpackbits(payload[f"{name}_bits"], count=universe).astype(bool)
    return out


def encode_votes(v: np.ndarray, bits: int) -> np.ndarray:
    """One vote per frozen entry: packed bits (the paper's binary signal) or int32 (what
    the reference all-reduces)."""
    if bits == 1:
        return np.packbits(np.asarray(v, dtype=bool))
    return np.asarray(v, dtype=np.int32)


def decode_votes(sent: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The 0/1 votes on ``count`` frozen entries (int64), refusing a wrong size."""
    want = -(-count // 8) if bits == 1 else 4 * count
    if sent.nbytes != want:
        raise ValueError(f"{count} votes of {bits} bit(s) take {want} bytes (got {sent.nbytes})")
    if bits == 1:
        return np.unpackbits(sent, count=count).astype(np.int64)
    return (np.asarray(sent) != 0).astype(np.int64)


def down_payload(
    model: np.ndarray,
    written_at: np.ndarray,
    frozen_at: np.ndarray,
    thawed: np.ndarray,
    synced: int,
    threshold: float,
) -> Payload:
    """What the server sends a client whose last applied job started at version ``synced``
    (-1: never; it then holds nothing and gets every value and the whole frozen set).

    The client keeps the frozen set it last received (F'); the frozen set only grows. It gets:
    ``values`` of the entries written since ``synced`` (C), in index order; ``merged``: C
    within F' (C also holds every entry outside F', all synchronised since); ``frozen``: the
    entries frozen since, within the complement of F'; ``thawed``: this round's thaw set
    within the frozen set F; ``threshold``: T_s (float32)."""
    known = (frozen_at >= 0) & (frozen_at <= synced)
    changed = written_at > synced
    frozen = frozen_at >= 0
    return {
        "values": np.asarray(model[changed], dtype=np.float32),
        **encode_subset("merged", changed[known]),
        **encode_subset("frozen", frozen[~known]),
        **encode_subset("thawed", thawed[frozen]),
        "threshold": np.array([threshold], dtype=np.float32),
    }


def client_view(
    down: Mapping[str, np.ndarray], held: np.ndarray | None, known: np.ndarray | None, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A client's decoding of ``down_payload``: ``(start, frozen, thawed, T_s)``. ``held``:
    its own values (float32, None before its first job); ``known``: the frozen set it last
    received (bool). Entries not sent keep the client's own values: frozen entries are
    never rolled back to the server's."""
    known = np.zeros(size, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    changed = ~known
    changed[known] = decode_subset(down, "merged", int(known.sum()))
    values = np.asarray(down["values"], dtype=np.float32)
    if values.size != int(changed.sum()):
        raise ValueError(f"{values.size} values sent for {int(changed.sum())} entries to update")
    if held is None and not changed.all():
        raise ValueError("a client without values of its own must receive every entry")
    start = np.zeros(size, dtype=np.float32) if held is None else np.array(held, dtype=np.float32)
    start[changed] = values
    frozen = known.copy()
    frozen[~known] = decode_subset(down, "frozen", int((~known).sum()))
    thawed = np.zeros(size, dtype=bool)
    thawed[frozen] = decode_subset(down, "thawed", int(frozen.sum()))
    return start, frozen, thawed, float(down["threshold"][0])


def client_record(values: np.ndarray, frozen: np.ndarray) -> np.ndarray:
    """A client's state as one uint8 array, which ``server.client_state=disk`` can store:
    the bytes of its float32 values (its model after its last job: its own values of the
    frozen entries), then the frozen set it last received, packed."""
    own = np.ascontiguousarray(values, dtype=np.float32).view(np.uint8)
    return np.concatenate([own, np.packbits(np.asarray(frozen, dtype=bool))])


def read_client_record(record: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, frozen)`` of a ``client_record`` of a model of ``size`` entries."""
    r = np.asarray(record)
    if r.dtype != np.uint8 or r.shape != (4 * size + -(-size // 8),):
        raise ValueError(f"not a GWPF client state of {size} entries (got {r.dtype} {r.shape})")
    values = np.frombuffer(r[: 4 * size].tobytes(), dtype=np.float32)
    return values, np.unpackbits(r[4 * size :], count=size).astype(bool)


def tracked_sgd(
    model: torch.nn.Module,
    data: ClientData,
    task: Task,
    generator: torch.Generator,
    layout: ParamLayout,
    frozen: np.ndarray,
    alpha: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """``local_sgd``'s steps (the same minibatches, torch's SGD: bit for bit the same
    model), keeping after every step the EMAs of each frozen entry's change, from zero at
    the job's start. Returns (mean training loss, EMA of the change, EMA of its magnitude)."""
    import torch

    from engine.worker.training import batch_indices

    n = int(frozen.sum())
    ema, abs_ema = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    if task.steps <= 0 or len(data) == 0:
        return float("nan"), ema, abs_ema
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=task.lr, momentum=task.momentum, weight_decay=task.weight_decay)
    last = layout.flatten(model)[frozen]
    total = torch.zeros((), device=data.x.device)
    for idx in batch_indices(len(data), task.steps, task.batch_size, generator):
        opt.zero_grad(set_to_none=True)
        x = data.x[idx] if data.augment is None else data.augment(data.x[idx], generator)
        loss = data.loss_fn(model(x), data.y[idx])
        loss.backward()
        opt.step()
        total += loss.detach()
        if n:
            now = layout.flatten(model)[frozen]
            ema, abs_ema = ema_update(ema, abs_ema, now.astype(np.float64) - last, alpha)
            last = now
    opt.zero_grad(set_to_none=True)  # the executor's cached model keeps no gradient memory
    return float(total) / task.steps, ema, abs_ema
