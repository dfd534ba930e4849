"""Keyed streams: the key alone decides the stream, exactly as numpy seeds from the list."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from engine.core.rng import int_seed, seed_sequence, stream


@pytest.mark.parametrize(
    ("seed", "keys"),
    [(0, ()), (7, (3,)), (2**32 - 1, (0, 2**32 - 1)), (2**32, (5,)), (1, (2**40 + 3, 9)), (12345, (17, 4))],
)
def test_streams_are_numpys_seed_sequence_of_the_key_list(seed: int, keys: tuple[int, ...]) -> None:
    reference = np.random.SeedSequence([seed, zlib.crc32(b"train"), *keys])
    assert np.array_equal(seed_sequence(seed, "train", *keys).generate_state(8), reference.generate_state(8))
    expected = np.random.Generator(np.random.PCG64(reference)).random(4)
    assert np.array_equal(stream(seed, "train", *keys).random(4), expected)
    assert int_seed(seed, "train", *keys) == int(reference.generate_state(1, dtype=np.uint64)[0]) >> 1


def test_keys_and_purposes_separate_streams() -> None:
    draws = {stream(0, p, *k).random() for p in ("train", "jitter") for k in ((1, 2), (2, 1), (1,), ())}
    assert len(draws) == 8
