"""CMFL: the sign planes, the relevance test, and a round whose irrelevant uploads are
skipped, on hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.base import LocalTraining, Update, skipped_upload
from algorithms.cmfl import CMFL, CMFLParams, CMFLState, pack_signs, relevance, unpack_signs


def test_signs_take_two_bits_per_entry_and_round_trip() -> None:
    g = np.array([0.5, -2.0, 0.0, 3.0, -0.1, 0.0, 1.0, 1.0, -1.0], dtype=np.float32)
    packed = pack_signs(g)
    # 9 entries: two planes of ceil(9 / 8) = 2 bytes each
    assert packed.dtype == np.uint8 and packed.nbytes == 4
    # positive plane 1,0,0,1,0,0,1,1 | 0 -> 0b10010011 = 147, 0b00000000 = 0
    # negative plane 0,1,0,0,1,0,0,0 | 1 -> 0b01001000 = 72, 0b10000000 = 128
    assert packed.tolist() == [147, 0, 72, 128]
    np.testing.assert_array_equal(unpack_signs(packed, 9), [1, -1, 0, 1, -1, 0, 1, 1, -1])


def test_relevance_is_the_fraction_of_agreeing_signs() -> None:
    signs = np.array([1, -1, 0, 1], dtype=np.int8)
    assert relevance(np.array([2.0, -1.0, 0.0, -3.0]), signs) == 0.75
    assert relevance(np.array([-2.0, 1.0, 0.5, -3.0]), signs) == 0.0
    # a mask keeps the trainable entries only: 1 of the first 2 agrees
    assert relevance(np.array([2.0, 1.0, 0.0, 1.0]), signs, np.array([True, True, False, False])) == 0.5


def algorithm(threshold: float, clients: int = 3) -> CMFL:
    params = CMFLParams(clients_per_round=clients, threshold=threshold)
    return CMFL(params, LocalTraining(local_steps=1), np.array([10, 30, 60]))


def update(client: int, delta: list[float], skipped: bool = False) -> Update:
    d = np.array(delta, dtype=np.float32)
    payload = skipped_upload() if skipped else {"delta": d}
    return Update(client, d, [10, 30, 60][client], 0, np.zeros_like(d), payload)


def test_skipped_uploads_close_the_round_without_entering_the_average() -> None:
    alg = algorithm(0.5)
    state = alg.init(np.array([1.0, 1.0], dtype=np.float32))
    state, jobs = alg.jobs(state, 0.0, np.arange(3), np.random.default_rng(0))
    assert [j.task.__class__.__name__ for j in jobs] == ["Task"] * 3  # no g yet: no signs sent
    assert alg.decode(skipped_upload(), 0).tolist() == [0.0, 0.0]
    state = alg.on_update(state, update(0, [0.5, 0.5]), 1.0)
    state = alg.on_update(state, update(1, [9.0, 9.0], skipped=True), 2.0)
    assert state.version == 0 and state.pending == (2,)
    state = alg.on_update(state, update(2, [0.2, -0.1]), 3.0)
    # sample-weighted over clients 0 and 2 only: (10 * [0.5, 0.5] + 60 * [0.2, -0.1]) / 70
    expected = np.array([1.0, 1.0]) - np.array([(5 + 12) / 70, (5 - 6) / 70])
    np.testing.assert_allclose(state.model, expected, rtol=1e-6)
    assert isinstance(state, CMFLState)
    assert (state.version, state.skipped, state.dropped) == (1, 1, 0)
    assert alg.stats(state)["skipped"] == 1.0


def test_the_next_round_carries_the_last_global_updates_signs_and_pays_for_them() -> None:
    alg = algorithm(0.5, clients=2)
    state = alg.init(np.array([1.0, 1.0, 1.0], dtype=np.float32))
    state, jobs = alg.jobs(state, 0.0, np.arange(2), np.random.default_rng(0))
    for j in jobs:
        state = alg.on_update(state, update(j.client, [0.5, -0.5, 0.0]), 1.0)
    assert state.version == 1
    state, jobs = alg.jobs(state, 1.0, np.arange(2), np.random.default_rng(1))
    # g = previous model - this one = the averaged delta [0.5, -0.5, 0]
    for j in jobs:
        np.testing.assert_array_equal(unpack_signs(j.task.signs, 3), [1, -1, 0])
        assert j.cost.bytes_down == 3 * 4 + 2  # the model, plus two 1-byte sign planes
    # every client skipped: no version, and the same g is sent again
    for j in jobs:
        state = alg.on_update(state, update(j.client, [-1.0, 1.0, 1.0], skipped=True), 2.0)
    assert state.version == 1 and not state.pending and state.skipped == 2
    _, again = alg.jobs(state, 2.0, np.arange(2), np.random.default_rng(2))
    np.testing.assert_array_equal(unpack_signs(again[0].task.signs, 3), [1, -1, 0])


def test_threshold_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        CMFLParams(threshold=1.5)
