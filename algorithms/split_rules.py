"""What split learning moves and computes, as pure functions of the cut and the job.

A split model is one flat vector ``[client part | server part]`` (the client's layers are a
prefix of the model's parameters: workloads/split.py). ``CutSizes`` is what the engine
measures from the model once (``bind_cut``): entries on each side, activation bytes per
example at the cut, the client's share of the forward FLOPs and the auxiliary head's.

Every byte below is a float32 entry (4 bytes) or an int64 label (8 bytes): activations
travel with their labels, since the server computes the loss. A job's minibatches are
those of ``engine/worker/training.py`` ``batch_indices`` (epochs of ``ceil(n / B)`` steps,
the last one short), so the rows of every step are known at dispatch, and so are the bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from algorithms.job import JobCost

ENTRY_BYTES = 4  # float32 parameters, activations and their gradients
LABEL_BYTES = 8  # int64 labels, sent with the activations


@dataclass(frozen=True)
class CutSizes:
    client_entries: int  # the client part: the first entries of the flat vector
    model_entries: int
    activation_shape: tuple[int, ...]  # per example, at the cut
    client_fraction: float  # the client part's share of the model's forward FLOPs
    num_classes: int
    aux_entries: int = 0  # the auxiliary head's parameters (CSE-FSL, FSL-SAGE)
    aux_fraction: float = 0.0  # its forward FLOPs over the whole model's

    def __post_init__(self) -> None:
        if not 0 < self.client_entries < self.model_entries:
            raise ValueError(
                f"a cut must leave parameters on both sides (client {self.client_entries} of "
                f"{self.model_entries} entries): choose another workload.cut"
            )

    @property
    def activation_bytes(self) -> int:
        """Bytes of one example's activations (and of their gradient) at the cut."""
        return ENTRY_BYTES * math.prod(self.activation_shape)

    @property
    def client_bytes(self) -> int:
        return ENTRY_BYTES * self.client_entries

    @property
    def aux_bytes(self) -> int:
        return ENTRY_BYTES * self.aux_entries

    @property
    def server_fraction(self) -> float:
        return 1.0 - self.client_fraction


def step_rows(n: int, steps: int, batch_size: int) -> np.ndarray:
    """Examples in each of a job's ``steps`` minibatches on a shard of ``n`` (as
    ``batch_indices``: full batch when ``batch_size`` is 0 or >= n)."""
    if batch_size == 0 or batch_size >= n:
        return np.full(steps, n, dtype=np.int64)
    epoch = np.full(math.ceil(n / batch_size), batch_size, dtype=np.int64)
    epoch[-1] = n - batch_size * (len(epoch) - 1)
    return np.resize(epoch, steps)


def logged_steps(steps: int, every: int) -> np.ndarray:
    """The steps whose activations go to the server: every ``every``-th, the first included."""
    return np.arange(0, steps, every)


def _spread(total: int, parts: int) -> tuple[int, int]:
    """``total`` bytes over ``parts`` exchanges: (bytes per exchange, remainder). A job's
    exchanges are charged the average; the remainder (short last batches make the total no
    multiple) goes with the final transfer, so the total is exact."""
    return total // parts, total - parts * (total // parts)


def relay_cost(cut: CutSizes, rows: np.ndarray, server_seconds_per_sample: float) -> JobCost:
    """SplitFed (v1 and v2): the client part down and up; every step a blocking round trip
    (activations and labels up, their gradient down) with the server's part of the step in
    between; the client computes only its part."""
    steps, examples = len(rows), int(rows.sum())
    up, up_rest = _spread(examples * (cut.activation_bytes + LABEL_BYTES), steps)
    down, down_rest = _spread(examples * cut.activation_bytes, steps)
    return JobCost(
        bytes_down=cut.client_bytes + down_rest,
        bytes_up=cut.client_bytes + up_rest,
        compute_fraction=cut.client_fraction,
        round_trips=steps,
        round_trip_bytes_up=up,
        round_trip_bytes_down=down,
        server_seconds=examples * cut.server_fraction * server_seconds_per_sample,
    )


def local_loss_cost(cut: CutSizes, rows: np.ndarray, every: int, aux_down: bool, aux_up: bool) -> JobCost:
    """CSE-FSL and FSL-SAGE: the client part (and the auxiliary head when it travels) down and
    up; the activations of every ``every``-th step streamed up without waiting; the client
    computes its part and the head."""
    logged = rows[logged_steps(len(rows), every)]
    each, rest = _spread(int(logged.sum()) * (cut.activation_bytes + LABEL_BYTES), len(logged))
    return JobCost(
        bytes_down=cut.client_bytes + (cut.aux_bytes if aux_down else 0),
        bytes_up=cut.client_bytes + (cut.aux_bytes if aux_up else 0) + rest,
        compute_fraction=min(1.0, cut.client_fraction + cut.aux_fraction),
        stream_uploads=len(logged),
        stream_bytes_up=each,
    )


def server_step_seconds(cut: CutSizes, examples: int, seconds_per_sample: float) -> float:
    """The server's steps on ``examples`` uploaded activations: its part, forward and backward."""
    return examples * cut.server_fraction * seconds_per_sample


def alignment_seconds(cut: CutSizes, examples: int, epochs: int, seconds_per_sample: float) -> float:
    """FSL-SAGE's alignment on a buffer of ``examples``: the server part's true gradients once
    (forward and backward), then ``epochs`` passes of the head with double backpropagation
    (counted as twice a forward and backward)."""
    return examples * seconds_per_sample * (cut.server_fraction + 2 * epochs * cut.aux_fraction)


def fifo_append(
    kept: tuple[np.ndarray, np.ndarray] | None, z: np.ndarray, y: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """A client's buffer of (activations, labels) with ``z``/``y`` appended, its oldest rows
    dropped beyond ``limit`` (FSL-SAGE's first-in, first-out buffer of 1000 examples)."""
    if kept is not None:
        z, y = np.concatenate([kept[0], z]), np.concatenate([kept[1], y])
    return z[-limit:], y[-limit:]
