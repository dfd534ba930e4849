"""FedAsync's proximal term rho (Xie et al. 2019, spec async-algorithms.md §1): the client
minimises ``f(y) + (rho/2) ||y - x^tau||^2``. Worked by hand on ``f(w) = w^2 / 2`` (one
weight, input 1, target 0), whose gradient is ``w`` itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from algorithms.base import LocalTraining, Task, Update
from algorithms.fedasync import FedAsync, FedAsyncParams
from engine.worker.training import ClientData

TRAINING = LocalTraining(local_steps=2, batch_size=0, lr=0.5)


def fedasync(rho: float) -> FedAsync:
    return FedAsync(FedAsyncParams(concurrency=1, alpha=0.5, rho=rho), TRAINING, np.array([1]))


def half_square() -> tuple[torch.nn.Module, ClientData]:
    """``w x`` with w = 1, one example x = 1, target 0 and loss ``(w x - y)^2 / 2``."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - y) ** 2).sum()

    return model, ClientData(torch.ones(1, 1), torch.zeros(1, 1), loss)


def local_weight(alg: FedAsync) -> float:
    model, data = half_square()
    alg.client_update(model, data, alg.task_for(0), None, torch.Generator().manual_seed(0))
    return float(model.weight.item())


def test_rho_becomes_the_tasks_proximal_term() -> None:
    assert fedasync(0.25).task_for(0) == Task(steps=2, batch_size=0, lr=0.5, prox_mu=0.25)
    # rho 0 (the default) leaves the task as every other algorithm's: plain local SGD
    assert fedasync(0.0).task_for(0) == Task(steps=2, batch_size=0, lr=0.5)
    assert FedAsyncParams().rho == 0.0


def test_rho_pulls_local_steps_back_to_the_start_model() -> None:
    # Plain SGD, lr 0.5: w1 = 1 - 0.5*1 = 0.5; w2 = 0.5 - 0.5*0.5 = 0.25.
    assert local_weight(fedasync(0.0)) == 0.25
    # rho 1: step 1 has no pull (w = x^tau): w1 = 0.5; step 2's gradient is
    # w1 + rho (w1 - 1) = 0.5 - 0.5 = 0, so w2 = w1 = 0.5.
    assert local_weight(fedasync(1.0)) == 0.5
    # rho 0.5: step 2's gradient 0.5 + 0.5*(0.5 - 1) = 0.25, w2 = 0.5 - 0.5*0.25 = 0.375.
    assert local_weight(fedasync(0.5)) == 0.375


def test_server_mixes_the_regularised_model() -> None:
    # A fresh update (u = 0, s = 1) from x^tau = 1 with y = 0.5 (rho 1 above): delta 0.5,
    # x <- (1 - 0.5) * 1 + 0.5 * 0.5 = 0.75; without rho y = 0.25 gives 0.625.
    for rho, y, expected in ((1.0, 0.5, 0.75), (0.0, 0.25, 0.625)):
        alg = fedasync(rho)
        state, jobs = alg.jobs(
            alg.init(np.ones(1, dtype=np.float32)), 0.0, np.arange(1), np.random.default_rng(0)
        )
        assert [j.task.prox_mu for j in jobs] == [rho]
        delta = np.float32([1.0 - y])
        state = alg.on_update(state, Update(0, delta, 1, 0, state.model), 1.0)
        np.testing.assert_array_equal(state.model, np.float32([expected]))


@pytest.mark.parametrize("rho", [-0.1, float("nan")])
def test_rho_must_be_non_negative(rho: float) -> None:
    with pytest.raises(ValueError, match=r"^rho must be >= 0"):
        FedAsyncParams(rho=rho)
