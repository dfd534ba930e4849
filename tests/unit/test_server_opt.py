"""Server optimizers: each rule's first two steps worked out by hand, the sign convention,
the unchanged sgd path, and their wiring into FedAvg and FedBuff."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from algorithms.aggregation import descend
from algorithms.base import LocalTraining, Update
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.fedavg_presets import FedAdagrad, FedAdam, FedAvgM, FedYogi
from algorithms.fedbuff import FedBuff, FedBuffParams
from algorithms.fedprox import FedProxParams
from algorithms.server_opt import SERVER_OPTS, ServerOptState, server_opt_update

TRAINING = LocalTraining(local_steps=3, batch_size=0, lr=0.1)
X0 = (1.0, 2.0)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def two_steps(rule: str, d1: tuple[float, float], d2: tuple[float, float], **kw: Any) -> list[Any]:
    x0, opt0 = f32(*X0), ServerOptState()
    x1, opt1 = server_opt_update(rule, x0, f32(*d1), opt0, **kw)
    x2, opt2 = server_opt_update(rule, x1, f32(*d2), opt1, **kw)
    np.testing.assert_array_equal(x0, f32(*X0))  # pure: the inputs are untouched
    assert opt0.m is None and opt0.step == 0
    assert (opt1.step, opt2.step) == (1, 2)
    assert x1.dtype == x2.dtype == np.float32
    return [x1, opt1, x2, opt2]


def test_sgd_is_plain_descent() -> None:
    x, d = np.linspace(-1, 1, 7, dtype=np.float32), np.sin(np.arange(7, dtype=np.float32)) / 3
    new, opt = server_opt_update("sgd", x, d, ServerOptState(), lr=0.37)
    np.testing.assert_array_equal(new, descend(x, d, 0.37))
    assert opt.m is None and opt.v is None  # sgd keeps no memory


def test_avgm_two_steps() -> None:
    # m0 = (1,-2); x1 = (1,2) - (1,-2) = (0,4)
    # m1 = 0.9*(1,-2) + (1,1) = (1.9,-0.8); x2 = (0,4) - (1.9,-0.8) = (-1.9,4.8)
    x1, opt1, x2, opt2 = two_steps("avgm", (1, -2), (1, 1), lr=1.0, beta1=0.9)
    np.testing.assert_array_equal(x1, f32(0, 4))
    np.testing.assert_array_equal(opt1.m, f32(1, -2))
    np.testing.assert_allclose(opt2.m, f32(1.9, -0.8), rtol=1e-6)
    np.testing.assert_allclose(x2, f32(-1.9, 4.8), rtol=1e-6)
    assert opt2.v is None


def test_adagrad_two_steps() -> None:
    # tau 0.75 so v_{-1} = 0.5625; beta1 0.5, lr 1
    # step 1, Delta (1,-1): m = (0.5,-0.5); v = 0.5625 + 1 = 1.5625, sqrt 1.25, +tau = 2
    #   x1 = (1,2) - (0.5,-0.5)/2 = (0.75, 2.25)
    # step 2, Delta (3,0): m = (0.25+1.5, -0.25) = (1.75,-0.25); v = (10.5625, 1.5625)
    #   sqrt = (3.25, 1.25), +tau = (4, 2); x2 = (0.75 - 0.4375, 2.25 + 0.125)
    x1, opt1, x2, opt2 = two_steps("adagrad", (1, -1), (3, 0), lr=1.0, beta1=0.5, tau=0.75)
    np.testing.assert_array_equal(x1, f32(0.75, 2.25))
    np.testing.assert_array_equal(opt1.v, f32(1.5625, 1.5625))
    np.testing.assert_array_equal(opt2.m, f32(1.75, -0.25))
    np.testing.assert_array_equal(opt2.v, f32(10.5625, 1.5625))
    np.testing.assert_array_equal(x2, f32(0.3125, 2.375))


def test_adam_two_steps() -> None:
    # tau 1 so v_{-1} = 1; beta1 = beta2 = 0.5, lr 3
    # step 1, Delta (7,-7): m = (3.5,-3.5); v = 0.5*1 + 0.5*49 = 25, sqrt 5, +tau = 6
    #   x1 = (1,2) - 3*(3.5,-3.5)/6 = (-0.75, 3.75)
    # step 2, Delta (5,5): m = (1.75+2.5, -1.75+2.5) = (4.25, 0.75); v = 12.5 + 12.5 = 25
    #   x2 = (-0.75,3.75) - 3*(4.25,0.75)/6 = (-2.875, 3.375): the momentum still pulls x[1] up
    x1, opt1, x2, opt2 = two_steps("adam", (7, -7), (5, 5), lr=3.0, beta1=0.5, beta2=0.5, tau=1.0)
    np.testing.assert_array_equal(x1, f32(-0.75, 3.75))
    np.testing.assert_array_equal(opt1.m, f32(3.5, -3.5))
    np.testing.assert_array_equal(opt2.v, f32(25, 25))
    np.testing.assert_array_equal(x2, f32(-2.875, 3.375))


def test_yogi_two_steps_grows_and_shrinks_v() -> None:
    # tau 1.5 so v_{-1} = 2.25; beta1 = beta2 = 0.5, lr 2
    # step 1, Delta (6,-6): Delta^2 = 36 > v, so v = 2.25 + 0.5*36 = 20.25, sqrt 4.5, +tau = 6
    #   m = (3,-3); x1 = (1,2) - 2*(3,-3)/6 = (0, 3)
    # step 2, Delta (4,0): Delta^2 = (16,0) < v, so v = 20.25 - 0.5*(16,0) = (12.25, 20.25)
    #   (adam would give 18.125); sqrt + tau = (5, 6); m = (1.5+2, -1.5) = (3.5,-1.5)
    #   x2 = (0,3) - 2*(3.5,-1.5)/(5,6) = (-1.4, 3.5)
    x1, opt1, x2, opt2 = two_steps("yogi", (6, -6), (4, 0), lr=2.0, beta1=0.5, beta2=0.5, tau=1.5)
    np.testing.assert_array_equal(x1, f32(0, 3))
    np.testing.assert_array_equal(opt1.v, f32(20.25, 20.25))
    np.testing.assert_array_equal(opt2.v, f32(12.25, 20.25))
    np.testing.assert_allclose(x2, f32(-1.4, 3.5), rtol=1e-6)


@pytest.mark.parametrize("rule", SERVER_OPTS)
def test_positive_pseudo_gradient_decreases_x(rule: str) -> None:
    """Our Delta = x - y is a gradient (Reddi et al.'s is y - x): +Delta moves x down."""
    x, _ = server_opt_update(rule, f32(0, 0), f32(1, -1), ServerOptState(), lr=0.1)
    assert x[0] < 0 < x[1]


def test_unknown_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^server_opt must be one of sgd, avgm, adagrad, adam, yogi"):
        server_opt_update("sgdm", f32(0), f32(1), ServerOptState(), lr=1.0)


# ---- wiring ------------------------------------------------------------------------------


def run_rounds(alg: Any, rounds: int = 3) -> Any:
    """Drive equal-sized clients through ``rounds`` server steps with fixed deltas."""
    s = alg.init(np.linspace(-1, 1, 5, dtype=np.float32))
    for t in range(rounds):
        s, jobs = alg.jobs(s, float(t), np.arange(8), np.random.default_rng(t))
        base = s.model
        for c in (j.client for j in jobs):
            delta = np.sin(np.arange(5, dtype=np.float32) * (c + 1) + t).astype(np.float32) / 3
            s = alg.on_update(s, Update(c, delta, 7, s.version, base), t + 0.5)
    return s


@pytest.mark.parametrize("rule", ["avgm", "adagrad", "adam", "yogi"])
def test_fedbuff_k_equals_concurrency_is_fedavg_under_every_rule(rule: str) -> None:
    kw = {"server_opt": rule, "server_lr": 0.1}
    fedavg = run_rounds(FedAvg(FedAvgParams(clients_per_round=3, **kw), TRAINING, np.full(8, 7)))
    fedbuff = run_rounds(FedBuff(FedBuffParams(concurrency=3, buffer_size=3, **kw), TRAINING, np.full(8, 7)))
    assert fedavg.version == fedbuff.version == 3 and fedavg.opt.step == fedbuff.opt.step == 3
    np.testing.assert_array_equal(fedavg.model, fedbuff.model)
    np.testing.assert_array_equal(fedavg.opt.m, fedbuff.opt.m)


def test_fedavg_steps_the_optimizer_with_the_round_average() -> None:
    alg = FedAvg(FedAvgParams(clients_per_round=2, server_opt="avgm", beta1=0.5), TRAINING, np.array([1, 3]))
    s = alg.init(f32(0, 0))
    for rnd in range(2):
        s, _ = alg.jobs(s, float(rnd), np.arange(2), np.random.default_rng(rnd))
        s = alg.on_update(s, Update(0, f32(4, 0), 1, s.version, s.model), rnd + 0.5)
        s = alg.on_update(s, Update(1, f32(0, 4), 3, s.version, s.model), rnd + 0.5)
    # Delta = (1, 3) both rounds; m = (1,3) then (1.5,4.5); x = -(1,3) - (1.5,4.5)
    np.testing.assert_array_equal(s.model, f32(-2.5, -7.5))
    np.testing.assert_array_equal(s.opt.m, f32(1.5, 4.5))


def test_fedbuff_flush_uses_the_optimizer() -> None:
    params = FedBuffParams(
        concurrency=2,
        buffer_size=2,
        staleness="const",
        server_lr=3.0,
        server_opt="adam",
        beta1=0.5,
        beta2=0.5,
        tau=1.0,
    )
    alg = FedBuff(params, TRAINING, np.ones(4))
    s, jobs = alg.jobs(alg.init(f32(*X0)), 0.0, np.arange(4), np.random.default_rng(0))
    a, b = (j.client for j in jobs)
    s = alg.on_update(s, Update(a, f32(14, -14), 1, 0, s.model), 1.0)
    s = alg.on_update(s, Update(b, f32(0, 0), 1, 0, s.model), 1.0)
    # the buffer's mean (7,-7) is adam's first step in test_adam_two_steps
    assert s.version == 1 and s.opt.step == 1
    np.testing.assert_array_equal(s.model, f32(-0.75, 3.75))


# ---- Params and presets ----------------------------------------------------------------


def test_presets_are_fedavg_with_defaults() -> None:
    sizes = np.ones(3)
    expected = {
        FedAvgM: ("fedavgm", "avgm", 1.0),
        FedAdagrad: ("fedadagrad", "adagrad", 0.01),
        FedAdam: ("fedadam", "adam", 0.01),
        FedYogi: ("fedyogi", "yogi", 0.01),
    }
    for cls, (name, rule, lr) in expected.items():
        alg = cls(cls.Params(), TRAINING, sizes)
        assert isinstance(alg, FedAvg) and isinstance(alg.params, FedAvgParams)
        assert (alg.name, alg.params.server_opt, alg.params.server_lr) == (name, rule, lr)
        assert (alg.params.beta1, alg.params.beta2, alg.params.tau) == (0.9, 0.99, 1e-3)
        assert cls.Params(server_lr=0.5).server_lr == 0.5  # presets only set defaults
    assert FedAvgParams().server_opt == "sgd" and FedBuffParams().server_opt == "sgd"
    assert FedProxParams(server_opt="yogi").server_opt == "yogi"


def test_server_opt_fields_keep_positional_order() -> None:
    # The mixin's fields are keyword-only: existing positional construction is unchanged.
    assert FedBuffParams(10, 5, 0.5) == FedBuffParams(concurrency=10, buffer_size=5, server_lr=0.5)
    assert FedAvgParams(4, 0.5).server_lr == 0.5


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (FedAvgParams, {"server_opt": "adamw"}, r"^server_opt must be one of sgd, avgm, adagrad, adam, yogi"),
        (FedBuffParams, {"beta1": 1.0}, r"^beta1 must be in \[0, 1\) \(got 1.0\)"),
        (FedAvgParams, {"beta2": -0.1}, r"^beta2 must be in \[0, 1\)"),
        (FedProxParams, {"tau": 0.0}, r"^tau must be > 0 \(got 0.0\)"),
    ],
)
def test_server_opt_validation(cls: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
