"""Split learning's prices, by hand: the rows of every step, the bytes of one job of each
method, streamed uploads on a busy uplink, the FIFO buffer (algorithms/split_rules.py)."""

from __future__ import annotations

import numpy as np
import pytest

import algorithms.split_rules as rules
from engine.core.dispatch import stream_overrun

# The Shapes CNN cut at flatten on 28x28: conv1 1*16*25+16 = 416 and conv2 16*32*25+32 =
# 12832 entries on the client; 32 channels of 7x7 flattened at the cut; a 128-unit head.
CUT = rules.CutSizes(
    client_entries=13248,
    model_entries=113738,
    activation_shape=(1568,),
    client_fraction=0.75,
    num_classes=10,
    aux_entries=1568 * 128 + 128 + 128 * 10 + 10,
    aux_fraction=0.05,
)


def test_rows_follow_the_epochs_of_batch_indices() -> None:
    assert rules.step_rows(100, 3, 16).tolist() == [16, 16, 16]
    assert rules.step_rows(40, 5, 16).tolist() == [16, 16, 8, 16, 16]  # an epoch is 16, 16, 8
    assert rules.step_rows(40, 2, 0).tolist() == [40, 40]  # full batch
    assert rules.step_rows(10, 2, 32).tolist() == [10, 10]
    assert rules.logged_steps(7, 5).tolist() == [0, 5]
    assert rules.logged_steps(3, 1).tolist() == [0, 1, 2]


def test_splitfed_job_bytes_by_hand() -> None:
    cost = rules.relay_cost(CUT, np.array([16, 16, 16]), server_seconds_per_sample=0.01)
    # every step: 16 activations of 1568 floats (6272 bytes) and 16 int64 labels up, their gradient down
    trips = (cost.round_trips, cost.round_trip_bytes_up, cost.round_trip_bytes_down)
    assert trips == (3, 16 * 6280, 16 * 6272)
    assert cost.bytes_down == cost.bytes_up == 4 * 13248  # the client part, once each way
    assert cost.compute_fraction == 0.75
    assert cost.server_seconds == pytest.approx(48 * 0.25 * 0.01)
    # a short last batch: 40 examples over 3 steps; the exchanges get the average and the
    # remainder rides with the final transfer, so the total is exact
    short = rules.relay_cost(CUT, np.array([16, 16, 8]), 0.0)
    assert short.round_trips * short.round_trip_bytes_up + short.bytes_up - 4 * 13248 == 40 * 6280
    assert short.round_trips * short.round_trip_bytes_down + short.bytes_down - 4 * 13248 == 40 * 6272


def test_local_loss_job_bytes_by_hand() -> None:
    rows = np.array([16, 16, 16, 16, 16])
    head = 4 * (1568 * 128 + 128 + 1290)  # 808488 bytes
    cse = rules.local_loss_cost(CUT, rows, every=2, aux_down=True, aux_up=True)
    assert (cse.stream_uploads, cse.stream_bytes_up) == (3, 16 * 6280)  # steps 0, 2 and 4
    assert cse.bytes_down == cse.bytes_up == 4 * 13248 + head
    assert cse.round_trips == 0 and cse.compute_fraction == pytest.approx(0.8)
    sage = rules.local_loss_cost(CUT, rows, every=2, aux_down=False, aux_up=False)
    assert sage.bytes_down == sage.bytes_up == 4 * 13248
    aligned = rules.local_loss_cost(CUT, rows, every=2, aux_down=True, aux_up=False)
    assert aligned.bytes_down == 4 * 13248 + head and aligned.bytes_up == 4 * 13248


def test_server_seconds_by_hand() -> None:
    assert rules.server_step_seconds(CUT, 32, 0.01) == pytest.approx(32 * 0.25 * 0.01)
    # the true gradients once (0.25 of a pass), then 100 epochs of the head at 2 x 0.05
    assert rules.alignment_seconds(CUT, 1000, 100, 0.01) == pytest.approx(1000 * 0.01 * (0.25 + 10.0))


def test_streamed_uploads_wait_for_the_uplink() -> None:
    # 4 uploads ready at 0, 1, 2, 3 s of a 4 s compute: 0.5 s each, the link is free by 3.5 s
    assert stream_overrun(4.0, 4, 0.5) == 0.0
    # 1.5 s each: 0-1.5, 1.5-3, 3-4.5, 4.5-6: the uplink ends 2 s after the compute
    assert stream_overrun(4.0, 4, 1.5) == pytest.approx(2.0)
    assert stream_overrun(4.0, 2, 2.5) == pytest.approx(1.0)  # 0-2.5, 2.5-5


def test_buffer_keeps_the_newest_examples() -> None:
    z1, y1 = np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 2])
    kept = rules.fifo_append(None, z1, y1, limit=4)
    assert kept[1].tolist() == [0, 1, 2]
    kept = rules.fifo_append(kept, z1 + 10, np.array([3, 4, 5]), limit=4)
    assert kept[1].tolist() == [2, 3, 4, 5] and kept[0][0].tolist() == [4.0, 5.0]


def test_a_cut_must_leave_parameters_on_both_sides() -> None:
    with pytest.raises(ValueError, match="both sides"):
        rules.CutSizes(0, 10, (4,), 0.5, 10)
    assert CUT.activation_bytes == 6272 and CUT.client_bytes == 52992
