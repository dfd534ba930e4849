"""FedAvg-M and SCAFFOLD-M: Cheng, Huang, Wu, Yuan, "Momentum Benefits Non-IID Federated
Learning Simply and Provably", ICLR 2024 (arXiv 2306.16504), their Algorithms 1 and 2.

The momentum is the *server's*: one buffer ``g^r`` (the round's average local direction,
an exponential moving average over rounds), broadcast to the round's clients and mixed
into every local step with weight ``1 - beta``; the local steps themselves carry no
heavy-ball buffer of their own (``training.momentum`` must be 0). Not to be confused with
``fedavgm`` (Hsu et al. 2019: momentum applied by the server to the averaged update only).

Notation (the paper's): ``x^r`` the global model of round ``r``, ``S`` the sampled
clients (``clients_per_round``) out of ``N``, ``K`` local steps (``training.local_steps``),
``eta`` the local rate (``training.lr``), ``gamma`` the global rate, ``beta`` the weight of
the fresh gradient, ``F(y; xi)`` a minibatch loss (``training.weight_decay * y`` is added to
its gradient, as torch's SGD does). Config keys: ``momentum = 1 - beta`` (0: no momentum)
and ``server_lr = gamma / (eta * K)``, so that ``server_lr = 1`` is plain model averaging
as everywhere else in fedray.

**FedAvg-M** (Algorithm 1). Client ``i`` in ``S_r``, from ``y^0 = x^r``, for k < K:

    g_i^k   = beta * grad F_i(y^k; xi^k) + (1 - beta) * g^r
    y^{k+1} = y^k - eta * g_i^k

Server, over the clients that returned:

    g^{r+1} = 1/(eta K |S|) * sum_i (x^r - y_i^K)
    x^{r+1} = x^r - gamma * g^{r+1}

So ``g^{r+1} = beta * (mean local gradient) + (1 - beta) * g^r``. With ``momentum = 0``
(``beta = 1``) it is FedAvg with uniform weights, bit for bit (tested).

**SCAFFOLD-M** (Algorithm 2). SCAFFOLD's control variates (algorithms/scaffold.py) inside the
same momentum: client ``i`` keeps ``c_i`` (its client state), the server ``c``:

    g_i^k    = beta * (grad F_i(y^k; xi^k) - c_i + c) + (1 - beta) * g^r
    y^{k+1}  = y^k - eta * g_i^k
    c_i^+    = (1/K) sum_k grad F_i(y^k; xi^k)        (the mean of its local gradients)
    upload (x^r - y_i^K, c_i^+ - c_i);  keep c_i <- c_i^+

    g^{r+1}  = 1/(eta K |S|) * sum_i (x^r - y_i^K)
    x^{r+1}  = x^r - gamma * g^{r+1}
    c^{r+1}  = c^r + (1/N) * sum_i (c_i^+ - c_i)

With ``beta = 1`` this is SCAFFOLD: for plain local SGD the mean of the local gradients is
exactly option II's ``c_i - c + (x - y)/(K eta)`` (up to rounding; tested).

fedray specifics:

* Initial buffers: ``g^0 = 0``, ``c^0 = 0``, ``c_i^0 = 0``.
* Bytes: the broadcast carries one vector beside the model (``JobCost(bytes_down=2 *
  model bytes)``): FedAvg-M sends ``g^r``; SCAFFOLD-M sends the mix ``w = beta c + (1 -
  beta) g^r`` and the client forms ``w - beta c_i`` itself, which is the same step with one
  vector instead of two. FedAvg-M uploads its delta (1x the model), SCAFFOLD-M the delta
  and ``c_i^+ - c_i`` (2x).
* Unequal local steps (``training.epochs``): each client's update is normalised by its own
  ``eta K_i``, ``g^{r+1} = 1/|S| sum_i (x^r - y_i)/(eta K_i)``, and ``gamma = server_lr *
  eta * mean_i K_i``; with equal ``K`` this is the rule above.

Unsure of the paper's exact rule (stated, as the brief asks):

* ``g^0``: the paper's algorithms take a "gradient estimator g^0" as input; fedray starts
  from ``g^0 = 0``, so the first rounds' local steps are damped by ``beta`` until the
  buffer fills (one could instead seed it with a first round of plain gradients).
* SCAFFOLD-M's ``c_i`` update: taken as the mean of the client's local stochastic gradients
  of the round (the uncorrected ones), as I recall Algorithm 2; its initial ``c_i^0`` and
  ``c^0 = mean_i c_i^0`` are taken as zeros.
* Whether ``g^{r+1}`` is averaged over the sampled clients or over those that returned:
  here over those that returned (the paper has no drops).
* The paper's experiments tune ``beta``; the default ``momentum`` 0.9 (``beta = 0.1``) here
  is a common choice, not the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from algorithms.aggregation import descend, weighted_sum
from algorithms.base import Task, Update
from algorithms.scaffold import ControlRounds, ControlState, add_mean_controls, check_round_params


@dataclass(frozen=True)
class MomentumParams:
    clients_per_round: int = 10
    server_lr: float = 1.0  # gamma / (eta * K): 1 is model averaging
    momentum: float = 0.9  # 1 - beta: the weight of the server's buffer g^r in each local step

    def __post_init__(self) -> None:
        check_round_params(self.clients_per_round, self.server_lr)
        if not (0 <= self.momentum < 1):  # NaN fails too
            raise ValueError(f"momentum must be in [0, 1), the paper's 1 - beta (got {self.momentum})")


class FedAvgMomentum(ControlRounds):
    description: ClassVar[str] = (
        "FedAvg-M (Cheng et al. 2024): the server's momentum buffer mixed into every local step (not fedavgm)"
    )
    name: ClassVar[str] = "fedavg_m"
    Params: ClassVar[type] = MomentumParams
    keeps_client_control: ClassVar[bool] = False
    params: MomentumParams

    @property
    def beta(self) -> float:
        return 1.0 - self.params.momentum

    def init_state(self, model: np.ndarray) -> ControlState:
        return ControlState(model=model, direction=np.zeros_like(model))

    def broadcast(self, state: ControlState) -> np.ndarray:
        assert state.direction is not None
        return state.direction  # g^r

    def local_offset(self, sent: np.ndarray, client_control: np.ndarray | None) -> np.ndarray | None:
        if self.params.momentum == 0:
            return None  # plain local SGD: FedAvg's steps, bit for bit
        return (np.asarray(sent, np.float64) * self.params.momentum).astype(np.float32)  # (1 - beta) g^r

    def aggregate(self, state: ControlState, updates: tuple[Update, ...]) -> ControlState:
        model, direction = self.momentum_step(state.model, updates)
        return replace(state, model=model, direction=direction)

    def momentum_step(self, model: np.ndarray, updates: tuple[Update, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(x^{r+1}, g^{r+1})`` from the round's updates (see the module docstring)."""
        steps = [max(1, self.task_for(u.client).steps) for u in updates]
        k_mean = sum(steps) / len(steps)
        coeffs = [k_mean / (k * len(updates)) for k in steps]  # 1/|S| each when the K_i are equal
        average = weighted_sum([u.delta for u in updates], coeffs)  # eta * mean K * g^{r+1}
        direction = (np.asarray(average, np.float64) / (self.training.lr * k_mean)).astype(np.float32)
        return descend(model, average, self.params.server_lr), direction


class ScaffoldMomentum(FedAvgMomentum):
    description: ClassVar[str] = (
        "SCAFFOLD-M (Cheng et al. 2024): SCAFFOLD's control variates plus the server's momentum "
        "in every local step"
    )
    name: ClassVar[str] = "scaffold_m"
    keeps_client_control: ClassVar[bool] = True

    @property
    def tracks_mean_grad(self) -> bool:
        return True

    def init_state(self, model: np.ndarray) -> ControlState:
        return ControlState(model=model, control=np.zeros_like(model), direction=np.zeros_like(model))

    def broadcast(self, state: ControlState) -> np.ndarray:
        assert state.control is not None and state.direction is not None
        beta, c, g = self.beta, np.asarray(state.control, np.float64), np.asarray(state.direction, np.float64)
        mix = beta * c + (1 - beta) * g
        return mix.astype(np.float32)  # w = beta c + (1 - beta) g^r

    def local_offset(self, sent: np.ndarray, client_control: np.ndarray | None) -> np.ndarray | None:
        if client_control is None:
            return sent
        own = self.beta * np.asarray(client_control, np.float64)
        return (np.asarray(sent, np.float64) - own).astype(np.float32)  # beta (c - c_i) + (1 - beta) g^r

    def new_client_control(
        self,
        client_control: np.ndarray | None,
        sent: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        task: Task,
        mean_grad: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        assert mean_grad is not None
        new = np.asarray(mean_grad, dtype=np.float32)
        old = 0.0 if client_control is None else np.asarray(client_control, np.float64)
        return new, (np.asarray(new, np.float64) - old).astype(np.float32)

    def aggregate(self, state: ControlState, updates: tuple[Update, ...]) -> ControlState:
        assert state.control is not None
        model, direction = self.momentum_step(state.model, updates)
        control = add_mean_controls(state.control, updates, self.num_clients)
        return replace(state, model=model, direction=direction, control=control)
