"""Update codecs against encodings computed by hand, and the byte counts they promise."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.codecs import (
    CODECS,
    CodecConfig,
    compress_with_feedback,
    decode,
    encode,
    encoded_bytes,
    num_kept,
    payload_bytes,
)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- config ---------------------------------------------------------------------------


def test_config_defaults() -> None:
    assert CODECS == ("none", "topk", "randk", "qsgd", "fp16", "bf16")
    cfg = CodecConfig()
    assert (cfg.name, cfg.ratio, cfg.bits, cfg.bucket, cfg.direction) == ("none", 0.01, 4, 512, "up")
    # error feedback defaults on only where most of the update is dropped
    assert [CodecConfig(name=n).error_feedback for n in CODECS] == [False, True, True, False, False, False]
    assert CodecConfig(name="topk", error_feedback=False).error_feedback is False
    assert CodecConfig(name="qsgd", error_feedback=True).error_feedback is True
    # the resolved default compares equal to the explicit value
    assert CodecConfig(name="topk") == CodecConfig(name="topk", error_feedback=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "dgc"}, r"^name must be one of none, topk, randk, qsgd, fp16, bf16 \(got 'dgc'\)$"),
        ({"ratio": 0.0}, r"^ratio must be in \(0, 1\]"),
        ({"ratio": 1.5}, r"^ratio must be in \(0, 1\]"),
        ({"ratio": float("nan")}, r"^ratio must be in \(0, 1\]"),
        ({"ratio": "0.1"}, r"^ratio must be in \(0, 1\]"),
        ({"bits": 0}, r"^bits must be an integer in 1\.\.15 \(got 0\)$"),
        ({"bits": 16}, r"^bits must be an integer in 1\.\.15"),
        ({"bits": 4.0}, r"^bits must be an integer"),
        ({"bits": True}, r"^bits must be an integer"),
        ({"bucket": 0}, r"^bucket must be an integer >= 1 \(got 0\)$"),
        ({"error_feedback": "yes"}, r"^error_feedback must be true or false"),
        ({"name": "none", "error_feedback": True}, r"^error_feedback must be false with name 'none'"),
        ({"direction": "down"}, r"^direction must be one of up, both \(got 'down'\)$"),
    ],
)
def test_config_rejects_bad_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        CodecConfig(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)  # one line, for the config layer to prefix


def test_num_kept_by_hand() -> None:
    def k(ratio: float, d: int) -> int:
        return num_kept(CodecConfig(name="topk", ratio=ratio), d)

    assert k(0.01, 1000) == 10
    assert k(0.01, 150) == 2  # ceil(1.5)
    assert k(0.07, 100) == 7  # 0.07 * 100 is 7.000000000000001 in floating point
    assert k(0.001, 10) == 1  # never send nothing
    assert k(1.0, 5) == 5
    assert k(0.5, 0) == 0


# ---- sparse codecs --------------------------------------------------------------------


def test_topk_by_hand_bitmap_and_indices() -> None:
    cfg = CodecConfig(name="topk", ratio=0.5)
    x = f32(0.1, -3, 2, 0.5)
    p = encode(cfg, x, rng())
    # k = 2 of d = 4: indices would be 8 bytes, a bitmap 1 byte -> bitmap 0b0110_0000
    assert set(p) == {"values", "bitmap"}
    np.testing.assert_array_equal(p["values"], f32(-3, 2))
    np.testing.assert_array_equal(p["bitmap"], np.array([0b0110_0000], dtype=np.uint8))
    np.testing.assert_array_equal(decode(cfg, p, 4), f32(0, -3, 2, 0))
    assert payload_bytes(p) == encoded_bytes(cfg, 4) == 2 * 4 + 1

    # the same two entries in d = 100: 8 bytes of indices beat a 13-byte bitmap
    y = np.zeros(100, dtype=np.float32)
    y[:4] = x
    q = encode(CodecConfig(name="topk", ratio=0.02), y, rng())
    np.testing.assert_array_equal(q["indices"], np.array([1, 2], dtype=np.uint32))
    np.testing.assert_array_equal(q["values"], f32(-3, 2))
    assert payload_bytes(q) == 2 * 4 + 2 * 4


def test_topk_ties_go_to_the_lowest_index_and_draw_nothing() -> None:
    x = f32(0.5, 1, -1, 1, -1)
    g = rng(3)
    before = g.bit_generator.state
    p = encode(CodecConfig(name="topk", ratio=0.4), x, g)  # k = 2 among four |x| = 1
    np.testing.assert_array_equal(decode(CodecConfig(name="topk", ratio=0.4), p, 5), f32(0, 1, -1, 0, 0))
    assert g.bit_generator.state == before  # deterministic codecs leave the stream alone
    p = encode(CodecConfig(name="topk", ratio=0.6), x, g)  # k = 3
    np.testing.assert_array_equal(p["values"], f32(1, -1, 1))


def test_randk_draws_only_from_rng() -> None:
    cfg = CodecConfig(name="randk", ratio=0.3)
    x = np.arange(1, 11, dtype=np.float32)
    a, b = encode(cfg, x, rng(5)), encode(cfg, x, rng(5))
    assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)
    out = decode(cfg, a, 10)
    kept = np.flatnonzero(out)
    assert kept.size == 3
    np.testing.assert_array_equal(out[kept], x[kept])  # sent unscaled (see the module docstring)
    # uniform without replacement: each index is kept with probability k/d = 0.3. Over 2000
    # draws a count has mean 600 and std sqrt(2000 * 0.3 * 0.7) ~ 20.5; allow 5 std.
    g = rng(6)
    counts = sum((decode(cfg, encode(cfg, x, g), 10) != 0).astype(int) for _ in range(2000))
    assert np.all(np.abs(counts - 600) < 103), counts


# ---- qsgd -----------------------------------------------------------------------------


def test_qsgd_exact_levels_by_hand() -> None:
    # bits 4: s = 15. Bucket [3, -4, 0, 0] has norm 5, so s|x|/norm = 9, 12, 0, 0: whole
    # levels, kept whatever the draw. Bucket [1] has norm 1 and level 15 (the top one).
    # 5-bit codes sign|level: 01001 11100 00000 00000 01111 -> 0x4F 0x00 0x07 0x80 (padded).
    cfg = CodecConfig(name="qsgd", bits=4, bucket=4)
    x = f32(3, -4, 0, 0, 1)
    for seed in (0, 1):
        p = encode(cfg, x, rng(seed))
        np.testing.assert_array_equal(p["norms"], f32(5, 1))
        np.testing.assert_array_equal(p["codes"], np.array([0x4F, 0x00, 0x07, 0x80], dtype=np.uint8))
        np.testing.assert_array_equal(decode(cfg, p, 5), x)
    assert encoded_bytes(cfg, 5) == 4 + 2 * 4  # ceil(25 bits / 8) + one float32 norm per bucket


def test_qsgd_stochastic_rounding_by_hand() -> None:
    # bits 2: s = 3. [3, 4] has norm 5: s|x|/norm = 1.8 and 2.4, so the levels are
    # 1 + (u0 < 0.8) and 2 + (u1 < 0.4) for the first two uniforms u of the stream.
    cfg = CodecConfig(name="qsgd", bits=2, bucket=8)
    u = rng(7).random(2)
    expected = np.array([1 + (u[0] < 0.8), 2 + (u[1] < 0.4)]) * 5 / 3
    np.testing.assert_allclose(decode(cfg, encode(cfg, f32(3, 4), rng(7)), 2), expected, rtol=1e-6)
    # and the sign travels: [-3, -4] decodes to the negation under the same draws
    np.testing.assert_allclose(decode(cfg, encode(cfg, f32(-3, -4), rng(7)), 2), -expected, rtol=1e-6)


def test_qsgd_error_is_below_one_level_per_bucket() -> None:
    # Each entry rounds to one of the two levels around it: |decoded - x| < norm / s.
    cfg = CodecConfig(name="qsgd", bits=2, bucket=64)
    x = rng(1).standard_normal(1000).astype(np.float32)
    x[100] = 50.0  # dominates its bucket (64..127): its level is exactly s
    out = decode(cfg, encode(cfg, x, rng(2)), x.size)
    padded = np.concatenate([x.astype(np.float64), np.zeros(24)]).reshape(-1, 64)
    norm = np.repeat(np.linalg.norm(padded, axis=1), 64)[: x.size]
    assert np.all(np.abs(out - x) <= norm / 3 * (1 + 1e-6))
    assert np.all((out == 0) | (np.sign(out) == np.sign(x)))
    assert out[100] == pytest.approx(norm[100], rel=1e-6)


def test_qsgd_is_unbiased() -> None:
    # N copies of x, one bucket each, are N independent draws in a single call. Per entry
    # the decoded value is norm/s times a level that is Bernoulli around s|x|/norm, so its
    # variance is at most (norm/s)^2 / 4 and the mean of N draws has std <= norm/(2 s sqrt N).
    cfg = CodecConfig(name="qsgd", bits=2, bucket=8)
    x = f32(0.3, -1.7, 0.05, 2.2, -0.4, 0.0, 1.1, -0.9)
    n = 20_000
    out = decode(cfg, encode(cfg, np.tile(x, n), rng(11)), 8 * n).reshape(n, 8)
    std = float(np.linalg.norm(x)) / (2 * 3 * np.sqrt(n))  # ~ 0.0037, so 5 std ~ 0.019
    np.testing.assert_allclose(out.mean(axis=0), x, rtol=0, atol=5 * std)
    assert np.all(out[:, 5] == 0)  # a zero entry is never sent as anything else


# ---- fp16 / bf16 ----------------------------------------------------------------------


def test_bf16_round_to_nearest_even_by_hand() -> None:
    cfg = CodecConfig(name="bf16")
    big = float(np.finfo(np.float32).max)  # 0x7F7FFFFF: past the last bf16 below inf, rounds to inf
    x = f32(1.0, 3.14159, -2.0, 1 + 2**-8, 1 + 3 * 2**-8, 0.1, np.inf, big, np.nan)
    p = encode(cfg, x, rng())
    bits = [0x3F80, 0x4049, 0xC000, 0x3F80, 0x3F82, 0x3DCD, 0x7F80, 0x7F80, 0x7FC0]
    np.testing.assert_array_equal(p["values"], np.array(bits, dtype=np.uint16))
    out = decode(cfg, p, x.size)
    # 3.14159 = 0x40490FD0 drops 0x0FD0 < half; 1 + 2^-8 and 1 + 3 * 2^-8 are exact ties
    # (low half 0x8000) and go to the even neighbour; 0.1 = 0x3DCCCCCD rounds up.
    expected = f32(1.0, 3.140625, -2.0, 1.0, 1.015625, 0.10009765625, np.inf, np.inf, np.nan)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32 and payload_bytes(p) == 2 * x.size


def test_fp16_by_hand() -> None:
    cfg = CodecConfig(name="fp16")
    with np.errstate(over="ignore"):  # numpy warns on the overflow, which is the point here
        p = encode(cfg, f32(1.0, 3.14159, 65504, 1e5, 1e-8), rng())
    assert p["values"].dtype == np.float16
    # 3.14159 on float16's 2^-9 grid is 3.140625; 65504 is the largest float16, 1e5 overflows,
    # 1e-8 is below half the smallest subnormal (6e-8)
    np.testing.assert_array_equal(decode(cfg, p, 5), f32(1.0, 3.140625, 65504, np.inf, 0))


def test_none_is_an_exact_copy() -> None:
    cfg = CodecConfig()
    x = f32(0.1, -3, 2, 0.5)
    p = encode(cfg, x, rng())
    out = decode(cfg, p, 4)
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(p["values"], x) and not np.shares_memory(out, p["values"])


# ---- byte counts ----------------------------------------------------------------------

CONFIGS = [
    CodecConfig(),
    CodecConfig(name="fp16"),
    CodecConfig(name="bf16"),
    CodecConfig(name="topk"),
    CodecConfig(name="topk", ratio=0.3),
    CodecConfig(name="topk", ratio=1.0),
    CodecConfig(name="randk", ratio=0.01),
    CodecConfig(name="randk", ratio=0.5),
    CodecConfig(name="qsgd"),
    CodecConfig(name="qsgd", bits=1, bucket=7),
    CodecConfig(name="qsgd", bits=8, bucket=1),
    CodecConfig(name="qsgd", bits=15, bucket=100),
]
SIZES = [0, 1, 2, 3, 7, 8, 9, 31, 33, 100, 511, 512, 513, 1000, 4097]
DTYPES: dict[str, set[type]] = {
    "values": {np.float32, np.float16, np.uint16},
    "indices": {np.uint32},
    "bitmap": {np.uint8},
    "norms": {np.float32},
    "codes": {np.uint8},
}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-r{c.ratio}-b{c.bits}-n{c.bucket}")
def test_encoded_bytes_equal_real_payloads(cfg: CodecConfig) -> None:
    g = rng(4)
    for size in SIZES:
        x = g.standard_normal(size).astype(np.float32)
        p = encode(cfg, x, g)
        assert payload_bytes(p) == encoded_bytes(cfg, size), (cfg.name, size)
        assert all(a.ndim == 1 and a.dtype.type in DTYPES[key] for key, a in p.items()), (size, p)
        out = decode(cfg, p, size)
        assert out.shape == (size,) and out.dtype == np.float32


def test_byte_formulas_by_hand() -> None:
    assert encoded_bytes(CodecConfig(), 1000) == 4000
    assert encoded_bytes(CodecConfig(name="bf16"), 1000) == 2000
    # topk 1% of 1000: 10 values + 10 indices (40 bytes < a 125-byte bitmap)
    assert encoded_bytes(CodecConfig(name="topk"), 1000) == 40 + 40
    # 10% of 10_000: 1000 values + a 1250-byte bitmap (< 4000 bytes of indices)
    assert encoded_bytes(CodecConfig(name="randk", ratio=0.1), 10_000) == 4000 + 1250
    # qsgd defaults on 1000 entries: ceil(1000 * 5 / 8) = 625 + 2 buckets * 4
    assert encoded_bytes(CodecConfig(name="qsgd"), 1000) == 625 + 8
    # DGC's regime: 0.1% of an 11M model is ~ 2000x smaller than float32 (4 + 4 bytes per value)
    d = 11_000_000
    assert encoded_bytes(CodecConfig(name="topk", ratio=0.001), d) == 8 * 11_000
    with pytest.raises(ValueError, match=r"^size must be >= 0"):
        encoded_bytes(CodecConfig(), -1)


# ---- error feedback -------------------------------------------------------------------


def test_topk_feedback_by_hand() -> None:
    cfg = CodecConfig(name="topk", ratio=0.25)  # k = 1 of 4
    p, r = compress_with_feedback(cfg, f32(0.1, -3, 2, 0.5), None, rng())
    np.testing.assert_array_equal(decode(cfg, p, 4), f32(0, -3, 0, 0))
    np.testing.assert_array_equal(r, f32(0.1, 0, 2, 0.5))
    # a = r + delta = (0.2, 0, 1, 1.5): the 2 held back last time now loses to 1.5
    p, r2 = compress_with_feedback(cfg, f32(0.1, 0, -1, 1), r, rng())
    np.testing.assert_array_equal(decode(cfg, p, 4), f32(0, 0, 0, 1.5))
    np.testing.assert_array_equal(r2, f32(0.2, 0, 1, 0))
    np.testing.assert_array_equal(r, f32(0.1, 0, 2, 0.5))  # the old residual is untouched


@pytest.mark.parametrize("name", ["topk", "randk", "qsgd", "fp16", "bf16"])
def test_feedback_conserves_the_update(name: str) -> None:
    cfg = CodecConfig(name=name, ratio=0.05, bits=2, bucket=64, error_feedback=True)
    g = rng(8)
    r: np.ndarray | None = None
    for _ in range(5):
        delta = g.standard_normal(1000).astype(np.float32)
        before = np.zeros(1000) if r is None else r.astype(np.float64)
        p, r = compress_with_feedback(cfg, delta, r, g)
        assert r is not None and r.dtype == np.float32
        sent = decode(cfg, p, 1000).astype(np.float64)
        want = before + delta
        # Two float32 roundings: a = fl(r + delta) and r' = fl(a - sent), each within the
        # unit roundoff 2^-24 of its result; 2^-23 leaves room for both.
        tol = 2.0**-23 * (np.abs(want) + np.abs(r))
        assert np.all(np.abs(sent + r - want) <= tol), name
        if name in ("topk", "randk"):
            # sparse: sent and residual split a = fl(r + delta) exactly, on disjoint entries
            a = (before.astype(np.float32) + delta).astype(np.float64)
            np.testing.assert_array_equal(sent + r, a)
            assert not np.any((sent != 0) & (r != 0))


def test_feedback_off_keeps_no_residual() -> None:
    cfg = CodecConfig(name="qsgd")
    x = f32(3, -4, 0, 0)
    p, r = compress_with_feedback(cfg, x, None, rng(1))
    assert r is None
    # the same draws as a plain encode
    assert all(np.array_equal(p[key], encode(cfg, x, rng(1))[key]) for key in p)
    with pytest.raises(ValueError, match=r"^residual must be None when error_feedback is false"):
        compress_with_feedback(cfg, x, np.zeros(4, dtype=np.float32), rng())
    with pytest.raises(ValueError, match=r"^residual must have the delta's shape"):
        compress_with_feedback(CodecConfig(name="topk"), x, np.zeros(3, dtype=np.float32), rng())


# ---- bad input ------------------------------------------------------------------------


def test_encode_and_decode_reject_bad_input() -> None:
    topk = CodecConfig(name="topk")
    with pytest.raises(ValueError, match=r"^delta must be a 1-D float32 array \(got 2-D float32\)$"):
        encode(topk, np.zeros((2, 2), dtype=np.float32), rng())
    with pytest.raises(ValueError, match=r"^delta must be a 1-D float32 array \(got 1-D float64\)$"):
        encode(topk, np.zeros(4), rng())
    for name in ("topk", "qsgd"):
        with pytest.raises(ValueError, match=rf"^delta must be finite for {name} \(got 1 non-finite"):
            encode(CodecConfig(name=name), f32(1, np.nan, 2), rng())
    p = encode(topk, f32(1, 2, 3), rng())
    with pytest.raises(ValueError, match=r"^payload has 5 bytes but a topk encoding of 9 entries has 6$"):
        decode(topk, p, 9)
