"""Update codecs: what crosses the network instead of a dense float32 delta. Pure numpy, no torch.

A payload is ``dict[str, np.ndarray]``, exactly what is sent, so its size is
``payload_bytes(payload)``; every array has the smallest dtype of its encoding, and
``encoded_bytes(cfg, d)`` gives that size without encoding anything. For d entries and
``k = num_kept(cfg, d)``:

* ``none``: float32 ``values``, 4d bytes. ``fp16``: float16 ``values``, 2d (overflow past
  65504 gives inf). ``bf16``: the upper halves of the float32 bit patterns, rounded to
  nearest even, as uint16 ``values``, 2d.
* ``topk`` (the k largest |x|, ties to the lowest index) and ``randk`` (k indices drawn
  uniformly without replacement): float32 ``values`` in index order, plus uint32
  ``indices`` or a packed uint8 ``bitmap``, whichever is smaller:
  ``4k + min(4k, ceil(d/8))`` (wave2-notes §3). randk is *not* rescaled by d/k: with error
  feedback (its default) the unsent part is kept, not lost, as in DGC.
* ``qsgd`` (Alistarh et al., arXiv 1610.02132): per bucket of ``bucket`` entries one float32
  L2 norm; per entry a sign bit and a level in 0..s, ``s = 2^bits - 1``, of ``s|x|/norm``
  rounded up with probability equal to its fractional part, so that decoding is unbiased.
  Codes ``sign << bits | level`` are packed MSB first, ``bits + 1`` bits each:
  ``ceil(d (bits+1) / 8) + 4 ceil(d / bucket)``. Defaults bits=4, bucket=512 are the
  paper's own 4-bit setting: a variance blow-up of at most min(n/s², √n/s) ≈ 1.5 for n=512,
  s=15, at 5 bits per entry (6.4x smaller than float32).

randk and qsgd draw only from the ``rng`` they are given (randk: one ``rng.choice``; qsgd:
``rng.random(d)``, one uniform per entry in order), so a keyed stream reproduces them.
Error feedback (DGC, seed-methods §5.2; EF-SGD) is ``compress_with_feedback``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

CODECS = ("none", "topk", "randk", "qsgd", "fp16", "bf16")
SPARSE = ("topk", "randk")
DIRECTIONS = ("up", "both")  # up: client uploads only; both: the server's broadcast too
# Codecs a broadcast may use (direction "both"): deterministic casts, so every client
# decodes the same model and the server needs to remember nothing per client.
BROADCAST = ("none", "fp16", "bf16")

Payload = dict[str, np.ndarray]


@dataclass(frozen=True)
class CodecConfig:
    """Which codec and its knobs; fields not used by ``name`` are still validated.

    ``error_feedback`` None means the codec's default, resolved here: True for topk/randk
    (which drop most of the update and rely on the residual), False otherwise.
    """

    name: str = "none"
    ratio: float = 0.01  # topk/randk: fraction of entries kept
    bits: int = 4  # qsgd: bits per level (plus one sign bit)
    bucket: int = 512  # qsgd: entries sharing one norm
    error_feedback: bool | None = None
    direction: str = "up"

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"name must be one of {', '.join(CODECS)} (got {self.name!r})")
        if _not_number(self.ratio, float) or not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], the fraction of entries kept (got {self.ratio!r})")
        # (bits + 1) > 16 bits per entry would cost more than fp16; codes are held as uint16.
        if _not_number(self.bits, int) or not 1 <= self.bits <= 15:
            raise ValueError(f"bits must be an integer in 1..15 (got {self.bits!r})")
        if _not_number(self.bucket, int) or self.bucket < 1:
            raise ValueError(f"bucket must be an integer >= 1 (got {self.bucket!r})")
        if self.error_feedback is None:
            object.__setattr__(self, "error_feedback", self.name in SPARSE)
        elif not isinstance(self.error_feedback, bool):
            raise ValueError(f"error_feedback must be true or false (got {self.error_feedback!r})")
        if self.error_feedback and self.name == "none":
            raise ValueError("error_feedback must be false with name 'none' (exact: it leaves no residual)")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)} (got {self.direction!r})")
        if self.direction == "both" and self.name not in BROADCAST:
            raise ValueError(
                f"direction 'both' works with fp16 and bf16 only (got {self.name!r}): a sparse or "
                "stochastic broadcast differs per client, so the server would have to keep each "
                "client's copy of the model; use direction 'up'"
            )


def payload_bytes(payload: Mapping[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in payload.values()))


def num_kept(cfg: CodecConfig, size: int) -> int:
    """k of topk/randk: ``ceil(ratio * size)`` as in DGC's code, at least 1, at most ``size``."""
    if size <= 0:
        return 0
    # The factor keeps e.g. 0.07 * 100 = 7.000000000000001 at 7 instead of 8.
    return min(size, max(1, math.ceil(cfg.ratio * size * (1 - 1e-12))))


def encoded_bytes(cfg: CodecConfig, size: int) -> int:
    """``payload_bytes`` of any encoding of ``size`` entries under ``cfg``."""
    if size < 0:
        raise ValueError(f"size must be >= 0 (got {size})")
    if cfg.name == "none":
        return 4 * size
    if cfg.name in ("fp16", "bf16"):
        return 2 * size
    if cfg.name in SPARSE:
        k = num_kept(cfg, size)
        return 4 * k + min(4 * k, _ceil_div(size, 8))
    return _ceil_div(size * (cfg.bits + 1), 8) + 4 * _ceil_div(size, cfg.bucket)


def encode(cfg: CodecConfig, delta: np.ndarray, rng: np.random.Generator) -> Payload:
    """The payload for the 1-D float32 ``delta`` (never modified)."""
    x = _vector(delta, "delta")
    if cfg.name in ("topk", "qsgd") and not np.isfinite(x).all():
        # a NaN has no rank and no norm; fail here rather than send a malformed payload
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"delta must be finite for {cfg.name} (got {bad} non-finite entries)")
    if cfg.name == "none":
        return {"values": x.copy()}
    if cfg.name == "fp16":
        return {"values": x.astype(np.float16)}
    if cfg.name == "bf16":
        return {"values": _to_bf16(x)}
    if cfg.name in SPARSE:
        k = num_kept(cfg, x.size)
        if cfg.name == "topk":
            idx = _topk_indices(x, k)
        else:
            idx = np.sort(rng.choice(x.size, size=k, replace=False))
        return _sparse_payload(x, idx)
    return _qsgd_encode(cfg, x, rng)


def decode(cfg: CodecConfig, payload: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    """The float32 vector of length ``size`` that ``payload`` stands for (a new array)."""
    got, want = payload_bytes(payload), encoded_bytes(cfg, size)
    if got != want:
        raise ValueError(f"payload has {got} bytes but a {cfg.name} encoding of {size} entries has {want}")
    if cfg.name in ("none", "fp16"):
        return np.asarray(payload["values"]).astype(np.float32)
    if cfg.name == "bf16":
        return (np.asarray(payload["values"]).astype(np.uint32) << 16).view(np.float32)
    if cfg.name in SPARSE:
        out = np.zeros(size, dtype=np.float32)
        if "indices" in payload:
            out[payload["indices"]] = payload["values"]
        else:
            out[np.unpackbits(payload["bitmap"], count=size).astype(bool)] = payload["values"]
        return out
    return _qsgd_decode(cfg, payload, size)


def compress_with_feedback(
    cfg: CodecConfig, delta: np.ndarray, residual: np.ndarray | None, rng: np.random.Generator
) -> tuple[Payload, np.ndarray | None]:
    """Error feedback: ``a = residual + delta``, send ``encode(a)``, keep ``a - decode(...)``.

    Whatever the codec drops is added back the next time this client sends, so nothing is
    lost, only delayed (for topk exactly DGC's ``r <- a * (1 - mask)``). ``residual`` None
    is a zero residual (first participation). Without ``error_feedback`` the residual stays
    None. Nothing passed in is modified; the new residual is float32 like the delta.
    """
    if not cfg.error_feedback:
        if residual is not None:
            raise ValueError("residual must be None when error_feedback is false (got an array)")
        return encode(cfg, delta, rng), None
    x = _vector(delta, "delta")
    if residual is not None and np.shape(residual) != x.shape:
        raise ValueError(f"residual must have the delta's shape {x.shape} (got {np.shape(residual)})")
    a = x if residual is None else _vector(residual, "residual") + x
    payload = encode(cfg, a, rng)
    return payload, a - decode(cfg, payload, a.size)


# ---- codecs in an algorithm ----------------------------------------------------------------
# An algorithm whose Params have a ``codec: CodecConfig`` field gets these through
# algorithms/base.py (encode, decode, receive and the jobs' download cost), so FedAvg, its
# presets, FedProx, FedBuff and FedAsync share one implementation.


def configured(params: object) -> CodecConfig | None:
    """The codec ``params`` configure, or None when they have none or it is ``none`` (then
    the algorithm's upload stays the plain ``{"delta": delta}``, bit for bit)."""
    cfg = getattr(params, "codec", None)
    if cfg is None:
        return None
    if not isinstance(cfg, CodecConfig):
        raise TypeError(f"codec must be a CodecConfig (got {type(cfg).__name__})")
    return None if cfg.name == "none" else cfg


def compresses_broadcast(cfg: CodecConfig | None) -> bool:
    """Whether the server's broadcast of the model is sent with ``cfg`` too."""
    return cfg is not None and cfg.direction == "both" and cfg.name != "none"


def broadcast(cfg: CodecConfig, model: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The model a client receives when the server sends ``model`` under ``cfg`` (direction
    both): the decoded cast, float32 (the casts draw nothing from ``rng``)."""
    if cfg.name not in BROADCAST:
        raise ValueError(f"a broadcast must be one of {', '.join(BROADCAST)} (got {cfg.name!r})")
    return decode(cfg, encode(cfg, model, rng), np.size(model))


# ---- helpers --------------------------------------------------------------------------


def _not_number(value: object, kind: type) -> bool:
    """True unless ``value`` is an int (or, for ``kind`` float, a float); bools are refused."""
    kinds: tuple[type, ...] = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
    return isinstance(value, bool) or not isinstance(value, kinds)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _vector(v: np.ndarray, field: str) -> np.ndarray:
    # float32 only: the byte counts and bf16's bit trick assume it, and a silent cast would
    # hide a caller sending float64.
    x = np.asarray(v)
    if x.ndim != 1 or x.dtype != np.float32:
        raise ValueError(f"{field} must be a 1-D float32 array (got {x.ndim}-D {x.dtype})")
    if x.size >= 2**32:
        raise ValueError(f"{field} must have fewer than 2^32 entries for uint32 indices (got {x.size})")
    return np.ascontiguousarray(x)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    b = x.view(np.uint32)
    # Round to nearest even: add 0x7FFF plus the lowest kept bit, then truncate. Carries
    # into the exponent are right (they round up to the next binade or to inf).
    r = (b + np.uint32(0x7FFF) + ((b >> 16) & np.uint32(1))) >> 16
    return np.where(np.isnan(x), np.uint32(0x7FC0), r).astype(np.uint16)  # NaN could round to inf


def _topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest |x|, sorted; among equal magnitudes the lowest indices win."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    mag = np.abs(x)
    t = np.partition(mag, x.size - k)[x.size - k]  # the k-th largest magnitude: O(d), no sort
    above = np.flatnonzero(mag > t)
    ties = np.flatnonzero(mag == t)[: k - above.size]
    return np.sort(np.concatenate([above, ties]))


def _sparse_payload(x: np.ndarray, idx: np.ndarray) -> Payload:
    values = x[idx]
    if 4 * idx.size <= _ceil_div(x.size, 8):  # equal sizes: indices, the simpler format
        return {"values": values, "indices": idx.astype(np.uint32)}
    mask = np.zeros(x.size, dtype=bool)
    mask[idx] = True
    return {"values": values, "bitmap": np.packbits(mask)}


def _bucket_scale(norms: np.ndarray, bucket: int, size: int) -> np.ndarray:
    return np.repeat(norms.astype(np.float64), bucket)[:size]


def _qsgd_encode(cfg: CodecConfig, x: np.ndarray, rng: np.random.Generator) -> Payload:
    d, s, nb = x.size, 2**cfg.bits - 1, _ceil_div(x.size, cfg.bucket)
    padded = np.zeros(nb * cfg.bucket)
    padded[:d] = x
    exact = np.sqrt(np.square(padded.reshape(nb, cfg.bucket)).sum(axis=1))
    norms = exact.astype(np.float32)
    # Quantize against the norm as sent (so decoding is unbiased), rounded up so that
    # |x| <= norm and no level exceeds s. (|x_i| <= exact holds: x_i² is exact in float64.)
    low = norms.astype(np.float64) < exact
    norms[low] = np.nextafter(norms[low], np.float32(np.inf))
    scale = _bucket_scale(norms, cfg.bucket, d)
    xi = np.divide(s * np.abs(x.astype(np.float64)), scale, out=np.zeros(d), where=scale > 0)
    floor = np.floor(xi)
    levels = (floor + (rng.random(d) < xi - floor)).astype(np.uint16)
    neg = (np.signbit(x) & (levels > 0)).astype(np.uint16)  # a zero level carries no sign
    codes = levels | (neg << np.uint16(cfg.bits))
    shifts = np.arange(cfg.bits, -1, -1, dtype=np.uint16)  # MSB first
    bit_matrix = ((codes[:, None] >> shifts) & np.uint16(1)).astype(np.uint8)
    return {"norms": norms, "codes": np.packbits(bit_matrix.ravel())}


def _qsgd_decode(cfg: CodecConfig, payload: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    s, width = 2**cfg.bits - 1, cfg.bits + 1
    bit_matrix = np.unpackbits(payload["codes"], count=size * width).reshape(size, width)
    shifts = np.arange(cfg.bits, -1, -1, dtype=np.uint32)
    codes = (bit_matrix.astype(np.uint32) << shifts).sum(axis=1)
    levels = (codes & s).astype(np.float64)
    sign = np.where(codes >> cfg.bits, -1.0, 1.0)
    return (sign * _bucket_scale(payload["norms"], cfg.bucket, size) * levels / s).astype(np.float32)
