"""Codecs inside the algorithms (``algorithm.codec.*``): FedAvg and its presets, FedProx,
FedBuff and FedAsync encode, decode and receive through algorithms/base.py. Hand-computed
payloads, residuals and download costs; the executor takes the delta against the model
the client received."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import yaml

from algorithms import ALGORITHMS
from algorithms.base import Algorithm, LocalTraining, Task
from algorithms.codecs import CodecConfig, encoded_bytes
from algorithms.fedasync import FedAsync
from algorithms.fedavg import FedAvg
from algorithms.fedavg_presets import FedAdam
from algorithms.fedbuff import FedBuff
from algorithms.fedprox import FedProx
from engine.config import ConfigError, build_config, load_config, to_dict
from engine.core.backend import JobSpec, Stack
from engine.worker.data import load_data
from engine.worker.worker import ExecutorSpec, Worker
from tests import conftest

CODED = (FedAvg, FedProx, FedAdam, FedBuff, FedAsync)
TRAINING = LocalTraining(local_steps=3, batch_size=0, lr=0.1)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def make(cls: type[Algorithm[Any]], size: int = 4, **codec: Any) -> Algorithm[Any]:
    """``cls`` with ``codec`` (default none), initialised on a model of ``size`` entries."""
    alg = cls(cls.Params(codec=CodecConfig(**codec)), TRAINING, np.full(6, 10))
    alg.init(np.zeros(size, dtype=np.float32))
    return alg


# ---- uploads --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CODED, ids=lambda c: c.name)
def test_topk_half_with_error_feedback_by_hand(cls: type[Algorithm[Any]]) -> None:
    alg = make(cls, name="topk", ratio=0.5)  # k = 2 of 4; error feedback is topk's default
    # First job: no residual yet. The two largest |x| are -2 (index 1) and 1 (index 2);
    # 2 values cost 8 bytes, so the 4 indices travel as a 1-byte bitmap 0110_0000.
    payload, residual = alg.encode(f32(0.5, -2, 1, 0.25), None, rng())
    assert set(payload) == {"values", "bitmap"}
    assert payload["values"].dtype == np.float32 and payload["values"].tolist() == [-2, 1]
    assert payload["bitmap"].dtype == np.uint8 and payload["bitmap"].tolist() == [0b0110_0000]
    assert residual.dtype == np.float32 and residual.tolist() == [0.5, 0, 0, 0.25]
    decoded = alg.decode(payload, 3)
    assert decoded.dtype == np.float32 and decoded.tolist() == [0, -2, 1, 0]
    # Second job: the residual comes back. a = (0.5, 0, 0, 0.25) + (0.25, 0.5, -0.75, 0.5)
    # = (0.75, 0.5, -0.75, 0.75): three equal magnitudes, the lowest indices 0 and 2 win.
    delta = f32(0.25, 0.5, -0.75, 0.5)
    payload2, residual2 = alg.encode(delta, residual, rng())
    assert payload2["values"].tolist() == [0.75, -0.75]
    assert payload2["bitmap"].tolist() == [0b1010_0000]
    assert residual2.tolist() == [0, 0.5, 0, 0.75]
    sent = alg.decode(payload2, 3)
    assert sent.tolist() == [0.75, 0, -0.75, 0]
    np.testing.assert_array_equal(sent + residual2, residual + delta)  # nothing lost, exactly
    assert residual.tolist() == [0.5, 0, 0, 0.25] and delta.tolist() == [0.25, 0.5, -0.75, 0.5]  # untouched


@pytest.mark.parametrize("cls", CODED, ids=lambda c: c.name)
def test_codec_none_is_the_plain_dense_exchange(cls: type[Algorithm[Any]]) -> None:
    alg = make(cls)
    delta, state, model = f32(1, -2, 3, 0.5), object(), f32(1, 2, 3, 4)
    payload, after = alg.encode(delta, state, rng())
    assert set(payload) == {"delta"} and payload["delta"] is delta and after is state
    assert alg.decode(payload, 0) is delta
    assert alg.receive(model, rng()) is model
    # The jobs are FedAvg's/FedBuff's/FedAsync's own: the whole model down.
    _, jobs = alg.jobs(alg.init(model), 0.0, np.arange(6), rng())
    assert jobs and all(j.cost.bytes_down is None for j in jobs)


def test_without_error_feedback_no_residual_is_kept() -> None:
    alg = make(FedBuff, name="topk", ratio=0.5, error_feedback=False)
    payload, state = alg.encode(f32(0.5, -2, 1, 0.25), None, rng())
    assert state is None and alg.decode(payload, 0).tolist() == [0, -2, 1, 0]
    with pytest.raises(ValueError, match="residual must be None"):
        alg.encode(f32(0.5, -2, 1, 0.25), f32(0, 0, 0, 0), rng())


def test_qsgd_and_casts_decode_to_the_model_size() -> None:
    delta = np.linspace(-1, 1, 1000, dtype=np.float32)
    for name in ("qsgd", "fp16", "bf16", "randk"):
        alg = make(FedAvg, size=1000, name=name)
        payload, _ = alg.encode(delta, None, rng())
        assert sum(a.nbytes for a in payload.values()) == encoded_bytes(alg.params.codec, 1000)
        assert alg.decode(payload, 0).shape == (1000,)
    fp16 = make(FedAvg, size=1000, name="fp16")
    payload, _ = fp16.encode(delta, None, rng())
    np.testing.assert_array_equal(fp16.decode(payload, 0), delta.astype(np.float16))


def test_decode_needs_the_model_size_from_init() -> None:
    alg = FedBuff(FedBuff.Params(codec=CodecConfig("topk", ratio=0.5)), TRAINING, np.full(6, 10))
    payload, _ = alg.encode(f32(0.5, -2, 1, 0.25), None, rng())
    with pytest.raises(RuntimeError, match=r"decode needs the model's size for topk; init\(\) first"):
        alg.decode(payload, 0)


# ---- the broadcast (direction both) ---------------------------------------------------------


@pytest.mark.parametrize("cls", CODED, ids=lambda c: c.name)
def test_a_cast_broadcast_is_received_and_charged_as_sent(cls: type[Algorithm[Any]]) -> None:
    model = f32(1 / 3, -65519.0, 1e-9, 2.0)
    fp16 = make(cls, name="fp16", direction="both")
    np.testing.assert_array_equal(fp16.receive(model, rng()), model.astype(np.float16).astype(np.float32))
    # bf16 keeps float32's upper 16 bits, rounded to nearest even: 1/3 = 0x3EAAAAAB -> 0x3EAB.
    bf16 = make(cls, name="bf16", direction="both")
    got = bf16.receive(model, rng())
    assert got.dtype == np.float32 and got.view(np.uint32)[0] == 0x3EAB0000 and got[3] == 2.0
    up = make(cls, name="fp16")  # direction up: the broadcast is exact
    assert up.receive(model, rng()) is model
    for alg, down in ((fp16, 2 * 4), (bf16, 2 * 4), (up, None)):
        _, jobs = alg.jobs(alg.init(model), 0.0, np.arange(6), rng())
        assert jobs and {j.cost.bytes_down for j in jobs} == {down}
        assert {j.cost.bytes_up for j in jobs} == {None}  # the payload's real size


@pytest.mark.parametrize("name", ["topk", "randk", "qsgd"])
def test_both_directions_are_refused_for_sparse_and_stochastic_codecs(name: str) -> None:
    with pytest.raises(ValueError, match=r"^direction 'both' works with fp16 and bf16 only") as e:
        CodecConfig(name, direction="both")
    assert "\n" not in str(e.value) and "per client" in str(e.value)
    for fine in ("none", "fp16", "bf16"):
        assert CodecConfig(fine, direction="both").direction == "both"


def test_the_executor_takes_the_delta_against_what_the_client_received() -> None:
    """With lr 0 a job ends where it started: its delta is exactly 0 when taken against
    the received (fp16) model, and would be the cast's rounding error against the
    broadcast one. Single jobs and a stack alike."""
    cfg = conftest.tiny("algorithm.codec.name=fp16", "algorithm.codec.direction=both")
    worker = Worker(0)
    worker.setup(ExecutorSpec.of(cfg), load_data(cfg))
    start = worker.initial_params() + np.float32(1e-4)  # not representable in fp16
    assert (start.astype(np.float16).astype(np.float32) != start).any()
    still = Task(steps=2, batch_size=5, lr=0.0)
    one = worker.compute([(JobSpec(0, 3, 0, still, 0), start)])[0]
    stack = worker.compute(
        [(JobSpec(1 + s, c, 0, still, 0, stack=Stack(1, s, 2, 5)), start) for s, c in enumerate((4, 5))]
    )
    server = worker.algorithm  # as on the server, whose init gives the model's size
    server.init(start)
    for out in (one, *stack):
        assert out.bytes_up == 2 * start.size and out.client_state is None
        assert not server.decode(out.payload, 0).any()
    # and with codec none, the same job's delta is 0 against the exact start as well
    plain = conftest.tiny()
    worker.setup(ExecutorSpec.of(plain), load_data(plain))
    out = worker.compute([(JobSpec(0, 3, 0, still, 0), start)])[0]
    assert out.payload["delta"].dtype == np.float32 and not out.payload["delta"].any()


# ---- configuration and --list -------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedbuff", "fedasync"])
def test_codec_keys_are_dotted_config_keys(name: str) -> None:
    keys = ["algorithm.codec.name=topk", "algorithm.codec.ratio=0.05"]
    cfg = load_config(None, [f"algorithm.name={name}", *keys])
    assert cfg.algorithm.params.codec == CodecConfig("topk", ratio=0.05, error_feedback=True)
    assert load_config(None, [f"algorithm.name={name}"]).algorithm.params.codec == CodecConfig()
    # config.yaml round trip: the resolved codec, error feedback included, reads back the same
    raw = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    assert raw["algorithm"]["codec"] == {
        "name": "topk",
        "ratio": 0.05,
        "bits": 4,
        "bucket": 512,
        "error_feedback": True,
        "direction": "up",
    }
    assert build_config(raw).algorithm == cfg.algorithm


def test_codec_config_errors_name_the_key() -> None:
    both = r"^algorithm\.codec\.direction 'both' works with fp16 and bf16 only"
    with pytest.raises(ConfigError, match=both):
        load_config(None, ["algorithm.codec.name=qsgd", "algorithm.codec.direction=both"])
    typo = r"^unknown key 'algorithm\.codec\.ration' \(did you mean 'ratio'\?\)"
    with pytest.raises(ConfigError, match=typo):
        load_config(None, ["algorithm.codec.ration=0.1"])
    with pytest.raises(ConfigError, match=r"^algorithm\.codec is a section"):
        load_config(None, ["algorithm.codec=topk"])
    with pytest.raises(ConfigError, match=r"^unknown key 'algorithm\.codec'"):
        load_config(None, ["algorithm.name=fedat", "algorithm.codec.name=topk"])


def test_list_shows_the_codec_keys_dotted() -> None:
    from engine.run import list_components

    text = list_components()
    keys = (
        "codec.name='none', codec.ratio=0.01, codec.bits=4, codec.bucket=512, "
        "codec.error_feedback=None, codec.direction='up'"
    )
    lines = text.splitlines()
    for name in ("fedavg", "fedprox", "fedbuff", "fedasync", "fedadam"):
        at = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
        assert keys in lines[at + 1]
    assert "CodecConfig(" not in text
    assert {n for n, c in ALGORITHMS.builtins.items() if "codec" in c.Params.__dataclass_fields__} == {
        "fedavg",
        "fedprox",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedbuff",
        "fedasync",
        "cmfl",  # FedAvg's params: an upload that is not skipped is encoded like FedAvg's
    }
